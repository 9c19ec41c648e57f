"""DDPM (full chain) and DDIM samplers for an **x0-predicting** network.

The network is wrapped in a ``model_fn(x_t, t, cond, drop_cond) -> x0_hat``:

* ``x_t`` has the sample ``shape`` (e.g. (B, T, V, 3)), ``t`` is (B,) long in [0, N-1];
* ``cond`` is passed through untouched (any object the model understands);
* ``drop_cond=True`` asks for the *unconditional* prediction (the model's learned null
  condition), used by classifier-free guidance:
  ``x0 = x0_uncond + s · (x0_cond − x0_uncond)`` with ``s = guidance_scale`` (1 = no guidance,
  one network call per step; otherwise two). Guiding x0 is the same as guiding ε at fixed x_t
  because ε is affine in x0.

Inpainting known frames (used for windowed long sequences, see ``diffusion/windowed.py``):
``known_x0`` plus either ``context=k`` (the first k entries along dim 1, the time axis, are
known) or an explicit boolean ``known_mask`` broadcastable to ``shape``. At every step the known
region of the running sample is overwritten with ``q_sample(known_x0, t_next, fresh noise)``
(RePaint-style replacement), so the model always sees context at the right noise level; the
returned sample equals ``known_x0`` exactly in that region.

Reproducibility: pass ``init_noise`` (x_T) and/or a ``torch.Generator``. With ``eta = 0`` DDIM
is deterministic given ``init_noise`` (inpainting noise comes from ``generator``).

``temperature`` τ scales the sample's own noise: the x_T drawn here and the per-step noise of
DDPM (and of DDIM with η > 0), as in temperature sampling of flows and diffusion models. τ = 1 is
the model's distribution; τ → 0 moves a DDIM sample (η = 0) towards the probability-flow ODE's
image of x_T = 0, a central, low-variance sample. Inpainting noise is never scaled: the known
region must sit at its step's noise level. A given ``init_noise`` is used as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from emodifftalk.diffusion.schedule import NoiseSchedule

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any, bool], torch.Tensor]


def _randn(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def guided_x0(model_fn: ModelFn, x_t: torch.Tensor, t: torch.Tensor, cond: Any,
              guidance_scale: float = 1.0) -> torch.Tensor:
    """x0 prediction with classifier-free guidance (one call if ``guidance_scale == 1``)."""
    x0_c = model_fn(x_t, t, cond, False)
    assert x0_c.shape == x_t.shape, f"model_fn returned {tuple(x0_c.shape)}, expected {tuple(x_t.shape)}"
    if guidance_scale == 1.0:
        return x0_c
    x0_u = model_fn(x_t, t, cond, True)
    return x0_u + guidance_scale * (x0_c - x0_u)


def ddim_timesteps(num_train_steps: int, steps: int) -> torch.Tensor:
    """``steps`` descending timesteps from N-1 to 0, evenly spaced (both ends included)."""
    if not 1 <= steps <= num_train_steps:
        raise ValueError(f"DDIM steps must be in [1, {num_train_steps}], got {steps}")
    if steps == 1:
        return torch.tensor([num_train_steps - 1])
    ts = torch.linspace(num_train_steps - 1, 0, steps, dtype=torch.float64).round().long()
    return torch.unique_consecutive(ts)


class _Inpainter:
    """Overwrites the known region of a running sample with the noised known data."""

    def __init__(self, shape, schedule: NoiseSchedule, known_x0, known_mask, context: int,
                 generator, device, dtype):
        self.active = known_x0 is not None
        if not self.active:
            if known_mask is not None or context:
                raise ValueError("known_mask/context given without known_x0")
            return
        known_x0 = known_x0.to(device=device, dtype=dtype)
        if known_mask is None:
            if not 0 < context <= shape[1]:
                raise ValueError(f"context must be in [1, {shape[1]}] (frames along dim 1), got {context}")
            if known_x0.shape[1] < context or known_x0.shape[2:] != tuple(shape[2:]):
                raise ValueError(f"known_x0 {tuple(known_x0.shape)} must cover the first {context} "
                                 f"frames of a sample of shape {tuple(shape)}")
            full = torch.zeros(shape, device=device, dtype=dtype)
            full[:, :context] = known_x0[:, :context]
            known_x0 = full
            mask_shape = [1] * len(shape)
            mask_shape[1] = shape[1]
            known_mask = torch.zeros(mask_shape, dtype=torch.bool, device=device)
            known_mask[:, :context] = True
        else:
            known_mask = known_mask.to(device=device, dtype=torch.bool)
            torch.broadcast_shapes(known_mask.shape, tuple(shape))  # raises on mismatch
            if known_x0.shape != tuple(shape):
                raise ValueError(f"known_x0 {tuple(known_x0.shape)} must have the sample shape {tuple(shape)}")
        self.x0, self.mask, self.schedule = known_x0, known_mask, schedule
        self.generator, self.device, self.dtype = generator, device, dtype

    def __call__(self, x: torch.Tensor, t_next: int) -> torch.Tensor:
        """Replace the known region of ``x`` (at noise level ``t_next``; -1 = clean)."""
        if not self.active:
            return x
        if t_next < 0:
            known = self.x0
        else:
            t = torch.full((x.shape[0],), t_next, dtype=torch.long, device=x.device)
            noise = _randn(x.shape, self.generator, self.device, self.dtype)
            known = self.schedule.q_sample(self.x0, t, noise)
        return torch.where(self.mask, known, x)


def _prepare(shape, schedule, init_noise, generator, device, dtype, temperature: float):
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    shape = tuple(int(s) for s in shape)
    if init_noise is not None:
        if tuple(init_noise.shape) != shape:
            raise ValueError(f"init_noise {tuple(init_noise.shape)} must have shape {shape}")
        device = init_noise.device if device is None else device
        return shape, init_noise.to(device=device, dtype=dtype), device
    device = torch.device("cpu") if device is None else device
    return shape, temperature * _randn(shape, generator, device, dtype), device


def _step_x0(model_fn: ModelFn, x, t, cond, guidance_scale, clip_x0, callback, i: int, tt: int) -> torch.Tensor:
    """One sampler step's x̂0: guided prediction, optional clipping, progress callback."""
    x0 = guided_x0(model_fn, x, t, cond, guidance_scale)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    if callback is not None:
        callback(i, tt, x0)
    return x0


