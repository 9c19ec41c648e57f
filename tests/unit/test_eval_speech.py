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
    EYE_CORNER_MM,
    SILENCE_DB,
    SpeechEvalError,
    audio_files,
    envelope_db,
    language_of,
    markdown_table,
    mouth_tracks,
    read_mouth_track,
    score_file,
    summarize,
    track_on_frames,
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


def _write_track(path, times, aperture):
    rows = ["frame,time_s,aperture"] + [f"{i},{t},{'' if np.isnan(a) else a}"
                                         for i, (t, a) in enumerate(zip(times, aperture))]
    path.write_text("\n".join(rows) + "\n")


def test_tracked_mouth_is_read_resampled_and_scored(tmp_path):
    """A recording's tracked mouth (NAME.mouth.csv, here at 30 fps with a dropout) lands on the
    25 fps animation frames; r against it scores lip sync, r against the envelope the speaker."""
    fps = 25.0
    audio = _syllables(fps)
    env, _ = envelope_db(audio, 100, fps)
    t30 = np.arange(120) / 30.0
    env30 = np.interp(t30, (np.arange(100) + 0.5) / fps, env)
    aperture = (env30 - SILENCE_DB) / 400.0
    aperture[60:63] = np.nan  # no face for three tracked frames
    (tmp_path / "en_clip.wav").write_bytes(b"")
    (tmp_path / "zh_other.wav").write_bytes(b"")
    _write_track(tmp_path / "en_clip.mouth.csv", t30, aperture)
    tracks = mouth_tracks(audio_files(tmp_path))
    assert list(tracks) == ["en_clip.wav"]
    on_frames = track_on_frames(*tracks["en_clip.wav"], 100, fps)
    assert on_frames.shape == (100,) and 1 <= np.isnan(on_frames).sum() <= 5  # the dropout and the tail
    aus = np.zeros((100, NUM_AUS), np.float32)
    follows = (env - SILENCE_DB) / -SILENCE_DB * 0.01
    res, curves = score_file("en_clip.wav", audio, aus, follows, fps, on_frames)
    assert res.r_tracked > 0.95 and res.r_env_tracked > 0.95 and res.tracked_frames == np.isfinite(on_frames).sum()
    speaking = (env > SILENCE_DB) & np.isfinite(on_frames)  # closed lips (the 5th percentile) are 0 here
    expected_mm = ((env[speaking] - SILENCE_DB) / 400.0).mean() * EYE_CORNER_MM
    assert res.tracked_speech_opening_mm == pytest.approx(expected_mm, rel=0.05)
    shut, _ = score_file("en_clip.wav", audio, aus, np.random.default_rng(0).normal(size=100), fps, on_frames)
    assert abs(shut.r_tracked) < 0.3 and shut.r_env_tracked == res.r_env_tracked
    plain, _ = score_file("zh_other.wav", audio, aus, follows, fps)
    assert plain.r_tracked is None and plain.tracked_frames is None
    summary = summarize([res, shut, plain])
    assert summary["tracked"]["files"] == 2
    assert summary["tracked"]["mean_tracked_speech_opening_mm"] == pytest.approx(res.tracked_speech_opening_mm,
                                                                              abs=1e-3)
    assert summary["tracked"]["mean_r_tracked"] == pytest.approx((res.r_tracked + shut.r_tracked) / 2, abs=1e-4)
    assert "r(opening, real mouth)" in markdown_table([res, shut, plain], summary)


def test_tracked_mouth_errors_name_the_file(tmp_path):
    bad = tmp_path / "x.mouth.csv"
    bad.write_text("frame,time,open\n0,0.0,0.1\n")
    with pytest.raises(SpeechEvalError, match="x.mouth.csv.*time_s and aperture"):
        read_mouth_track(bad)
    _write_track(bad, [0.0, 0.04, 0.04], [0.1, 0.2, 0.3])
    with pytest.raises(SpeechEvalError, match="x.mouth.csv.*increase"):
        read_mouth_track(bad)
    bad.write_text("time_s,aperture\n0.0,0.1\n")
    with pytest.raises(SpeechEvalError, match="x.mouth.csv.*two rows"):
        read_mouth_track(bad)
    bad.write_text("time_s,aperture\n0.0,wide\n")
    with pytest.raises(SpeechEvalError, match="x.mouth.csv"):
        read_mouth_track(bad)


def test_track_mouth_tool_writes_what_eval_speech_reads(tmp_path):
    """tools/track_mouth.py (MediaPipe itself is not installed here): its aperture is the inner-lip
    gap over the eye-corner distance, and its CSV round-trips through read_mouth_track."""
    import importlib.util

    from emodifftalk.eval import speech

    spec = importlib.util.spec_from_file_location("track_mouth", REPO / "tools" / "track_mouth.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.TRACK_SUFFIX == speech.TRACK_SUFFIX
    pts = np.zeros((468, 2))
    pts[33], pts[263] = [100, 200], [200, 200]  # eyes 100 px apart
    pts[13], pts[14] = [150, 300], [150, 312]  # lips 12 px apart
    assert tool.aperture(pts) == pytest.approx(0.12)
    assert tool.aperture(pts * 3) == pytest.approx(0.12)  # a closer camera: the same opening
    tool.write_track(tmp_path / "x.mouth.csv", 30.0, [0.1, None, 0.3])
    times, ap = read_mouth_track(tmp_path / "x.mouth.csv")
    np.testing.assert_allclose(times, [0, 1 / 30, 2 / 30], atol=1e-5)
    assert ap[0] == pytest.approx(0.1) and np.isnan(ap[1]) and ap[2] == pytest.approx(0.3)


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


def test_real_video_mouth_set_loads_and_its_tracks_cover_the_audio():
    """tests/data/real_video_mouth: each recording decodes, has its speaker's tracked mouth beside it
    (a face on every frame, covering the audio) and a line in the README."""
    from emodifftalk.data.audio import load_audio

    folder = REPO / "tests" / "data" / "real_video_mouth"
    files = audio_files(folder)
    tracks = mouth_tracks(files)
    readme = (folder / "README.md").read_text()
    assert len(files) == 19 and set(tracks) == {f.name for f in files}
    for f in files:
        y = load_audio(f, target_sr=16000)
        seconds = len(y) / 16000
        times, aperture = tracks[f.name]
        on_frames = track_on_frames(times, aperture, int(seconds * 25), 25.0)
        assert f"`{f.name}`" in readme and 4.0 < seconds < 40.0
        assert np.isfinite(on_frames[:-2]).all() and 0.0 <= np.nanmin(aperture) < np.nanmax(aperture) < 1.0


def test_cli_checks_audio_before_loading_models(tmp_path):
    out = subprocess.run([sys.executable, "-m", "emodifftalk.cli", "eval", "speech", "--model", str(tmp_path / "runs"),
                          "--audio", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode != 0 and "missing.wav" in out.stderr and not (tmp_path / "o").exists()
    assert "Traceback" not in out.stderr
