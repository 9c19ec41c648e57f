"""AU-edit response of a motion model: does raising one AU code move the face the way that AU does?

For each probed AU k, the clip is sampled twice with the same noise: once with its AU codes E and
once with E' = E except column k raised by ``delta`` (clipped to [0, 1]). The change of the
sampled offsets Δ(t, v) = X'(t, v) − X(t, v) is compared with the expected change
G(t, v) = (E'_tk − E_tk) · D_k(v), where D_k (V, 3) is the ground-truth displacement of AU k per
unit intensity (known exactly for synthetic identities: ``data.synthetic.make_au_rig``):

* ``gain``    = <Δ, G> / <G, G>: 1 means the model moves the AU's region as far as the data does,
  0 means it ignores the code (least-squares scale of G that best explains Δ);
* ``cosine``  = <Δ, G> / (|Δ| |G|): whether the change has the right shape and direction, whatever
  its size (1 = exactly the AU's field, 0 = unrelated);
* ``moved_mm`` = mean over frames of the RMS |Δ| over the AU's region (vertices where |D_k| is at
  least 20 % of its maximum), ``expected_mm`` the same for G.

Inner products run over all frames and vertices. The metric needs the true fields, so it is only
available on synthetic data; on real captures compare renders instead.
"""

from __future__ import annotations

import numpy as np
import torch

from emodifftalk.au import AU_INDEX, AU_NAMES, OPENFACE_MISSING_AUS
from emodifftalk.diffusion.windowed import sample_motion

# the AUs a model can learn to follow from OpenFace-style labels (AU24 has no column, so no labels)
EDITABLE_AUS: tuple[str, ...] = tuple(a for a in AU_NAMES if a not in OPENFACE_MISSING_AUS)
REGION_FRACTION = 0.2  # a vertex belongs to an AU's region if |D_k(v)| >= this x max_v |D_k(v)|


def response_stats(delta_offsets: np.ndarray, expected: np.ndarray, field: np.ndarray) -> dict:
    """Δ (T, V, 3) and G (T, V, 3) in metres, D_k (V, 3) → gain, cosine, moved/expected mm."""
    d = delta_offsets.astype(np.float64).ravel()
    g = expected.astype(np.float64).ravel()
    gg = float(g @ g)
    if gg <= 0:
        raise ValueError("expected change is zero: the AU was already saturated or its field is zero")
    dg = float(d @ g)
    norm = float(np.linalg.norm(d) * np.sqrt(gg))
    mag = np.linalg.norm(field, axis=-1)
    region = mag >= REGION_FRACTION * mag.max()

    def rms_mm(x):
        return float(np.sqrt(np.square(x[:, region]).sum(-1).mean(-1)).mean() * 1000.0)

    return {"gain": dg / gg, "cosine": dg / norm if norm > 0 else 0.0,
            "moved_mm": rms_mm(delta_offsets), "expected_mm": rms_mm(expected),
            "region_vertices": int(region.sum())}


def au_edit_response(model, schedule, template: np.ndarray, aus: np.ndarray, feats: np.ndarray | None,
                     fields: np.ndarray, cfg, probe_aus: list[str], delta: float = 0.5,
                     seed: int = 0, guidance_scale: float | None = None,
                     reference_guidance: bool = False) -> dict:
    """{AU name: response_stats} for a motion model on one clip (see module docstring).

    template (V, 3) m, aus (T, 17) codes the model is conditioned on, feats (Ta, D) audio features
    or None, fields (17, V, 3) ground-truth per-unit AU displacements in metres.
    ``reference_guidance``: guide the edited sample away from the unedited codes (as ``animate``
    does with ``diffusion.guidance_reference=speech``); otherwise both samples use classic CFG.
    """
    unknown = [a for a in probe_aus if a not in AU_INDEX]
    if unknown:
        raise ValueError(f"unknown AU names {unknown}")
    tpl = torch.from_numpy(np.asarray(template, np.float32))
    f = None if feats is None else torch.from_numpy(np.asarray(feats, np.float32))
    base_aus = np.asarray(aus, np.float32)

    reference = torch.from_numpy(base_aus) if reference_guidance else None

    def sample(codes: np.ndarray) -> np.ndarray:
        g = torch.Generator().manual_seed(seed)  # same noise for both samples: Δ is the edit only
        return sample_motion(model, schedule, tpl, torch.from_numpy(codes), f, cfg, generator=g,
                             guidance_scale=guidance_scale, reference_aus=reference).numpy()

    base = sample(base_aus)
    out = {}
    for name in probe_aus:
        k = AU_INDEX[name]
        edited = base_aus.copy()
        edited[:, k] = np.clip(edited[:, k] + delta, 0.0, 1.0)
        step = edited[:, k] - base_aus[:, k]  # (T,)
        expected = step[:, None, None] * fields[k][None]
        out[name] = response_stats(sample(edited) - base, expected, fields[k])
    return out
