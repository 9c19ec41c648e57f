"""WAV I/O and resampling."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from emodifftalk.data.audio import AudioError, load_audio, read_audio, resample, write_wav


def _tone(sr=16000, seconds=0.25, f=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_write_read_round_trip_pcm16(tmp_path):
    x = _tone()
    p = write_wav(tmp_path / "a.wav", x, 16000)
    assert sf.info(str(p)).subtype == "PCM_16"
    y, sr = read_audio(p)
    assert sr == 16000 and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1.0 / 32767 + 1e-6)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp files


def test_stereo_is_averaged(tmp_path, caplog):
    x = _tone()
    stereo = np.stack([x, np.zeros_like(x)], axis=1)
    sf.write(str(tmp_path / "s.wav"), stereo, 16000, subtype="FLOAT")
    y, _ = read_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(y, x / 2, atol=1e-6)
    assert "channels" in caplog.text


def test_unreadable_and_empty_files(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav file at all")
    with pytest.raises(AudioError, match="bad.wav"):
        read_audio(bad)
    sf.write(str(tmp_path / "e.wav"), np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="e.wav.*empty"):
        read_audio(tmp_path / "e.wav")
    with pytest.raises(FileNotFoundError):
        read_audio(tmp_path / "missing.wav")


def test_resample_keeps_frequency_and_length():
    x = _tone(sr=44100, seconds=0.5, f=300.0)
    y = resample(x, 44100, 16000)
    assert y.shape == (8000,) and y.dtype == np.float32
    spec = np.abs(np.fft.rfft(y))
    peak_hz = np.argmax(spec) * 16000 / len(y)
    assert abs(peak_hz - 300.0) < 4.0


def test_load_audio_from_array_and_path(tmp_path):
    x = _tone(sr=8000, seconds=0.5)
    y = load_audio(x, sample_rate=8000, target_sr=16000)
    assert y.shape == (8000,)
    with pytest.raises(AudioError, match="sample_rate"):
        load_audio(x)
    write_wav(tmp_path / "a.wav", x, 8000)
    z = load_audio(tmp_path / "a.wav")
    assert z.shape == (8000,)
    np.testing.assert_allclose(z, y, atol=2e-3)


# ------------------------------------------------------------------------------------------------
# every common format, made with the ffmpeg that imageio-ffmpeg ships
# ------------------------------------------------------------------------------------------------

# (file name, ffmpeg output options, sample rate, channels)
FORMATS = [
    ("pcm16.wav", ["-c:a", "pcm_s16le"], 16000, 1),
    ("pcm24.wav", ["-c:a", "pcm_s24le"], 44100, 2),
    ("f32.wav", ["-c:a", "pcm_f32le"], 48000, 1),
    ("ext.wav", ["-c:a", "pcm_s16le"], 22050, 6),  # >2 ch: WAVE_EXTENSIBLE
    ("a.flac", ["-c:a", "flac"], 32000, 2),
    ("a.ogg", ["-c:a", "libvorbis"], 44100, 2),
    ("a.mp3", ["-c:a", "libmp3lame", "-b:a", "128k"], 24000, 1),
    ("a.m4a", ["-c:a", "aac", "-b:a", "128k"], 44100, 2),
    ("a.aac", ["-c:a", "aac", "-b:a", "128k", "-f", "adts"], 16000, 1),
]


def _ffmpeg_tone(path, opts, sr, channels, seconds=1.0, f=440.0, video=False):
    import subprocess

    from emodifftalk.data.audio import ffmpeg_exe

    src = ["-f", "lavfi", "-i", f"sine=frequency={f}:sample_rate={sr}:duration={seconds}"]
    mix = ["-af", f"pan={channels}c|" + "|".join(f"c{k}=c0" for k in range(channels))] if channels > 1 else []
    vid = ["-f", "lavfi", "-i", f"color=size=32x32:rate=10:duration={seconds}"] if video else []
    cmd = [ffmpeg_exe(), "-v", "error", "-y", *src, *vid, *mix, *opts, "-shortest", str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


@pytest.mark.parametrize("name,opts,sr,channels", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_common_format_loads_at_16k_mono(tmp_path, name, opts, sr, channels):
    path = _ffmpeg_tone(tmp_path / name, opts, sr, channels)
    raw, got_sr = read_audio(path)
    assert got_sr == sr and raw.dtype == np.float32 and raw.ndim == 1
    y = load_audio(path, target_sr=16000)
    assert abs(y.shape[0] - 16000) < 2500  # lossy codecs pad a few frames of priming
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * 16000 / len(y) - 440.0) < 5.0
    # ffmpeg's sine is at 1/8 full scale; identical channels average back to it
    rms = float(np.sqrt(np.mean(y[2000:-2000] ** 2)))
    assert 0.8 * 0.125 / np.sqrt(2) < rms < 1.2 * 0.125 / np.sqrt(2)


def test_wave_extensible_header_is_what_we_read(tmp_path):
    path = _ffmpeg_tone(tmp_path / "ext.wav", ["-c:a", "pcm_s16le"], 22050, 6)
    assert int.from_bytes(path.read_bytes()[20:22], "little") == 0xFFFE  # WAVE_FORMAT_EXTENSIBLE
    assert read_audio(path)[1] == 22050


def test_audio_track_of_an_mp4(tmp_path):
    path = _ffmpeg_tone(tmp_path / "clip.mp4", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"],
                        44100, 2, video=True)
    y = load_audio(path, target_sr=16000)
    assert abs(y.shape[0] - 16000) < 2500
    assert abs(np.argmax(np.abs(np.fft.rfft(y))) * 16000 / len(y) - 440.0) < 5.0


def test_video_without_audio_names_the_file(tmp_path):
    import subprocess

    from emodifftalk.data.audio import ffmpeg_exe

    path = tmp_path / "silent_video.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=size=32x32:rate=10:duration=0.5",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True, capture_output=True)
    with pytest.raises(AudioError, match="silent_video.mp4.*no audio track"):
        load_audio(path)


def test_garbage_with_an_audio_extension_names_the_file(tmp_path):
    bad = tmp_path / "broken.m4a"
    bad.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(AudioError, match="broken.m4a"):
        load_audio(bad)


def test_frame_levels_are_per_video_frame_relative_and_gain_free():
    from emodifftalk.data.audio import frame_levels_db

    x = np.zeros(16000, np.float32)
    x[6400:9600] = 0.5  # frames 10-14 at 25 fps (640 samples each)
    x[:640] = 0.005  # frame 0: 40 dB below
    db = frame_levels_db(x, 30, 25.0)  # 30 frames: the last 5 lie past the audio (digital silence)
    assert db.shape == (30,) and np.all(db[10:15] == 0.0)
    assert db[0] == pytest.approx(-40.0, abs=1e-3) and np.all(db[1:10] < -100) and np.all(db[25:] < -100)
    loud = np.r_[0, 10:15]  # gain cancels wherever there is sound
    np.testing.assert_allclose(frame_levels_db(7 * x, 30, 25.0)[loud], db[loud], atol=1e-6)
