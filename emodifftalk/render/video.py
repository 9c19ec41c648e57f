"""Video and image output: streaming H.264 mp4 (+ AAC audio) via imageio-ffmpeg, grids, PNGs.

Frames are piped to the bundled ffmpeg one at a time (``imageio_ffmpeg.write_frames``), so a
10-minute render never sits in memory. Outputs are written to a temp file next to the target
and renamed into place only once ffmpeg has finished.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import wave
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from emodifftalk.utils import atomic_write_bytes, umask


def _as_uint8_frame(frame, index: int) -> np.ndarray:
    """(H, W, 3) uint8 from a uint8 array, a float array in [0, 1], or a torch tensor."""
    if hasattr(frame, "detach"):  # torch tensor, without importing torch here
        frame = frame.detach().cpu().numpy()
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame {index}: expected (H, W, 3), got shape {frame.shape}")
    if frame.dtype == np.uint8:
        return frame
    if np.issubdtype(frame.dtype, np.floating):
        return (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ValueError(f"frame {index}: expected uint8 or float in [0, 1], got dtype {frame.dtype}")


def _even_size(frame: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: repeat the last row/column when odd."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Mono float32 in [-1, 1] -> 16-bit PCM wav (stdlib ``wave``: no extra dependency)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono, shape (samples,), got {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise ValueError("audio contains NaN or inf")
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())


def write_video(
    path: str | Path,
    frames: np.ndarray | Iterable,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    *,
    quality: float = 8.0,
) -> Path:
    """Write an H.264 mp4 (yuv420p) from ``frames``, muxing ``audio`` as AAC when given.

    frames: a (T, H, W, 3) uint8 array or any iterable of (H, W, 3) frames (uint8, or float in
        [0, 1]); consumed lazily, one frame at a time.
    audio: mono float32 samples in [-1, 1] at ``sample_rate`` (written to a temp wav first).
    quality: imageio-ffmpeg's 0..10 scale (10 = best; 8 is crf 10).
    Returns the final path. Nothing appears at ``path`` unless the whole video was written.
    """
    import imageio_ffmpeg

    path = Path(path)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_video = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    tmp_wav = None
    writer = None
    try:
        if audio is not None:
            fd, tmp_wav = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".wav", dir=path.parent)
            os.close(fd)
            _write_wav(Path(tmp_wav), audio, sample_rate)
        size = None
        for i, frame in enumerate(frames):
            frame = _even_size(_as_uint8_frame(frame, i))
            if writer is None:
                size = frame.shape[:2]
                writer = imageio_ffmpeg.write_frames(
                    tmp_video, (size[1], size[0]), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                    quality=quality, macro_block_size=2, ffmpeg_log_level="error",
                    audio_path=tmp_wav, audio_codec="aac" if tmp_wav else None)
                writer.send(None)  # start the generator / ffmpeg process
            elif frame.shape[:2] != size:
                raise ValueError(f"frame {i} has size {frame.shape[:2]}, the first frame had {size}")
            writer.send(np.ascontiguousarray(frame))
        if writer is None:
            raise ValueError("write_video: no frames given")
        writer.close()  # waits for ffmpeg; raises if it failed
        writer = None
        os.chmod(tmp_video, 0o666 & ~umask())  # mkstemp made it 0600
        os.replace(tmp_video, path)
        tmp_video = None
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        for tmp in (tmp_video, tmp_wav):
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    return path


def frame_grid(images: list, cols: int, pad_value: int = 0) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 images row-major into a (rows*H, cols*W, 3) grid;
    missing cells in the last row are filled with ``pad_value``."""
    if not images:
        raise ValueError("frame_grid: no images")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    imgs = [_as_uint8_frame(im, i) for i, im in enumerate(images)]
    h, w = imgs[0].shape[:2]
    for i, im in enumerate(imgs):
        if im.shape[:2] != (h, w):
            raise ValueError(f"image {i} has size {im.shape[:2]}, image 0 has {(h, w)}")
    cols = min(cols, len(imgs))
    rows = -(-len(imgs) // cols)
    grid = np.full((rows * h, cols * w, 3), pad_value, dtype=np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return grid


def save_png(path: str | Path, image) -> Path:
    """Write an (H, W, 3) uint8 (or float [0, 1]) image as PNG, atomically."""
    import imageio.v3 as iio

    path = Path(path)
    data = iio.imwrite("<bytes>", _as_uint8_frame(image, 0), extension=".png")
    atomic_write_bytes(path, data)
    return path
