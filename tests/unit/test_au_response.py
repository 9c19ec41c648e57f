"""AU-edit response metric: gain/cosine against known fields, through the real sampler."""

import numpy as np
import pytest
import torch

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.config import build_config
from emodifftalk.diffusion.schedule import NoiseSchedule
from emodifftalk.eval.au_response import au_edit_response, response_stats
from emodifftalk.models.denoiser import Denoiser


def test_response_stats_scale_and_shape():
    rng = np.random.default_rng(0)
    field = np.zeros((30, 3))
    field[:5] = rng.normal(size=(5, 3)) * 1e-3  # a 5-vertex region
    expected = np.linspace(0, 1, 8)[:, None, None] * field[None]
    half = response_stats(0.5 * expected, expected, field)
    assert half["gain"] == pytest.approx(0.5) and half["cosine"] == pytest.approx(1.0)
    assert half["moved_mm"] == pytest.approx(0.5 * half["expected_mm"])
    other = np.zeros_like(expected)
    other[:, 10:15] = expected[:, :5]  # the same motion, somewhere else
    wrong = response_stats(other, expected, field)
    assert abs(wrong["gain"]) < 1e-9 and abs(wrong["cosine"]) < 1e-9 and wrong["moved_mm"] == 0.0
    with pytest.raises(ValueError, match="expected change is zero"):
        response_stats(expected, np.zeros_like(expected), field)


def _linear_model() -> Denoiser:
    """A denoiser whose x̂0 is exactly Σ_k E_k F_k(v): the transformer's output is zeroed."""
    torch.manual_seed(0)
    m = Denoiser(audio_dim=8, d_model=32, n_heads=4, n_layers=1, rank=8, dropout=0.0,
                 offset_scale=2e-3).eval()
    with torch.no_grad():
        m.coef_out.weight.zero_()
        m.coef_out.bias.zero_()
        m.au_field_head.weight.normal_(std=0.2)
    return m


def test_au_edit_response_is_one_for_a_model_that_moves_exactly_the_field():
    cfg = build_config("tiny", ["diffusion.num_train_steps=50", "diffusion.ddim_steps=5", "diffusion.window_frames=12",
                                "diffusion.context_frames=3"])
    v = 40
    model = _linear_model()
    template = np.random.default_rng(1).normal(size=(v, 3)).astype(np.float32) * 0.05
    with torch.no_grad():
        fields = model.encode_template(torch.from_numpy(template)[None]).au_fields[0]
    fields_m = fields.view(NUM_AUS, v, 3).numpy() * float(model.offset_scale)
    aus = np.random.default_rng(2).uniform(0, 0.4, size=(20, NUM_AUS)).astype(np.float32)
    aus[:, AU_INDEX["AU12"]] = 0.8  # near the top: the edit is clipped at 1
    schedule = NoiseSchedule(50, "cosine", 1e-4, 0.02)
    out = au_edit_response(model, schedule, template, aus, None, fields_m, cfg, ["AU01", "AU12"], delta=0.5)
    for name in ("AU01", "AU12"):
        assert out[name]["gain"] == pytest.approx(1.0, abs=1e-3), name
        assert out[name]["cosine"] == pytest.approx(1.0, abs=1e-3), name
    # scored against another AU's field, the same edit is off
    swapped = fields_m.copy()
    swapped[AU_INDEX["AU01"]] = fields_m[AU_INDEX["AU12"]]
    off = au_edit_response(model, schedule, template, aus, None, swapped, cfg, ["AU01"], delta=0.5)
    assert off["AU01"]["cosine"] < 0.9
    with pytest.raises(ValueError, match="unknown AU"):
        au_edit_response(model, schedule, template, aus, None, fields_m, cfg, ["AU99"])
