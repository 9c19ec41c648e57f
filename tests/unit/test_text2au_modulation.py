import numpy as np
import pytest
import torch

from emodifftalk.au import AU_INDEX, NUM_AUS, SPEECH_AUS
from emodifftalk.text2au.modulation import ARTICULATION_AUS, LIP_CORNER_AUS, modulate_aus


def _y(**levels):
    y = torch.zeros(NUM_AUS)
    for name, v in levels.items():
        y[AU_INDEX[name]] = v
    return y


def test_formula_by_hand_without_lip_lock():
    E = torch.full((3, NUM_AUS), 0.4)
    y = _y(AU06=1.0, AU12=0.5)
    out = modulate_aus(E, y, alpha=1.0, beta=0.5, lip_lock=False, target=0.6)
    assert out.shape == (3, NUM_AUS)
    assert torch.allclose(out[:, AU_INDEX["AU06"]], torch.tensor(0.8))  # 0.4 * (1 + 1)
    assert torch.allclose(out[:, AU_INDEX["AU12"]], torch.tensor(0.5))  # 0.4 * 1.5 - 0.5 * 0.5 * 0.4
    assert torch.allclose(out[:, AU_INDEX["AU01"]], torch.tensor(0.2))  # 0.4 - 0.5 * 0.4


def test_requested_au_appears_on_a_neutral_face_and_output_is_clamped():
    E = torch.zeros(2, NUM_AUS)
    E[:, AU_INDEX["AU06"]] = 0.8
    y = _y(AU06=1.0, AU12=1.0, AU01=0.5)
    out = modulate_aus(E, y, alpha=1.0, beta=0.5, lip_lock=False, target=0.6)
    assert torch.allclose(out[:, AU_INDEX["AU12"]], torch.tensor(0.6))  # smile from nothing: target * y
    assert torch.allclose(out[:, AU_INDEX["AU01"]], torch.tensor(0.3))
    assert torch.allclose(out[:, AU_INDEX["AU06"]], torch.tensor(1.0))  # 1.6 clamped
    assert out.min() >= 0 and out.max() <= 1


def test_lip_lock_keeps_articulation_and_only_raises_lip_corners():
    torch.manual_seed(0)
    E = torch.rand(5, NUM_AUS)
    y = torch.zeros(NUM_AUS)
    y[AU_INDEX["AU12"]] = 1.0  # a smile request
    y[AU_INDEX["AU25"]] = 1.0  # and an open mouth request (ignored under lip lock)
    locked = modulate_aus(E, y, lip_lock=True)
    free = modulate_aus(E, y, lip_lock=False)
    for name in ARTICULATION_AUS:
        assert torch.equal(locked[:, AU_INDEX[name]], E[:, AU_INDEX[name]])
    for name in LIP_CORNER_AUS:
        k = AU_INDEX[name]
        assert torch.all(locked[:, k] >= E[:, k])  # never removes speech lip-corner motion
        assert torch.allclose(locked[:, k], torch.maximum(E[:, k], free[:, k]))
    k12 = AU_INDEX["AU12"]
    assert torch.all(locked[:, k12] >= 0.6)  # the smile is applied
    # upper-face AUs follow the formula in both modes
    upper = [AU_INDEX[n] for n in AU_INDEX if n not in SPEECH_AUS]
    assert torch.allclose(locked[:, upper], free[:, upper])


def test_zero_request_attenuates_by_beta_and_identity_when_beta_zero():
    E = torch.rand(4, NUM_AUS)
    y = torch.zeros(NUM_AUS)
    assert torch.allclose(modulate_aus(E, y, alpha=1.0, beta=0.0, lip_lock=False), E)
    assert torch.allclose(modulate_aus(E, y, alpha=1.0, beta=0.5, lip_lock=False), 0.5 * E)


def test_numpy_in_numpy_out_and_time_varying_y():
    E = np.full((2, NUM_AUS), 0.5, dtype=np.float32)
    y = np.zeros((2, NUM_AUS), dtype=np.float32)
    y[1, AU_INDEX["AU04"]] = 1.0
    out = modulate_aus(E, y, lip_lock=False)
    assert isinstance(out, np.ndarray) and out.shape == (2, NUM_AUS)
    assert out[0, AU_INDEX["AU04"]] == pytest.approx(0.25) and out[1, AU_INDEX["AU04"]] == pytest.approx(1.0)


