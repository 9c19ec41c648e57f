"""NoiseSchedule: table properties and forward-process statistics."""

import pytest
import torch

from emodifftalk.diffusion import NoiseSchedule


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alphas_cumprod_monotone_and_bounded(kind):
    s = NoiseSchedule(200, kind)
    ac = s.alphas_cumprod
    assert ac.shape == (200,)
    assert torch.all(ac[1:] < ac[:-1]), "alphas_cumprod must strictly decrease"
    assert 0.9 < float(ac[0]) < 1.0
    assert float(ac[-1]) < 0.05, f"chain should end near pure noise, got alpha_bar={float(ac[-1])}"
    assert torch.all((s.betas > 0) & (s.betas < 1))
    # alphas_cumprod_prev is alphas_cumprod shifted by one with a leading 1
    assert float(s.alphas_cumprod_prev[0]) == 1.0
    assert torch.allclose(s.alphas_cumprod_prev[1:], ac[:-1])


def test_linear_betas_match_ddpm_at_1000_steps():
    s = NoiseSchedule(1000, "linear", 1e-4, 0.02)
    assert torch.allclose(s.betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    assert torch.allclose(s.alphas_cumprod, expected)


def test_q_sample_statistics():
    s = NoiseSchedule(100, "cosine")
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4, 20000), 2.0)
    t = torch.tensor([0, 30, 60, 99])
    xt = s.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    ab = s.alphas_cumprod[t].float()
    assert torch.allclose(xt.mean(1), 2.0 * ab.sqrt(), atol=0.03)
    assert torch.allclose(xt.std(1), (1 - ab).sqrt(), atol=0.03)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1}|x_t,x0) mean/var from the closed forms equal the product-of-Gaussians result."""
    s = NoiseSchedule(50, "linear", 1e-3, 0.05)
    t = torch.tensor([10])
    x0, xt = torch.tensor([[0.7]]), torch.tensor([[-0.3]])
    mean, var, logvar = s.posterior_mean_variance(x0, xt, t)
    ab_prev, a, b = s.alphas_cumprod[9], s.alphas[10], s.betas[10]
    # prior x_{t-1} ~ N(sqrt(ab_prev) x0, 1-ab_prev); likelihood x_t ~ N(sqrt(a) x_{t-1}, b)
    prec = 1 / (1 - ab_prev) + a / b
    m = (ab_prev.sqrt() * 0.7 / (1 - ab_prev) + a.sqrt() * -0.3 / b) / prec
    assert float(var) == pytest.approx(float(1 / prec), rel=1e-6)
    assert float(mean) == pytest.approx(float(m), rel=1e-6)
    assert float(logvar) == pytest.approx(float(torch.log(1 / prec)), rel=1e-6)


def test_eps_from_x0_inverts_q_sample():
    s = NoiseSchedule(100)
    x0, eps = torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    t = torch.tensor([1, 50, 99])
    assert torch.allclose(s.eps_from_x0(s.q_sample(x0, t, eps), t, x0), eps, atol=1e-4)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule(10, "quadratic")
    s = NoiseSchedule(10)
    with pytest.raises(ValueError, match="timesteps"):
        s.q_sample(torch.zeros(1, 2), torch.tensor([10]), torch.zeros(1, 2))
