"""``eval speech``: envelope, mouth opening from a mesh, silent frames, bar, report files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.eval.metrics import lip_gap
from emodifftalk.eval.speech import (
    SILENCE_DB,
    SpeechEvalError,
    audio_files,
    envelope_db,
    language_of,
    markdown_table,
    score_file,
    summarize,
)

REPO = Path(__file__).resolve().parents[2]


def _syllables(fps=25.0, seconds=4.0):
    """A 4 Hz syllable train with 0.5 s of silence at each end; returns audio and its frame envelope."""
    t = np.arange(int(16000 * seconds)) / 16000
    env = np.clip(np.sin(2 * np.pi * 2 * t), 0, None) ** 2
    env[(t < 0.5) | (t > seconds - 0.5)] = 0
    return (0.5 * env * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


def _lips():
    """A template with 3 upper and 3 lower lip vertices (OpenCV: y down) and 2 other vertices."""
    upper = [[x, -0.01, 0.1] for x in (-0.02, 0.0, 0.02)]
    lower = [[x, 0.01, 0.1] for x in (-0.02, 0.0, 0.02)]
    verts = np.array(upper + lower + [[0, -0.1, 0], [0, 0.1, 0]], np.float32)
    return verts, np.arange(6)


def test_envelope_is_relative_to_the_peak_and_floored():
    audio = _syllables()
    env, rms = envelope_db(audio, 100, 25.0)
    assert env.shape == rms.shape == (100,) and env.max() == pytest.approx(0.0)
    assert np.all(env[:10] == SILENCE_DB) and np.all(env[-10:] == SILENCE_DB)  # digital silence
    env3, _ = envelope_db(3 * audio, 100, 25.0)  # gain invariant
    np.testing.assert_allclose(env3, env, atol=1e-6)


def test_lip_gap_measures_the_lips_apart_whichever_way_they_move():
    tmpl, lips = _lips()
    verts = np.repeat(tmpl[None], 3, axis=0)
    verts[1, 3:6, 1] += 0.005  # lower lip down 5 mm (jaw)
    verts[2, :3, 1] -= 0.002  # upper lip up 2 mm
    verts[2, 6:, :] += 1.0  # vertices outside the lips do not count
    np.testing.assert_allclose(lip_gap(verts, tmpl, lips), [0.0, 0.005, 0.002], atol=1e-6)


def test_score_file_bar_and_silence():
    fps = 25.0
    audio = _syllables(fps)
    env, _ = envelope_db(audio, 100, fps)
    aus = np.zeros((100, NUM_AUS), np.float32)
    follows = (env - SILENCE_DB) / -SILENCE_DB * 0.01  # opening that tracks the envelope
    aus[:, AU_INDEX["AU26"]] = (env - SILENCE_DB) / -SILENCE_DB
    good, curves = score_file("en_test.wav", audio, aus, follows, fps)
    assert good.r == pytest.approx(1.0) and good.n_silent >= 20 and good.silent_mouth_au == pytest.approx(0.0)
    assert good.passes and good.language == "en" and curves["silent"].sum() == good.n_silent
    aus[:, AU_INDEX["AU25"]] = 0.3  # lips apart all the time: fails in silence even with a good r
    open_mouth, _ = score_file("en_test.wav", audio, aus, follows, fps)
    assert open_mouth.silent_mouth_au == pytest.approx(0.3) and not open_mouth.passes
    rng = np.random.default_rng(0)
    random, _ = score_file("zh_x.wav", audio, np.zeros_like(aus), rng.normal(size=100), fps)
    assert abs(random.r) < 0.3 and not random.passes
    summary = summarize([good, random])
    assert summary["passing"] == 1 and not summary["bar_met"] and set(summary["by_language"]) == {"en", "zh"}
    assert "FAIL" in markdown_table([good, random], summary)


def test_language_from_file_names():
    assert language_of("en_radio.flac") == "en" and language_of("zh-news.ogg") == "zh"
    assert language_of("speech.wav") == "?"


def test_audio_files_and_errors(tmp_path):
    with pytest.raises(SpeechEvalError, match="--audio .*nope"):
        audio_files(tmp_path / "nope")
    with pytest.raises(SpeechEvalError, match="no audio files"):
        audio_files(tmp_path)
    (tmp_path / "b.mp3").write_bytes(b"")
    (tmp_path / "a.m4a").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in audio_files(tmp_path)] == ["a.m4a", "b.mp3"]


def test_real_speech_recordings_all_load():
    """The evaluation recordings (tests/data/real_speech) decode through the one loader."""
    from emodifftalk.data.audio import load_audio

    files = audio_files(REPO / "tests" / "data" / "real_speech")
    assert len(files) >= 20 and {language_of(f.name) for f in files} >= {"de", "en", "es", "fr", "ja", "pt", "ru", "zh"}
    for f in files:
        y = load_audio(f, target_sr=16000)
        # fr_fleurs000 is a real quiet recording (peak -48 dBFS, as ffmpeg's volumedetect reads it)
        assert 2.0 < len(y) / 16000 < 15.0 and np.isfinite(y).all() and np.abs(y).max() > 0.002


def test_fleurs_recordings_all_load_and_are_listed():
    """The larger FLEURS set (tests/data/real_speech_fleurs) decodes, every file is in its README
    with its source, and none repeats an utterance of tests/data/real_speech."""
    from emodifftalk.data.audio import load_audio

    folder = REPO / "tests" / "data" / "real_speech_fleurs"
    files = audio_files(folder)
    assert len(files) == 42 and {language_of(f.name) for f in files} == {"de", "en", "es", "fr", "pt"}
    readme = (folder / "README.md").read_text()
    def utterance(f):  # de_fleurs001_32k_vorbis.ogg -> de_fleurs001
        return "_".join(f.name.split("_")[:2])

    first = {utterance(f) for f in audio_files(REPO / "tests" / "data" / "real_speech")}
    for f in files:
        assert f"`{f.name}`" in readme and utterance(f) not in first
        y = load_audio(f, target_sr=16000)
        assert 2.0 < len(y) / 16000 < 60.0 and np.isfinite(y).all() and np.abs(y).max() > 0.002


def test_cli_checks_audio_before_loading_models(tmp_path):
    out = subprocess.run([sys.executable, "-m", "emodifftalk.cli", "eval", "speech", "--model", str(tmp_path / "runs"),
                          "--audio", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode != 0 and "missing.wav" in out.stderr and not (tmp_path / "o").exists()
    assert "Traceback" not in out.stderr
