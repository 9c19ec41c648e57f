"""Feature line: AU codes → per-Gaussian opacity change (paper supp. "Feature line", eq. 19).

A learnable F ∈ R^{17×Q×16} stores, for every AU k and facial Gaussian i, a 16-d feature F_k^i.
Per frame the AU-weighted combination f_t^i = Σ_k E_{t,k} F_k^i (T, Q, 16) is decoded by one tiny
MLP shared by all Gaussians into Δα_t^i = max_delta · tanh(g(f_t^i) − g(0)) (T, Q).

Subtracting g(0) makes the neutral face (E = 0) change no opacity, exactly, whatever the MLP's
biases; tanh bounds the change. Architecture only: the regulariser (eq. 19) and the
motion/opacity losses (eq. 20–22) are in ``emodifftalk/losses/feature_line.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from emodifftalk.au import NUM_AUS


class FeatureLine(nn.Module):
    def __init__(self, n_aus: int = NUM_AUS, q: int = 1, dim: int = 16, hidden: int = 16,
                 max_delta: float = 0.5, init_std: float = 1e-2):
        super().__init__()
        if q < 1:
            raise ValueError(f"FeatureLine needs q >= 1 facial Gaussians, got {q}")
        self.n_aus, self.q, self.dim, self.max_delta = int(n_aus), int(q), int(dim), float(max_delta)
        self.F = nn.Parameter(torch.randn(n_aus, q, dim) * init_std)  # (17, Q, 16)
        self.decoder = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    @classmethod
    def from_config(cls, fcfg, q: int, **kwargs) -> FeatureLine:
        """Build from a ``FeatureLineConfig`` for an identity with ``q`` facial Gaussians."""
        return cls(q=q, dim=fcfg.feature_dim, **kwargs)

    def features(self, aus: torch.Tensor) -> torch.Tensor:
        """AU codes (T, 17) → f (T, Q, dim), f_t = Σ_k E_{t,k} F_k."""
        assert aus.ndim == 2 and aus.shape[1] == self.n_aus, f"aus must be (T, {self.n_aus}), got {tuple(aus.shape)}"
        return torch.einsum("tk,kqd->tqd", aus.to(self.F.dtype), self.F)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """f (..., dim) → Δα (...) in (−max_delta, max_delta); zero for f = 0."""
        g = self.decoder(f).squeeze(-1)
        g0 = self.decoder(torch.zeros(self.dim, device=f.device, dtype=f.dtype)).squeeze(-1)
        return self.max_delta * torch.tanh(g - g0)

    def forward(self, aus: torch.Tensor, return_features: bool = False):
        """AU codes (T, 17) → Δα (T, Q) [and f (T, Q, dim) if ``return_features``]."""
        f = self.features(aus)
        delta = self.decode(f)
        return (delta, f) if return_features else delta
