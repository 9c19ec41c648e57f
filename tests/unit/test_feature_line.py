"""Feature line model and its losses (eq. 19–22)."""

import pytest
import torch

from emodifftalk.config import FeatureLineConfig
from emodifftalk.losses import (
    distance_loss,
    feature_line_regularizer,
    feature_line_step_losses,
    opacity_motion_loss,
    reconstruction_loss,
)
from emodifftalk.models.feature_line import FeatureLine


def test_shapes_and_neutral_face_is_unchanged():
    torch.manual_seed(0)
    fl = FeatureLine(q=30, dim=16, max_delta=0.5)
    assert fl.F.shape == (17, 30, 16)
    e = torch.rand(7, 17)
    delta, f = fl(e, return_features=True)
    assert delta.shape == (7, 30) and f.shape == (7, 30, 16)
    assert torch.all(delta.abs() < 0.5)
    assert torch.equal(fl(torch.zeros(2, 17)), torch.zeros(2, 30))


def test_features_are_au_weighted_combination():
    fl = FeatureLine(q=4, dim=3)
    e = torch.zeros(2, 17)
    e[0, 2] = 1.0
    e[1, 2], e[1, 5] = 0.5, 2.0
    f = fl.features(e)
    assert torch.allclose(f[0], fl.F[2])
    assert torch.allclose(f[1], 0.5 * fl.F[2] + 2.0 * fl.F[5])


def test_gradient_reaches_feature_line():
    fl = FeatureLine(q=5)
    fl(torch.rand(3, 17)).sum().backward()
    assert fl.F.grad is not None and fl.F.grad.abs().sum() > 0


def test_regularizer_values():
    F = torch.zeros(17, 2, 3)
    F[0, 0] = torch.tensor([1.0, -2.0, 0.0])  # |F| sum 3 over 102 entries
    f = torch.zeros(3, 2, 3)
    f[1, 0, 0] = 1.0  # diffs: frame pair 0: 1, pair 1: 1 (squared norms), over 2 pairs x 2 Gaussians
    out = feature_line_regularizer(F, f, lambda_sparse=0.01, lambda_smooth=0.001)
    assert float(out["sparse"]) == pytest.approx(3 / 102)
    assert float(out["smooth"]) == pytest.approx(2 / 4)
    assert float(out["reg"]) == pytest.approx(0.01 * 3 / 102 + 0.001 * 0.5)
    assert float(feature_line_regularizer(F, f[:1], 0.01, 0.001)["smooth"]) == 0.0


def test_opacity_motion_and_distance_values():
    mu = torch.zeros(1, 2, 3)
    mu[0, 0] = torch.tensor([0.003, 0.004, 0.0])  # 5 mm
    mu[0, 1] = torch.tensor([0.0, 0.0, 0.02])  # 20 mm
    alpha = torch.tensor([[0.2, -1.0]])
    # gamma 0.01 m per unit opacity, in opacity units: (0.5 - 0.2)^2 and (2.0 - 1.0)^2 -> mean
    expected = 0.1 * ((0.3 ** 2 + 1.0 ** 2) / 2)
    assert float(opacity_motion_loss(mu, alpha, gamma=0.01, weight=0.1)) == pytest.approx(expected)
    # tau 0.01, divided by tau: min(0.005, .01) / .01 = 0.5 and min(0.02, .01) / .01 = 1 -> mean 0.75
    assert float(distance_loss(mu, tau=0.01, weight=0.2)) == pytest.approx(0.2 * 0.75)


def test_step_losses_plug_in():
    cfg = FeatureLineConfig()
    fl = FeatureLine(q=6)
    e = torch.rand(2, 17)
    delta, f = fl(e, return_features=True)
    mu = torch.randn(2, 6, 3) * 0.003
    img = torch.rand(2, 16, 16, 3)
    target = img.clone()
    out = feature_line_step_losses(mu, delta, img, target, cfg, F=fl.F, f=f)
    for key in ("l1", "ssim", "recon", "opcmotion", "reg", "loss"):
        assert key in out
    assert "dist" not in out  # eq. (22) acts on the motion model's offsets, not on data
    assert float(out["recon"]) == pytest.approx(0.0, abs=1e-6)  # identical images
    total = out["recon"] + out["opcmotion"] + out["reg"]
    assert float(out["loss"].detach()) == pytest.approx(float(total.detach()))
    out["loss"].backward()
    assert fl.F.grad is not None


def test_reconstruction_loss_formula():
    a, b = torch.zeros(1, 12, 12, 3), torch.full((1, 12, 12, 3), 0.5)
    out = reconstruction_loss(a, b, lambda_ssim=0.2)
    assert float(out["l1"]) == pytest.approx(0.5)
    assert float(out["recon"]) == pytest.approx(0.8 * 0.5 + 0.2 * (1 - float(out["ssim"])))
