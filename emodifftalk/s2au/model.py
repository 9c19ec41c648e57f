"""Speech-to-AU transformer encoder (paper supp. §2, eq. 6–7) — architecture only.

features A (B, Ta, D) at 50 Hz
  -> input projection D -> d_model
  -> ``s2au.local_layers`` pre-LN transformer layers whose attention is limited to
     ``|i - j| <= s2au.local_window`` ("constrained attention" for fast articulation)
  -> ``s2au.global_layers`` layers with full attention (slow prosody); padding is masked in both
  -> residual projection head into the calibrated AU space: c = W h;  c = c + MLP(c)
  -> FC calib_dim -> 17, sigmoid (AU intensities are normalised to [0, 1])
  -> frame pooling from the audio rate onto the video frame grid of ANY fps (``pool_to_frames``)
     giving the AU codes E (B, T, 17).

Positions are a learned *relative* bias per head (clipped distance), never absolute indices: the
network is translation invariant, so windowed inference of long audio matches a single pass
wherever a window fully contains the receptive field (see ``speech_inference``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from emodifftalk.au import NUM_AUS
from emodifftalk.config import S2AUConfig

GLOBAL_MAX_DISTANCE = 128  # relative-position buckets of global layers (2.56 s at 50 Hz)  # choice


# ------------------------------------------------------------------------------------------------
# frame pooling: audio rate -> video fps
# ------------------------------------------------------------------------------------------------


def frames_for_duration(seconds: float, fps: float) -> int:
    """Number of video frames for ``seconds`` of audio at ``fps`` (rounded, at least 1)."""
    return max(1, round(seconds * fps))


def pool_to_frames(x: torch.Tensor, mask: torch.Tensor | None, n_frames: int, fps: float,
                   rate: float = 50.0) -> torch.Tensor:
    """Average audio-rate values onto video frames.

    Feature frame ``i`` covers ``[i / rate, (i + 1) / rate)`` s and output frame ``t`` covers
    ``[t / fps, (t + 1) / fps)`` s; ``out[t]`` is the mean of ``x`` over that interval, each feature
    weighted by its overlap with it (exact box-filter resampling, any fps). Masked (padding) features
    carry no weight. A frame with no valid audio under it (audio shorter than the video) repeats
    the last valid feature. Cost is O(Ta + T) via prefix sums, so hour-long inputs are fine.

    x (B, Ta, C), mask (B, Ta) bool or None -> (B, n_frames, C)
    """
    assert x.ndim == 3, f"x must be (B, Ta, C), got {tuple(x.shape)}"
    b, ta, c = x.shape
    assert ta >= 1 and n_frames >= 1 and fps > 0 and rate > 0, (ta, n_frames, fps, rate)
    if mask is None:
        mask = torch.ones(b, ta, dtype=torch.bool, device=x.device)
    assert mask.shape == (b, ta), f"mask must be (B, Ta)={(b, ta)}, got {tuple(mask.shape)}"
    m = mask.to(torch.float64)
    xm = x.to(torch.float64) * m[..., None]
    zeros_c = xm.new_zeros(b, 1, c)
    px = torch.cat([zeros_c, xm.cumsum(dim=1)], dim=1)  # (B, Ta+1, C)
    pm = torch.cat([m.new_zeros(b, 1), m.cumsum(dim=1)], dim=1)  # (B, Ta+1)

    t = torch.arange(n_frames + 1, device=x.device, dtype=torch.float64)
    edges = (t * (rate / fps)).clamp(max=float(ta))  # frame boundaries in feature-frame units
    k = edges.floor().long().clamp(max=ta - 1)
    frac = edges - k.to(torch.float64)  # in [0, 1]; == 1 only at edges == Ta

    def integral(prefix, dens, k_idx, fr):
        # integral of the piecewise-constant signal from 0 to the edge positions
        if prefix.ndim == 3:
            gi = k_idx[None, :, None].expand(b, -1, c)
            return prefix.gather(1, gi) + fr[None, :, None] * dens.gather(1, gi)
        gi = k_idx[None, :].expand(b, -1)
        return prefix.gather(1, gi) + fr[None, :] * dens.gather(1, gi)

    sx = integral(px, xm, k, frac)  # (B, T+1, C)
    sm = integral(pm, m, k, frac)  # (B, T+1)
    num = sx[:, 1:] - sx[:, :-1]
    den = sm[:, 1:] - sm[:, :-1]
    covered = den > 1e-9
    pooled = num / den.clamp(min=1e-9)[..., None]

    # fallback for frames past the end of the valid audio: the last valid feature
    n_valid = mask.long().sum(dim=1)
    last = (n_valid - 1).clamp(min=0)
    last_val = x.to(torch.float64).gather(1, last[:, None, None].expand(b, 1, c))  # (B, 1, C)
    last_val = last_val * (n_valid > 0).to(torch.float64)[:, None, None]
    out = torch.where(covered[..., None], pooled, last_val.expand(b, n_frames, c))
    return out.to(x.dtype)


# ------------------------------------------------------------------------------------------------
# transformer pieces
# ------------------------------------------------------------------------------------------------


class RelativePositionBias(nn.Module):
    """Learned per-head bias for the clipped distance j - i in [-max_distance, max_distance]."""

    def __init__(self, n_heads: int, max_distance: int):
        super().__init__()
        self.max_distance = int(max_distance)
        self.table = nn.Parameter(torch.zeros(2 * self.max_distance + 1, n_heads))

    def forward(self, t: int, device) -> torch.Tensor:
        pos = torch.arange(t, device=device)
        rel = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance)
        return self.table[rel + self.max_distance].permute(2, 0, 1)  # (H, T, T)


def attention_mask(valid: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask of allowed query->key pairs.

    A key is allowed if it is valid (not padding) and, for windowed layers, ``|i - j| <= window``.
    Every query may always attend to itself so padded rows never become all-masked (which would
    produce NaNs that leak through 0 * NaN in the next layer).
    """
    b, t = valid.shape
    pos = torch.arange(t, device=valid.device)
    allowed = valid[:, None, :].expand(b, t, t)
    if window is not None:
        band = (pos[None, :] - pos[:, None]).abs() <= window
        allowed = allowed & band[None]
    allowed = allowed | torch.eye(t, dtype=torch.bool, device=valid.device)[None]
    return allowed[:, None]


