"""Per-identity linear AU rig: 17 smooth displacement fields, ``verts = template + Σ_k a_k D_k``.

Fields are placed anatomically in direction space (see ``head.py``) with FACS-like motions and
amplitudes of a few millimetres up to ~1.5 cm at full intensity (AU26 rotates the jaw).
Each identity gets slightly different amplitudes, centres and left/right balance, so a model
must learn identity-specific motion just as on real captures.
"""

from __future__ import annotations

import numpy as np

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.config import SynthConfig

from .head import (
    BROW_Y,
    CHIN_Y,
    EYE_RX,
    EYE_RY,
    EYE_X,
    EYE_Y,
    MOUTH_HALF_WIDTH,
    MOUTH_Y,
    NOSE_Y,
    Template,
    bump,
    lip_weights,
    smoothstep,
)

MM = 1e-3
JAW_ANGLE = SynthConfig.jaw_angle  # rad of jaw rotation at AU26 = 1 (before the identity's ±10 %)


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def make_au_rig(template: Template, rng: np.random.Generator) -> np.ndarray:
    """(17, V, 3) float32 displacement per unit AU intensity, in metres, AU order of ``au.AU_NAMES``."""
    d = template.dirs.astype(np.float64)
    v = template.verts.astype(np.float64)
    n = len(v)
    size = float(np.ptp(v[:, 1])) / 0.21  # fields scale with head height
    amp = rng.uniform(0.85, 1.15, NUM_AUS) * size  # per-identity strength
    lr = rng.uniform(0.93, 1.07, (NUM_AUS, 2))  # left/right balance
    jit = rng.normal(0.0, 0.012, (NUM_AUS, 2))  # centre jitter in direction space
    x, y = d[:, 0], d[:, 1]
    sgn = np.where(x >= 0, 1.0, -1.0)
    upper_lip, lower_lip = lip_weights(d)
    D = np.zeros((NUM_AUS, n, 3))

    def sym(k, cx, cy, sx, sy):
        cx, cy = cx + jit[k, 0], cy + jit[k, 1]
        return lr[k, 0] * bump(d, cx, cy, sx, sy) + lr[k, 1] * bump(d, -cx, cy, sx, sy)

    def put(name, w, vec_mm):
        k = AU_INDEX[name]
        D[k] += w[:, None] * np.asarray(vec_mm, dtype=np.float64).reshape(-1, 3) * MM

    k = AU_INDEX
    # --- brows and forehead
    put("AU01", sym(k["AU01"], 0.13, BROW_Y + 0.01, 0.09, 0.11), [0, 7.0, 0.5])
    put("AU02", sym(k["AU02"], 0.46, BROW_Y, 0.12, 0.09), [0, 6.0, 0.0])
    w4 = sym(k["AU04"], 0.25, BROW_Y - 0.02, 0.16, 0.08)
    put("AU04", w4, [0, -5.0, 1.0])
    D[k["AU04"], :, 0] += -sgn * 3.0 * MM * w4  # brows drawn together
    # --- lids (upper lid sits above the eye centre, lower lid below)
    put("AU05", sym(k["AU05"], EYE_X, EYE_Y + 0.065, 0.10, 0.035), [0, 3.0, 0.3])
    put("AU07", sym(k["AU07"], EYE_X, EYE_Y - 0.06, 0.10, 0.04), [0, 3.0, 0.5])
    put("AU07", sym(k["AU07"], EYE_X, EYE_Y + 0.06, 0.10, 0.03), [0, -1.2, 0.0])
    # blink: the eye (sclera/iris Gaussians) collapses onto the lower lid line and recedes, while
    # the lid skin above slides down in front of it, so a closed eye shows skin, not a squashed eye
    hh = _world_y_scale(v, d)
    eye = np.zeros(n)
    for side, cx in enumerate((EYE_X, -EYE_X)):
        e = ((x - cx) / EYE_RX) ** 2 + ((y - EYE_Y) / EYE_RY) ** 2
        eye += smoothstep(1.4, 0.9, e) * smoothstep(0.3, 0.5, d[:, 2]) * lr[k["AU45"], side]
    y_low = hh * (EYE_Y - 0.8 * EYE_RY)
    D[k["AU45"], :, 1] += -np.clip(v[:, 1] - y_low, 0, None) * 0.9 * eye
    D[k["AU45"], :, 2] += -2.5 * MM * eye
    lid = sym(k["AU45"], EYE_X, EYE_Y + EYE_RY + 0.035, 0.11, 0.045) * (1 - np.clip(eye, 0, 1))
    D[k["AU45"], :, 1] += -lid * (1.7 * EYE_RY * hh)  # lid travel = eye height
    D[k["AU45"], :, 2] += lid * 1.5 * MM
    # --- cheeks and nose
    w6 = sym(k["AU06"], 0.38, -0.10, 0.14, 0.10)
    put("AU06", w6, [0, 5.0, 2.0])
    put("AU06", sym(k["AU06"], EYE_X, EYE_Y - 0.07, 0.10, 0.03), [0, 2.0, 0.0])
    put("AU09", sym(k["AU09"], 0.09, NOSE_Y + 0.10, 0.07, 0.10), [0, 4.0, -1.0])
    put("AU09", upper_lip * smoothstep(0.3, 0.0, np.abs(x)), [0, 1.5, 0.0])
    # --- mouth
    put("AU10", upper_lip + 0.5 * bump(d, 0.0, MOUTH_Y + 0.10, 0.16, 0.05), [0, 5.0, 1.0])
    corners = sym(k["AU12"], MOUTH_HALF_WIDTH, MOUTH_Y, 0.09, 0.08)
    put("AU12", corners, [0, 5.5, -4.0])
    D[k["AU12"], :, 0] += sgn * 5.0 * MM * corners
    dimple = sym(k["AU14"], MOUTH_HALF_WIDTH + 0.01, MOUTH_Y, 0.07, 0.07)
    put("AU14", dimple, [0, 0.0, -4.0])
    D[k["AU14"], :, 0] += sgn * 2.0 * MM * dimple
    put("AU15", sym(k["AU15"], MOUTH_HALF_WIDTH - 0.01, MOUTH_Y - 0.02, 0.09, 0.08), [0, -6.0, 0.0])
    put("AU17", bump(d, 0.0, CHIN_Y + jit[k["AU17"], 1], 0.20, 0.12), [0, 5.0, 3.0])
    put("AU17", lower_lip, [0, 3.0, 2.0])
    lips_all = np.clip(upper_lip + lower_lip + 0.5 * bump(d, 0.0, MOUTH_Y, 0.22, 0.07), 0, 1)
    # tightener: lips narrow toward the midline and thin toward the mouth line
    D[k["AU23"], :, 0] += -0.25 * v[:, 0] * lips_all
    D[k["AU23"], :, 1] += -0.3 * (v[:, 1] - _mouth_line_y(v, d)) * lips_all
    # pressor: lips pressed together and back
    put("AU24", upper_lip, [0, -3.0, -1.5])
    put("AU24", lower_lip, [0, 3.0, -1.5])
    # lips part: upper lip up, lower lip down, no jaw
    put("AU25", upper_lip, [0, 2.5, 0.0])
    put("AU25", lower_lip + 0.3 * bump(d, 0.0, MOUTH_Y - 0.12, 0.2, 0.06), [0, -4.0, 0.0])
    # jaw drop: rotate the jaw (everything below the mouth line, fading toward the ears) about a
    # hinge axis near the ears; linearised as one displacement field
    jaw = jaw_weights(d)
    hinge = jaw_hinge(v)
    angle = JAW_ANGLE * rng.uniform(0.9, 1.1)
    rotated = (v - hinge) @ _rotation_x(angle).T + hinge
    D[k["AU26"]] += (rotated - v) * jaw[:, None]
    D *= amp[:, None, None]
    return D.astype(np.float32)


