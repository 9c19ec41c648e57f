"""Denoiser: any V / any T, conditions matter, CFG null condition, gradients, audio windows."""

import pytest
import torch

from emodifftalk.motion.denoiser import Denoiser, window_audio


def tiny(**kw):
    torch.manual_seed(0)
    args = {"audio_dim": 8, "d_model": 32, "n_heads": 4, "n_layers": 2, "rank": 8, "audio_window": 2, "dropout": 0.0}
    args.update(kw)
    return Denoiser(**args).eval()


def inputs(b, t, v, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, t, v, 3, generator=g), torch.randn(b, v, 3, generator=g) * 0.1,
            torch.rand(b, t, 17, generator=g), torch.randn(b, 2 * t + 1, d, generator=g),
            torch.randint(0, 100, (b,), generator=g))


@pytest.mark.parametrize("v,t", [(50, 7), (123, 12)])
def test_any_vertex_count_and_length(v, t):
    m = tiny()
    x, p, e, a, n = inputs(2, t, v)
    out = m(x, p, e, a, n)
    assert out.shape == (2, t, v, 3)
    assert torch.isfinite(out).all()


def test_same_weights_serve_two_topologies():
    m = tiny()
    out1 = m(*inputs(1, 5, 40))
    out2 = m(*inputs(1, 9, 77))
    assert out1.shape == (1, 5, 40, 3) and out2.shape == (1, 9, 77, 3)
    dims = {d for prm in m.parameters() for d in prm.shape}
    assert not dims & {40 * 3, 77 * 3}, "no weight may be sized by the vertex count"


def test_gradient_reaches_every_parameter():
    m = tiny().train()
    x, p, e, a, n = inputs(3, 6, 30)
    kw = {"drop_cond": torch.tensor([True, False, False]), "drop_audio": torch.tensor([False, True, False])}
    out, fit = m(x, p, e, a, n, au_path=True, **kw)  # training with the AU-fields fit
    (out.square().mean() + (fit - x).square().mean()).backward()
    missing = [name for name, prm in m.named_parameters() if prm.grad is None or not torch.any(prm.grad != 0)]
    assert not missing, f"no gradient for {missing}"
    m.zero_grad(set_to_none=True)
    m(x, p, e, a, n, **kw).square().mean().backward()  # without it: every parameter still in the graph (DDP)
    assert all(prm.grad is not None for prm in m.parameters())


def test_edit_fields_are_fitted_only_by_their_own_loss():
    m = tiny().train()
    torch.nn.init.normal_(m.edit_field_head.weight, std=0.1)
    m.au_mean.fill_(0.2)
    x, p, e, a, n = inputs(2, 5, 30)
    out, fit = m(x, p, e, a, n, au_path=True)
    torch.testing.assert_close(out, m(x, p, e, a, n))  # the prediction does not use them
    out.square().mean().backward()
    grad = m.edit_field_head.weight.grad
    assert grad is None or not grad.any()
    assert m.au_field_head.weight.grad.any()  # the joint fields F are still trained by x̂0
    code = m.encode_template(p)
    expect = torch.matmul(e - 0.2, code.edit_fields) + code.au_bias[:, None]
    torch.testing.assert_close(fit, expect.view_as(fit))


def test_edit_offsets_apply_the_whitening_and_deattenuation_and_old_exports_load():
    m = tiny()
    torch.nn.init.normal_(m.edit_field_head.weight, std=0.1)
    code = m.encode_template(inputs(1, 4, 30)[1])
    delta = torch.zeros(1, 4, 17)
    delta[..., 3] = 0.5
    base = m.edit_offsets(code, delta)
    torch.testing.assert_close(base, 0.5 * code.edit_fields[:, 3].view(1, 1, 30, 3).expand(1, 4, 30, 3))
    m.au_deattenuation.copy_(2.0 * torch.eye(17))
    torch.testing.assert_close(m.edit_offsets(code, delta), 2.0 * base)
    m.au_whitening.copy_(3.0 * torch.eye(17))
    torch.testing.assert_close(m.edit_offsets(m.encode_template(inputs(1, 4, 30)[1]), delta), 6.0 * base)
    new = ("edit_field_head", "au_bias_head", "au_deattenuation", "au_whitening", "au_mean")
    old = {k: v for k, v in m.state_dict().items() if not k.startswith(new)}
    fresh = tiny()
    fresh.load_state_dict(old, strict=True)  # exports from before the edit fields: edits through F
    assert torch.equal(fresh.au_deattenuation, torch.eye(17)) and not fresh.au_bias_head.weight.any()
    assert torch.equal(fresh.edit_field_head.weight, m.au_field_head.weight)