class TransformerLayer(nn.Module):
    """Pre-LN self-attention + GELU MLP with a relative position bias and an optional window."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, window: int | None):
        super().__init__()
        self.n_heads = n_heads
        self.window = window
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * d_model, d_model))
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout
        self.rel_bias = RelativePositionBias(n_heads, window if window is not None else GLOBAL_MAX_DISTANCE)

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        allowed = attention_mask(valid, self.window)
        bias = self.rel_bias(t, h.device)[None].to(q.dtype)  # (1, H, T, T)
        mask = bias.masked_fill(~allowed, float("-inf"))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        h = h + self.dropout(self.out(a.transpose(1, 2).reshape(b, t, d)))
        return h + self.dropout(self.mlp(self.norm2(h)))


class ResidualProjectionHead(nn.Module):
    """Hidden state -> calibrated AU space: c = W h;  c = c + MLP(LN(c))."""

    def __init__(self, d_model: int, calib_dim: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(d_model, calib_dim)
        self.mlp = nn.Sequential(nn.LayerNorm(calib_dim), nn.Linear(calib_dim, calib_dim), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(calib_dim, calib_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        c = self.proj(h)
        return c + self.mlp(c)


# ------------------------------------------------------------------------------------------------
# the encoder
# ------------------------------------------------------------------------------------------------


class SpeechToAU(nn.Module):
    """Audio features (B, Ta, in_dim) at ``feature_rate`` -> AU codes (B, T, 17) in [0, 1]."""

    def __init__(self, cfg: S2AUConfig, in_dim: int, feature_rate: float = 50.0):
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "s2au.d_model must be divisible by s2au.n_heads"
        self.in_dim = int(in_dim)
        self.feature_rate = float(feature_rate)
        self.local_window = int(cfg.local_window)
        self.n_local = int(cfg.local_layers)
        self.n_global = int(cfg.global_layers)
        self.input_proj = nn.Sequential(nn.LayerNorm(self.in_dim), nn.Linear(self.in_dim, cfg.d_model),
                                        nn.Dropout(cfg.dropout))
        self.layers = nn.ModuleList(
            [TransformerLayer(cfg.d_model, cfg.n_heads, cfg.dropout, self.local_window)
             for _ in range(self.n_local)]
            + [TransformerLayer(cfg.d_model, cfg.n_heads, cfg.dropout, None) for _ in range(self.n_global)])
        self.final_norm = nn.LayerNorm(cfg.d_model)
        self.head = ResidualProjectionHead(cfg.d_model, cfg.calib_dim, cfg.dropout)
        self.fc = nn.Linear(cfg.calib_dim, NUM_AUS)

    @property
    def receptive_field(self) -> float:
        """Feature frames each side that can influence an output (inf with global layers)."""
        return math.inf if self.n_global > 0 else self.n_local * self.local_window

    def _check(self, feats: torch.Tensor, feats_mask: torch.Tensor | None) -> torch.Tensor:
        assert feats.ndim == 3 and feats.shape[-1] == self.in_dim, (
            f"feats must be (B, Ta, {self.in_dim}), got {tuple(feats.shape)}")
        if feats_mask is None:
            return torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        assert feats_mask.shape == feats.shape[:2], (
            f"feats_mask must be (B, Ta)={tuple(feats.shape[:2])}, got {tuple(feats_mask.shape)}")
        return feats_mask.bool()

    def calibrated(self, feats: torch.Tensor, feats_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Ta, D) -> (B, Ta, calib_dim): the calibrated AU space (audio rate)."""
        valid = self._check(feats, feats_mask)
        h = self.input_proj(feats)
        for layer in self.layers:
            h = layer(h, valid)
        return self.head(self.final_norm(h))

    def encode(self, feats: torch.Tensor, feats_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Ta, D) -> (B, Ta, 17) AU intensities in [0, 1] at the audio feature rate."""
        return torch.sigmoid(self.fc(self.calibrated(feats, feats_mask)))

    def forward(self, feats: torch.Tensor, feats_mask: torch.Tensor | None = None,
                n_frames: int | torch.Tensor | None = None,
                fps: float | torch.Tensor = 25.0) -> torch.Tensor:
        """feats (B, Ta, D), feats_mask (B, Ta) bool, n_frames int | (B,), fps float | (B,)
        -> AU codes (B, T, 17) in [0, 1].

        ``T = max(n_frames)``; if ``n_frames`` is None each sample gets
        ``round(Ta_valid / feature_rate * fps)`` frames. Frames past a sample's own length are
        padding (its last value repeated). Per-sample ``fps`` lets one batch mix frame rates.
        """
        valid = self._check(feats, feats_mask)
        au = self.encode(feats, valid)
        b = feats.shape[0]
        fps_list = [float(f) for f in torch.as_tensor(fps, dtype=torch.float64).reshape(-1).expand(b)]
        if n_frames is None:
            counts = valid.sum(dim=1).tolist()
            frames = [frames_for_duration(c / self.feature_rate, f) for c, f in zip(counts, fps_list)]
        else:
            frames = [int(n) for n in torch.as_tensor(n_frames).reshape(-1).expand(b)]
        t = max(frames)
        if len(set(fps_list)) == 1:
            return pool_to_frames(au, valid, t, fps_list[0], self.feature_rate)
        return torch.cat([pool_to_frames(au[i:i + 1], valid[i:i + 1], t, fps_list[i], self.feature_rate)
                          for i in range(b)], dim=0)
