"""Speech-to-AU inference on audio of any length: ``predict_aus(wav) -> (T, 17)``.

Long audio
----------
The transformer (and a context-dependent audio encoder such as HuBERT) runs on windows of
``cfg.s2au.window_seconds`` that overlap by ``cfg.s2au.overlap_seconds``; there is no cap on the
total length. (The mel front end is frame-local: it runs over the whole file in bounded-memory
chunks, so its per-utterance normalisation sees the whole utterance.) Windows are laid out on the 50 Hz feature grid: window ``k`` starts at
``k * (W - O)`` frames and is ``W`` frames long (the last one is cut at the end of the audio, so it
is always longer than the overlap ``O``). **Stitching rule:** inside each overlap the two windows'
outputs are blended with a linear cross-fade (the earlier window's weight falls from 1 to 0 across
the overlap while the later one's rises from 0 to 1); outside overlaps each frame comes from the
single window that covers it. Cross-fading happens at the feature rate (50 Hz) before the frame
pooling onto the video grid, so seams are continuous and independent of the fps. Because the
encoder uses relative positions only, the result equals a single pass wherever a window holds the
whole receptive field of a frame.

Audio inputs
------------
A path (any common audio or video file, ``data.audio.read_audio``) or an array (``sample_rate``
required; (N,), (N, C) or (C, N) with C <= 8 channels). Multi-channel audio is averaged to mono
with a warning, everything is resampled to 16 kHz, and empty / unreadable / non-finite audio
raises ``AudioError`` (a ``ValueError``) naming the input.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emodifftalk.au import AU_INDEX, OPENFACE_MISSING_AUS
from emodifftalk.config import Config, apply_overrides, load_config
from emodifftalk.data.audio import AudioError, frame_levels_db, level_gain, load_audio
from emodifftalk.models.audio_frontend import (
    HOP_LENGTH,
    SAMPLE_RATE,
    WIN_LENGTH,
    AudioFrontend,
    LevelFeatures,
    build_frontend,
    encoder_id,
)
from emodifftalk.s2au.model import SpeechToAU, frames_for_duration, pool_to_frames
from emodifftalk.safetensors_io import load_tensors

log = logging.getLogger(__name__)

EXPORT_META = "s2au.json"  # written next to model.safetensors by the s2au training task
MAX_CHANNELS = 8


# ------------------------------------------------------------------------------------------------
# windows + cross-fade
# ------------------------------------------------------------------------------------------------


def window_spans(length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``[0, length)``: step ``window - overlap``; the last window
    ends at ``length`` and is always longer than ``overlap``."""
    if length <= 0:
        raise ValueError(f"cannot window an empty sequence (length {length})")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap ({overlap}) must be in [0, window={window})")
    spans, start = [], 0
    while True:
        end = min(start + window, length)
        spans.append((start, end))
        if end >= length:
            return spans
        start += window - overlap


