"""OpenFace-like AU labels, *estimated* from the tracked geometry (never copied from the truth).

The estimator works like a generic face tracker: it explains each frame's displacement from the
identity's neutral mesh with the linear AU basis of one *reference* face (not the identity's
own, nonlinear face), by ridge regression over the face vertices. That alone gives OpenFace's
character: cross-talk between AUs with overlapping motion (jaw vs lips part vs chin raiser),
lip articulation that is not an AU leaking into AU23/AU25/AU12, identity-dependent gains.
On top: a per-identity gain and per-clip bias per AU (person-specific baseline), a 1–2 frame
lag, short temporal smoothing, measurement noise, clipping to the 0–5 scale, and dropout bursts
(``success = 0``). AU24 is estimated but OpenFace 2.x has no AU24 column, so the CSV drops it.
The true activations are written beside the labels (``aus_true.npy``) for evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from emodifftalk.au import AU_INDEX, AU_NAMES, NUM_AUS
from emodifftalk.eval.metrics import lip_gap

from .face import deform, linear_au_fields, make_face
from .head import make_template, sample_identity
from .rig import JAW_ANGLE
from .visemes import A_LABIO, A_ROUND, A_SPREAD

REFERENCE_SEED = 20240917  # the generic tracker's reference faces (not the data set's people)
REFERENCE_FACES = 8
RIDGE = 0.02
SMOOTH = 0.2
LAG1_SHARE = 0.7  # clips whose labels lag by 1 frame; the others lag by 2  # one-pole smoothing of the estimates (OpenFace's temporal filtering)
# Measurement noise per AU on the [0, 1] scale: subtle AUs (dimpler, lid tightener, chin raiser)
# are estimated worst, as in OpenFace's published per-AU results.
NOISE: dict[str, float] = {
    "AU01": 0.12, "AU02": 0.11, "AU04": 0.13, "AU05": 0.10, "AU06": 0.13, "AU07": 0.12, "AU09": 0.13,
    "AU10": 0.08, "AU12": 0.09, "AU14": 0.015, "AU15": 0.09, "AU17": 0.045, "AU23": 0.09, "AU24": 0.05,
    "AU25": 0.06, "AU26": 0.05, "AU45": 0.05,
}


@dataclass
class Labels:
    aus: np.ndarray  # (T, 17) estimated intensities in [0, 1] (0 on failed rows)
    success: np.ndarray  # (T,) bool
    confidence: np.ndarray  # (T,)
    lag: int  # frames


@lru_cache(maxsize=16)
def _reference_face(resolution: int, k: int = 0, jaw_angle: float = JAW_ANGLE):
    """Reference face ``k`` of the tracker's "training population" (0: unwarped layout); its jaw
    opens as far as the world's faces do (``synth.jaw_angle``), so the labels keep their scale."""
    rng = np.random.default_rng([REFERENCE_SEED, k])
    params = sample_identity(rng, index=-1, n_free_points=0)
    return make_face(make_template(resolution, params=params), rng, warp=k > 0, jaw_angle=jaw_angle)


def lip_aperture(verts: np.ndarray, template_verts: np.ndarray, lips) -> np.ndarray | None:
    """(T,) lip gap (``eval.metrics.lip_gap``); None when the mesh is too coarse to have both halves."""
    try:
        return lip_gap(verts, template_verts, lips)
    except ValueError:
        return None


@lru_cache(maxsize=4)
def _full_aperture(resolution: int, jaw_angle: float = JAW_ANGLE) -> float | None:
    """The reference face's lip aperture when its lips are fully apart (AU25 = 1: jaw at 1/1.6)."""
    face = _reference_face(resolution, 0, jaw_angle)
    aus = np.zeros((1, NUM_AUS), np.float32)
    aus[0, AU_INDEX["AU26"]] = 1 / 1.6
    verts = deform(face, aus, np.zeros((1, 5), np.float32))
    full = lip_aperture(verts, face.template.verts, face.template.vertex_sets["lips"])
    return float(full[0]) if full is not None and full[0] > 0 else None


