"""Fit an identity's feature line (AU codes → per-Gaussian opacity change) against its captured frames.

Paper supp. §2 "Feature line": F ∈ R^{17×Q×16}, trained per identity with the canonical rig fixed.
Each step draws a captured moment t (tracked mesh v_t, AU codes E_t) and one training camera,
renders ``deform(rig, v_t, Δα = FeatureLine(E_t))`` and minimises eq. (20) L_recon against the
image, eq. (21) L_opcmotion (Δμ = v_t − v_canonical on the Q facial Gaussians, coupled to the
learned Δα) and the eq. (19) regulariser, whose smoothness term runs over the consecutive video
frames (t, t+1) of the clip: E_{t+1} comes from the clip's per-frame AU track, so every step has a
real frame pair without rendering a second image. Eq. (22) penalises motion, which this fit does
not learn (Δμ is tracked data); it acts on the motion model instead (``losses/feature_line.py``).
Training views exclude the rig's held-out camera; the held-out camera gives PSNR with and without
the learned opacity, so the effect of the feature line is measured, not assumed.

Output: ``feature_line.safetensors`` (F + decoder) and ``feature_line.json`` in the rig directory,
written atomically; ``load_feature_line(rig_dir)`` reads them back.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emodifftalk.config import Config
from emodifftalk.losses.image import psnr
from emodifftalk.losses.feature_line import feature_line_step_losses
from emodifftalk.models.feature_line import FeatureLine
from emodifftalk.render import rasterize
from emodifftalk.render.cameras import facing_cosines
from emodifftalk.rig.deform import deform
from emodifftalk.rig.gaussians import GaussianRig
from emodifftalk.safetensors_io import load_tensors
from emodifftalk.utils import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

FEATURE_LINE_TENSORS = "feature_line.safetensors"
FEATURE_LINE_JSON = "feature_line.json"


@dataclass
class MovingFrame:
    """One captured moment of an identity: images per camera, cameras, mesh and AU codes."""

    key: str
    images: torch.Tensor  # (C, H, W, 3) float in [0, 1]
    viewmats: torch.Tensor  # (C, 4, 4)
    Ks: torch.Tensor  # (C, 3, 3)
    verts: torch.Tensor  # (V, 3)
    aus: torch.Tensor  # (17,) in [0, 1], invalid AUs zeroed
    aus_next: torch.Tensor | None = None  # (17,) codes of the adjacent video frame (eq. 19 pair)


def moving_frames(frames_samples: list[dict], seq_samples: dict[str, dict]) -> list[MovingFrame]:
    """Pair decoded ``frames`` samples with the AU codes of their clip (``seq_samples`` by clip name)."""
    out = []
    for s in frames_samples:
        meta = s["meta"]
        seq = seq_samples.get(meta["clip"])
        if seq is None:
            continue
        t = int(meta["frame"])
        if t >= seq["aus"].shape[0]:
            raise ValueError(f"{s['key']}: frame {t} beyond the clip's {seq['aus'].shape[0]} AU frames")
        aus = np.where(seq["au_mask"][t], seq["aus"][t], 0.0).astype(np.float32)
        t2 = t + 1 if t + 1 < seq["aus"].shape[0] else t - 1  # the last frame pairs with the one before
        aus_next = (torch.from_numpy(np.where(seq["au_mask"][t2], seq["aus"][t2], 0.0).astype(np.float32))
                    if t2 >= 0 else None)
        names = [c["name"] for c in s["cameras"]]
        images = np.stack([s["images"][n] for n in names]).astype(np.float32) / 255.0
        out.append(MovingFrame(
            key=s["key"], images=torch.from_numpy(images),
            viewmats=torch.from_numpy(np.stack([c["viewmat"] for c in s["cameras"]]).astype(np.float32)),
            Ks=torch.from_numpy(np.stack([c["K"] for c in s["cameras"]]).astype(np.float32)),
            verts=torch.from_numpy(np.asarray(s["verts"], np.float32)), aus=torch.from_numpy(aus),
            aus_next=aus_next))
    return out


def _render(rig: GaussianRig, frame: MovingFrame, cams: list[int], delta_alpha, cfg: Config) -> torch.Tensor:
    g = deform(rig, frame.verts, delta_alpha)
    h, w = frame.images.shape[1:3]
    bg = torch.tensor(cfg.render.background, dtype=torch.float32)
    out = rasterize(**g.render_args(), viewmats=frame.viewmats[cams], Ks=frame.Ks[cams], width=w, height=h,
                    background=bg, backend=cfg.render.backend, tile_size=cfg.render.tile_size)
    return out.rgb


@torch.no_grad()
def _holdout_psnr(rig, model, frames, holdout: int, cfg) -> tuple[float, float]:
    """Mean held-out-camera PSNR of the animated frames without and with the feature line."""
    base, fitted = [], []
    for fr in frames:
        target = fr.images[[holdout]]
        base.append(float(psnr(_render(rig, fr, [holdout], None, cfg), target)))
        fitted.append(float(psnr(_render(rig, fr, [holdout], model(fr.aus[None])[0], cfg), target)))
    return float(np.mean(base)), float(np.mean(fitted))


def fit_feature_line(rig: GaussianRig, frames: list[MovingFrame], cfg: Config, seed: int = 0,
                     writer=None, progress: bool = False) -> tuple[FeatureLine, dict]:
    """Train a ``FeatureLine`` for ``rig`` on ``frames``; returns the model and metrics."""
    if not frames:
        raise ValueError(f"identity {rig.identity}: no captured frames with AU codes to fit the feature line")
    fcfg = cfg.feature_line
    n_cams = frames[0].images.shape[0]
    holdout = cfg.rig.holdout_camera % n_cams
    # expression appearance is on the face: cameras behind the head would spend steps on hair
    sees_face = facing_cosines(frames[0].viewmats, rig.canonical_verts.detach().cpu(), rig.faces.cpu(),
                               rig.facial_idx.cpu()) > 0
    train_cams = [c for c in range(n_cams) if c != holdout and sees_face[c]] or \
        [c for c in range(n_cams) if c != holdout]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = FeatureLine.from_config(fcfg, q=rig.n_facial)
    opt = torch.optim.Adam(model.parameters(), lr=fcfg.lr)
    facial = rig.facial_idx
    canon = rig.canonical_verts
    t0 = time.time()
    steps = range(fcfg.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"feature line {rig.identity}", leave=False)
    last = {}
    for step in steps:
        fr = frames[int(torch.randint(len(frames), (1,), generator=gen))]
        cam = train_cams[int(torch.randint(len(train_cams), (1,), generator=gen))]
        codes = fr.aus[None] if fr.aus_next is None else torch.stack([fr.aus, fr.aus_next])
        delta_alpha, f = model(codes, return_features=True)  # (1|2, Q), (1|2, Q, D): frames t[, t+1]
        rendered = _render(rig, fr, [cam], delta_alpha[0], cfg)
        delta_mu = (fr.verts - canon)[facial][None]  # (1, Q, 3)
        terms = feature_line_step_losses(delta_mu, delta_alpha[:1], rendered, fr.images[[cam]], fcfg,
                                         F=model.F, f=f)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        last = {k: float(v.detach()) for k, v in terms.items()}
        if writer is not None and step % 10 == 0:
            for k, v in last.items():
                writer.add_scalar(f"feature_line/{k}", v, step)
    psnr_base, psnr_fit = _holdout_psnr(rig, model, frames, holdout, cfg)
    metrics = {"steps": fcfg.steps, "seconds": round(time.time() - t0, 2), "n_frames": len(frames),
               "q": rig.n_facial, "final_loss": last.get("loss"),
               "holdout_psnr_without_feature_line": psnr_base, "holdout_psnr_with_feature_line": psnr_fit}
    log.info("feature line %s: held-out PSNR %.2f -> %.2f dB", rig.identity, psnr_base, psnr_fit)
    return model, metrics


def save_feature_line(model: FeatureLine, rig_dir: str | Path, metrics: dict, cfg: Config) -> None:
    from safetensors.torch import save

    rig_dir = Path(rig_dir)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(rig_dir / FEATURE_LINE_TENSORS, save(state))
    info = {"q": model.q, "dim": model.dim, "max_delta": model.max_delta, "metrics": metrics,
            "config": cfg.feature_line.__dict__}
    atomic_write_text(rig_dir / FEATURE_LINE_JSON, json.dumps(info, indent=2))


def load_feature_line(rig_dir: str | Path, rig: GaussianRig | None = None) -> FeatureLine | None:
    """The identity's fitted feature line, or None when the rig has none (opacity then stays α0)."""
    rig_dir = Path(rig_dir)
    if not (rig_dir / FEATURE_LINE_TENSORS).is_file():
        return None
    info = json.loads((rig_dir / FEATURE_LINE_JSON).read_text())
    if rig is not None and info["q"] != rig.n_facial:
        raise ValueError(f"{rig_dir / FEATURE_LINE_JSON}: feature line has Q={info['q']} but the rig has "
                         f"{rig.n_facial} facial Gaussians; refit it with `emodifftalk rig`")
    model = FeatureLine(q=info["q"], dim=info["dim"], max_delta=info["max_delta"])
    model.load_state_dict(load_tensors(rig_dir / FEATURE_LINE_TENSORS))
    return model.eval()
