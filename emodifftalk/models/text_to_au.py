"""Text-to-AU head (paper supp. §3): frozen text features -> AU-aware embedding -> 17 AU logits.

Architecture only (no loss, no I/O). The text encoder is separate and frozen
(``emodifftalk.text2au.encoders``); this module sees its features.

    feats (B, in_dim) --MLP--> h (B, proj_dim) --L2--> z   (used by InfoNCE, eq. 24)
                                h --GELU, dropout, Linear--> logits (B, 17)   (focal BCE, eq. 23)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from emodifftalk.au import NUM_AUS


class TextToAU(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int = 256, proj_dim: int = 128, dropout: float = 0.1,
                 num_aus: int = NUM_AUS):
        super().__init__()
        self.in_dim, self.proj_dim, self.num_aus = in_dim, proj_dim, num_aus
        self.proj = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, proj_dim))
        self.head = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(proj_dim, num_aus))

    def forward(self, feats: Tensor) -> dict[str, Tensor]:
        """feats (B, in_dim) -> {"z": (B, proj_dim) unit-norm, "logits": (B, num_aus)}."""
        assert feats.dim() == 2 and feats.shape[1] == self.in_dim, \
            f"TextToAU expects (B, {self.in_dim}) text features, got {tuple(feats.shape)}"
        h = self.proj(feats)
        return {"z": nn.functional.normalize(h, dim=-1), "logits": self.head(h)}

    @torch.no_grad()
    def probs(self, feats: Tensor) -> Tensor:
        """(B, in_dim) -> (B, num_aus) AU probabilities sigma(logits)."""
        return torch.sigmoid(self.forward(feats)["logits"])
