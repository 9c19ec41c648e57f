"""AU-prompt denoiser Dθ(x_n, P, E, A, n) → x̂0 (paper supp. eq. 18). Architecture only.

Shapes: x_n (B, T, V, 3) noisy per-vertex offsets (in diffusion units, see ``offset_scale``),
P (B, V, 3) template in metres, E (B, T, 17) AU codes, A (B, Ta, D) audio features at
``feature_rate`` (50 Hz), n (B,) diffusion timesteps → x̂0 (B, T, V, 3) clean offsets.

Works for any vertex count V and any number of frames T; nothing has V in a weight shape:

* **Template code** (once per template): P is centred and scaled to unit RMS radius, Fourier
  encoded and passed through a small point MLP → per-vertex *analysis* vectors W(v) ∈ R^{3×r},
  *synthesis* vectors B(v) ∈ R^{r×3} and a pooled template token.
* **Frame encoder**: z_t = mean_v W(v)ᵀ x_n(t, v) ∈ R^r → Linear → d_model (one matmul). This is a per-vertex
  linear map with template-generated weights followed by mean pooling over vertices; we keep it
  linear on purpose because a per-vertex nonlinear MLP over all T×V entries costs O(T·V·d²) per
  denoising step, while this is O(T·V·r) (a few matmuls; ``benchmarks/bench_diffusion.py`` times it).
* **Conditions per frame**: AU codes (Linear 17 → d) plus audio features windowed around the
  frame centre (``audio_window`` feature frames each side, zero outside the clip, flattened,
  Linear → d), fused by an MLP. Classifier-free guidance: ``drop_cond`` replaces this per-frame
  condition by a learned null embedding (the template is identity, not a guided condition).
  ``drop_audio`` replaces only the audio term by a learned null vector (training drops audio alone
  now and then, so motion must also be explained from the AU codes: see the AU fields below).
* **Transformer over time** (pre-LN), tokens = [timestep token, template token, frames...]; each
  frame token also gets the timestep embedding and a sinusoidal frame position. Bidirectional by
  default, causal if asked (prefix tokens always visible).
* **Per-vertex low-rank decoder**: c_t = Linear(d → r); x̂0(t, v) = c_tᵀ B(v) + Σ_k E_tk F_k(v).
  No Linear(d, V·3). The AU prompt reaches the output twice: through the transformer, and through
  per-template AU displacement fields F(v) ∈ R^{17×3} that the point MLP predicts from the
  template (zero at init, off when the condition is dropped) — FACS's additive picture, which
  the transformer refines. Without F a short run learns to read mouth motion off the audio and
  all but ignores the codes (AU-edit gain ≈ 0.05, see ``eval/au_response.py``).
* **Edit fields** (``au_path=True``, training with ``diffusion.lambda_au_fields``): a second set of
  per-template fields G(v) ∈ R^{17×3} and a bias b(v), fitted by their own loss to explain the
  offsets from the codes alone, b + Σ_k (E_tk − μ_k) G_k ≈ x0; they are not part of x̂0. F, trained
  jointly, only learns what audio and the transformer leave unexplained (an edit through F moves
  the face ~0.2× as far as the data does); G is the least-squares AU→offset map, what an edit of
  one code should add (``edit_offsets``). G = Wᵀ G_white is learnt for whitened codes (buffers
  ``au_mean`` μ and ``au_whitening`` W = Σ_L^-½ of the training labels): the labels' AUs move in
  groups, and gradient descent on grouped inputs learns their sum long before their differences.
* **Edit de-attenuation** ``au_deattenuation`` (17×17 buffer, identity by default): noisy labels
  shrink a least-squares map (errors in variables); training sets this matrix from the labels'
  own statistics (``motion/au_calibration.py``) and ``edit_offsets`` applies it to code changes.

Audio alignment: feature frame i covers [i/rate, (i+1)/rate) s (see audio_frontend.py) and video
frame t covers [t/fps, (t+1)/fps); the centre feature of frame t is ⌊(t + start_frame + ½)·rate/fps⌋.
``start_frame`` lets a window of a long sequence use the clip's full feature array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from emodifftalk.au import NUM_AUS


@dataclass
class TemplateCode:
    """Per-template quantities, reusable across frames and denoising steps.

    Stored flattened over (vertex, xyz) so the frame encoder and decoder are single batched
    matmuls: x (B, T, V·3) @ analysis (B, V·3, r) and coef (B, T, r) @ synthesis (B, r, V·3).
    """

    analysis: torch.Tensor  # (B, V·3, r)
    synthesis: torch.Tensor  # (B, r, V·3), contiguous
    token: torch.Tensor  # (B, d_model)
    au_fields: torch.Tensor  # (B, 17, V·3): per-unit AU displacement, diffusion units
    edit_fields: torch.Tensor  # (B, 17, V·3): the fitted AU→offset map G (edits), diffusion units
    au_bias: torch.Tensor  # (B, V·3): offset of the edit fields' fit at mean codes, diffusion units

    def select(self, index: torch.Tensor) -> TemplateCode:
        """Row b of the result is row ``index[b]`` of this code."""
        return TemplateCode(self.analysis[index], self.synthesis[index], self.token[index],
                            self.au_fields[index], self.edit_fields[index], self.au_bias[index])

    @property
    def num_vertices(self) -> int:
        return self.analysis.shape[1] // 3


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) positions/timesteps → (N, dim) [cos | sin] features (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return emb if dim % 2 == 0 else torch.nn.functional.pad(emb, (0, 1))


def normalize_template(template: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) → centred, unit-RMS-radius copy (makes the point MLP unit- and size-free)."""
    centred = template - template.mean(dim=1, keepdim=True)
    rms = centred.square().sum(-1).mean(dim=1).sqrt().clamp(min=1e-8)
    return centred / rms[:, None, None]


