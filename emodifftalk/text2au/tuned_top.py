"""MiniLM's top transformer layers, one trainable copy per ensemble member (``text2au.finetune_layers``).

MiniLM stays frozen up to layer ``6 - n``: :meth:`MiniLMEncoder.token_states` runs it once per
text and keeps the token states there plus the token means of the frozen pooled layers. Each
ensemble member then runs its own copy of the top ``n`` layers on those states
(:class:`MemberTops`) and pools like the frozen encoder (``text2au.minilm_layers``: token mean of
each listed layer, each unit-norm, concatenated, unit-norm). With the pretrained weights the
features equal :meth:`MiniLMEncoder.encode`'s.

Why one copy per member: member ``k``'s predictions on concept fold ``k`` calibrate the thresholds
and give the concept CV, so nothing that member uses -- head or layer -- may have seen fold ``k``.

Features are ``(B, D)`` shared by all members (frozen encoder) or ``(B, K, D)``, one per member
(tuned tops); :class:`~emodifftalk.text2au.model.TextToAUEnsemble` takes both.

:class:`TopLayer` is a BERT encoder layer written out (post-LayerNorm, exact GELU) so an export
loads with torch alone and does not depend on the internals of a ``transformers`` version.
Architecture and inference only; the training of the tops is in
:mod:`emodifftalk.train.tasks.text2au_tune`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from emodifftalk.text2au.encoders import MINILM_DIM, MINILM_LAYERS, TokenStates, check_minilm_layers

MINILM_HEADS = 12
MINILM_FFN = 1536
MINILM_LN_EPS = 1e-12


def check_finetune_layers(n_top: int, pool_layers) -> int:
    """``n_top`` if it is in 1..5 and the pooling reads at least one of the tuned layers."""
    pool_layers = check_minilm_layers(pool_layers)
    if not 1 <= n_top < MINILM_LAYERS:
        raise ValueError(f"text2au.finetune_layers must be in 0..{MINILM_LAYERS - 1}, got {n_top}")
    if max(pool_layers) <= MINILM_LAYERS - n_top:
        raise ValueError(f"text2au.finetune_layers={n_top} tunes layers {MINILM_LAYERS - n_top + 1}..{MINILM_LAYERS} "
                         f"but text2au.minilm_layers={pool_layers} pools none of them")
    return n_top


class TopLayer(nn.Module):
    """One BERT encoder layer (self-attention + FFN, post-LayerNorm) of MiniLM's sizes."""

    def __init__(self, dim: int = MINILM_DIM, heads: int = MINILM_HEADS, ffn: int = MINILM_FFN,
                 dropout: float = 0.1, eps: float = MINILM_LN_EPS):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn_in = nn.Linear(dim, ffn)
        self.ffn_out = nn.Linear(ffn, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, dim), mask (B, T) bool (True = token) -> (B, T, dim)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :], dropout_p=self.dropout.p if self.training else 0.0)
        x = self.attn_norm(x + self.dropout(self.attn_out(a.transpose(1, 2).reshape(B, T, D))))
        h = self.ffn_out(nn.functional.gelu(self.ffn_in(x)))
        return self.ffn_norm(x + self.dropout(h))

    @torch.no_grad()
    def load_bert_layer(self, layer: nn.Module) -> None:
        """Copy the weights of a ``transformers`` ``BertLayer``."""
        s = {k: v.detach() for k, v in layer.state_dict().items()}
        for suffix in ("weight", "bias"):
            getattr(self.qkv, suffix).copy_(torch.cat([s[f"attention.self.{n}.{suffix}"]
                                                       for n in ("query", "key", "value")]))
            getattr(self.attn_out, suffix).copy_(s[f"attention.output.dense.{suffix}"])
            getattr(self.attn_norm, suffix).copy_(s[f"attention.output.LayerNorm.{suffix}"])
            getattr(self.ffn_in, suffix).copy_(s[f"intermediate.dense.{suffix}"])
            getattr(self.ffn_out, suffix).copy_(s[f"output.dense.{suffix}"])
            getattr(self.ffn_norm, suffix).copy_(s[f"output.LayerNorm.{suffix}"])


class MemberTops(nn.Module):
    """``members`` copies of MiniLM's top ``n_top`` layers and the pooling of ``pool_layers``."""

    def __init__(self, members: int, n_top: int, pool_layers: tuple[int, ...], dropout: float = 0.1):
        super().__init__()
        self.pool_layers = check_minilm_layers(pool_layers)
        self.n_top = check_finetune_layers(n_top, self.pool_layers)
        self.first = MINILM_LAYERS - n_top + 1  # first tuned layer (1-based)
        self.tuned_pool = [layer - self.first for layer in self.pool_layers if layer >= self.first]
        self.blocks = nn.ModuleList(nn.ModuleList(TopLayer(dropout=dropout) for _ in range(n_top))
                                    for _ in range(members))

    @property
    def members(self) -> int:
        return len(self.blocks)

    def load_pretrained(self, encoder) -> None:
        """Every member starts from the frozen encoder's own top layers."""
        layers = encoder.model[0].auto_model.encoder.layer
        for member in self.blocks:
            for j, block in enumerate(member):
                block.load_bert_layer(layers[self.first - 1 + j])

    def member_features(self, k: int, hidden: Tensor, mask: Tensor, frozen: Tensor) -> Tensor:
        """Member ``k``'s (B, D) unit-norm features of a padded batch (differentiable)."""
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = []
        for j, block in enumerate(self.blocks[k]):
            hidden = block(hidden, mask)
            if j in self.tuned_pool:
                pooled.append(nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1), dim=-1))
        return nn.functional.normalize(torch.cat([frozen, *pooled], dim=-1), dim=-1)

    @torch.no_grad()
    def features(self, states: TokenStates, batch_size: int = 64) -> Tensor:
        """(N, K, D) every member's features (texts batched by length to limit padding)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(states)), key=lambda i: states.hidden[i].shape[0])
        out = None
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = [t.to(device) for t in states.batch(idx)]
            f = torch.stack([self.member_features(k, *batch) for k in range(self.members)], dim=1).cpu()
            if out is None:
                out = torch.empty(len(states), *f.shape[1:])
            out[idx] = f
        self.train(was_training)
        return out


def text_features(model: nn.Module, encoder, texts: list[str]) -> Tensor:
    """Features the head ensemble ``model`` reads: (B, D) from the frozen encoder, or (B, K, D)
    through the model's tuned tops (``model.tops``)."""
    tops = getattr(model, "tops", None)
    if tops is None:
        return encoder.encode(texts)
    return tops.features(encoder.token_states(texts, tops.first - 1))


__all__ = ["MemberTops", "TopLayer", "check_finetune_layers", "text_features"]
