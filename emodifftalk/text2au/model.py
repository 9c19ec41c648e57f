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


class TextToAUEnsemble(nn.Module):
    """``members`` independent :class:`TextToAU`-shaped heads on the same text features, computed
    together (stacked weights, one batched matmul per layer instead of a Python loop).

    Training gives member ``k`` every training row except those of concept fold ``k``
    (``emodifftalk.train.tasks.text2au``), so each member's predictions on its held-out fold are
    out-of-concept: they calibrate the per-AU thresholds and measure concept cross-validation in
    the same run. At inference the members' probabilities are averaged.
    """

    def __init__(self, in_dim: int, members: int = 1, hidden_dim: int = 256, proj_dim: int = 128,
                 dropout: float = 0.1, num_aus: int = NUM_AUS):
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.in_dim, self.proj_dim, self.num_aus, self.n_members = in_dim, proj_dim, num_aus, members
        dims = [(in_dim, hidden_dim), (hidden_dim, proj_dim), (proj_dim, num_aus)]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(members, i, o)) for i, o in dims)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(members, 1, o)) for _, o in dims)
        self.dropout = nn.Dropout(dropout)
        for w, b in zip(self.weights, self.biases):  # nn.Linear's default init, per member
            bound = 1 / w.shape[1] ** 0.5
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def _layer(self, x: Tensor, i: int) -> Tensor:
        return torch.baddbmm(self.biases[i], x, self.weights[i])

    def forward(self, feats: Tensor) -> dict[str, Tensor]:
        """feats (B, in_dim) shared by the members or (B, K, in_dim) one per member (tuned encoder
        tops) -> ``member_logits`` (K, B, 17), ``member_z`` (K, B, proj_dim) unit-norm and the
        ensemble ``logits`` (B, 17) = logit of the mean member probability."""
        shared = feats.dim() == 2 and feats.shape[1] == self.in_dim
        assert shared or feats.shape[1:] == (self.n_members, self.in_dim), \
            f"TextToAUEnsemble expects (B, {self.in_dim}) or (B, {self.n_members}, {self.in_dim}) text features, " \
            f"got {tuple(feats.shape)}"
        x = feats.unsqueeze(0).expand(self.n_members, -1, -1) if shared else feats.transpose(0, 1)
        h = self._layer(self.dropout(nn.functional.gelu(self._layer(x, 0))), 1)
        member_logits = self._layer(self.dropout(nn.functional.gelu(h)), 2)
        prob = torch.sigmoid(member_logits.float()).mean(0).clamp(1e-6, 1 - 1e-6)
        return {"member_logits": member_logits, "member_z": nn.functional.normalize(h, dim=-1),
                "logits": torch.logit(prob)}

    @torch.no_grad()
    def probs(self, feats: Tensor) -> Tensor:
        """(B, in_dim) -> (B, num_aus) ensemble AU probabilities."""
        return torch.sigmoid(self.forward(feats)["logits"])

    @torch.no_grad()
    def member_probs(self, feats: Tensor) -> Tensor:
        """(B, in_dim) -> (K, B, num_aus) every member's AU probabilities (member k's are
        out-of-concept on concept fold k: the concept CV and the calibration read them)."""
        return torch.sigmoid(self.forward(feats)["member_logits"].float())


class TunedTextToAUEnsemble(TextToAUEnsemble):
    """:class:`TextToAUEnsemble` that also carries each member's tuned MiniLM top layers
    (``tops``, :class:`~emodifftalk.text2au.tuned_top.MemberTops`): ``forward`` still takes
    features, now (B, K, in_dim) ones; :func:`~emodifftalk.text2au.tuned_top.text_features` makes them."""

    def __init__(self, in_dim: int, tops: nn.Module, **kwargs):
        super().__init__(in_dim, members=tops.members, **kwargs)
        self.tops = tops
