"""EWA projection of 3D Gaussians to screen space, with gsplat's conventions (pure torch).

Mirrors ``gsplat.cuda._torch_impl._fully_fused_projection`` and the CUDA kernel
``ProjectionEWA3DGSFused.cu`` of gsplat 1.5: pinhole Jacobian with the camera-space
x/z, y/z clamped to 1.3x the field of view, ``cov2d + eps2d * I``, ``conic = inverse``,
opacity-aware tight box ``radius_{x,y} = ceil(extend * sqrt(cov2d_{xx,yy}))`` with
``extend = min(3.33, sqrt(2 ln(255 * opacity)))``, and culling by near/far plane, ``det <= 0``,
opacity < 1/255 and boxes that miss the image.

Because ``extend`` is the distance at which ``opacity * exp(-d^2/2)`` falls to 1/255, every
pixel where a Gaussian's alpha reaches the 1/255 threshold lies inside its box: culling by the
box never changes the rendered image, only the work done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD: smaller alphas are skipped
MAX_EXTEND = 3.33  # gsplat's largest box half-size, in standard deviations


@dataclass
class Projection:
    """Per-camera screen-space Gaussians. ``C`` cameras, ``N`` Gaussians."""

    means2d: Tensor  # (C, N, 2) pixel coordinates of the centres
    conics: Tensor  # (C, N, 3) upper triangle (a, b, c) of inverse(cov2d)
    cov2d: Tensor  # (C, N, 2, 2) projected covariance including eps2d
    depths: Tensor  # (C, N) camera-space z
    radii_xy: Tensor  # (C, N, 2) int32 box half-sizes in pixels, 0 = culled
    visible: Tensor  # (C, N) bool, radii_xy > 0


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(..., 4) wxyz quaternions (normalised here) -> (..., 3, 3) rotation matrices."""
    w, x, y, z = F.normalize(quats, p=2, dim=-1).unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return rot.reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """(N, 4) wxyz quats + (N, 3) linear scales -> (N, 3, 3) world covariance R S S^T R^T."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # (N, 3)
    quats: Tensor,  # (N, 4)
    scales: Tensor,  # (N, 3)
    opacities: Tensor | None,  # (N,) or None (then the box uses extend = 3.33)
    viewmats: Tensor,  # (C, 4, 4)
    Ks: Tensor,  # (C, 3, 3)
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
) -> Projection:
    """Project Gaussians into ``C`` pinhole cameras (differentiable w.r.t. means/quats/scales)."""
    C, N = viewmats.shape[0], means.shape[0]
    rot_v = viewmats[:, :3, :3]  # (C, 3, 3)
    means_c = means @ rot_v.transpose(1, 2) + viewmats[:, None, :3, 3]  # (C, N, 3)
    # cov_c = (Rv R S)(Rv R S)^T: rotate the factor M = R S with one GEMM per camera, no
    # per-Gaussian 3x3 matmuls (those are slow on CPU)
    factor = quat_to_rotmat(quats) * scales[:, None, :]  # (N, 3, 3)
    factor_c = (rot_v @ factor.permute(1, 0, 2).reshape(3, N * 3)).reshape(C, 3, N, 3)  # [c, row, n, col]

    depths = means_c[..., 2]
    in_depth = (depths > near_plane) & (depths < far_plane)
    # Culled Gaussians get a harmless depth so that 1/z never puts NaN into the gradients.
    z = torch.where(in_depth, depths, torch.ones_like(depths))
    x, y = means_c[..., 0], means_c[..., 1]

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # (C, 1)
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(torch.maximum(x / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -lim_y_neg), lim_y_pos)

    # EWA: cov2d = J cov_c J^T with J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]],
    # i.e. the Gram matrix of the two rows of J factor_c
    rz = 1.0 / z
    row0 = (fx * rz)[..., None] * factor_c[:, 0] - (fx * tx * rz * rz)[..., None] * factor_c[:, 2]  # (C, N, 3)
    row1 = (fy * rz)[..., None] * factor_c[:, 1] - (fy * ty * rz * rz)[..., None] * factor_c[:, 2]
    c00 = (row0 * row0).sum(-1) + eps2d
    c01 = (row0 * row1).sum(-1)
    c11 = (row1 * row1).sum(-1) + eps2d
    cov2d = torch.stack([c00, c01, c01, c11], dim=-1).reshape(C, N, 2, 2)

    # K[:2, :3] @ means_c / z, like gsplat's torch reference (skew included)
    means2d = torch.stack([x, y, z], dim=-1) @ Ks[:, :2, :3].transpose(1, 2) * rz[..., None]

    det = c00 * c11 - c01 * c01
    det_safe = det.clamp(min=1e-10)
    conics = torch.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], dim=-1)

    with torch.no_grad():
        valid = in_depth & (det > 0)
        if opacities is None:
            extend = torch.full_like(depths, MAX_EXTEND)
        else:
            op = opacities.detach()[None].expand_as(depths)
            valid = valid & (op >= ALPHA_THRESHOLD)
            extend = torch.sqrt(2.0 * torch.log(op.clamp(min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
            extend = extend.clamp(max=MAX_EXTEND)
        radius = torch.stack(
            [torch.ceil(extend * c00.detach().clamp(min=0).sqrt()),
             torch.ceil(extend * c11.detach().clamp(min=0).sqrt())], dim=-1)
        m2 = means2d.detach()
        inside = ((m2[..., 0] + radius[..., 0] > 0) & (m2[..., 0] - radius[..., 0] < width)
                  & (m2[..., 1] + radius[..., 1] > 0) & (m2[..., 1] - radius[..., 1] < height))
        visible = valid & inside
        radii_xy = torch.where(visible[..., None], radius, torch.zeros_like(radius)).to(torch.int32)
    return Projection(means2d=means2d, conics=conics, cov2d=cov2d, depths=depths,
                      radii_xy=radii_xy, visible=visible)
