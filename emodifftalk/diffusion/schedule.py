"""Gaussian noise schedule for the motion diffusion (diffusers style, no network inside).

Conventions
-----------
* Timesteps are 0-based: ``t = 0 .. N-1`` is the paper's ``n = 1 .. N`` (eq. 18). ``t = -1`` means
  "clean data" (``alpha_cumprod = 1``) and only appears as the target of the last DDIM step.
* The network predicts **x0** (the clean offsets), not the noise; everything here is written for
  that parameterisation. ``eps`` can be recovered from ``(x_t, x0)`` with ``eps_from_x0``.
* Tables are computed in float64 and cast to the data's dtype/device on use, so the same
  schedule object serves CPU and GPU tensors.
"""

from __future__ import annotations

import math

import torch

SCHEDULE_KINDS = ("linear", "cosine")


def _cosine_betas(n: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021) cosine schedule: alpha_bar(t) = cos²((t/N + s)/(1 + s) · π/2)."""
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


class NoiseSchedule:
    """Variance schedule with the closed forms a DDPM/DDIM sampler needs.

    Attributes (all (N,) float64): ``betas``, ``alphas``, ``alphas_cumprod``,
    ``alphas_cumprod_prev`` (with 1 at t=0), ``posterior_variance`` (β̃_t),
    ``posterior_log_variance`` (clipped at t=0 as in DDPM), ``posterior_mean_coef1/2``.
    """

    def __init__(self, num_train_steps: int = 1000, kind: str = "cosine",
                 beta_start: float = 1e-4, beta_end: float = 0.02):
        if num_train_steps < 1:
            raise ValueError(f"num_train_steps must be >= 1, got {num_train_steps}")
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; expected one of {SCHEDULE_KINDS}")
        if kind == "linear" and not (0 < beta_start < beta_end < 1):
            raise ValueError(f"linear schedule needs 0 < beta_start < beta_end < 1, "
                             f"got {beta_start}, {beta_end}")
        self.num_train_steps = int(num_train_steps)
        self.kind = kind
        if kind == "linear":
            # DDPM's linear betas are tuned for N=1000; rescale so shorter chains still end near
            # pure noise (same trick as improved-DDPM): beta * 1000 / N.
            scale = 1000.0 / num_train_steps
            betas = torch.linspace(beta_start * scale, min(beta_end * scale, 0.999),
                                   num_train_steps, dtype=torch.float64)
        else:
            betas = _cosine_betas(num_train_steps)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                              self.alphas_cumprod[:-1]])
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        # β̃_0 = 0: clip the log like DDPM so log-variance stays finite.
        pv = self.posterior_variance.clone()
        if num_train_steps > 1:
            pv[0] = self.posterior_variance[1]
        else:
            pv[0] = betas[0]
        self.posterior_log_variance = torch.log(pv)
        self.posterior_mean_coef1 = betas * torch.sqrt(self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_mean_coef2 = ((1 - self.alphas_cumprod_prev) * torch.sqrt(self.alphas)
                                     / (1 - self.alphas_cumprod))

    @classmethod
    def from_config(cls, dcfg) -> NoiseSchedule:
        """Build from a ``DiffusionConfig``."""
        return cls(dcfg.num_train_steps, dcfg.schedule, dcfg.beta_start, dcfg.beta_end)

    def __repr__(self) -> str:
        return f"NoiseSchedule(num_train_steps={self.num_train_steps}, kind={self.kind!r})"

    # ------------------------------------------------------------------ helpers

    def _check_t(self, t: torch.Tensor, allow_clean: bool = False) -> None:
        lo = -1 if allow_clean else 0
        if t.numel() and (int(t.min()) < lo or int(t.max()) >= self.num_train_steps):
            raise ValueError(f"timesteps must be in [{lo}, {self.num_train_steps - 1}], "
                             f"got [{int(t.min())}, {int(t.max())}]")

    @staticmethod
    def _gather(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] shaped (B, 1, 1, ...) to broadcast against ``like`` (B, ...)."""
        vals = table.to(like.device)[t.to(like.device).long()].to(like.dtype)
        return vals.reshape(-1, *([1] * (like.ndim - 1)))

    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t broadcastable to ``like``; ``t = -1`` gives 1 (clean)."""
        t = torch.as_tensor(t).long()
        self._check_t(t, allow_clean=True)
        table = torch.cat([self.alphas_cumprod, torch.ones(1, dtype=torch.float64)])
        return self._gather(table, torch.where(t < 0, torch.full_like(t, self.num_train_steps), t), like)

    # ------------------------------------------------------------------ forward process

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε.  x0, noise (B, ...); t (B,) long in [0, N-1]."""
        t = torch.as_tensor(t, device=x0.device).long()
        assert noise.shape == x0.shape, f"noise {tuple(noise.shape)} must match x0 {tuple(x0.shape)}"
        assert t.ndim == 1 and t.shape[0] == x0.shape[0], f"t must be (B,), got {tuple(t.shape)}"
        self._check_t(t)
        ab = self._gather(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The noise implied by a clean estimate: ε = (x_t − sqrt(ᾱ_t) x0) / sqrt(1 − ᾱ_t)."""
        t = torch.as_tensor(t, device=x_t.device).long()
        self._check_t(t)
        ab = self._gather(self.alphas_cumprod, t, x_t)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    # ------------------------------------------------------------------ reverse process

    def posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t-1} | x_t, x0): (mean, variance, log_variance), each broadcastable to x_t."""
        t = torch.as_tensor(t, device=x_t.device).long()
        self._check_t(t)
        assert x0.shape == x_t.shape, f"x0 {tuple(x0.shape)} must match x_t {tuple(x_t.shape)}"
        mean = (self._gather(self.posterior_mean_coef1, t, x_t) * x0
                + self._gather(self.posterior_mean_coef2, t, x_t) * x_t)
        return (mean, self._gather(self.posterior_variance, t, x_t),
                self._gather(self.posterior_log_variance, t, x_t))

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t), float64 (B,)."""
        ab = self.alphas_cumprod[torch.as_tensor(t).long().cpu()]
        return ab / (1 - ab)
