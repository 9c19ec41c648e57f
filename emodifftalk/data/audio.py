"""Audio I/O and resampling: every audio path in the project goes through this module.

Audio inside the project is always ``np.float32`` mono in [-1, 1] at a known sample rate
(16 kHz for the models). Files are written as PCM16 WAV, atomically.
"""

from __future__ import annotations

import io
import logging
import subprocess
import tempfile
from math import gcd
from pathlib import Path

import numpy as np

from emodifftalk.utils import atomic_write_bytes

log = logging.getLogger(__name__)


class AudioError(ValueError):
    """An audio file or array cannot be used; the message names it."""


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read any common audio file as ``(audio (N,) float32 mono, sample_rate)`` at the file's rate.

    WAV (PCM 16/24/32, float, WAVE_EXTENSIBLE), FLAC, OGG/Vorbis/Opus and MP3 are read by
    soundfile (libsndfile); anything it cannot open (m4a/AAC, the audio track of an mp4/mov/mkv,
    ...) is decoded by the ffmpeg binary that imageio-ffmpeg ships. Multi-channel audio is averaged
    to mono (with a warning). Missing, unreadable, empty or non-finite files raise an error naming
    the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, sr = _read_soundfile(path)
    except AudioError as sf_error:
        try:
            data, sr = _read_ffmpeg(path)
        except AudioError as ff_error:
            raise AudioError(f"cannot read audio file {path}: {ff_error} (soundfile: {sf_error})") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} is empty (0 samples)")
    if data.shape[1] > 1:
        log.warning("%s has %d channels; averaging to mono", path, data.shape[1])
    audio = data.mean(axis=1).astype(np.float32)
    if not np.all(np.isfinite(audio)):  # float WAVs can hold NaN/Inf; they would poison every model
        raise AudioError(f"audio file {path} contains NaN or Inf samples")
    return audio, int(sr)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises its own LibsndfileError / RuntimeError types
        raise AudioError(str(e)) from e
    return data, int(sr)


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped with imageio-ffmpeg (a project dependency; never the system's)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# The one audio rate of the project: every file is resampled to it, shards store it, both front
# ends take it (HuBERT was trained at 16 kHz). Not a config knob: nothing else would work.
SAMPLE_RATE = 16000
FFMPEG_TIMEOUT_S = 600  # decoding an hour of AAC takes seconds; a hang must not block forever


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream at its own rate and channel count via a temporary float WAV
    (a seekable file, so the header carries the true length and rate)."""
    import soundfile as sf

    try:
        exe = ffmpeg_exe()
    except Exception as e:  # noqa: BLE001 - no binary for this platform
        raise AudioError(f"ffmpeg is not available ({e})") from e
    with tempfile.TemporaryDirectory(prefix="emodifftalk-audio-") as tmp:
        out = Path(tmp) / "decoded.wav"
        cmd = [exe, "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn", "-c:a", "pcm_f32le",
               "-f", "wav", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise AudioError(f"ffmpeg did not finish decoding within {FFMPEG_TIMEOUT_S} s") from None
        err = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or not out.is_file():
            if "matches no streams" in err:
                raise AudioError("it has no audio track")
            raise AudioError(f"ffmpeg cannot decode it ({err.splitlines()[-1] if err else proc.returncode})")
        data, sr = sf.read(str(out), dtype="float32", always_2d=True)
    return data, int(sr)


def _as_mono(audio: np.ndarray, what: str) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim == 2:  # (N, C) as soundfile returns it
        log.warning("%s has %d channels; averaging to mono", what, audio.shape[1])
        audio = audio.mean(axis=1)
    if audio.ndim != 1:
        raise AudioError(f"{what} must be (N,) or (N, C), got shape {audio.shape}")
    if audio.shape[0] == 0:
        raise AudioError(f"{what} is empty (0 samples)")
    audio = audio.astype(np.float32)
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{what} contains NaN or Inf samples")
    return audio


def write_wav(path: str | Path, audio: np.ndarray, sr: int) -> Path:
    """Write ``audio`` (N,) float in [-1, 1] as a PCM16 mono WAV (atomically); values are clipped."""
    import soundfile as sf

    audio = _as_mono(audio, f"audio for {path}")
    if int(sr) <= 0:
        raise AudioError(f"sample rate must be positive, got {sr} for {path}")
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, int(sr), format="WAV", subtype="PCM_16")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling ``sr_in -> sr_out`` (exact rational ratio via gcd); float32 out."""
    from scipy.signal import resample_poly

    audio = np.asarray(audio, dtype=np.float32)
    sr_in, sr_out = int(sr_in), int(sr_out)
    if sr_in <= 0 or sr_out <= 0:
        raise AudioError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if sr_in == sr_out:
        return audio.copy()
    g = gcd(sr_in, sr_out)
    return resample_poly(audio, sr_out // g, sr_in // g, axis=0).astype(np.float32)


def load_audio(path_or_array, sample_rate: int | None = None, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 audio at ``target_sr`` from a file path or an array (then ``sample_rate`` is required)."""
    if isinstance(path_or_array, (str, Path)):
        audio, sr = read_audio(path_or_array)
        if sample_rate is not None and int(sample_rate) != sr:
            log.warning("%s is %d Hz, not the stated %d Hz; using the file's rate", path_or_array, sr,
                        sample_rate)
    else:
        if sample_rate is None:
            raise AudioError("load_audio(array) needs sample_rate=...")
        audio, sr = _as_mono(path_or_array, "audio array"), int(sample_rate)
    return resample(audio, sr, target_sr)


def frame_levels_db(audio: np.ndarray, n_frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_frames,) RMS level of each video frame in dB re the loudest frame; frame ``t`` covers
    samples ``[t/fps, (t+1)/fps)``; digital silence and frames past the end sit >= 100 dB below.
    Gain invariant. The one definition of "how loud is this frame" for the training labels, the
    silence gate and ``eval speech``."""
    edges = np.round(np.arange(int(n_frames) + 1) / float(fps) * sample_rate).astype(np.int64)
    x = np.asarray(audio, np.float64)
    edges = np.minimum(edges, len(x))
    power = np.array([np.mean(np.square(x[a:b])) if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])
    return 10.0 * np.log10(np.maximum(power, 1e-12) / max(float(power.max(initial=0.0)), 1e-12))


def level_gain(level_db, quiet_db: float, quiet_gain: float) -> np.ndarray:
    """Share of a mouth opening kept at ``level_db`` (dB re the loudest frame or phone, <= 0): 1 at
    0 dB, ``quiet_gain`` at ``quiet_db`` and below, linear in dB between. The one jaw-with-loudness
    ramp: the synthetic world opens its vowels by it (``visemes.jaw_gain``) and ``s2au.loudness_jaw``
    scales predicted mouth codes by it."""
    x = np.clip(1.0 - np.asarray(level_db, np.float64) / quiet_db, 0.0, 1.0)
    return quiet_gain + (1.0 - quiet_gain) * x
