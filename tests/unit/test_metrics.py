"""Metrics (DESIGN.md definitions) on hand-computed golden cases."""

import numpy as np
import pytest
import torch

from emodifftalk.eval.metrics import (
    fdd,
    fdd_abs,
    fdd_abs_per_sequence,
    lagged_pearson,
    lve_mm,
    lve_sq,
    mod,
    motion_metrics,
    mouth_opening,
    upper_face_dynamics,
)
from emodifftalk.losses.image import gaussian_window, psnr, ssim


def seqs():
    """T=2, V=3 (metres). Lip vertices 0, 1; GT zero."""
    gt = np.zeros((2, 3, 3))
    pred = np.zeros((2, 3, 3))
    pred[0, 0] = [0.003, 0.004, 0.0]  # 5 mm
    pred[0, 1] = [0.001, 0.0, 0.0]  # 1 mm
    pred[1, 1] = [0.0, 0.0, 0.002]  # 2 mm
    pred[1, 2] = [0.05, 0.0, 0.0]  # not a lip vertex
    return pred, gt


def test_lve_golden():
    pred, gt = seqs()
    # per-frame max over lips of squared distance: 25e-6, 4e-6 -> mean 14.5e-6
    assert lve_sq(pred, gt, [0, 1]) == pytest.approx(14.5e-6)
    # distances: 5 mm, 2 mm -> 3.5 mm
    assert lve_mm(pred, gt, [0, 1]) == pytest.approx(3.5)
    # a list of sequences pools frames: add a 1-frame sequence with error 8 mm
    p2, g2 = np.zeros((1, 3, 3)), np.zeros((1, 3, 3))
    p2[0, 0, 1] = 0.008
    assert lve_mm([pred, p2], [gt, g2], [0, 1]) == pytest.approx((5 + 2 + 8) / 3)
    assert lve_sq(torch.tensor(pred), torch.tensor(gt), [0, 1]) == pytest.approx(14.5e-6)


def test_mod_golden():
    gt = np.zeros((2, 3, 3))
    gt[:, 1, 1] = [-0.010, -0.020]  # gt opening 10 mm, 20 mm
    pred = np.zeros((2, 3, 3))
    pred[:, 1, 1] = [-0.012, -0.015]  # 12 mm, 15 mm
    pred[:, 2, 1] = 1.0  # non-lip vertex ignored
    np.testing.assert_allclose(mouth_opening(gt, [0, 1]), [0.010, 0.020])
    assert mod(pred, gt, [0, 1]) == pytest.approx((2 + 5) / 2)


def test_fdd_golden():
    tpl = np.zeros((2, 3))
    gt = np.zeros((2, 2, 3))
    gt[:, 0, 0] = [0.0, 0.2]  # ||.||^2 over time: [0, 0.04] -> std 0.02
    gt[:, 1, 1] = [0.1, 0.1]  # constant -> std 0
    pred = np.zeros((2, 2, 3))
    pred[:, 0, 0] = [0.0, 0.1]  # [0, 0.01] -> std 0.005
    assert upper_face_dynamics(gt, tpl, [0, 1]) == pytest.approx(0.01)
    assert upper_face_dynamics(pred, tpl, [0, 1]) == pytest.approx(0.0025)
    assert fdd(pred, gt, tpl, [0, 1]) == pytest.approx(0.0075)
    # over two sequences with opposite signs: mean of (+0.0075, -0.0075) is 0; per-sequence |.| is not
    assert fdd([pred, gt], [gt, pred], [tpl, tpl], [0, 1]) == pytest.approx(0.0)
    assert fdd_abs([pred, gt], [gt, pred], tpl, [0, 1]) == pytest.approx(0.0)
    assert fdd_abs_per_sequence([pred, gt], [gt, pred], tpl, [0, 1]) == pytest.approx(0.0075)
    assert fdd_abs(gt, pred, tpl, [0, 1]) == pytest.approx(0.0075)


def test_motion_metrics_bundle_matches_single_functions():
    pred, gt = seqs()
    tpl = np.zeros((3, 3))
    out = motion_metrics([pred], [gt], [tpl], [[0, 1]], [[2]])
    assert out["lve_mm"] == pytest.approx(lve_mm(pred, gt, [0, 1]))
    assert out["lve_sq"] == pytest.approx(lve_sq(pred, gt, [0, 1]))
    assert out["mod"] == pytest.approx(mod(pred, gt, [0, 1]))
    assert out["fdd"] == pytest.approx(fdd(pred, gt, tpl, [2]))
    assert out["n_frames"] == 2 and out["n_sequences"] == 1
    assert out["lve_mm_seq_std"] == 0 and out["lve_mm_seq_min"] == out["lve_mm_seq_max"] == out["lve_mm"]
    two = motion_metrics([pred, gt], [gt, gt], [tpl, tpl], [[0, 1]] * 2, [[2]] * 2)  # errors e and 0
    e = lve_mm(pred, gt, [0, 1])
    assert two["lve_mm_seq_std"] == pytest.approx(e / 2) and two["lve_mm_seq_min"] == 0
    assert two["lve_mm_seq_max"] == pytest.approx(e)


def test_metric_input_errors():
    pred, gt = seqs()
    with pytest.raises(ValueError, match="lip"):
        lve_mm(pred, gt, [5])
    with pytest.raises(ValueError, match="differ"):
        lve_mm(pred[:1], gt, [0])


def test_psnr_golden():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.1)  # mse 0.01 -> 20 dB
    assert float(psnr(a, b)) == pytest.approx(20.0, abs=1e-4)
    b[1] = 0.01  # second image mse 1e-4 -> 40 dB; mean of per-image PSNR = 30
    assert float(psnr(a, b)) == pytest.approx(30.0, abs=1e-4)


def test_ssim_golden():
    g = gaussian_window(11, 1.5)
    assert float(g.sum()) == pytest.approx(1.0)
    assert g.shape == (11,) and float(g[5]) == float(g.max())
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    # constant images a, b: sigma = 0 -> SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.6, 0.01 ** 2
    s = ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b))
    assert float(s) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)
    # channel-last input gives the same value; noise lowers SSIM; per-image reduction
    y = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert float(ssim(x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1), channel_last=True)) == pytest.approx(
        float(ssim(x, y)), abs=1e-6)
    assert float(ssim(x, y)) < 0.9
    assert ssim(torch.cat([x, x]), torch.cat([x, y]), reduction="none").shape == (2,)


def test_ssim_is_differentiable_and_checks_size():
    x = torch.rand(1, 1, 12, 12, requires_grad=True)
    (1 - ssim(x, torch.rand(1, 1, 12, 12))).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="at least"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_lagged_pearson_finds_the_shift_of_a_delayed_copy():
    a = np.random.default_rng(0).normal(size=200)
    b = np.concatenate([np.zeros(3), a[:-3]])  # b follows a by 3 frames
    assert lagged_pearson(a, b, 3) == pytest.approx(1.0)
    assert lagged_pearson(a, b, 0) < 0.3
    assert lagged_pearson(b, a, -3) == pytest.approx(1.0)
