"""Tests for emodifftalk.render.video: mp4 (+AAC) writing read back with the bundled ffmpeg,
streaming input, atomic output, grids and PNGs."""

import subprocess

import numpy as np
import pytest

from emodifftalk.render.video import frame_grid, save_png, write_video

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")


def probe(path) -> str:
    """ffmpeg's stream description (the bundled binary has no ffprobe)."""
    res = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         check=False, capture_output=True, text=True, timeout=60)
    return res.stderr


def read_frames(path):
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(h, w, 3) for f in reader]
    return meta, frames


def test_video_with_audio_round_trip(tmp_path):
    frames = np.zeros((10, 48, 64, 3), dtype=np.uint8)
    for t in range(10):  # a bright square moving right: content must survive encoding
        frames[t, 16:32, 4 * t:4 * t + 16] = 255
    sr = 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(sr * 0.4)) / sr)).astype(np.float32)
    out = write_video(tmp_path / "clip.mp4", frames, fps=25, audio=audio, sample_rate=sr)
    assert out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp files left
    meta, back = read_frames(out)
    assert len(back) == 10 and meta["size"] == (64, 48) and meta["fps"] == 25
    assert back[5][24, 28].min() > 215 and back[5][24, 60].max() < 40
    info = probe(out)
    assert "Video: h264" in info and "Audio: aac" in info and "16000 Hz" in info


def test_streams_from_generator_and_pads_odd_sizes(tmp_path):
    consumed = []

    def gen():
        for t in range(6):
            consumed.append(t)
            yield np.full((33, 47, 3), t * 40, dtype=np.uint8)

    out = write_video(tmp_path / "odd.mp4", gen(), fps=10)
    meta, back = read_frames(out)
    assert consumed == list(range(6)) and len(back) == 6
    assert meta["size"] == (48, 34)  # yuv420p needs even sizes: edge-padded by one pixel
    assert "Audio" not in probe(out)
    assert abs(int(back[3].mean()) - 120) < 8


def test_float_frames_and_torch_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    frames = [torch.full((16, 16, 3), 0.5) for _ in range(3)]
    _, back = read_frames(write_video(tmp_path / "f.mp4", frames, fps=5))
    assert len(back) == 3 and abs(int(back[0].mean()) - 128) < 6


def test_bad_frames_leave_nothing_behind(tmp_path):
    frames = [np.zeros((16, 16, 3), np.uint8), np.zeros((8, 16, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 1"):
        write_video(tmp_path / "bad.mp4", frames, fps=5)
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [], fps=5)
    with pytest.raises(ValueError, match="mono"):
        write_video(tmp_path / "stereo.mp4", [np.zeros((16, 16, 3), np.uint8)], fps=5,
                    audio=np.zeros((100, 2), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_frame_grid_layout():
    imgs = [np.full((4, 6, 3), v, dtype=np.uint8) for v in (10, 20, 30, 40, 50)]
    grid = frame_grid(imgs, cols=2)
    assert grid.shape == (12, 12, 3)
    assert grid[0, 0, 0] == 10 and grid[0, 6, 0] == 20 and grid[4, 0, 0] == 30 and grid[8, 0, 0] == 50
    assert grid[8, 6, 0] == 0  # empty cell
    with pytest.raises(ValueError, match="image 1"):
        frame_grid([imgs[0], np.zeros((5, 6, 3), np.uint8)], cols=2)


def test_save_png_round_trip(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    img = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    path = save_png(tmp_path / "sub" / "x.png", img)
    np.testing.assert_array_equal(iio.imread(path), img)