def test_au_fields_make_the_output_linear_in_the_codes_at_zero_transformer_output():
    m = tiny()
    with torch.no_grad():
        m.coef_out.weight.zero_()
        m.coef_out.bias.zero_()
        m.au_field_head.weight.normal_(std=0.1)
    x, p, e, a, n = inputs(1, 4, 25)
    code = m.encode_template(p)
    fields = code.au_fields.view(1, 17, 25, 3)
    expected = torch.einsum("btk,bkvc->btvc", e, fields)
    assert torch.allclose(m(x, p, e, a, n), expected, atol=1e-5)
    assert torch.allclose(m(x, p, e, a, n, drop_cond=True), torch.zeros_like(expected))


def test_batch_rows_are_independent_and_per_row_dropout():
    m = tiny()
    x, p, e, a, n = inputs(2, 5, 20)
    both = m(x, p, e, a, n, drop_cond=torch.tensor([False, True]))
    row0 = m(x[:1], p[:1], e[:1], a[:1], n[:1])
    row1 = m(x[1:], p[1:], e[1:], a[1:], n[1:], drop_cond=True)
    assert torch.allclose(both[:1], row0, atol=1e-5)
    assert torch.allclose(both[1:], row1, atol=1e-5)


def test_frame_mask_hides_padding():
    m = tiny()
    x, p, e, a, n = inputs(1, 8, 20)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[:, :5] = True
    a_short = a.clone()
    a_short[:, 2 * 5 + 2:] = 0  # audio of padded frames is zero in a collated batch as well
    out_pad = m(x, p, e, a_short, n, frame_mask=mask)
    x2 = x.clone()
    x2[:, 5:] = 123.0  # garbage in the padding
    out_pad2 = m(x2, p, e, a_short, n, frame_mask=mask)
    assert torch.allclose(out_pad[:, :5], out_pad2[:, :5], atol=1e-5)


def test_causal_mode_does_not_look_ahead():
    m = tiny(causal=True)
    x, p, e, _, n = inputs(1, 6, 20)
    out = m(x, p, e, None, n)
    x2, e2 = x.clone(), e.clone()
    x2[:, 4:] += 1.0
    e2[:, 4:] = 0.0
    out2 = m(x2, p, e2, None, n)
    assert torch.allclose(out[:, :4], out2[:, :4], atol=1e-5)
    assert not torch.allclose(out[:, 4:], out2[:, 4:])


def test_template_code_cache_matches_direct_call():
    m = tiny()
    x, p, e, a, n = inputs(1, 4, 25)
    code = m.encode_template(p)
    assert torch.allclose(m(x, p, e, a, n), m(x, None, e, a, n, template_code=code))


def test_translation_and_scale_of_template_do_not_matter():
    m = tiny()
    x, p, e, a, n = inputs(1, 4, 25)
    moved = p * 3.0 + torch.tensor([0.5, -1.0, 2.0])
    assert torch.allclose(m(x, p, e, a, n), m(x, moved, e, a, n), atol=1e-4)


def test_window_audio_alignment():
    # feature value = its index; 25 fps video, 50 Hz features: frame t centre feature is 2t + 1
    a = torch.arange(20, dtype=torch.float32).view(1, 20, 1)
    w = window_audio(a, n_frames=10, fps=25.0, feature_rate=50.0, half_window=1)
    assert w.shape == (1, 10, 3, 1)
    assert w[0, 0, :, 0].tolist() == [0.0, 1.0, 2.0]
    assert w[0, 3, :, 0].tolist() == [6.0, 7.0, 8.0]
    assert w[0, 9, :, 0].tolist() == [18.0, 19.0, 0.0]  # beyond the end: zeros
    shifted = window_audio(a, n_frames=2, fps=25.0, feature_rate=50.0, half_window=1, start_frame=3)
    assert torch.equal(shifted[0, 0], w[0, 3])


def test_shape_errors_are_clear():
    m = tiny()
    x, p, e, a, n = inputs(1, 4, 25)
    with pytest.raises(AssertionError, match="aus"):
        m(x, p, e[:, :3], a, n)
    with pytest.raises(AssertionError, match="template"):
        m(x, p[:, :10], e, a, n)


def test_precomputed_condition_matches():
    m = tiny()
    x, p, e, a, n = inputs(2, 6, 20)
    cond = m.encode_condition(e, a)
    for drop in (None, torch.tensor([True, False])):
        assert torch.allclose(m(x, p, e, a, n, drop_cond=drop), m(x, p, e, a, n, drop_cond=drop, cond_embedding=cond),
                              atol=1e-6)
    # with a start frame the audio windows shift: the cached embedding must be built with it too
    assert torch.allclose(m(x, p, e, a, n, start_frame=2),
                          m(x, p, e, a, n, start_frame=2, cond_embedding=m.encode_condition(e, a, 2)), atol=1e-6)


def test_template_index_matches_per_row_templates():
    m = tiny()
    x, p, e, a, n = inputs(3, 4, 20)
    uniq = p[:2]
    idx = torch.tensor([1, 0, 1])
    assert torch.allclose(m(x, uniq[idx], e, a, n), m(x, uniq, e, a, n, template_index=idx), atol=1e-5)
