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