def crossfade_weights(spans: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per-window weights (len = window length): linear ramps over each overlap, 1 elsewhere.

    In an overlap ``[s_next, e_prev)`` of n frames the earlier window gets ``(n - j - 0.5) / n`` and
    the later ``(j + 0.5) / n`` at offset j, so the two always sum to 1.
    """
    weights = []
    for k, (s, e) in enumerate(spans):
        w = torch.ones(e - s, dtype=torch.float64)
        if k > 0 and spans[k - 1][1] > s:  # ramp up over the overlap with the previous window
            n = spans[k - 1][1] - s
            w[:n] = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        if k + 1 < len(spans) and spans[k + 1][0] < e:  # ramp down over the next overlap
            n = e - spans[k + 1][0]
            w[e - s - n:] = w[e - s - n:] * (n - torch.arange(n, dtype=torch.float64) - 0.5) / n
        weights.append(w)
    return weights


def stitch(pieces: list[torch.Tensor], spans: list[tuple[int, int]], length: int) -> torch.Tensor:
    """Cross-fade per-window outputs (t_k, C) placed at ``spans`` into one (length, C) tensor."""
    c = pieces[0].shape[-1]
    acc = torch.zeros(length, c, dtype=torch.float64)
    norm = torch.zeros(length, 1, dtype=torch.float64)
    for piece, (s, e), w in zip(pieces, spans, crossfade_weights(spans)):
        assert piece.shape == (e - s, c), (tuple(piece.shape), (e - s, c))
        acc[s:e] += piece.detach().to("cpu", torch.float64) * w[:, None]
        norm[s:e] += w[:, None]
    return (acc / norm).to(pieces[0].dtype)


# ------------------------------------------------------------------------------------------------
# features + AU codes for one utterance
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_features(frontend: AudioFrontend, audio: torch.Tensor | np.ndarray, window_seconds: float,
                     overlap_seconds: float, device: str | torch.device = "cpu") -> torch.Tensor:
    """Mono 16 kHz audio (N,) -> features (Ta, D) on CPU, float32.

    Frame-independent front ends (mel) run on the whole utterance (so per-utterance normalisation
    sees all of it); context-dependent ones (HuBERT, ``frontend.chunked``) run on overlapping
    windows of the sample stream aligned to the 20 ms hop, cross-faded like the AU codes.
    """
    audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    assert audio.ndim == 1, f"audio must be mono (N,), got {tuple(audio.shape)}"
    if audio.numel() == 0:
        raise ValueError("audio is empty (0 samples)")
    frontend = frontend.to(device).eval()
    if isinstance(frontend, LevelFeatures) and frontend.chunked:
        # the level channels are relative to the whole utterance's peak and floor, never a chunk's
        inner = extract_features(frontend.inner, audio, window_seconds, overlap_seconds, device)
        levels = frontend.levels(audio[None].to(device), n_frames=inner.shape[0])[0].float().cpu()
        return torch.cat([inner, levels], dim=-1)
    n = audio.shape[0]
    total = int(frontend.num_frames(n))
    window = max(1, round(window_seconds * frontend.rate))
    overlap = min(window - 1, max(0, round(overlap_seconds * frontend.rate)))
    if not frontend.chunked or total <= window:
        feats = frontend(audio[None].to(device))[0]
        return feats.float().cpu()
    spans = window_spans(total, window, overlap)
    pieces = []
    for s, e in spans:
        a0 = s * HOP_LENGTH
        a1 = min(n, (e - 1) * HOP_LENGTH + WIN_LENGTH) if e < total else n
        piece = frontend(audio[a0:a1][None].to(device))[0].float().cpu()
        pieces.append(piece[: e - s])
        assert pieces[-1].shape[0] == e - s, (piece.shape, s, e)
    return stitch(pieces, spans, total)


@torch.no_grad()
def encode_windowed(model: SpeechToAU, feats: torch.Tensor, window_seconds: float, overlap_seconds: float,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Features (Ta, D) -> audio-rate AU intensities (Ta, 17), windowed + cross-faded."""
    assert feats.ndim == 2 and feats.shape[1] == model.in_dim, (
        f"feats must be (Ta, {model.in_dim}), got {tuple(feats.shape)}")
    window = max(1, round(window_seconds * model.feature_rate))
    overlap = min(window - 1, max(0, round(overlap_seconds * model.feature_rate)))
    spans = window_spans(feats.shape[0], window, overlap)
    pieces = [model.encode(feats[s:e][None].to(device, torch.float32))[0].float().cpu() for s, e in spans]
    return stitch(pieces, spans, feats.shape[0])


@torch.no_grad()
def predict_from_features(model: SpeechToAU, feats: torch.Tensor, n_frames: int, fps: float,
                          window_seconds: float, overlap_seconds: float,
                          device: str | torch.device = "cpu") -> torch.Tensor:
    """Features (Ta, D) -> AU codes (n_frames, 17) on the video grid of ``fps``."""
    was_training = model.training
    model.eval()
    try:
        au = encode_windowed(model, torch.as_tensor(feats).float(), window_seconds, overlap_seconds, device)
    finally:
        model.train(was_training)
    return pool_to_frames(au[None], None, int(n_frames), float(fps), model.feature_rate)[0]


GATED_AUS = ("AU25", "AU26")  # lips apart, jaw drop: what must close when nobody speaks
GATE_HOLD_FRAMES = 2  # the gate opens this many frames before speech and closes as many after


def speech_activity(audio: np.ndarray, n_frames: int, fps: float, closed_db: float, open_db: float) -> np.ndarray:
    """(n_frames,) weight in [0, 1] from each video frame's RMS level re the file's loudest frame
    (frame ``t`` = samples ``[t/fps, (t+1)/fps)`` at 16 kHz): 0 below ``closed_db``, 1 above
    ``open_db``, linear between, then a running max over ±``GATE_HOLD_FRAMES`` frames."""
    db = frame_levels_db(audio, n_frames, fps, SAMPLE_RATE)
    w = np.clip((db - closed_db) / (open_db - closed_db), 0.0, 1.0)
    padded = np.pad(w, GATE_HOLD_FRAMES)
    return np.max([padded[k:k + n_frames] for k in range(2 * GATE_HOLD_FRAMES + 1)], axis=0)


def gate_silence(aus: np.ndarray, audio: np.ndarray, fps: float, s2au_cfg) -> np.ndarray:
    """``aus`` (T, 17) with the ``GATED_AUS`` scaled by :func:`speech_activity` (``s2au.silence_gate``)."""
    w = speech_activity(audio, aus.shape[0], fps, s2au_cfg.gate_closed_db, s2au_cfg.gate_open_db)
    out = aus.copy()
    for name in GATED_AUS:
        out[:, AU_INDEX[name]] *= w
    return out


def loudness_jaw_gain(audio: np.ndarray, n_frames: int, fps: float, s2au_cfg) -> np.ndarray:
    """(n_frames,) each video frame's RMS level re the file's loudest frame through
    :func:`~emodifftalk.data.audio.level_gain`: 1 there, ``s2au.loudness_jaw_quiet_gain`` at
    ``s2au.loudness_jaw_quiet_db`` and below, linear in dB between. Gain invariant."""
    db = frame_levels_db(audio, n_frames, fps, SAMPLE_RATE)
    return level_gain(db, s2au_cfg.loudness_jaw_quiet_db, s2au_cfg.loudness_jaw_quiet_gain)


def loudness_jaw(aus: np.ndarray, audio: np.ndarray, fps: float, s2au_cfg) -> np.ndarray:
    """``aus`` (T, 17) with the ``GATED_AUS`` (AU25, AU26) scaled by :func:`loudness_jaw_gain`
    (``s2au.loudness_jaw``); the other AUs are untouched."""
    g = loudness_jaw_gain(audio, aus.shape[0], fps, s2au_cfg)
    out = aus.copy()
    for name in GATED_AUS:
        out[:, AU_INDEX[name]] *= g
    return out


# ------------------------------------------------------------------------------------------------
# loading an exported model
# ------------------------------------------------------------------------------------------------


@dataclass
class S2AUBundle:
    """Everything inference needs: the encoder, its audio front end and the resolved config."""

    model: SpeechToAU
    frontend: AudioFrontend
    cfg: Config
    encoder_id: str
    # AUs without a single valid training label (AU24 under OpenFace): their heads never learned,
    # so their outputs are arbitrary; inference reports 0, the value the motion model trains on
    # for masked labels (train.tasks.motion)
    unlabelled_aus: tuple[str, ...] = ()


def build_s2au_model(cfg: Config, in_dim: int) -> SpeechToAU:
    return SpeechToAU(cfg.s2au, in_dim=in_dim, feature_rate=cfg.audio.feature_rate)


def load_s2au(model_dir: str | Path, device: str | torch.device = "cpu",
              overrides: list[str] | None = None) -> S2AUBundle:
    """Load an export directory (``config.json``, ``model.safetensors``, ``s2au.json``).

    ``overrides`` (``section.key=value``) change the exported config, e.g.
    ``audio.hubert_path=/new/place`` when the weights moved; the front end's ``encoder_id`` must
    still equal the one the model was trained with, else ``ValueError``.
    """
    model_dir = Path(model_dir)
    for name in ("config.json", "model.safetensors", EXPORT_META):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir} is not a Speech-to-AU export: {name} is missing "
                                    "(train one with `emodifftalk train s2au`)")
    cfg = load_config(model_dir / "config.json")
    meta = json.loads((model_dir / EXPORT_META).read_text())
    apply_overrides(cfg, list(overrides or []))
    cfg.validate()
    frontend = build_frontend(cfg.audio)
    enc = encoder_id(cfg.audio)
    if meta.get("encoder_id") and meta["encoder_id"] != enc:
        raise ValueError(f"{model_dir} was trained on features from {meta['encoder_id']!r} but the "
                         f"configured audio encoder is {enc!r}; point audio.hubert_path at the same weights")
    if int(meta["in_dim"]) != frontend.dim:
        raise ValueError(f"{model_dir} expects {meta['in_dim']}-d features, front end gives {frontend.dim}")
    model = build_s2au_model(cfg, int(meta["in_dim"]))
    state = load_tensors(model_dir / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{model_dir}/model.safetensors does not match the Speech-to-AU architecture "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device).eval()
    frontend.to(device).eval()
    # exports older than this key were all trained on OpenFace-style labels
    unlabelled = tuple(meta.get("unlabelled_aus", OPENFACE_MISSING_AUS))
    return S2AUBundle(model=model, frontend=frontend, cfg=cfg, encoder_id=enc, unlabelled_aus=unlabelled)


# ------------------------------------------------------------------------------------------------
# public entry point
# ------------------------------------------------------------------------------------------------


def _audio_16k(wav_path_or_array, sample_rate: int | None) -> np.ndarray:
    if isinstance(wav_path_or_array, (str, Path)):
        return load_audio(wav_path_or_array, sample_rate=sample_rate, target_sr=SAMPLE_RATE)
    if isinstance(wav_path_or_array, torch.Tensor):
        wav_path_or_array = wav_path_or_array.detach().cpu().numpy()
    arr = np.asarray(wav_path_or_array)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise AudioError(f"audio array must be numeric, got dtype {arr.dtype}")
    if sample_rate is None:
        raise AudioError("predict_aus(array) needs sample_rate=... (the array's sampling rate in Hz)")
    if arr.ndim == 2 and arr.shape[0] <= MAX_CHANNELS < arr.shape[1]:
        arr = arr.T  # (C, N) as torchaudio returns it -> (N, C)
    if np.issubdtype(arr.dtype, np.integer):  # PCM integers -> [-1, 1]
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    return load_audio(arr, sample_rate=int(sample_rate), target_sr=SAMPLE_RATE)


def predict_aus(wav_path_or_array, sample_rate: int | None = None, fps: float = 25.0,
                model: S2AUBundle | SpeechToAU | str | Path | None = None, model_dir: str | Path | None = None,
                frontend: AudioFrontend | None = None, cfg: Config | None = None,
                device: str | torch.device = "cpu") -> np.ndarray:
    """Audio -> AU codes ``(T, 17)`` float32 in [0, 1] at ``fps`` (T = round(duration * fps)).

    Give either ``model_dir`` (an export of ``emodifftalk train s2au``), a loaded ``S2AUBundle``,
    or a bare ``SpeechToAU`` plus its ``frontend`` (windowing from ``cfg.s2au``, default config).
    ``model_dir`` is loaded on every call: for many files, ``load_s2au`` once and pass ``model=``.
    With ``cfg.s2au.silence_gate`` the lips-apart / jaw codes close in silence (:func:`gate_silence`);
    with ``cfg.s2au.loudness_jaw`` they also follow the frame's loudness (:func:`loudness_jaw`).
    A bundle's ``unlabelled_aus`` (no training label ever) are reported as 0.
    """
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a positive number, got {fps!r}") from None
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if isinstance(model, (str, Path)):  # predict_aus(wav, model="runs/s2au/export")
        model, model_dir = None, model
    if model is None:
        if model_dir is None:
            raise ValueError("predict_aus needs model_dir=EXPORT_DIR (or model=a loaded S2AUBundle)")
        model = load_s2au(model_dir, device=device)
    unlabelled: tuple[str, ...] = ()
    if isinstance(model, S2AUBundle):
        unlabelled = model.unlabelled_aus
        frontend = frontend or model.frontend
        cfg = cfg or model.cfg
        model = model.model
    if not isinstance(model, SpeechToAU):
        raise TypeError(f"model must be an S2AUBundle or SpeechToAU, got {type(model).__name__}")
    if frontend is None:
        raise ValueError("predict_aus(model=SpeechToAU) also needs frontend=build_frontend(cfg.audio)")
    if frontend.dim != model.in_dim:
        raise ValueError(f"front end gives {frontend.dim}-d features but the model expects {model.in_dim}")
    cfg = cfg or Config()
    audio = _audio_16k(wav_path_or_array, sample_rate)
    model.to(device)
    feats = extract_features(frontend, audio, cfg.s2au.window_seconds, cfg.s2au.overlap_seconds, device)
    n_frames = frames_for_duration(audio.shape[0] / SAMPLE_RATE, fps)
    aus = predict_from_features(model, feats, n_frames, fps, cfg.s2au.window_seconds,
                                cfg.s2au.overlap_seconds, device).numpy()
    if cfg.s2au.silence_gate:
        aus = gate_silence(aus, audio, fps, cfg.s2au)
    if cfg.s2au.loudness_jaw:
        aus = loudness_jaw(aus, audio, fps, cfg.s2au)
    aus[:, [AU_INDEX[name] for name in unlabelled]] = 0.0
    return aus.astype(np.float32)