@torch.no_grad()
def ddpm_sample(model_fn: ModelFn, shape, schedule: NoiseSchedule, cond: Any = None,
                generator: torch.Generator | None = None, *, guidance_scale: float = 1.0,
                init_noise: torch.Tensor | None = None, known_x0: torch.Tensor | None = None,
                known_mask: torch.Tensor | None = None, context: int = 0,
                clip_x0: float | None = None, device=None, dtype=torch.float32, temperature: float = 1.0,
                callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Ancestral sampling through all N steps: x_{t-1} ~ q(x_{t-1} | x_t, x̂0) (fixed small
    variance β̃_t, no noise at the last step; its noise × ``temperature``). Returns x0 of ``shape``."""
    shape, x, device = _prepare(shape, schedule, init_noise, generator, device, dtype, temperature)
    inpaint = _Inpainter(shape, schedule, known_x0, known_mask, context, generator, device, dtype)
    n = schedule.num_train_steps
    x = inpaint(x, n - 1)
    for i, tt in enumerate(range(n - 1, -1, -1)):
        t = torch.full((shape[0],), tt, dtype=torch.long, device=device)
        x0 = _step_x0(model_fn, x, t, cond, guidance_scale, clip_x0, callback, i, tt)
        if tt == 0:
            x = x0
        else:
            mean, _, logvar = schedule.posterior_mean_variance(x0, x, t)
            x = mean + temperature * (0.5 * logvar).exp() * _randn(shape, generator, device, dtype)
        x = inpaint(x, tt - 1)
    return x


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, shape, schedule: NoiseSchedule, steps: int, eta: float = 0.0,
                cond: Any = None, generator: torch.Generator | None = None, *,
                guidance_scale: float = 1.0, init_noise: torch.Tensor | None = None,
                known_x0: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
                context: int = 0, clip_x0: float | None = None, device=None, dtype=torch.float32,
                temperature: float = 1.0,
                callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021) with ``steps`` network evaluations (×2 with guidance).

    x_prev = sqrt(ᾱ_prev) x̂0 + sqrt(1 − ᾱ_prev − σ²) ε̂ + σ z,
    σ = η · sqrt((1 − ᾱ_prev)/(1 − ᾱ_t)) · sqrt(1 − ᾱ_t/ᾱ_prev); the last step goes to ᾱ = 1,
    so a perfect x0-predictor is recovered exactly.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    shape, x, device = _prepare(shape, schedule, init_noise, generator, device, dtype, temperature)
    inpaint = _Inpainter(shape, schedule, known_x0, known_mask, context, generator, device, dtype)
    ts = ddim_timesteps(schedule.num_train_steps, steps).tolist()
    x = inpaint(x, ts[0])
    for i, tt in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        t = torch.full((shape[0],), tt, dtype=torch.long, device=device)
        x0 = _step_x0(model_fn, x, t, cond, guidance_scale, clip_x0, callback, i, tt)
        if t_prev < 0:
            x = x0
        else:
            eps = schedule.eps_from_x0(x, t, x0)
            ab = schedule.alpha_bar(t, x)
            ab_prev = schedule.alpha_bar(torch.full_like(t, t_prev), x)
            sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp(min=0).sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
            if eta > 0:
                x = x + temperature * sigma * _randn(shape, generator, device, dtype)
        x = inpaint(x, t_prev)
    return x
