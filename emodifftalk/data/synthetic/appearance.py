"""Expression-dependent appearance: per-vertex colour changes that follow the AUs.

In v1 the albedo never changed with expression, so a feature line had nothing to learn beyond
shading. Here wrinkles and folds darken the skin where real faces crease:

* forehead wrinkles (horizontal creases) with AU01/AU02
* nasolabial folds (nose wing to mouth corner) with AU10/AU12
* crow's feet (fan of creases at the outer eye corners) with AU06
* a darker inner lip band, the visible mouth interior, as the lips part (AU25/AU26)
* darker, slightly reddish eyelid skin over a closing eye (AU45)

Masks live in direction space (``head.py``), so they sit on the same anatomy for every identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emodifftalk.au import AU_INDEX

from .head import BROW_Y, EYE_RX, EYE_RY, EYE_X, EYE_Y, MOUTH_HALF_WIDTH, MOUTH_Y, bump, smoothstep


@dataclass
class ExpressionMasks:
    """(V,) crease masks in [0, 1] and the AUs that deepen each, with their darkening depth."""

    masks: np.ndarray  # (M, V)
    drivers: tuple[tuple[tuple[str, float], ...], ...]  # per mask: ((AU, weight), ...)
    depth: np.ndarray  # (M,) blend weight toward the crease colour at full activation
    tint: np.ndarray  # (M, 3) crease colour as a multiplier of the albedo


def expression_masks(dirs: np.ndarray) -> ExpressionMasks:
    d = np.asarray(dirs, dtype=np.float64)
    x, y = d[:, 0], d[:, 1]
    front = smoothstep(0.35, 0.6, d[:, 2])
    # forehead: three horizontal creases between the brows and the hairline
    band = smoothstep(BROW_Y + 0.04, BROW_Y + 0.10, y) * smoothstep(0.55, 0.45, y)
    forehead = band * (0.5 + 0.5 * np.cos(2 * np.pi * (y - BROW_Y) / 0.07)) ** 2 * smoothstep(0.45, 0.2, np.abs(x))
    # nasolabial folds: a curve from the nose wing (±0.15, -0.2) to past the mouth corner
    fold = np.zeros(len(d))
    for s in (1.0, -1.0):
        t = np.clip((-0.2 - y) / 0.3, 0, 1)  # 0 at the nose wing, 1 below the mouth corner
        cx = s * (0.15 + 0.17 * t)
        fold += np.exp(-0.5 * ((x - cx) / 0.025) ** 2) * smoothstep(-0.15, -0.22, y) * smoothstep(-0.58, -0.5, y)
    # crow's feet: a fan of lines at the outer eye corners
    crow = np.zeros(len(d))
    for s in (1.0, -1.0):
        ex, ey = x - s * (EYE_X + EYE_RX + 0.02), y - EYE_Y
        r, ang = np.hypot(ex, ey), np.arctan2(ey, s * ex)
        crow += (np.exp(-0.5 * (r / 0.08) ** 2) * smoothstep(-0.03, 0.0, s * ex)
                 * (0.4 + 0.6 * (0.5 + 0.5 * np.cos(ang * 6))))
    # inner lip band: the lips' wet inner edge and the dark mouth interior behind it
    inner = (np.exp(-0.5 * ((y - MOUTH_Y) / 0.02) ** 2)
             * smoothstep(MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH - 0.05, np.abs(x)))
    lids = sum(bump(d, s * EYE_X, EYE_Y + EYE_RY + 0.03, EYE_RX, 0.05) for s in (1.0, -1.0))
    masks = np.stack([forehead, fold, crow, inner, lids]) * front[None]
    drivers = ((("AU01", 0.6), ("AU02", 0.4)), (("AU10", 0.5), ("AU12", 0.6)), (("AU06", 1.0),),
               (("AU25", 0.6), ("AU26", 0.6)), (("AU45", 1.0),))
    depth = np.array([0.9, 0.9, 0.9, 0.8, 0.6])
    tint = np.array([[0.6, 0.52, 0.5], [0.55, 0.45, 0.42], [0.6, 0.52, 0.5], [0.3, 0.08, 0.08],
                     [0.7, 0.55, 0.55]])
    return ExpressionMasks(masks=np.clip(masks, 0, 1).astype(np.float32), drivers=drivers,
                           depth=depth, tint=tint)


def expression_tint(m: ExpressionMasks, aus: np.ndarray) -> np.ndarray:
    """(V, 3) albedo multiplier for one frame's AU activations (17,)."""
    out = np.ones((m.masks.shape[1], 3))
    for k, drivers in enumerate(m.drivers):
        level = min(1.0, sum(w * float(aus[AU_INDEX[a]]) for a, w in drivers))
        if level <= 0:
            continue
        w = (m.depth[k] * level * m.masks[k])[:, None]
        out *= 1.0 - w * (1.0 - m.tint[k][None])
    return out.astype(np.float32)
