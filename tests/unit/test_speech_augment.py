"""Train-time audio augmentation of seq samples: the loader's path back, added silence labelled lips-closed."""

import numpy as np
import pytest

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.config import AudioConfig
from emodifftalk.data.audio import frame_levels_db
from emodifftalk.data.synthetic.visemes import jaw_gain
from emodifftalk.train.speech_augment import (augment_features, augment_sample, augmented_16k, loudness_contour, warp_mel,
                                              with_loudness_contour, with_silence)


def _sample(seconds=1.0, fps=25.0):
    n = int(seconds * fps)
    t = np.arange(int(16000 * seconds)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    aus = np.full((n, NUM_AUS), 0.4, np.float32)
    return {"key": "id000/clip00", "audio": audio, "aus": aus, "au_mask": np.ones((n, NUM_AUS), bool),
            "verts": np.zeros((n, 4, 3), np.float32), "feats": np.zeros((50, 82), np.float32),
            "meta": {"fps": fps, "n_frames": n}}


def test_augmented_audio_keeps_length_rate_and_finiteness():
    s = _sample()
    for seed in range(6):
        y = augmented_16k(s["audio"], np.random.default_rng(seed))
        assert y.shape == s["audio"].shape and y.dtype == np.float32 and np.isfinite(y).all()
        assert np.abs(y).max() <= 1.0 and not np.allclose(y, s["audio"])


def test_added_silence_is_labelled_lips_closed_and_nothing_else():
    s = _sample()
    out = with_silence(s, np.random.default_rng(3))
    lead, tail = out["meta"]["added_silence"]
    n = s["aus"].shape[0]
    assert lead + tail > 0 and out["aus"].shape == (n + lead + tail, NUM_AUS) == out["au_mask"].shape
    assert out["meta"]["n_frames"] == n + lead + tail
    assert len(out["audio"]) == len(s["audio"]) + (lead + tail) * 640  # 16 kHz / 25 fps
    pad = np.r_[0:lead, lead + n:lead + n + tail]
    mouth = [AU_INDEX["AU25"], AU_INDEX["AU26"]]
    assert np.all(out["aus"][pad][:, mouth] == 0) and np.all(out["au_mask"][pad][:, mouth])
    others = [k for k in range(NUM_AUS) if k not in mouth]
    assert not out["au_mask"][pad][:, others].any()  # unknown in silence: unlabelled
    np.testing.assert_array_equal(out["aus"][lead:lead + n], s["aus"])
    assert np.all(out["audio"][: lead * 640] == 0)
    assert out["feats"] is None and out["verts"] is None  # stale for the new timeline


def test_augment_sample_follows_the_config_probabilities():
    s = _sample()
    rng = np.random.default_rng(0)
    never = augment_sample(s, rng, AudioConfig(train_augment_prob=0.0, train_silence_prob=0.0, train_loudness_prob=0.0),
                           silence=True)
    assert never is s
    always = augment_sample(s, rng, AudioConfig(train_augment_prob=1.0, train_silence_prob=1.0), silence=True)
    assert always["augmented"] and always["feats"] is None and "added_silence" in always["meta"]
    motion = augment_sample(s, rng, AudioConfig(train_augment_prob=1.0, train_silence_prob=1.0), silence=False)
    assert "added_silence" not in motion["meta"] and motion["verts"] is s["verts"]  # meshes stay aligned
    assert len(motion["audio"]) == len(s["audio"])


def test_loudness_contour_is_smooth_and_spans_its_depth():
    rng = np.random.default_rng(0)
    for depth in (6.0, 20.0):
        g = loudness_contour(250, 25.0, depth, rng)
        assert g.shape == (250,) and g.max() == 0.0 and np.isclose(g.min(), -depth)
        assert np.abs(np.diff(g)).max() < depth / 2  # no clicks: a contour, not noise


def test_loudness_contour_scales_the_mouth_labels_by_the_jaw_rule():
    """Quieter frames get a smaller AU25/26 label by the world's own rule; other AUs, the label
    mask and silent frames stay; louder-kept frames keep their label."""
    s = _sample(seconds=4.0)
    n = s["aus"].shape[0]
    s["audio"][: 16000 // 25 * 10] = 0.0  # 10 silent frames
    s["aus"][:10, [AU_INDEX["AU25"], AU_INDEX["AU26"]]] = 0.0
    out = with_loudness_contour(s, np.random.default_rng(1), 20.0)
    assert out["audio"].shape == s["audio"].shape and out["feats"] is None
    before, after = frame_levels_db(s["audio"], n, 25.0), frame_levels_db(out["audio"], n, 25.0)
    speech = before > -40
    assert (after[speech] < -6).any()  # the contour really went quiet somewhere
    mouth = [AU_INDEX["AU25"], AU_INDEX["AU26"]]
    expect = 0.4 * np.array([jaw_gain(a) / jaw_gain(b) for a, b in zip(after[speech], before[speech])])
    for k in mouth:
        np.testing.assert_allclose(out["aus"][speech, k], expect, rtol=1e-5)
        assert np.all(out["aus"][~speech, k] == 0)
    loud = after[speech] > -0.5
    assert np.allclose(out["aus"][speech][loud][:, mouth], 0.4, atol=0.01)
    others = [k for k in range(NUM_AUS) if k not in mouth]
    np.testing.assert_array_equal(out["aus"][:, others], s["aus"][:, others])
    np.testing.assert_array_equal(out["au_mask"], s["au_mask"])
    # the label follows the level: r(level, mouth label) over speech frames is high
    assert np.corrcoef(after[speech], out["aus"][speech, mouth[1]])[0, 1] > 0.9


def test_motion_samples_never_get_a_loudness_contour():
    s = _sample()
    cfg = AudioConfig(train_augment_prob=0.0, train_silence_prob=0.0, train_loudness_prob=1.0)
    assert augment_sample(s, np.random.default_rng(0), cfg, silence=False) is s  # meshes stay the labels
    out = augment_sample(s, np.random.default_rng(0), cfg, silence=True)
    assert out["feats"] is None and not np.array_equal(out["audio"], s["audio"])


def test_vtlp_moves_a_formant_by_the_factor():
    """A peak at one mel bin's centre frequency f reappears near the bin of f * factor."""
    from emodifftalk.models.audio_frontend import mel_centre_hz

    centres = mel_centre_hz(80).numpy()
    mel = np.zeros((4, 80), np.float32)
    mel[:, 40] = 1.0
    np.testing.assert_array_equal(warp_mel(mel, 1.0), mel)
    for factor in (0.85, 1.18):
        peak = int(np.argmax(warp_mel(mel, factor)[0]))
        assert abs(peak - int(np.argmin(np.abs(centres - centres[40] * factor)))) <= 1 and peak != 40


def test_feature_augmentation_touches_only_the_mel_columns():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((60, 82)).astype(np.float32)
    cfg = AudioConfig(train_vtlp_prob=1.0, train_freq_masks=2)
    out = augment_features(feats, rng, cfg)
    assert out.shape == feats.shape and not np.array_equal(out[:, :80], feats[:, :80])
    np.testing.assert_array_equal(out[:, 80:], feats[:, 80:])  # level channels: loudness is not a voice
    assert (np.abs(out[:, :80]).max(axis=0) == 0).sum() >= 1  # a masked band
    assert augment_features(feats, rng, AudioConfig(train_vtlp_prob=0.0)) is feats
    assert augment_features(feats, rng, AudioConfig(frontend="hubert", hubert_path="x", train_vtlp_prob=1.0)) is feats


# ------------------------------------------------------------------------------------------
# Channel EQ (audio.train_eq_prob, AugmentSpec.p_eq)
# ------------------------------------------------------------------------------------------

EQ_ONLY = dict(p_band=0.0, p_reverb=0.0, p_noise=0.0, p_resample=0.0, p_stereo=0.0, gain_db=(0.0, 0.0))


def _low_share(x: np.ndarray, sr: int, below_hz: float = 1000.0) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    return float(power[f < below_hz].sum() / power.sum())


def test_shelves_reach_their_gain_far_from_the_corner():
    from scipy.signal import sosfreqz

    from emodifftalk.data.augment import channel_eq_sos
    sr = 16000
    _, h = sosfreqz(channel_eq_sos(sr, 500.0, 12.0, 3000.0, -6.0), worN=[20.0, 1800.0, 7900.0], fs=sr)
    db = 20 * np.log10(np.abs(h))
    assert db[0] == pytest.approx(12.0, abs=0.1) and abs(db[1]) < 1.0 and db[2] == pytest.approx(-6.0, abs=0.6)


def test_channel_eq_changes_the_low_band_energy_share_by_the_drawn_amount():
    import re

    from scipy.signal import sosfreqz

    from emodifftalk.data.augment import AugmentSpec, augment_audio, channel_eq_sos
    sr = 16000
    x = np.random.default_rng(7).standard_normal(4 * sr).astype(np.float32) * 0.05
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    before = _low_share(x, sr)
    moved = 0
    for seed in range(8):
        out = augment_audio(x, sr, np.random.default_rng(seed), AugmentSpec(p_eq=1.0, **EQ_ONLY))
        m = re.match(r"eq low ([-+.\d]+) dB @ ([.\d]+) Hz, high ([-+.\d]+) dB @ ([.\d]+) Hz", out.effects[0])
        assert m, out.effects
        lo_db, lo_hz, hi_db, hi_hz = map(float, m.groups())
        assert -6 <= lo_db <= 12 and 300 <= lo_hz <= 1200 and -6 <= hi_db <= 6 and 2000 <= hi_hz <= 6000
        _, h = sosfreqz(channel_eq_sos(sr, lo_hz, lo_db, hi_hz, hi_db), worN=f, fs=sr)
        shaped = power * np.abs(h) ** 2
        predicted = float(shaped[f < 1000].sum() / shaped.sum())
        after = _low_share(out.audio.astype(np.float64), sr)
        assert after == pytest.approx(predicted, abs=0.005)  # the drawn filter, nothing else
        moved += abs(after - before) > 0.02
    assert moved >= 6  # the low-band share really moves
    # off (the default): no EQ and the same random stream as before the effect existed
    plain = augment_audio(x, sr, np.random.default_rng(3), AugmentSpec(**EQ_ONLY))
    assert not any(e.startswith("eq") for e in plain.effects)
    assert _low_share(plain.audio.astype(np.float64), sr) == pytest.approx(before, abs=1e-4)


def test_train_eq_prob_reaches_speech_to_au_clips_only(monkeypatch):
    import emodifftalk.train.speech_augment as sa
    seen = []
    real = sa.augment_audio

    def spy(audio, sr, rng, spec):
        seen.append(spec.p_eq)
        return real(audio, sr, rng, spec)

    monkeypatch.setattr(sa, "augment_audio", spy)
    s = _sample()
    cfg = AudioConfig(train_augment_prob=1.0, train_silence_prob=0.0, train_eq_prob=0.75)
    augment_sample(s, np.random.default_rng(0), cfg, silence=True)
    augment_sample(s, np.random.default_rng(0), cfg, silence=False)  # the motion model's clips
    augment_sample(s, np.random.default_rng(0), AudioConfig(train_augment_prob=1.0), silence=True)
    assert seen == [0.75, 0.0, 0.0]
