"""What the viewer shows: the canonical head, an ``animate`` output folder, or audio to animate.

An ``animate`` folder holds ``offsets.npy`` (T, V, 3), ``aus.csv`` (the final AU codes the offsets
were made from) and ``animation.json`` (fps, ...); its audio comes from ``--audio``, a path named in
``animation.json`` (``audio`` / ``wav``), or the soundtrack of its ``video.mp4`` (ffmpeg), else none.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from emodifftalk import au
from emodifftalk.data.audio import SAMPLE_RATE, AudioError, load_audio
from emodifftalk.viewer.state import Clip

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a")


class SourceError(ValueError):
    """A bad ``--animation`` / ``--audio`` input; the message names it."""


def canonical_clip(n_vertices: int, fps: float) -> Clip:
    """The neutral head as a one-frame clip (zero AU codes, zero offsets)."""
    return Clip(np.zeros((1, au.NUM_AUS), np.float32), np.zeros((1, n_vertices, 3), np.float32), fps)


def read_au_csv(path: str | Path) -> np.ndarray:
    """(T, 17) AU codes from an ``animate`` AU csv (``frame,time,AU01,...``; columns found by name)."""
    path = Path(path)
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e})") from None
    if not lines:
        raise SourceError(f"{path}: empty AU csv")
    header = [h.strip() for h in lines[0].split(",")]
    missing = [n for n in au.AU_NAMES if n not in header]
    if missing:
        raise SourceError(f"{path}: AU csv lacks columns {missing}")
    cols = [header.index(n) for n in au.AU_NAMES]
    try:
        rows = np.array([[float(ln.split(",")[c]) for c in cols] for ln in lines[1:]], dtype=np.float32)
    except (ValueError, IndexError) as e:
        raise SourceError(f"{path}: bad AU csv row ({e})") from None
    return rows.reshape(-1, au.NUM_AUS)


def audio_from_video(video: Path) -> np.ndarray | None:
    """Mono 16 kHz float32 soundtrack of ``video``, or None if it has none (or cannot be decoded)."""
    try:
        return load_audio(video, target_sr=SAMPLE_RATE)
    except (AudioError, OSError) as e:  # a silent video: the viewer simply plays no sound
        log.info("%s: no soundtrack (%s)", video, e)
        return None


def load_audio_file(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"audio {path}: file does not exist")
    try:
        return load_audio(path, target_sr=SAMPLE_RATE)
    except Exception as e:  # noqa: BLE001 - unreadable audio of any kind → one clear message
        raise SourceError(f"audio {path}: cannot read ({e})") from None


def load_animation_dir(path: str | Path, n_vertices: int, audio: str | Path | None = None,
                       default_fps: float = 25.0) -> tuple[Clip, np.ndarray | None, dict]:
    """(clip, audio 16 kHz or None, animation.json) of an ``animate`` output folder."""
    path = Path(path)
    for name in ("offsets.npy", "aus.csv"):
        if not (path / name).is_file():
            raise SourceError(f"--animation {path}: no {name} (expected an `emodifftalk animate` output folder)")
    info = {}
    if (path / "animation.json").is_file():
        try:
            info = json.loads((path / "animation.json").read_text())
        except json.JSONDecodeError as e:
            raise SourceError(f"{path / 'animation.json'}: not JSON ({e})") from None
    offsets = np.load(path / "offsets.npy", allow_pickle=False)
    aus = read_au_csv(path / "aus.csv")
    if offsets.ndim != 3 or offsets.shape[2] != 3:
        raise SourceError(f"{path / 'offsets.npy'}: expected (T, V, 3), got {offsets.shape}")
    if offsets.shape[1] != n_vertices:
        raise SourceError(f"{path / 'offsets.npy'}: {offsets.shape[1]} vertices, but the rig's template has "
                          f"{n_vertices}; was it made for another identity?")
    if offsets.shape[0] != aus.shape[0]:
        raise SourceError(f"--animation {path}: offsets.npy has {offsets.shape[0]} frames, aus.csv {aus.shape[0]}")
    fps = float(info.get("fps", default_fps))
    clip = Clip(aus, offsets.astype(np.float32), fps)
    sound = None
    if audio is not None:
        sound = load_audio_file(audio)
    else:
        named = info.get("audio") or info.get("wav")
        if named and Path(named).is_file():
            sound = load_audio_file(named)
        elif (path / "video.mp4").is_file():
            sound = audio_from_video(path / "video.mp4")
    return clip, sound, info


def is_audio_path(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM mono WAV bytes (for the page's audio element)."""
    import io
    import wave

    pcm = (np.clip(np.asarray(audio, np.float32), -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()
