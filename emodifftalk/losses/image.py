"""Image metrics (torch, differentiable, images in [0, data_range]): the one PSNR and SSIM of the
project, used by evaluation, the rig losses (eq. 20) and the feature-line fit.

* ``psnr``: 10·log10(range² / MSE) per image, mean over images.
* ``ssim``: Wang et al. 2004 with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03,
  computed per channel on the *valid* region (no padding, like the reference implementation), mean
  over channels, pixels and images. Also used by the rig and feature-line losses (eq. 20).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(img1: torch.Tensor, img2: torch.Tensor, data_range: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB. (N, ...) batches: per image, then mean (``reduction="none"``:
    (N,) per image); otherwise one image."""
    assert img1.shape == img2.shape, f"images differ in shape: {tuple(img1.shape)} vs {tuple(img2.shape)}"
    diff = (img1.float() - img2.float()).square()
    mse = diff.flatten(1).mean(1) if img1.ndim == 4 else diff.mean()[None]
    per_image = 10.0 * torch.log10(data_range ** 2 / mse.clamp(min=1e-12))
    if reduction == "none":
        return per_image
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return per_image.mean()


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> torch.Tensor:
    """(size,) normalised 1-D Gaussian; the SSIM window is its outer product, applied separably."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma ** 2))
    return g / g.sum()


def ssim(img1: torch.Tensor, img2: torch.Tensor, *, window_size: int = 11, sigma: float = 1.5,
         data_range: float = 1.0, channel_last: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Structural similarity (Wang et al. 2004; K1 0.01, K2 0.03), differentiable. Images
    (N, C, H, W) or (C, H, W) (``channel_last=True``: (N, H, W, C) or (H, W, C), gsplat's layout).

    Statistics over the *valid* region (no padding), as in the reference MATLAB code and
    pytorch-msssim; channels are averaged. The Gaussian window is applied as two 1-D passes
    (2·11 taps per pixel instead of 121). ``reduction="mean"`` → scalar; ``"none"`` → (N,) per
    image. H and W must be >= window_size. The one SSIM of the project: the rig loss uses it too.
    """
    assert img1.shape == img2.shape, f"images differ in shape: {tuple(img1.shape)} vs {tuple(img2.shape)}"
    assert img1.ndim in (3, 4), f"images must be (N, C, H, W) or (C, H, W), got {tuple(img1.shape)}"
    x, y = img1.float(), img2.float()
    if x.ndim == 3:
        x, y = x[None], y[None]
    if channel_last:
        x, y = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)
    _, c, h, w = x.shape
    if h < window_size or w < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size}, got {h}x{w}")
    g = gaussian_window(window_size, sigma, x.device, x.dtype)
    kx = g.view(1, 1, 1, window_size).expand(c, 1, 1, window_size)
    ky = g.view(1, 1, window_size, 1).expand(c, 1, window_size, 1)

    def filt(z):
        return F.conv2d(F.conv2d(z, kx, groups=c), ky, groups=c)

    mu1, mu2 = filt(x), filt(y)
    s11 = filt(x * x) - mu1.square()
    s22 = filt(y * y) - mu2.square()
    s12 = filt(x * y) - mu1 * mu2
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1.square() + mu2.square() + c1) * (s11 + s22 + c2))
    per_image = m.flatten(1).mean(1)
    if reduction == "none":
        return per_image
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return per_image.mean()
