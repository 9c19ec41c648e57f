"""DDPM/DDIM samplers: oracle recovery, shapes, guidance, inpainting, reproducibility."""

import pytest
import torch

from emodifftalk.diffusion import NoiseSchedule, ddim_sample, ddim_timesteps, ddpm_sample


def oracle(x0):
    calls = []

    def fn(x, t, cond, drop):
        calls.append((int(t[0]), drop))
        return x0.expand_as(x).clone()
    return fn, calls


def test_ddim_timesteps():
    ts = ddim_timesteps(1000, 10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10
    assert torch.all(ts[1:] < ts[:-1])
    assert ddim_timesteps(5, 5).tolist() == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_ddim_oracle_recovers_x0_exactly(steps):
    s = NoiseSchedule(50, "cosine")
    x0 = torch.randn(2, 6, 4, 3, generator=torch.Generator().manual_seed(1))
    fn, calls = oracle(x0)
    out = ddim_sample(fn, x0.shape, s, steps, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out, x0)
    assert len(calls) == steps


def test_ddim_eta1_oracle_also_recovers():
    s = NoiseSchedule(30, "linear")
    x0 = torch.randn(1, 4, 5, 3)
    fn, _ = oracle(x0)
    out = ddim_sample(fn, x0.shape, s, 10, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0)


def test_ddpm_shapes_and_call_count():
    s = NoiseSchedule(20)
    x0 = torch.randn(3, 5, 7, 3)
    fn, calls = oracle(x0)
    out = ddpm_sample(fn, x0.shape, s, generator=torch.Generator().manual_seed(0))
    assert out.shape == x0.shape
    assert [c[0] for c in calls] == list(range(19, -1, -1))
    assert torch.allclose(out, x0)  # the last step returns the (oracle) x0 prediction


def test_ddpm_chain_is_gaussian_posterior_sampling():
    """With an oracle, x_{t} along the chain stays distributed as q(x_t | x0)."""
    s = NoiseSchedule(40, "cosine")
    x0 = torch.full((1, 40000), 1.5)
    seen = {}

    def fn(x, t, cond, drop):
        seen[int(t[0])] = x.clone()
        return x0.clone()
    ddpm_sample(fn, x0.shape, s, generator=torch.Generator().manual_seed(0))
    for t in (35, 20, 5):
        ab = float(s.alphas_cumprod[t])
        assert float(seen[t].mean()) == pytest.approx(1.5 * ab ** 0.5, abs=0.03)
        assert float(seen[t].std()) == pytest.approx((1 - ab) ** 0.5, abs=0.03)


def test_init_noise_gives_reproducible_ddim_and_is_used():
    s = NoiseSchedule(100)
    x_t = []

    def fn(x, t, cond, drop):
        x_t.append(x.clone())
        return 0.5 * x
    noise = torch.randn(1, 3, 2, 3)
    a = ddim_sample(fn, noise.shape, s, 5, init_noise=noise)
    b = ddim_sample(fn, noise.shape, s, 5, init_noise=noise)
    assert torch.equal(a, b)
    assert torch.equal(x_t[0], noise)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(ddpm_sample(fn, (1, 2, 2, 3), NoiseSchedule(10), generator=g1),
                       ddpm_sample(fn, (1, 2, 2, 3), NoiseSchedule(10), generator=g2))


def test_classifier_free_guidance_combination():
    s = NoiseSchedule(10)
    cond_val, uncond_val = torch.full((1, 2, 3, 3), 2.0), torch.full((1, 2, 3, 3), -1.0)
    seen = []

    def fn(x, t, cond, drop):
        seen.append(drop)
        assert cond == "c"
        return (uncond_val if drop else cond_val).clone()
    out = ddim_sample(fn, cond_val.shape, s, 1, cond="c", guidance_scale=3.0, init_noise=torch.zeros(1, 2, 3, 3))
    # x0 = u + s (c - u) = -1 + 3 * 3 = 8
    assert torch.allclose(out, torch.full_like(out, 8.0))
    assert sorted(seen) == [False, True]
    seen.clear()
    ddim_sample(fn, cond_val.shape, s, 2, cond="c", guidance_scale=1.0)
    assert seen == [False, False], "scale 1 must not run the unconditional branch"


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_inpainting_keeps_context_and_feeds_noised_context(sampler):
    s = NoiseSchedule(30)
    known = torch.randn(2, 4, 5, 3)
    target_other = torch.zeros(2, 8, 5, 3)
    inputs = []

    def fn(x, t, cond, drop):
        inputs.append((int(t[0]), x.clone()))
        return target_other.clone()  # a model that knows nothing about the context
    g = torch.Generator().manual_seed(0)
    if sampler == "ddim":
        out = ddim_sample(fn, (2, 8, 5, 3), s, 6, known_x0=known, context=4, generator=g)
    else:
        out = ddpm_sample(fn, (2, 8, 5, 3), s, known_x0=known, context=4, generator=g)
    assert torch.equal(out[:, :4], known), "context frames must be returned unchanged"
    assert torch.equal(out[:, 4:], target_other[:, 4:])
    # at the last (least noisy) network call, the context the model sees is close to the truth
    t_last, x_last = inputs[-1]
    ab = float(s.alphas_cumprod[t_last])
    err = (x_last[:, :4] - ab ** 0.5 * known).std()
    assert float(err) == pytest.approx((1 - ab) ** 0.5, rel=0.35)
    # and at the first call the context is mostly noise but correlated with the truth's scale
    assert inputs[0][0] == 29


def test_inpainting_with_explicit_mask():
    s = NoiseSchedule(10)
    known = torch.randn(1, 3, 4, 3)
    mask = torch.zeros(1, 3, 4, 1, dtype=torch.bool)
    mask[:, :, :2] = True  # first two vertices known in every frame

    def fn(x, t, cond, drop):
        return torch.ones_like(x)
    out = ddim_sample(fn, known.shape, s, 3, known_x0=known, known_mask=mask)
    assert torch.equal(out[:, :, :2], known[:, :, :2])
    assert torch.equal(out[:, :, 2:], torch.ones(1, 3, 2, 3))


def test_inpainting_argument_errors():
    s = NoiseSchedule(10)
    fn = lambda x, t, c, d: x
    with pytest.raises(ValueError, match="context"):
        ddim_sample(fn, (1, 3, 2, 3), s, 2, known_x0=torch.zeros(1, 3, 2, 3), context=4)
    with pytest.raises(ValueError, match="known_x0"):
        ddim_sample(fn, (1, 3, 2, 3), s, 2, context=1)


def gaussian_denoiser(schedule, mu: float, sigma: float):
    """The exact E[x0 | x_t] for x0 ~ N(mu, sigma²) per entry."""
    def fn(x, t, cond, drop):
        ab = schedule.alpha_bar(t, x)
        gain = sigma ** 2 * ab.sqrt() / (ab * sigma ** 2 + 1 - ab)
        return mu + gain * (x - ab.sqrt() * mu)
    return fn


def test_temperature_scales_the_spread_of_ddim_samples():
    """τ = 1 samples the data (spread σ); τ = 0.5 halves the spread (DDIM with an exact Gaussian
    denoiser maps x_T linearly); τ = 0 returns the central sample, here the mean, for any seed."""
    s = NoiseSchedule(100, "cosine")
    mu, sigma = 0.7, 2.0
    fn = gaussian_denoiser(s, mu, sigma)
    shape = (1, 20000)
    spread = {}
    for tau in (1.0, 0.5, 0.0):
        outs = [ddim_sample(fn, shape, s, 50, generator=torch.Generator().manual_seed(seed), temperature=tau)
                for seed in (0, 1)]
        spread[tau] = float(outs[0].std())
        assert abs(float(outs[0].mean()) - mu) < 0.05
    assert abs(spread[1.0] - sigma) < 0.1 and abs(spread[0.5] - sigma / 2) < 0.05
    assert torch.allclose(outs[0], torch.full(shape, mu), atol=1e-2) and torch.equal(outs[0], outs[1])


def test_temperature_zero_makes_ddpm_deterministic_and_negative_is_refused():
    s = NoiseSchedule(30, "linear")
    fn = gaussian_denoiser(s, 0.0, 1.0)
    a, b = (ddpm_sample(fn, (1, 64), s, generator=torch.Generator().manual_seed(seed), temperature=0.0)
            for seed in (0, 1))
    assert torch.equal(a, b)
    c = ddpm_sample(fn, (1, 64), s, generator=torch.Generator().manual_seed(0))
    assert float(c.std()) > 0.5  # τ = 1 keeps the data's spread
    with pytest.raises(ValueError, match="temperature"):
        ddim_sample(fn, (1, 4), s, 5, temperature=-0.1)
