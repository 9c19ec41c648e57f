"""Speech-to-AU transformer: windowed attention, padding masks, any-fps frame pooling."""

import math

import pytest
import torch

from emodifftalk.config import S2AUConfig
from emodifftalk.s2au.model import SpeechToAU, attention_mask, frames_for_duration, pool_to_frames


def tiny_model(local_layers=2, global_layers=0, window=3, in_dim=8, seed=0):
    torch.manual_seed(seed)
    cfg = S2AUConfig(d_model=16, n_heads=2, local_layers=local_layers, global_layers=global_layers,
                     local_window=window, dropout=0.0, calib_dim=8)
    m = SpeechToAU(cfg, in_dim=in_dim).eval()
    # non-zero relative biases so the position path is exercised
    for layer in m.layers:
        torch.nn.init.normal_(layer.rel_bias.table, std=0.5)
    return m


def test_attention_mask_band_and_padding():
    valid = torch.tensor([[True, True, True, True, False]])
    m = attention_mask(valid, window=1)[0, 0]
    expected = torch.tensor([
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 0],  # key 4 is padding
        [0, 0, 0, 1, 1],  # padded query still sees itself (no all-masked row)
    ], dtype=torch.bool)
    assert torch.equal(m, expected)


def test_local_receptive_field():
    """Outputs farther than local_layers * local_window from a perturbed frame do not change."""
    m = tiny_model(local_layers=2, global_layers=0, window=3)
    assert m.receptive_field == 6
    torch.manual_seed(1)
    x = torch.randn(1, 40, 8)
    y0 = m.encode(x)
    x2 = x.clone()
    x2[0, 20] = 3.0 * torch.randn(8)  # (a constant shift would vanish in the input LayerNorm)
    y1 = m.encode(x2)
    changed = (y1 - y0).abs().amax(dim=-1)[0] > 1e-6
    idx = torch.nonzero(changed).flatten()
    assert changed[20]
    assert idx.min() >= 20 - 6 and idx.max() <= 20 + 6
    assert changed[14] or changed[26]  # the receptive field is actually used
    # with a global layer, far frames do change
    g = tiny_model(local_layers=2, global_layers=1, window=3)
    assert math.isinf(g.receptive_field)
    d = (g.encode(x2) - g.encode(x)).abs().amax(dim=-1)[0]
    assert d[0] > 1e-6 and d[39] > 1e-6


def test_padding_is_ignored():
    m = tiny_model(local_layers=1, global_layers=1, window=4)
    torch.manual_seed(2)
    x = torch.randn(1, 30, 8)
    ref = m.encode(x)
    padded = torch.cat([x, 100 * torch.randn(1, 10, 8)], dim=1)
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, :30] = True
    out = m.encode(padded, mask)
    assert torch.all(torch.isfinite(out))
    assert torch.allclose(out[0, :30], ref[0], atol=1e-5)


def test_translation_invariance():
    """Relative positions only: a sub-window far from its edges gives the same outputs."""
    m = tiny_model(local_layers=2, global_layers=0, window=2)
    torch.manual_seed(3)
    x = torch.randn(1, 50, 8)
    full = m.encode(x)[0]
    part = m.encode(x[:, 10:40])[0]
    assert torch.allclose(part[4:-4], full[14:36], atol=1e-5)


def test_forward_range_and_shapes():
    m = tiny_model(local_layers=1, global_layers=1)
    x = torch.randn(2, 100, 8)  # 2 s at 50 Hz
    y = m(x, None, n_frames=torch.tensor([50, 40]), fps=25.0)
    assert y.shape == (2, 50, 17)
    assert torch.all((y >= 0) & (y <= 1))
    assert m(x, fps=30.0).shape == (2, 60, 17)  # from the audio length
    # per-sample fps: each row equals pooling that sample alone at its own rate
    mixed = m(x, None, n_frames=torch.tensor([50, 60]), fps=torch.tensor([25.0, 30.0]))
    assert mixed.shape == (2, 60, 17)
    assert torch.allclose(mixed[0, :50], m(x[:1], None, 50, 25.0)[0], atol=1e-6)
    assert torch.allclose(mixed[1], m(x[1:], None, 60, 30.0)[0], atol=1e-6)
    with pytest.raises(AssertionError, match="feats"):
        m(torch.randn(1, 10, 9))


@pytest.mark.parametrize("fps", [25.0, 30.0, 24.5])
def test_pool_any_fps(fps):
    """Prefix-sum pooling equals a dense overlap-weight reference for any fps."""
    rate = 50.0
    ta = 203
    torch.manual_seed(4)
    x = torch.rand(1, ta, 3, dtype=torch.float64)
    n = frames_for_duration(ta / rate, fps)
    y = pool_to_frames(x, None, n, fps, rate)
    assert y.shape == (1, n, 3)
    frame = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(ta, dtype=torch.float64)[None, :]
    a, b = frame * rate / fps, (frame + 1) * rate / fps  # frame interval in feature units
    w = (torch.minimum(b, i + 1) - torch.maximum(a, i)).clamp(min=0)  # (T, Ta) overlaps
    ref = (w @ x[0]) / w.sum(dim=1, keepdim=True)
    assert torch.allclose(y[0], ref, atol=1e-9)
    if fps == 25.0:  # two features per frame exactly
        assert torch.allclose(y[0, 3], (x[0, 6] + x[0, 7]) / 2)


def test_pool_exact_weights_and_masks():
    x = torch.tensor([[[1.0], [2.0], [3.0], [4.0], [5.0], [9.0]]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    # rate 2, fps 1: frame t averages features 2t, 2t+1
    y = pool_to_frames(x, mask, 4, fps=1.0, rate=2.0)
    assert torch.allclose(y[0, :, 0], torch.tensor([1.5, 3.5, 5.0, 5.0]))  # masked 9 ignored; past end -> last
    # fps 1.5 at rate 2: frame 0 covers [0, 4/3) features = 1*1 + 2*(1/3) over 4/3
    y = pool_to_frames(x[:, :4], None, 2, fps=1.5, rate=2.0)
    assert torch.allclose(y[0, 0, 0], torch.tensor((1.0 + 2.0 / 3.0) / (4.0 / 3.0)))
    # frame 1 covers [4/3, 8/3): 2/3 of feature 1 (value 2) and 2/3 of feature 2 (value 3)
    assert torch.allclose(y[0, 1, 0], torch.tensor((2.0 * 2.0 / 3.0 + 3.0 * 2.0 / 3.0) / (4.0 / 3.0)))


def test_pool_gradients_flow():
    x = torch.randn(1, 10, 3, requires_grad=True)
    pool_to_frames(x, None, 4, fps=20.0, rate=50.0).sum().backward()
    assert x.grad is not None and torch.all(torch.isfinite(x.grad)) and x.grad.abs().sum() > 0
