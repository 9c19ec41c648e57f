import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d

from emodifftalk.rig.losses import (
    mean_edge_length,
    psnr,
    reconstruction_loss,
    scale_regularizer,
    ssim,
)


def _ssim_numpy(a, b, size=11, sigma=1.5):
    """Independent SSIM: separable scipy correlation over the valid region (channels averaged)."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    r = size // 2

    def blur(im):
        out = correlate1d(correlate1d(im, g, axis=0, mode="constant"), g, axis=1, mode="constant")
        return out[r:-r, r:-r]

    vals = []
    for c in range(a.shape[-1]):
        p, q = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        mp, mq = blur(p), blur(q)
        spp, sqq, spq = blur(p * p) - mp ** 2, blur(q * q) - mq ** 2, blur(p * q) - mp * mq
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        vals.append(((2 * mp * mq + c1) * (2 * spq + c2)) / ((mp ** 2 + mq ** 2 + c1) * (spp + sqq + c2)))
    return float(np.mean(vals))


def test_ssim_matches_independent_numpy_implementation():
    rng = np.random.default_rng(0)
    a = rng.random((24, 30, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    got = ssim(torch.from_numpy(a)[None], torch.from_numpy(b)[None])
    assert got.shape == (1,)
    assert got.item() == pytest.approx(_ssim_numpy(a, b), abs=1e-5)
    # channels-first input gives the same number
    got_cf = ssim(torch.from_numpy(a).permute(2, 0, 1)[None], torch.from_numpy(b).permute(2, 0, 1)[None])
    assert got_cf.item() == pytest.approx(got.item(), abs=1e-6)


def test_ssim_identity_and_psnr_golden():
    a = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-6)
    b = a.clone()
    b[0] = a[0] + 0.1  # every pixel off by exactly 0.1
    p = psnr(a, b)
    assert p[0].item() == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    assert p[1].item() > 100  # identical (mse clamped)


def test_reconstruction_loss_mixes_l1_and_ssim():
    a = torch.rand(1, 20, 20, 3, generator=torch.Generator().manual_seed(2))
    b = torch.rand(1, 20, 20, 3, generator=torch.Generator().manual_seed(3))
    l1 = (a - b).abs().mean()
    assert reconstruction_loss(a, b, 0.0).item() == pytest.approx(l1.item())
    want = 0.8 * l1 + 0.2 * (1 - ssim(a, b).mean())
    assert reconstruction_loss(a, b, 0.2).item() == pytest.approx(want.item(), rel=1e-6)
    # gradients flow
    x = a.clone().requires_grad_()
    reconstruction_loss(x, b, 0.2).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_window_and_regularisers():
    log_scales = torch.log(torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.1, 0.1]]))
    assert scale_regularizer(log_scales, 0.1).item() == pytest.approx((0.2 + 0.4) / 2 / 0.1)
    assert scale_regularizer(log_scales, 1.0).item() == 0.0  # small Gaussians are not pushed to shrink
    verts = torch.tensor([[0.0, 0, 0], [3, 0, 0], [0, 4, 0]])
    assert mean_edge_length(verts, torch.tensor([[0, 1, 2]])) == pytest.approx(4.0)