def fourier_features(p: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """(..., 3) → (..., 3 + 6·n_freqs): [p, sin(2^k π p), cos(2^k π p)]."""
    freqs = (2.0 ** torch.arange(n_freqs, device=p.device, dtype=p.dtype)) * math.pi
    args = p[..., None] * freqs  # (..., 3, F)
    return torch.cat([p, torch.sin(args).flatten(-2), torch.cos(args).flatten(-2)], dim=-1)


def window_audio(audio: torch.Tensor, n_frames: int, fps: float, feature_rate: float,
                 half_window: int, start_frame: int = 0) -> torch.Tensor:
    """(B, Ta, D) features → (B, T, 2w+1, D): the features around each video frame's centre.

    Out-of-range feature indices (clip edges) give zeros.
    """
    b, ta, d = audio.shape
    t = torch.arange(n_frames, device=audio.device, dtype=torch.float64) + start_frame
    centre = torch.floor((t + 0.5) * (feature_rate / fps)).long()
    idx = centre[:, None] + torch.arange(-half_window, half_window + 1, device=audio.device)[None]
    valid = (idx >= 0) & (idx < ta)
    gathered = audio[:, idx.clamp(0, max(ta - 1, 0)).reshape(-1)].reshape(b, n_frames, idx.shape[1], d)
    return gathered * valid[None, :, :, None].to(audio.dtype)


class Denoiser(nn.Module):
    """x0-predicting transformer over frames with a vertex-count-free encoder/decoder."""

    def __init__(self, audio_dim: int, d_model: int = 256, n_heads: int = 4, n_layers: int = 4,
                 rank: int = 64, audio_window: int = 4, fps: float = 25.0,
                 feature_rate: float = 50.0, dropout: float = 0.1, causal: bool = False,
                 n_aus: int = NUM_AUS, point_hidden: int = 128, n_freqs: int = 6,
                 offset_scale: float = 1.0):
        super().__init__()
        assert d_model % n_heads == 0, f"d_model {d_model} must be divisible by n_heads {n_heads}"
        self.audio_dim, self.d_model, self.rank = int(audio_dim), int(d_model), int(rank)
        self.audio_window, self.fps, self.feature_rate = int(audio_window), float(fps), float(feature_rate)
        self.causal, self.n_aus, self.n_freqs = bool(causal), int(n_aus), int(n_freqs)
        # metres per diffusion unit; a buffer so it is saved with the weights
        self.register_buffer("offset_scale", torch.tensor(float(offset_scale)))

        # template → per-vertex analysis/synthesis vectors + template token
        in_dim = 3 + 6 * n_freqs
        self.point_mlp = nn.Sequential(nn.Linear(in_dim, point_hidden), nn.SiLU(),
                                       nn.Linear(point_hidden, point_hidden), nn.SiLU())
        self.analysis_head = nn.Linear(point_hidden, 3 * rank)
        self.synthesis_head = nn.Linear(point_hidden, rank * 3)
        self.template_token = nn.Sequential(nn.Linear(point_hidden, d_model), nn.SiLU(),
                                            nn.Linear(d_model, d_model))

        self.frame_in = nn.Linear(rank, d_model)
        self.au_in = nn.Linear(n_aus, d_model)
        self.audio_in = nn.Linear((2 * audio_window + 1) * audio_dim, d_model)
        self.cond_mlp = nn.Sequential(nn.SiLU(), nn.Linear(d_model, d_model))
        self.null_cond = nn.Parameter(torch.zeros(d_model))
        self.null_audio = nn.Parameter(torch.zeros(d_model))
        self.au_field_head = nn.Linear(point_hidden, n_aus * 3)
        self.edit_field_head = nn.Linear(point_hidden, n_aus * 3)
        self.au_bias_head = nn.Linear(point_hidden, 3)
        # code change → the change the AU fields should be given (errors-in-variables correction)
        self.register_buffer("au_deattenuation", torch.eye(n_aus))
        # the edit fields are learnt for whitened codes W (E − μ) (see the module docstring)
        self.register_buffer("au_whitening", torch.eye(n_aus))
        self.register_buffer("au_mean", torch.zeros(n_aus))
        self.time_mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=4 * d_model,
                                           dropout=dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d_model)
        self.coef_out = nn.Linear(d_model, rank)
        self._init_weights()

    @classmethod
    def from_config(cls, cfg, offset_scale: float = 1.0) -> Denoiser:
        """Build from the full ``Config`` (diffusion + audio sections)."""
        d = cfg.diffusion
        return cls(audio_dim=cfg.audio.feature_dim, d_model=d.d_model, n_heads=d.n_heads,
                   n_layers=d.n_layers, rank=d.vertex_embed_rank, audio_window=d.audio_window,
                   fps=d.fps, feature_rate=cfg.audio.feature_rate, dropout=d.dropout,
                   causal=d.causal, offset_scale=offset_scale)

    def _init_weights(self) -> None:
        nn.init.normal_(self.null_cond, std=0.02)
        nn.init.normal_(self.null_audio, std=0.02)
        nn.init.zeros_(self.au_field_head.weight)
        nn.init.zeros_(self.au_field_head.bias)
        nn.init.zeros_(self.edit_field_head.weight)
        nn.init.zeros_(self.edit_field_head.bias)
        nn.init.zeros_(self.au_bias_head.weight)
        nn.init.zeros_(self.au_bias_head.bias)
        # start with small outputs so early training is not dominated by a random basis
        nn.init.normal_(self.coef_out.weight, std=0.02 / math.sqrt(self.rank))
        nn.init.zeros_(self.coef_out.bias)

    # ------------------------------------------------------------------ pieces

    def encode_template(self, template: torch.Tensor) -> TemplateCode:
        """(B, V, 3) metres → ``TemplateCode`` (cache it across denoising steps)."""
        assert template.ndim == 3 and template.shape[-1] == 3, f"template must be (B, V, 3), got {tuple(template.shape)}"
        h = self.point_mlp(fourier_features(normalize_template(template.float()), self.n_freqs))
        b, v, _ = h.shape
        analysis = self.analysis_head(h).view(b, v * 3, self.rank)  # rows ordered (v, xyz)
        synthesis = self.synthesis_head(h).view(b, v, self.rank, 3).permute(0, 2, 1, 3).reshape(b, self.rank, v * 3)
        def fields(head: nn.Linear) -> torch.Tensor:  # (B, 17, V·3)
            return head(h).view(b, v, self.n_aus, 3).permute(0, 2, 1, 3).reshape(b, self.n_aus, v * 3)

        edit_fields = torch.matmul(self.au_whitening.T, fields(self.edit_field_head))  # E·G = (W E)·G_white
        return TemplateCode(analysis, synthesis.contiguous(), self.template_token(h.mean(dim=1)),
                            fields(self.au_field_head).contiguous(), edit_fields.contiguous(),
                            self.au_bias_head(h).reshape(b, v * 3))

    def edit_offsets(self, template_code: TemplateCode, delta_codes: torch.Tensor) -> torch.Tensor:
        """Offsets (B, T, V, 3), diffusion units, that a change of the AU codes ``delta_codes``
        (B, T, 17) adds through the AU fields, de-attenuated (see the module docstring)."""
        b, t = delta_codes.shape[:2]
        corrected = torch.matmul(delta_codes.float(), self.au_deattenuation.T)
        return torch.matmul(corrected, template_code.edit_fields).view(b, t, -1, 3)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # exports from before the edit fields: edits go through their joint fields F, no bias,
        # whitening or de-attenuation
        for name, source in (("edit_field_head.weight", "au_field_head.weight"),
                             ("edit_field_head.bias", "au_field_head.bias")):
            if prefix + name not in state_dict and prefix + source in state_dict:
                state_dict[prefix + name] = state_dict[prefix + source]
        for name, value in (("au_bias_head.weight", self.au_bias_head.weight),
                            ("au_bias_head.bias", self.au_bias_head.bias),
                            ("au_deattenuation", self.au_deattenuation),
                            ("au_whitening", self.au_whitening), ("au_mean", self.au_mean)):
            state_dict.setdefault(prefix + name, value.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode_condition(self, aus: torch.Tensor, audio: torch.Tensor | None,
                         start_frame: int = 0, drop_audio: torch.Tensor | None = None) -> torch.Tensor:
        """AU codes (B, T, 17) + audio features (B, Ta, D) or None → per-frame condition (B, T, d).

        ``drop_audio`` (B,) bool: rows whose audio term is the learned null audio vector.
        Independent of x_n and n: a sampler computes it once per window and passes it to every
        denoising step as ``cond_embedding``.
        """
        b, n_frames = aus.shape[:2]
        c = self.au_in(aus.float())
        if audio is not None:
            win = window_audio(audio.float(), n_frames, self.fps, self.feature_rate,
                               self.audio_window, start_frame)
            a = self.audio_in(win.flatten(2))
            if drop_audio is not None:
                drop = torch.as_tensor(drop_audio, device=a.device).bool().expand(b)
                a = torch.where(drop[:, None, None], self.null_audio.to(a.dtype).expand_as(a), a)
            c = c + a
        elif drop_audio is not None:  # keeps null_audio in the graph (DDP needs every parameter)
            c = c + 0.0 * self.null_audio
        return self.cond_mlp(c)

    def condition(self, aus: torch.Tensor, audio: torch.Tensor | None, n_frames: int,
                  drop_cond: torch.Tensor | None, start_frame: int = 0,
                  cond_embedding: torch.Tensor | None = None,
                  drop_audio: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame condition embedding (B, T, d); dropped rows get the learned null vector."""
        b = aus.shape[0]
        c = (self.encode_condition(aus, audio, start_frame, drop_audio) if cond_embedding is None
             else cond_embedding)
        assert c.shape == (b, n_frames, self.d_model), (
            f"condition must be (B, T, d) = {(b, n_frames, self.d_model)}, got {tuple(c.shape)}")
        if drop_cond is not None:
            drop = torch.as_tensor(drop_cond, device=c.device).bool().expand(b)
            c = torch.where(drop[:, None, None], self.null_cond.to(c.dtype).expand_as(c), c)
        return c

    # ------------------------------------------------------------------ forward

    def forward(self, x_n: torch.Tensor, template: torch.Tensor | None, aus: torch.Tensor,
                audio: torch.Tensor | None, n: torch.Tensor, *, drop_cond=None,
                frame_mask: torch.Tensor | None = None, start_frame: int = 0,
                template_code: TemplateCode | None = None,
                template_index: torch.Tensor | None = None,
                cond_embedding: torch.Tensor | None = None,
                drop_audio: torch.Tensor | None = None,
                au_path: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x_n (B,T,V,3), template (B,V,3) [or ``template_code``], aus (B,T,17),
        audio (B,Ta,D) or None (= no audio), n (B,) → x̂0 (B,T,V,3).

        ``drop_cond``: bool or (B,) bool — use the null condition (CFG / condition dropout).
        ``drop_audio``: bool or (B,) bool — the audio term only is replaced by its null vector.
        ``frame_mask``: (B, T) bool, True = real frame (padded frames are not attended to).
        ``template_index``: (B,) long — then ``template`` is (U, V, 3) *distinct* templates and row
        b uses ``template[template_index[b]]`` (batches repeat identities: encode each once).
        ``cond_embedding``: ``encode_condition(aus, audio, start_frame)`` computed beforehand
        (samplers reuse it across steps; ``aus``/``audio`` are then only used for shape checks).
        ``au_path``: return (x̂0, b + Σ_k (E_tk − μ_k) G_k): the edit fields' fit, for the caller's
        loss (the only one that trains G and b).
        """
        assert x_n.ndim == 4 and x_n.shape[-1] == 3, f"x_n must be (B, T, V, 3), got {tuple(x_n.shape)}"
        b, t, v, _ = x_n.shape
        assert aus.shape == (b, t, self.n_aus), f"aus must be (B, T, {self.n_aus}) = {(b, t, self.n_aus)}, got {tuple(aus.shape)}"
        if audio is not None:
            assert audio.ndim == 3 and audio.shape[0] == b and audio.shape[2] == self.audio_dim, (
                f"audio must be (B, Ta, {self.audio_dim}), got {tuple(audio.shape)}")
        n = torch.as_tensor(n, device=x_n.device).reshape(-1).expand(b)
        if template_code is None:
            assert template is not None, "pass template (B, V, 3) or template_code"
            if template_index is None:
                assert template.shape == (b, v, 3), f"template must be (B, V, 3) = {(b, v, 3)}, got {tuple(template.shape)}"
                template_code = self.encode_template(template)
            else:
                assert template.ndim == 3 and template.shape[1:] == (v, 3), (
                    f"template must be (U, {v}, 3) with template_index, got {tuple(template.shape)}")
                assert template_index.shape == (b,), f"template_index must be (B,) = ({b},), got {tuple(template_index.shape)}"
                code = self.encode_template(template)
                template_code = code.select(template_index.to(device=code.token.device, dtype=torch.long))
        assert template_code.num_vertices == v, (
            f"template has {template_code.num_vertices} vertices but x_n has {v}")

        z = torch.matmul(x_n.float().reshape(b, t, v * 3), template_code.analysis) / v  # (B, T, r)
        temb = self.time_mlp(sinusoidal_embedding(n, self.d_model))  # (B, d)
        pos = sinusoidal_embedding(torch.arange(t, device=x_n.device), self.d_model)  # (T, d)
        frames = (self.frame_in(z)
                  + self.condition(aus, audio, t, drop_cond, start_frame, cond_embedding, drop_audio)
                  + temb[:, None] + pos[None])
        tokens = torch.cat([temb[:, None], template_code.token[:, None], frames], dim=1)

        n_prefix = 2
        pad = None
        if frame_mask is not None:
            assert frame_mask.shape == (b, t), f"frame_mask must be (B, T) = {(b, t)}, got {tuple(frame_mask.shape)}"
            pad = torch.cat([torch.zeros(b, n_prefix, dtype=torch.bool, device=x_n.device),
                             ~frame_mask.bool()], dim=1)
        attn_mask = None
        if self.causal:
            L = t + n_prefix
            attn_mask = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x_n.device), diagonal=1)
            attn_mask[:, :n_prefix] = False  # prefix tokens are visible to every frame
        h = self.transformer(tokens, mask=attn_mask, src_key_padding_mask=pad)[:, n_prefix:]
        coef = self.coef_out(self.out_norm(h))  # (B, T, r)
        codes = aus.float()  # the direct AU-prompt path: Σ_k E_tk F_k(v)
        if drop_cond is not None:
            keep = ~torch.as_tensor(drop_cond, device=codes.device).bool().expand(b)
            codes = codes * keep[:, None, None].to(codes.dtype)
        out = torch.matmul(coef, template_code.synthesis) + torch.matmul(codes, template_code.au_fields)
        if not au_path:
            if self.training:  # keeps the edit fields in the graph (DDP needs every parameter)
                out = out + 0.0 * (template_code.edit_fields.sum() + template_code.au_bias.sum())
            return out.view(b, t, v, 3)
        centre = torch.matmul(self.au_mean, template_code.edit_fields)  # (B, V·3): the fit uses E − μ
        fit = torch.matmul(codes, template_code.edit_fields) + (template_code.au_bias - centre)[:, None]
        return out.view(b, t, v, 3), fit.view(b, t, v, 3)
