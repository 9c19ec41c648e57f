"""Rig frames → the arrays viser's Gaussian splat node takes (centers, covariances, RGB, opacity).

viser stores covariances as float16: a head in metres has covariances around 1e-6 m², below
float16's normal range, so the viewer works in a **view frame**: ``(x − center) · scale`` with the
head about ``VIEW_EXTENT`` units across (same shape, covariances × scale²).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emodifftalk.render.projection import quat_to_rotmat
from emodifftalk.rig.deform import deform
from emodifftalk.rig.gaussians import GaussianRig, Gaussians

VIEW_EXTENT = 2.0  # head size in view units


@dataclass(frozen=True)
class ViewFrame:
    """World (rig metres) → view units: ``(x − center) · scale``."""

    center: np.ndarray  # (3,)
    scale: float

    @classmethod
    def for_rig(cls, rig: GaussianRig) -> ViewFrame:
        v = rig.canonical_verts.detach().cpu().numpy().astype(np.float64)
        extent = float((v.max(0) - v.min(0)).max())
        return cls(center=(v.max(0) + v.min(0)) / 2, scale=VIEW_EXTENT / max(extent, 1e-9))

    def point(self, p) -> np.ndarray:
        return (np.asarray(p, dtype=np.float64) - self.center) * self.scale


def splat_arrays(g: Gaussians, view: ViewFrame) -> dict[str, np.ndarray]:
    """One moment of ``Gaussians`` → {centers (N,3), covariances (N,3,3), rgbs (N,3), opacities (N,1)}."""
    if g.num_frames is not None:
        raise ValueError("splat_arrays needs a single moment; call Gaussians.frame(t) first")
    rot = quat_to_rotmat(g.quats.detach().float())  # (N, 3, 3)
    s2 = (g.scales.detach().float() * view.scale) ** 2  # (N, 3)
    cov = (rot * s2[:, None, :]) @ rot.transpose(-1, -2)  # R diag(s²) Rᵀ
    centers = (g.means.detach().double().cpu().numpy() - view.center) * view.scale
    return {
        "centers": centers.astype(np.float32),
        "covariances": cov.cpu().numpy().astype(np.float32),
        "rgbs": g.colors.detach().float().clamp(0, 1).cpu().numpy(),
        "opacities": g.opacities.detach().float().clamp(0, 1).cpu().numpy().reshape(-1, 1),
    }


@torch.no_grad()
def frame_gaussians(rig: GaussianRig, feature_line, aus: np.ndarray, offsets: np.ndarray, t: int) -> Gaussians:
    """Gaussians of frame ``t``: bound points on template + offsets[t], opacity from the feature line."""
    verts = rig.canonical_verts + torch.from_numpy(np.asarray(offsets[t], dtype=np.float32))
    delta = feature_line(torch.from_numpy(np.asarray(aus[t:t + 1], dtype=np.float32)))[0] \
        if feature_line is not None else None
    return deform(rig, verts, delta)