@lru_cache(maxsize=4)
def reference_basis(resolution: int, jaw_angle: float = JAW_ANGLE) -> np.ndarray:
    """(REFERENCE_FACES, 17 + 5, V, 3) shape basis at mesh ``resolution``: for each reference face
    its linear AU fields, then non-AU lip modes (rounding, labiodental, spreading, closure against
    an open jaw, smile on an open jaw). Like OpenFace's PDM (learnt from many faces, 34 modes), it
    spans more than the AUs of one face, but never the identity's own fields."""
    out = []
    for k in range(REFERENCE_FACES):
        face = _reference_face(resolution, k, jaw_angle)
        aus = linear_au_fields(face)
        closure = -aus[AU_INDEX["AU26"]] * face.lower_lip[:, None]
        lip_modes = [face.art_fields[a] for a in (A_ROUND, A_LABIO, A_SPREAD)] + [closure, face.smile_open]
        out.append(np.concatenate([aus, np.stack(lip_modes)]))
    return np.stack(out).astype(np.float32)


def _projector(basis: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(17, 3Vf): each AU's estimate is the sum of its coefficients over the reference faces in a
    ridge regression onto the whole basis; modes are normalised first so the ridge shrinks
    subtle AUs no more than large ones."""
    n_faces, n_modes = basis.shape[:2]
    b = basis[:, :, idx].reshape(n_faces * n_modes, -1).astype(np.float64)
    norm = np.linalg.norm(b, axis=1, keepdims=True)
    live = norm[:, 0] > 1e-9  # a coarse mesh may have no vertex where a mode acts
    bn = b[live] / norm[live]
    coef = np.zeros_like(b)
    coef[live] = np.linalg.solve(bn @ bn.T + RIDGE * np.eye(len(bn)), bn) / norm[live]
    return coef.reshape(n_faces, n_modes, -1)[:, :NUM_AUS].sum(0)


@dataclass(frozen=True)
class TrackerTraits:
    """Per-identity behaviour of the tracker on this face: AU gains and baseline offsets."""

    gain: np.ndarray  # (17,)
    bias: np.ndarray  # (17,)


def tracker_traits(rng: np.random.Generator) -> TrackerTraits:
    return TrackerTraits(gain=rng.uniform(0.75, 1.25, NUM_AUS), bias=rng.normal(0.0, 0.04, NUM_AUS))


def estimate_labels(verts: np.ndarray, template_verts: np.ndarray, vertex_sets: dict, traits: TrackerTraits,
                    rng: np.random.Generator, failure_rate: float, jaw_angle: float = JAW_ANGLE) -> Labels:
    """OpenFace-like labels (see the module docstring) of registered meshes ``verts`` (T, V, 3).
    AU25 (lips part) is read from the lip aperture, as landmark-based detectors do."""
    idx = np.asarray(vertex_sets["face"])
    resolution = int(round(np.sqrt(template_verts.shape[0])))
    proj = _projector(reference_basis(resolution, jaw_angle), idx)
    disp = (verts[:, idx] - template_verts[idx][None]).reshape(len(verts), -1).astype(np.float64)
    est = disp @ proj.T  # (T, 17)
    aperture, full = lip_aperture(verts, template_verts, vertex_sets["lips"]), _full_aperture(resolution, jaw_angle)
    if aperture is not None and full is not None:
        est[:, AU_INDEX["AU25"]] = aperture / full
    est = est * traits.gain + traits.bias + rng.normal(0.0, 0.02, NUM_AUS)  # clip-level offset
    lag = 1 if rng.uniform() < LAG1_SHARE else 2
    est = np.concatenate([np.repeat(est[:1], lag, 0), est[:-lag]]) if len(est) > lag else est
    for t in range(1, len(est)):
        est[t] = SMOOTH * est[t - 1] + (1 - SMOOTH) * est[t]
    est += rng.normal(0.0, 1.0, est.shape) * np.array([NOISE[a] for a in AU_NAMES])
    est = np.clip(est, 0.0, 1.0)
    t = len(est)
    success = np.ones(t, bool)
    n_fail = int(round(failure_rate * t))
    while (~success).sum() < n_fail:  # failures come in short bursts (blur, occlusion, pose)
        start = int(rng.integers(0, t))
        success[start:start + int(rng.integers(1, 5))] = False
    confidence = np.where(success, rng.uniform(0.85, 0.98, t), rng.uniform(0.0, 0.3, t))
    est[~success] = 0.0
    return Labels(aus=est.astype(np.float32), success=success, confidence=confidence, lag=lag)
