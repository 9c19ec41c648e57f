"""FaceFormer peer baseline: audio → per-frame vertex offsets, autoregressively. Architecture only.

Reference: Y. Fan, Z. Lin, J. Saito, W. Wang, T. Komura, "FaceFormer: Speech-Driven 3D Facial
Animation with Transformers", CVPR 2022. What we keep from it:

* **Autoregressive transformer decoder**: the input of frame t is the motion of frame t − 1
  (embedded by a linear motion encoder) plus a style embedding and a positional code; the output is
  frame t's offsets through a linear motion decoder.
* **Periodic positional encoding (PPE)**: the sinusoidal code of ``t mod period``, so any length
  extrapolates (the paper's period is 25 frames).
* **Biased causal self-attention** (ALiBi-like temporal bias): head h adds
  ``−slope_h · ⌊(t − s) / period⌋`` to the score of frame t attending to an earlier frame s, and
  −∞ to later frames; ALiBi's geometric slopes.
* **Alignment bias** in the cross-attention: frame t attends to its own audio token only.

What differs, and why:

* Audio encoder: the paper fine-tunes wav2vec 2.0 (bidirectional). We take the project's audio
  features (log-mel + level channels, or HuBERT) and build frame t's audio token from the
  ``audio_context`` feature frames that end with frame t (Linear → d), so the model is **causal in
  its features**: the output at frame t does not depend on features after frame t. (The mel front
  end normalises per utterance, as wav2vec does over its whole input: causality is in the feature
  sequence, not the waveform.)
* Style: the paper's one-hot speaker embedding cannot name a held-out identity. The style token and
  the linear motion encoder/decoder are generated per vertex from the template by a point MLP (the
  same vertex-count-free parametrisation as ``motion/denoiser.py``): still linear maps between
  R^{V·3} and R^d, so any template works.
* Training: teacher forcing, and with probability ``self_feed_prob`` per batch the decoder is fed
  its own teacher-forced predictions instead of the true previous frames (one-pass scheduled
  sampling, Duckworth et al. 2019); the paper trains fully autoregressively, which costs T forward
  passes per clip.

Units: offsets are in "diffusion units" (metres / ``offset_scale``), as the diffusion model's, so
the same losses and metrics apply.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from emodifftalk.motion.denoiser import fourier_features, normalize_template


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes (Press et al. 2022): a geometric sequence from 2^(−8/n)."""
    def power_of_2(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_2(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = power_of_2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(power_of_2(closest) + extra)


def biased_causal_mask(n_frames: int, n_heads: int, period: int, device=None) -> torch.Tensor:
    """(H, T, T) additive self-attention mask: −slope_h·⌊(t − s)/period⌋ for s ≤ t, −∞ for s > t."""
    t = torch.arange(n_frames, device=device)
    dist = t[:, None] - t[None, :]
    bias = -torch.div(dist.clamp(min=0), period, rounding_mode="floor").float()
    mask = alibi_slopes(n_heads).to(device)[:, None, None] * bias[None]
    return mask.masked_fill((dist < 0)[None], float("-inf"))


def periodic_positional_encoding(positions: torch.Tensor, d_model: int, period: int) -> torch.Tensor:
    """(T,) absolute frame indices → (T, d) sinusoidal code of ``position mod period`` (PPE)."""
    pos = torch.remainder(positions, period).float()[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, device=positions.device).float() * (-math.log(10000.0) / d_model))
    pe = torch.zeros(len(positions), d_model, device=positions.device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe


def causal_audio_window(audio: torch.Tensor, n_frames: int, fps: float, feature_rate: float,
                        context: int) -> torch.Tensor:
    """(B, Ta, D) features → (B, T, context, D): the ``context`` feature frames ending with video
    frame t (frame t covers features [t·r/fps, (t+1)·r/fps)); zeros before the clip or past its end."""
    b, ta, d = audio.shape
    t = torch.arange(n_frames, device=audio.device, dtype=torch.float64)
    end = torch.floor((t + 1) * (feature_rate / fps)).long()  # exclusive
    idx = end[:, None] - context + torch.arange(context, device=audio.device)[None]
    valid = (idx >= 0) & (idx < ta)
    gathered = audio[:, idx.clamp(0, max(ta - 1, 0)).reshape(-1)].reshape(b, n_frames, context, d)
    return gathered * valid[None, :, :, None].to(audio.dtype)


class FaceFormer(nn.Module):
    """Audio features + template → per-frame offsets, autoregressive (see module docstring)."""

    def __init__(self, audio_dim: int, d_model: int = 128, n_heads: int = 4, n_layers: int = 1,
                 period: int = 25, audio_context: int = 6, rank: int = 64, fps: float = 25.0,
                 feature_rate: float = 50.0, dropout: float = 0.1, point_hidden: int = 128,
                 n_freqs: int = 6, context_frames: int = 100, offset_scale: float = 1.0):
        super().__init__()
        assert d_model % n_heads == 0, f"d_model {d_model} must be divisible by n_heads {n_heads}"
        self.audio_dim, self.d_model, self.n_heads = int(audio_dim), int(d_model), int(n_heads)
        self.period, self.audio_context, self.rank = int(period), int(audio_context), int(rank)
        self.fps, self.feature_rate, self.n_freqs = float(fps), float(feature_rate), int(n_freqs)
        self.context_frames = int(context_frames)
        self.register_buffer("offset_scale", torch.tensor(float(offset_scale)))  # metres per unit

        self.point_mlp = nn.Sequential(nn.Linear(3 + 6 * n_freqs, point_hidden), nn.SiLU(),
                                       nn.Linear(point_hidden, point_hidden), nn.SiLU())
        self.analysis_head = nn.Linear(point_hidden, 3 * rank)  # motion encoder weights per vertex
        self.synthesis_head = nn.Linear(point_hidden, rank * 3)  # motion decoder weights per vertex
        self.style_head = nn.Sequential(nn.Linear(point_hidden, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.motion_in = nn.Linear(rank, d_model)
        self.audio_in = nn.Linear(audio_context * audio_dim, d_model)
        layer = nn.TransformerDecoderLayer(d_model, n_heads, dim_feedforward=2 * d_model, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, n_layers)
        self.out_norm = nn.LayerNorm(d_model)
        self.coef_out = nn.Linear(d_model, rank)
        nn.init.normal_(self.coef_out.weight, std=0.02 / math.sqrt(rank))
        nn.init.zeros_(self.coef_out.bias)

    @classmethod
    def from_config(cls, cfg, offset_scale: float = 1.0) -> FaceFormer:
        f = cfg.faceformer
        return cls(audio_dim=cfg.audio.feature_dim, d_model=f.d_model, n_heads=f.n_heads, n_layers=f.n_layers,
                   period=f.period, audio_context=f.audio_context, rank=f.vertex_embed_rank, fps=cfg.diffusion.fps,
                   feature_rate=cfg.audio.feature_rate, dropout=f.dropout, context_frames=f.context_frames,
                   offset_scale=offset_scale)

    # ------------------------------------------------------------------ pieces

    def encode_template(self, template: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, V, 3) metres → analysis (B, V·3, r), synthesis (B, r, V·3), style token (B, d)."""
        h = self.point_mlp(fourier_features(normalize_template(template.float()), self.n_freqs))
        b, v, _ = h.shape
        analysis = self.analysis_head(h).view(b, v * 3, self.rank)
        synthesis = self.synthesis_head(h).view(b, v, self.rank, 3).permute(0, 2, 1, 3).reshape(b, self.rank, v * 3)
        return analysis, synthesis.contiguous(), self.style_head(h.mean(dim=1))

    def audio_tokens(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        """(B, Ta, D) → (B, T, d): one token per video frame from features up to its end."""
        win = causal_audio_window(audio.float(), n_frames, self.fps, self.feature_rate, self.audio_context)
        return self.audio_in(win.flatten(2))

    def _decode(self, prev: torch.Tensor, start: int, analysis, synthesis, style, audio_tok,
                pad: torch.Tensor | None = None) -> torch.Tensor:
        """prev (B, L, V, 3): the offsets of frames start−1 … start+L−2 → offsets of frames
        start … start+L−1 (B, L, V, 3); ``audio_tok`` (B, L, d) those frames' audio tokens."""
        b, length, v, _ = prev.shape
        z = torch.matmul(prev.float().reshape(b, length, v * 3), analysis) / v
        pos = periodic_positional_encoding(torch.arange(start, start + length, device=prev.device),
                                           self.d_model, self.period)
        x = self.motion_in(z) + style[:, None] + pos[None]
        self_mask = biased_causal_mask(length, self.n_heads, self.period, prev.device).repeat(b, 1, 1)
        align = ~torch.eye(length, dtype=torch.bool, device=prev.device)  # frame t sees audio token t only
        h = self.decoder(x, audio_tok, tgt_mask=self_mask, memory_mask=align, tgt_key_padding_mask=pad)
        coef = self.coef_out(self.out_norm(h))
        return torch.matmul(coef, synthesis).view(b, length, v, 3)

    # ------------------------------------------------------------------ training / generation

    def forward(self, targets: torch.Tensor, template: torch.Tensor, audio: torch.Tensor,
                frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: ``targets`` (B, T, V, 3) are the frames fed back (shifted by one, zeros
        before frame 0); template (B, V, 3) m; audio (B, Ta, D) → predicted offsets (B, T, V, 3)."""
        assert targets.ndim == 4 and targets.shape[-1] == 3, f"targets must be (B, T, V, 3), got {tuple(targets.shape)}"
        b, t, v, _ = targets.shape
        assert template.shape == (b, v, 3), f"template must be (B, V, 3) = {(b, v, 3)}, got {tuple(template.shape)}"
        assert audio.ndim == 3 and audio.shape[0] == b and audio.shape[2] == self.audio_dim, (
            f"audio must be (B, Ta, {self.audio_dim}), got {tuple(audio.shape)}")
        analysis, synthesis, style = self.encode_template(template)
        prev = torch.cat([torch.zeros_like(targets[:, :1]), targets[:, :-1]], dim=1)
        pad = None  # additive, like the self-attention mask (mixing bool and float masks is deprecated)
        if frame_mask is not None:
            pad = torch.zeros(frame_mask.shape, device=targets.device).masked_fill(~frame_mask.bool(), float("-inf"))
        return self._decode(prev, 0, analysis, synthesis, style, self.audio_tokens(audio, t), pad)

    @torch.no_grad()
    def generate(self, template: torch.Tensor, audio: torch.Tensor, n_frames: int,
                 context_frames: int | None = None) -> torch.Tensor:
        """Autoregressive generation: template (B, V, 3) m, audio (B, Ta, D) → (B, T, V, 3) offsets in
        model units. Frame t attends to at most ``context_frames`` (default: the model's) previous frames."""
        context = int(context_frames or self.context_frames)
        b, v = template.shape[:2]
        analysis, synthesis, style = self.encode_template(template)
        audio_tok = self.audio_tokens(audio, n_frames)
        out = torch.zeros(b, n_frames + 1, v, 3, device=template.device)  # out[:, t + 1] = frame t
        for t in range(n_frames):
            start = max(0, t + 1 - context)
            prev = out[:, start:t + 1]  # frames start−1 … t−1 (index 0 is the zero frame before the clip)
            pred = self._decode(prev, start, analysis, synthesis, style, audio_tok[:, start:t + 1])
            out[:, t + 1] = pred[:, -1]
        return out[:, 1:]
