"""Losses and image metrics of the rig reconstruction (pure functions; weights come from cfg.rig).

Images are (B, 3, H, W) or channels-last (..., H, W, 3), values in [0, 1].
"""

from __future__ import annotations

import torch

from emodifftalk.losses import image


def _to_bchw(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) stays; channels-last (..., H, W, 3) -> (B, 3, H, W)."""
    if x.dim() == 4 and x.shape[1] == 3 and x.shape[-1] != 3:
        return x
    if x.shape[-1] != 3 or x.dim() < 3:
        raise ValueError(f"expected (B, 3, H, W) or (..., H, W, 3) images, got {tuple(x.shape)}")
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (B,) of (B, 3, H, W) or channels-last (..., H, W, 3) images:
    :func:`emodifftalk.losses.image.ssim` (Gaussian window 11, σ 1.5) in this module's layouts."""
    x, y = _to_bchw(a), _to_bchw(b)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ {tuple(x.shape)} vs {tuple(y.shape)}")
    return image.ssim(x, y, window_size=window, sigma=sigma, data_range=data_range, reduction="none")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (B,) of (B, 3, H, W) or channels-last (..., H, W, 3) images:
    :func:`emodifftalk.losses.image.psnr` in this module's layouts."""
    return image.psnr(_to_bchw(a), _to_bchw(b), data_range=data_range, reduction="none")


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, lambda_ssim: float) -> torch.Tensor:
    """Eq. (20): (1 − λ_ssim)·L1 + λ_ssim·(1 − SSIM), averaged over the batch."""
    l1 = (pred - target).abs().mean()
    if lambda_ssim == 0:
        return l1
    return (1 - lambda_ssim) * l1 + lambda_ssim * (1 - ssim(pred, target).mean())


def scale_regularizer(log_scales: torch.Tensor, ref_scale: float) -> torch.Tensor:
    """Mean excess of each Gaussian's largest axis over ``ref_scale``, in units of ``ref_scale``.

    Penalises big blobs, which fit the training views but blur the held-out one; Gaussians
    smaller than ``ref_scale`` are not pushed to shrink further (that opens holes in the
    mesh-bound surface).
    """
    return torch.relu(log_scales.max(dim=-1).values.exp() - ref_scale).mean() / ref_scale


def opacity_regularizer(opacities: torch.Tensor) -> torch.Tensor:
    """Mean opacity (L1 on α ≥ 0): drives unused Gaussians transparent so pruning can recycle them."""
    return opacities.mean()


def inverse_sigmoid(p: torch.Tensor | float) -> torch.Tensor:
    p = torch.as_tensor(p).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


def mean_edge_length(verts: torch.Tensor, faces: torch.Tensor) -> float:
    """Mean length of the template's (directed, duplicated) triangle edges, metres."""
    if faces.numel() == 0:
        return float("nan")
    f = faces.long()
    e = torch.cat([verts[f[:, 1]] - verts[f[:, 0]], verts[f[:, 2]] - verts[f[:, 1]], verts[f[:, 0]] - verts[f[:, 2]]])
    return float(e.norm(dim=-1).mean())