def jaw_weights(d: np.ndarray) -> np.ndarray:
    """(V,) how much each vertex follows the jaw: 1 below the mouth line, sharp at the lips (they
    separate), a broad stretch zone beyond the mouth corners so the cheeks deform smoothly
    instead of tearing along the mouth line, fading toward the ears."""
    x, y = d[:, 0], d[:, 1]
    side = smoothstep(MOUTH_HALF_WIDTH - 0.05, MOUTH_HALF_WIDTH + 0.1, np.abs(x))
    return (smoothstep(MOUTH_Y + 0.005 + 0.12 * side, MOUTH_Y - 0.02 - 0.25 * side, y)
            * smoothstep(-0.55, 0.15, d[:, 2]))


def jaw_hinge(v: np.ndarray) -> np.ndarray:
    """(3,) a point on the jaw's rotation axis (parallel to x), near the ears."""
    return np.array([0.0, float(np.percentile(v[:, 1], 45)), float(v[:, 2].min() * 0.1)])


def _world_y_scale(v: np.ndarray, d: np.ndarray) -> float:
    """The head maps direction-space y linearly to world y: world_y = scale * d_y."""
    ok = np.abs(d[:, 1]) > 0.1
    return float(np.median(v[ok, 1] / d[ok, 1]))


def _mouth_line_y(v: np.ndarray, d: np.ndarray) -> float:
    return _world_y_scale(v, d) * MOUTH_Y


def apply_rig(template_verts: np.ndarray, rig: np.ndarray, aus: np.ndarray) -> np.ndarray:
    """verts (T, V, 3) = template (V, 3) + Σ_k aus (T, 17)[k] · rig (17, V, 3)."""
    assert rig.ndim == 3 and rig.shape[0] == NUM_AUS and rig.shape[2] == 3, rig.shape
    assert aus.ndim == 2 and aus.shape[1] == NUM_AUS, aus.shape
    offsets = np.einsum("tk,kvc->tvc", aus.astype(np.float32), rig)
    return (template_verts[None].astype(np.float32) + offsets).astype(np.float32)
