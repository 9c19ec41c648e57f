"""Audio front ends: 16 kHz waveform (B, N) -> features (B, Ta, D) at ``cfg.audio.feature_rate`` (50 Hz).

Both front ends share one frame grid so features are interchangeable downstream: feature frame
``i`` is computed from samples ``[320 i, 320 i + 400)`` (25 ms window, 20 ms hop) and is treated
as covering the time interval ``[i / 50, (i + 1) / 50)`` seconds. (The true window centre is
2.5 ms later; that is well below one video frame and the same for both front ends.)

* ``"mel"`` (offline default): log-mel spectrogram computed in torch. Audio is zero-padded at the
  end so ``Ta = ceil(N / 320)``. **Normalisation is per utterance**: each mel bin is shifted and
  scaled to zero mean / unit variance over the *valid* frames of that utterance (padding excluded),
  which removes recording gain and channel colour. Feed whole utterances (not crops) so that
  training, featurize and inference normalise identically.
* ``"hubert"``: ``transformers.HubertModel.from_pretrained(cfg.audio.hubert_path)``, frozen and
  always in eval mode, last hidden state (768-d for HuBERT-base). Never downloads: the path must be
  a local directory. ``Ta = floor((N - 400) / 320) + 1`` (the conv stack's own arithmetic).

``encoder_id(cfg.audio)`` names the encoder and its weights so cached features can be checked.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from emodifftalk.config import LEVEL_DIM, AudioConfig
from emodifftalk.data.audio import SAMPLE_RATE

WIN_LENGTH = 400  # 25 ms at 16 kHz
HOP_LENGTH = 320  # 20 ms at 16 kHz -> 50 Hz
N_FFT = 512
MEL_VERSION = 1  # bump when the mel recipe changes: invalidates cached features


class AudioFrontend(nn.Module):
    """Common interface: ``forward(audio (B, N), audio_mask (B, N) | None) -> (B, Ta, D)``."""

    dim: int
    rate: float = SAMPLE_RATE / HOP_LENGTH
    # True if features of a long file may be computed in overlapping chunks (context-dependent
    # encoders whose cost grows with length); False if the whole utterance is processed at once.
    chunked: bool = False

    def num_frames(self, n_samples: torch.Tensor | int) -> torch.Tensor | int:
        raise NotImplementedError

    def frames_mask(self, audio_mask: torch.Tensor, n_frames: int) -> torch.Tensor:
        """(B, N) sample mask -> (B, Ta) frame mask: a frame is valid if its first hop is real audio."""
        lengths = audio_mask.long().sum(dim=1)
        valid = torch.as_tensor(self.num_frames(lengths), device=audio_mask.device)
        idx = torch.arange(n_frames, device=audio_mask.device)
        return idx[None, :] < valid[:, None]

    def _check_input(self, audio: torch.Tensor, audio_mask: torch.Tensor | None) -> None:
        assert audio.ndim == 2, f"audio must be (B, N) at 16 kHz, got {tuple(audio.shape)}"
        assert audio.shape[1] > 0, "audio is empty (0 samples)"
        if audio_mask is not None:
            assert audio_mask.shape == audio.shape, (
                f"audio_mask {tuple(audio_mask.shape)} must match audio {tuple(audio.shape)}")


# ------------------------------------------------------------------------------------------------
# log-mel
# ------------------------------------------------------------------------------------------------


def _hz_to_mel(f):
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 20.0, f_max: float | None = None) -> torch.Tensor:
    """HTK-style triangular mel filters, (n_fft // 2 + 1, n_mels), each filter area-normalised."""
    f_max = f_max or sample_rate / 2
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_pts = torch.linspace(_hz_to_mel(torch.tensor(f_min, dtype=torch.float64)),
                             _hz_to_mel(torch.tensor(f_max, dtype=torch.float64)), n_mels + 2)
    hz = _mel_to_hz(mel_pts)
    lower, centre, upper = hz[:-2], hz[1:-1], hz[2:]
    up = (freqs[:, None] - lower[None]) / (centre - lower)[None]
    down = (upper[None] - freqs[:, None]) / (upper - centre)[None]
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb * (2.0 / (upper - lower))[None]  # slaney-style area normalisation
    return fb.float()


def mel_centre_hz(n_mels: int, sample_rate: int = SAMPLE_RATE, f_min: float = 20.0) -> torch.Tensor:
    """(n_mels,) centre frequency of each filter of :func:`mel_filterbank`, in Hz."""
    top = _hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    pts = torch.linspace(_hz_to_mel(torch.tensor(f_min, dtype=torch.float64)), top, n_mels + 2)
    return _mel_to_hz(pts[1:-1]).float()


class MelFrontend(AudioFrontend):
    """Log-mel spectrogram, 25 ms Hann window, 20 ms hop (50 Hz), per-utterance normalised."""

    chunked = False
    CHUNK_FRAMES = 6000  # 2 minutes of audio per STFT call

    def __init__(self, n_mels: int = 80):
        super().__init__()
        self.dim = int(n_mels)
        self.register_buffer("window", torch.hann_window(WIN_LENGTH), persistent=False)
        self.register_buffer("fbank", mel_filterbank(self.dim), persistent=False)

    def num_frames(self, n_samples):
        if isinstance(n_samples, torch.Tensor):
            return torch.div(n_samples + HOP_LENGTH - 1, HOP_LENGTH, rounding_mode="floor")
        return -(-int(n_samples) // HOP_LENGTH)

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(audio, audio_mask)
        b, n = audio.shape
        ta = self.num_frames(n)
        if audio_mask is not None:
            audio = audio * audio_mask.to(audio.dtype)
        # torch.stft centres the 400-sample window inside each 512-sample FFT frame; shifting by
        # (512 - 400) / 2 puts the window of frame i exactly on samples [320 i, 320 i + 400)
        left = (N_FFT - WIN_LENGTH) // 2
        x = F.pad(audio.float(), (left, (ta - 1) * HOP_LENGTH + N_FFT - left - n))
        # frames are independent, so long inputs are transformed in chunks of frames (bounded
        # memory, identical result); only the normalisation below sees the whole utterance
        chunks = []
        for f0 in range(0, ta, self.CHUNK_FRAMES):
            f1 = min(ta, f0 + self.CHUNK_FRAMES)
            seg = x[:, f0 * HOP_LENGTH:(f1 - 1) * HOP_LENGTH + N_FFT]
            spec = torch.stft(seg, n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=WIN_LENGTH,
                              window=self.window, center=False, return_complex=True)  # (B, F, t)
            power = spec.real.square() + spec.imag.square()
            chunks.append(torch.log(torch.einsum("bft,fm->btm", power, self.fbank) + 1e-6))
        logmel = torch.cat(chunks, dim=1)  # (B, Ta, M)
        assert logmel.shape[1] == ta, (logmel.shape, ta)
        if audio_mask is None:
            fmask = torch.ones(b, ta, dtype=torch.bool, device=audio.device)
        else:
            fmask = self.frames_mask(audio_mask, ta)
        return normalize_per_utterance(logmel, fmask)


def normalize_per_utterance(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean / unit std per (utterance, channel) over valid frames; padded frames become 0."""
    m = mask.to(x.dtype)[..., None]
    count = m.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (x * m).sum(dim=1, keepdim=True) / count
    var = ((x - mean).square() * m).sum(dim=1, keepdim=True) / count
    return (x - mean) / torch.sqrt(var + eps) * m


# ------------------------------------------------------------------------------------------------
# HuBERT
# ------------------------------------------------------------------------------------------------


class HubertFrontend(AudioFrontend):
    """Frozen ``transformers.HubertModel`` loaded from a local directory (never the hub)."""

    chunked = True  # self-attention over the whole input: long files are processed in chunks

    def __init__(self, model: nn.Module, normalize_input: bool = True):
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()
        self.dim = int(model.config.hidden_size)
        self.normalize_input = normalize_input
        kernels, strides = list(model.config.conv_kernel), list(model.config.conv_stride)
        self._conv = list(zip(kernels, strides))
        self.receptive_field = 1
        for k, s in reversed(self._conv):
            self.receptive_field = (self.receptive_field - 1) * s + k
        self.hop = math.prod(strides)

    @classmethod
    def from_local(cls, path: str | Path) -> HubertFrontend:
        from transformers import HubertModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"audio.hubert_path={path} is not a local HuBERT directory (no config.json); "
                "download facebook/hubert-base-ls960 elsewhere and point audio.hubert_path at it")
        model = HubertModel.from_pretrained(str(path), local_files_only=True)
        normalize = True
        pre = path / "preprocessor_config.json"
        if pre.is_file():  # follow the checkpoint's own feature-extractor recipe when given
            normalize = bool(json.loads(pre.read_text()).get("do_normalize", True))
        return cls(model, normalize_input=normalize)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: dropout / layer drop never active
        return self

    def num_frames(self, n_samples):
        is_tensor = isinstance(n_samples, torch.Tensor)
        n = n_samples if is_tensor else int(n_samples)
        for k, s in self._conv:
            n = torch.div(n - k, s, rounding_mode="floor") + 1 if is_tensor else (n - k) // s + 1
        # shorter than one window: forward() pads to one frame
        return n.clamp(min=1) if is_tensor else max(n, 1)

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(audio, audio_mask)
        x = audio.float()
        if x.shape[1] < self.receptive_field:  # shorter than one window: pad to one frame
            x = F.pad(x, (0, self.receptive_field - x.shape[1]))
            if audio_mask is not None:
                audio_mask = F.pad(audio_mask, (0, self.receptive_field - audio_mask.shape[1]))
        if audio_mask is not None:
            x = x * audio_mask.to(x.dtype)
        if self.normalize_input:  # Wav2Vec2FeatureExtractor's zero-mean/unit-var per utterance
            m = torch.ones_like(x) if audio_mask is None else audio_mask.to(x.dtype)
            cnt = m.sum(dim=1, keepdim=True).clamp(min=1.0)
            mean = (x * m).sum(dim=1, keepdim=True) / cnt
            var = ((x - mean).square() * m).sum(dim=1, keepdim=True) / cnt
            x = (x - mean) / torch.sqrt(var + 1e-7) * m
        with torch.no_grad():
            # HuBERT-base (group-norm feature extractor) is meant to see zero padding without an
            # attention mask; layer-norm variants accept a mask.
            kwargs = {}
            if audio_mask is not None and self.model.config.feat_extract_norm == "layer":
                kwargs["attention_mask"] = audio_mask.long()
            out = self.model(x, **kwargs).last_hidden_state
        return out.float()


# ------------------------------------------------------------------------------------------------
# level channels (silence cue)
# ------------------------------------------------------------------------------------------------

LEVEL_RANGE_DB = 60.0  # levels are clipped to this range and scaled to [0, 1]
FLOOR_QUANTILE = 0.1  # the utterance's noise floor: this quantile of its frame levels
LEVEL_VERSION = 1  # bump when the recipe changes: invalidates cached features


def frame_levels_db(audio: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(B, N) 16 kHz audio -> (B, n_frames) frame power in dB, frame ``i`` over samples
    ``[320 i, 320 i + 400)`` (the mel grid), zero-padded past the end."""
    need = (n_frames - 1) * HOP_LENGTH + WIN_LENGTH
    x = F.pad(audio.float(), (0, max(0, need - audio.shape[1])))[:, :need]
    power = x.unfold(1, WIN_LENGTH, HOP_LENGTH).square().mean(dim=-1)
    return 10.0 * torch.log10(power + 1e-12)  # -120 dB: far below any level the channels resolve


def level_features(audio: torch.Tensor, audio_mask: torch.Tensor | None, n_frames: int,
                   frame_mask: torch.Tensor) -> torch.Tensor:
    """(B, n_frames, 2): the frame's level below the utterance's peak and above its noise floor,
    each in dB / ``LEVEL_RANGE_DB`` clipped to [0, 1]; padded frames are 0.

    Both are differences of levels within one utterance, so a recording's gain cancels; the
    floor-relative channel also separates speech from a constant noise bed."""
    if audio_mask is not None:
        audio = audio * audio_mask.to(audio.dtype)
    db = frame_levels_db(audio, n_frames)
    valid = frame_mask.to(torch.bool)
    lo = torch.finfo(db.dtype).min
    peak = torch.where(valid, db, torch.full_like(db, lo)).amax(dim=1, keepdim=True)
    floors = []
    for row, m in zip(db, valid):  # quantile over each utterance's own valid frames
        floors.append(torch.quantile(row[m], FLOOR_QUANTILE) if m.any() else row.new_tensor(0.0))
    floor = torch.stack(floors)[:, None]
    below_peak = ((db - peak) / LEVEL_RANGE_DB + 1.0).clamp(0.0, 1.0)
    above_floor = ((db - floor) / LEVEL_RANGE_DB).clamp(0.0, 1.0)
    return torch.stack([below_peak, above_floor], dim=-1) * valid[..., None].to(db.dtype)


class LevelFeatures(AudioFrontend):
    """Any front end plus the two level channels of :func:`level_features` on its frame grid."""

    def __init__(self, inner: AudioFrontend):
        super().__init__()
        self.inner = inner
        self.dim = inner.dim + LEVEL_DIM
        self.chunked = inner.chunked

    def num_frames(self, n_samples):
        return self.inner.num_frames(n_samples)

    def levels(self, audio: torch.Tensor, audio_mask: torch.Tensor | None = None,
               n_frames: int | None = None) -> torch.Tensor:
        """The level channels alone (B, Ta, 2) for the whole of ``audio`` (chunked callers use this
        on the whole utterance: peak and floor are per utterance, not per chunk)."""
        ta = int(self.num_frames(audio.shape[1])) if n_frames is None else int(n_frames)
        if audio_mask is None:
            fmask = torch.ones(audio.shape[0], ta, dtype=torch.bool, device=audio.device)
        else:
            fmask = self.frames_mask(audio_mask, ta)
        return level_features(audio, audio_mask, ta, fmask)

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.inner(audio, audio_mask)
        return torch.cat([feats, self.levels(audio, audio_mask, feats.shape[1]).to(feats.dtype)], dim=-1)


# ------------------------------------------------------------------------------------------------
# factory + provenance
# ------------------------------------------------------------------------------------------------


def build_frontend(cfg: AudioConfig) -> AudioFrontend:
    """The front end named by ``cfg.frontend`` ("mel" or "hubert")."""
    if abs(cfg.feature_rate - SAMPLE_RATE / HOP_LENGTH) > 1e-6:
        raise ValueError(f"audio.feature_rate must be {SAMPLE_RATE / HOP_LENGTH} Hz "
                         f"(both front ends hop 20 ms), got {cfg.feature_rate}")
    if cfg.frontend == "mel":
        inner = MelFrontend(cfg.n_mels)
    elif cfg.frontend == "hubert":
        if not cfg.hubert_path:
            raise ValueError("audio.frontend=hubert needs audio.hubert_path=/local/dir")
        inner = HubertFrontend.from_local(cfg.hubert_path)
    else:
        raise ValueError(f"unknown audio.frontend {cfg.frontend!r}; expected 'mel' or 'hubert'")
    return LevelFeatures(inner) if cfg.level_features else inner


def feature_dim(cfg: AudioConfig) -> int:
    """Feature width of ``cfg``'s front end without loading weights (HuBERT: its config.json)."""
    if cfg.frontend == "hubert":
        cfg_file = Path(cfg.hubert_path) / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"audio.hubert_path={cfg.hubert_path} has no config.json")
        base = int(json.loads(cfg_file.read_text())["hidden_size"])
    else:
        base = int(cfg.n_mels)
    return base + (LEVEL_DIM if cfg.level_features else 0)


def _sha256_file_head(path: Path, n_bytes: int = 1 << 20) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(n_bytes)).hexdigest()[:16]


def encoder_id(cfg: AudioConfig) -> str:
    """A string naming the encoder and its weights; features cached under one id are not valid
    for another. HuBERT: sha256 of config.json + size and sha256 of the first MiB of the weights."""
    base = _base_encoder_id(cfg)
    return f"{base}:levels-v{LEVEL_VERSION}" if cfg.level_features else base


def _base_encoder_id(cfg: AudioConfig) -> str:
    if cfg.frontend == "mel":
        return f"mel-v{MEL_VERSION}:n_mels={cfg.n_mels}:win={WIN_LENGTH}:hop={HOP_LENGTH}:nfft={N_FFT}:norm=utterance"
    if cfg.frontend == "hubert":
        path = Path(cfg.hubert_path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"audio.hubert_path={path} has no config.json")
        cfg_hash = hashlib.sha256(cfg_file.read_bytes()).hexdigest()[:16]
        weights = [p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.is_file()]
        if not weights:
            raise FileNotFoundError(f"audio.hubert_path={path} has no model.safetensors or pytorch_model.bin")
        w = weights[0]
        return (f"hubert:config={cfg_hash}:weights={w.name}:{w.stat().st_size}:"
                f"{_sha256_file_head(w)}:layer=last")
    raise ValueError(f"unknown audio.frontend {cfg.frontend!r}")
