"""Train-time audio augmentation of seq samples: the loader's path back, added silence labelled lips-closed."""

import numpy as np

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.config import AudioConfig
from emodifftalk.train.speech_augment import augment_sample, augmented_16k, with_silence


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
    never = augment_sample(s, rng, AudioConfig(train_augment_prob=0.0, train_silence_prob=0.0), silence=True)
    assert never is s
    always = augment_sample(s, rng, AudioConfig(train_augment_prob=1.0, train_silence_prob=1.0), silence=True)
    assert always["augmented"] and always["feats"] is None and "added_silence" in always["meta"]
    motion = augment_sample(s, rng, AudioConfig(train_augment_prob=1.0, train_silence_prob=1.0), silence=False)
    assert "added_silence" not in motion["meta"] and motion["verts"] is s["verts"]  # meshes stay aligned
    assert len(motion["audio"]) == len(s["audio"])
