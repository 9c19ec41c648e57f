"""WAV I/O and resampling."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from emodifftalk.data.audio import AudioError, load_audio, read_wav, resample, write_wav


def _tone(sr=16000, seconds=0.25, f=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_write_read_round_trip_pcm16(tmp_path):
    x = _tone()
    p = write_wav(tmp_path / "a.wav", x, 16000)
    assert sf.info(str(p)).subtype == "PCM_16"
    y, sr = read_wav(p)
    assert sr == 16000 and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1.0 / 32767 + 1e-6)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp files


def test_stereo_is_averaged(tmp_path, caplog):
    x = _tone()
    stereo = np.stack([x, np.zeros_like(x)], axis=1)
    sf.write(str(tmp_path / "s.wav"), stereo, 16000, subtype="FLOAT")
    y, _ = read_wav(tmp_path / "s.wav")
    np.testing.assert_allclose(y, x / 2, atol=1e-6)
    assert "channels" in caplog.text


def test_unreadable_and_empty_files(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav file at all")
    with pytest.raises(AudioError, match="bad.wav"):
        read_wav(bad)
    sf.write(str(tmp_path / "e.wav"), np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="e.wav.*empty"):
        read_wav(tmp_path / "e.wav")
    with pytest.raises(FileNotFoundError):
        read_wav(tmp_path / "missing.wav")


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
