"""Canonical appearance via a triplane + MLP (paper supp. §1, eq. 3). Architecture only.

``c = M(F_xy(x, y) ⊕ F_xz(x, z) ⊕ F_yz(y, z))``: each point samples three axis-aligned feature
planes bilinearly (``F.grid_sample``, ``align_corners=False``) at its coordinates normalised to
[-1, 1] by a bounding box, the three features are concatenated and an MLP decodes RGB (sigmoid).
Used only during reconstruction: afterwards the colours are baked per Gaussian (eq. 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bbox_from_points(points: torch.Tensor, margin: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-aligned box of ``points`` (N, 3) grown by ``margin`` × extent on every side.

    The margin covers the free Gaussians (hair, shoulders) around the template; points beyond
    it sample the planes' border (``padding_mode="border"``).
    """
    lo, hi = points.min(0).values, points.max(0).values
    pad = (hi - lo).clamp_min(1e-6) * margin
    return lo - pad, hi + pad


class Triplane(nn.Module):
    """Three feature planes (XY, XZ, YZ), each (C, R, R); ``forward`` samples (N, 3C)."""

    PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # XY, XZ, YZ: (grid x -> width, grid y -> height)

    def __init__(self, resolution: int, channels: int, init_std: float = 0.1):
        super().__init__()
        self.resolution, self.channels = resolution, channels
        self.planes = nn.Parameter(torch.randn(3, channels, resolution, resolution) * init_std)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        """``xyz`` (N, 3) normalised to [-1, 1] -> features (N, 3·C), concatenated XY ⊕ XZ ⊕ YZ."""
        assert xyz.dim() == 2 and xyz.shape[1] == 3, f"xyz must be (N, 3), got {tuple(xyz.shape)}"
        grid = torch.stack([xyz[:, list(ax)] for ax in self.PLANE_AXES])  # (3, N, 2)
        feats = F.grid_sample(self.planes, grid.unsqueeze(1).to(self.planes.dtype), mode="bilinear",
                              padding_mode="border", align_corners=False)  # (3, C, 1, N)
        return feats[:, :, 0].permute(2, 0, 1).reshape(xyz.shape[0], 3 * self.channels)


class TriplaneColorField(nn.Module):
    """World position (N, 3) -> RGB (N, 3) in (0, 1): bbox normalisation, triplane, MLP decoder."""

    def __init__(self, resolution: int, channels: int, hidden: int,
                 bbox_min: torch.Tensor, bbox_max: torch.Tensor):
        super().__init__()
        self.register_buffer("bbox_min", torch.as_tensor(bbox_min, dtype=torch.float32).reshape(3).clone())
        self.register_buffer("bbox_max", torch.as_tensor(bbox_max, dtype=torch.float32).reshape(3).clone())
        self.triplane = Triplane(resolution, channels)
        self.mlp = nn.Sequential(
            nn.Linear(3 * channels, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 3),
        )

    def normalise(self, points: torch.Tensor) -> torch.Tensor:
        """World coordinates -> [-1, 1] inside the bounding box."""
        return (points - self.bbox_min) / (self.bbox_max - self.bbox_min) * 2.0 - 1.0

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        assert points.dim() == 2 and points.shape[1] == 3, f"points must be (N, 3), got {tuple(points.shape)}"
        return torch.sigmoid(self.mlp(self.triplane(self.normalise(points))))