@pytest.mark.parametrize("E,y,kw", [
    (torch.zeros(4, 16), torch.zeros(NUM_AUS), {}),
    (torch.zeros(4, NUM_AUS), torch.zeros(3, NUM_AUS), {}),
    (torch.zeros(4, NUM_AUS), torch.zeros(NUM_AUS), {"beta": 1.5}),
    (torch.full((4, NUM_AUS), float("nan")), torch.zeros(NUM_AUS), {}),
])
def test_bad_inputs_raise(E, y, kw):
    with pytest.raises(ValueError):
        modulate_aus(E, y, **kw)


# ---- dynamics -----------------------------------------------------------------------------------

from emodifftalk.config import build_config  # noqa: E402
from emodifftalk.text2au.modulation import (  # noqa: E402
    dynamic_text_aus,
    edge_ramps,
    follow,
    loudness_activity,
    modulate_with_dynamics,
)

FPS = 25.0


def _speech_with_pause(sr=16000):
    """1 s of a 200 Hz tone, 1 s of silence, 1 s of tone."""
    t = np.arange(sr) / sr
    tone = 0.3 * np.sin(2 * np.pi * 200 * t)
    return np.concatenate([tone, np.zeros(sr), tone])


def test_loudness_activity_is_high_in_speech_and_zero_in_pauses():
    act = loudness_activity(_speech_with_pause(), 16000, FPS, 75)
    assert act.shape == (75,) and act.min() >= 0 and act.max() <= 1
    assert act[5:20].min() > 0.9 and act[30:45].max() == 0.0


def test_follower_rises_with_onset_and_falls_with_release():
    act = np.r_[np.zeros(10), np.ones(50), np.zeros(50)]
    env = follow(act, FPS, onset_s=0.1, release_s=0.5)
    assert env[10] < env[14] < env[20] and env[59] > 0.95  # attack: ~0.1 s time constant
    # release is slower than attack: after 0.2 s of silence most of the level remains
    assert env[65] > 0.6 and env[-1] < 0.2


def test_edge_ramps_fade_in_and_out():
    r = edge_ramps(100, FPS, 0.4)
    assert r[0] == 0 and r[-1] == 0 and r[50] == 1 and np.all(np.diff(r[:11]) >= 0)


def test_dynamic_requests_follow_speech_and_strength():
    y = _y(AU01=1.0, AU12=1.0).numpy()
    env = np.r_[np.ones(10), np.zeros(10)]
    d = dynamic_text_aus(y, env, strength=1.0, pause_level=0.4)
    a01, a12 = AU_INDEX["AU01"], AU_INDEX["AU12"]
    assert d.shape == (20, NUM_AUS)
    assert np.allclose(d[:10, a01], 1) and np.allclose(d[10:, a01], 0.4)  # brows linger in pauses
    assert np.allclose(d[:10, a12], 1) and np.allclose(d[10:, a12], 0)  # the mouth rests
    assert np.allclose(dynamic_text_aus(y, env, strength=0.5)[:10, a01], 0.5)
    assert np.allclose(dynamic_text_aus(y, env, strength=0.0), 0)
    with pytest.raises(ValueError):
        dynamic_text_aus(y, env, strength=-1)


def test_modulate_with_dynamics_keeps_lip_lock_and_moves_brows_with_speech():
    cfg = build_config("tiny").text2au
    audio = _speech_with_pause()
    n = 75
    rng = np.random.default_rng(0)
    E = rng.uniform(0, 0.3, (n, NUM_AUS)).astype(np.float32)
    y = _y(AU01=1.0, AU02=1.0, AU12=1.0, AU25=1.0).numpy()
    out = modulate_with_dynamics(E, y, FPS, cfg, audio=audio)
    for name in ARTICULATION_AUS:  # lip lock: articulation exactly as speech drives it
        assert np.array_equal(out[:, AU_INDEX[name]], E[:, AU_INDEX[name]])
    a01 = AU_INDEX["AU01"]
    assert out[15:25, a01].mean() > out[40:50, a01].mean() + 0.1  # brows higher while speaking
    assert out[0, a01] <= E[0, a01] + 1e-6 and out[-1, a01] <= E[-1, a01] + 1e-6  # ramps at the clip edges
    weaker = modulate_with_dynamics(E, y, FPS, cfg, audio=audio, strength=0.3)
    assert weaker[15:25, a01].mean() < out[15:25, a01].mean()


def test_strength_zero_leaves_speech_codes_unchanged():
    cfg = build_config("tiny").text2au
    E = np.random.default_rng(1).uniform(0, 1, (30, NUM_AUS)).astype(np.float32)
    out = modulate_with_dynamics(E, np.ones(NUM_AUS), FPS, cfg, strength=0.0)
    assert np.allclose(out, E)
