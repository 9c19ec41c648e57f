"""AU-edit response metric: gain/cosine against known fields, through the real sampler."""

import numpy as np
import pytest
import torch

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.config import build_config
from emodifftalk.diffusion.schedule import NoiseSchedule
from emodifftalk.eval.au_response import au_edit_response, response_stats
from emodifftalk.motion.denoiser import Denoiser


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
    """A denoiser whose x̂0 is exactly Σ_k E_k F_k(v) (the transformer's output is zeroed) and whose
    edit fields are F."""
    torch.manual_seed(0)
    m = Denoiser(audio_dim=8, d_model=32, n_heads=4, n_layers=1, rank=8, dropout=0.0,
                 offset_scale=2e-3).eval()
    with torch.no_grad():
        m.coef_out.weight.zero_()
        m.coef_out.bias.zero_()
        m.au_field_head.weight.normal_(std=0.2)
        m.edit_field_head.weight.copy_(m.au_field_head.weight)  # edits move exactly what the codes do
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


def _linear_setup(v: int = 30, t: int = 20):
    cfg = build_config("tiny", ["diffusion.num_train_steps=50", "diffusion.ddim_steps=5", "diffusion.window_frames=12",
                                "diffusion.context_frames=3"])
    model = _linear_model()
    template = torch.from_numpy(np.random.default_rng(3).normal(size=(v, 3)).astype(np.float32) * 0.05)
    with torch.no_grad():
        fields = model.encode_template(template[None]).au_fields[0].view(NUM_AUS, v, 3) * float(model.offset_scale)
    aus = torch.from_numpy(np.random.default_rng(4).uniform(0, 0.5, size=(t, NUM_AUS)).astype(np.float32))
    return cfg, model, template, fields, aus, NoiseSchedule(50, "cosine", 1e-4, 0.02)


def test_reference_guidance_amplifies_only_the_edit():
    from emodifftalk.diffusion.windowed import sample_motion

    cfg, model, template, fields, aus, schedule = _linear_setup()
    edited = aus.clone()
    edited[8:14, AU_INDEX["AU01"]] += 0.4  # one window's worth of edit; other frames agree

    def run(codes, **kw):
        return sample_motion(model, schedule, template, codes, None, cfg, generator=torch.Generator().manual_seed(0),
                             guidance_scale=2.0, **kw)

    def linear(codes):  # what x̂0 = Σ_k E_k F_k gives, in metres
        return torch.einsum("tk,kvc->tvc", codes, fields)

    # x̂0 does not depend on x_t, so DDIM returns the guided x̂0 exactly:
    # null reference: x̂(∅) = 0 → 2·E·F; speech reference: E_ref·F + 2·(E − E_ref)·F
    assert torch.allclose(run(edited), linear(2 * edited), atol=1e-6)
    ref = run(edited, reference_aus=aus)
    assert torch.allclose(ref, linear(aus + 2 * (edited - aus)), atol=1e-6)
    # no edit: guidance is a no-op, the unguided sample
    unguided = sample_motion(model, schedule, template, aus, None, cfg, generator=torch.Generator().manual_seed(0),
                             guidance_scale=1.0)
    assert torch.equal(run(aus, reference_aus=aus), unguided)


def test_viewer_resampling_uses_the_same_reference_guidance():
    from emodifftalk.diffusion.windowed import resample_spans

    cfg, model, template, fields, aus, schedule = _linear_setup()
    edited = aus.clone()
    edited[8:14, AU_INDEX["AU02"]] += 0.4
    old = torch.einsum("tk,kvc->tvc", aus, fields).numpy()
    out = resample_spans(model, schedule, template, edited.numpy(), None, old, [(8, 14)], cfg, steps=5,
                         window_frames=12, context_frames=3, fade_frames=0, guidance_scale=2.0,
                         reference_aus=aus.numpy())
    want = torch.einsum("tk,kvc->tvc", aus + 2 * (edited - aus), fields).numpy()
    np.testing.assert_allclose(out[8:14], want[8:14], atol=1e-6)
    np.testing.assert_array_equal(out[:5], old[:5])  # before the span's context: untouched


def test_fields_edit_path_adds_the_deattenuated_fields_of_the_code_change():
    from emodifftalk.diffusion.windowed import sample_motion

    cfg, model, template, fields, aus, schedule = _linear_setup()
    with torch.no_grad():
        model.coef_out.weight.normal_(std=0.5)  # the network now reacts to the codes as well
        model.au_deattenuation.copy_(1.5 * torch.eye(NUM_AUS))
    edited = aus.clone()
    edited[:, AU_INDEX["AU04"]] += 0.3

    def edit(path):
        cfg.diffusion.edit_path = path
        run = [sample_motion(model, None, template, c, None, cfg, sampler="regression", guidance_scale=2.0,
                             reference_aus=aus) for c in (edited, aus)]
        return run[0] - run[1]

    want = 2.0 * 1.5 * torch.einsum("tk,kvc->tvc", edited - aus, fields)
    torch.testing.assert_close(edit("fields"), want, atol=1e-7, rtol=1e-4)
    assert not torch.allclose(edit("network"), want, atol=1e-6)  # the network's own difference

    # DDIM, same noise: the edited sample is the reference sample shifted by exactly the edit, even
    # though this network reads the noisy sample (it would otherwise reproduce part of the edit)
    with torch.no_grad():
        model.frame_in.weight.normal_(std=2.0)
    cfg.diffusion.edit_path = "fields"
    ddim = [sample_motion(model, schedule, template, c, None, cfg, guidance_scale=2.0, reference_aus=aus,
                          generator=torch.Generator().manual_seed(0)) for c in (edited, aus)]
    torch.testing.assert_close(ddim[0] - ddim[1], want, atol=1e-6, rtol=1e-3)
