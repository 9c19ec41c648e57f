"""Train-time audio augmentation of seq samples: the loader's path back, added silence labelled lips-closed."""

import numpy as np

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
