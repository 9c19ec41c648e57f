"""FaceFormer baseline: shapes, causality in the audio features, PPE/bias, AR = teacher forcing."""

import pytest
import torch

from emodifftalk.config import ConfigError, load_preset
from emodifftalk.motion.faceformer import FaceFormer, biased_causal_mask, periodic_positional_encoding
from emodifftalk.motion.methods import build_motion_model, method_of, predict_offsets


def _model(**kw):
    torch.manual_seed(0)
    m = FaceFormer(audio_dim=5, d_model=32, n_heads=4, n_layers=2, period=4, audio_context=3, rank=8,
                   dropout=0.0, point_hidden=16, n_freqs=2, offset_scale=0.002, **kw)
    with torch.no_grad():  # the zero-init-ish output layer would make every comparison trivial
        m.coef_out.weight.normal_(0, 0.5)
    return m.eval()


def test_shapes_and_units():
    m = _model()
    tpl, audio = torch.randn(2, 30, 3), torch.randn(2, 24, 5)  # 12 frames at 25 fps = 24 features at 50 Hz
    out = m(torch.zeros(2, 12, 30, 3), tpl, audio)
    assert out.shape == (2, 12, 30, 3) and torch.isfinite(out).all()
    assert m.generate(tpl, audio, 12).shape == (2, 12, 30, 3)
    metres = predict_offsets(m, None, tpl[0], torch.zeros(12, 17), audio[0])
    assert metres.shape == (12, 30, 3)
    assert torch.allclose(metres, m.generate(tpl[:1], audio[:1], 12)[0] * 0.002, atol=1e-6)


def test_output_at_t_ignores_audio_after_t():
    m = _model()
    tpl, audio = torch.randn(1, 20, 3), torch.randn(1, 40, 5)
    base = m.generate(tpl, audio, 20)
    t = 7  # frame 7 covers features 14, 15: change everything from feature 16 on
    later = audio.clone()
    later[:, 2 * (t + 1):] = torch.randn_like(later[:, 2 * (t + 1):]) * 5
    changed = m.generate(tpl, later, 20)
    assert torch.allclose(base[:, :t + 1], changed[:, :t + 1], atol=1e-6)
    assert not torch.allclose(base[:, t + 1:], changed[:, t + 1:], atol=1e-4)  # the test can fail
    # teacher-forced training pass: same causality
    tf = m(base, tpl, audio)
    tf2 = m(base, tpl, later)
    assert torch.allclose(tf[:, :t + 1], tf2[:, :t + 1], atol=1e-6)


def test_generation_equals_teacher_forcing_on_its_own_output():
    m = _model()
    tpl, audio = torch.randn(1, 20, 3), torch.randn(1, 30, 5)
    gen = m.generate(tpl, audio, 15)
    assert torch.allclose(m(gen, tpl, audio), gen, atol=1e-5)


def test_biased_mask_and_periodic_encoding():
    mask = biased_causal_mask(6, 2, period=2)
    assert torch.isinf(mask[:, 0, 1:]).all() and (mask[:, 5, :6] <= 0).all()
    assert mask[0, 5, 5] == 0 and mask[0, 5, 4] == 0 and mask[0, 5, 3] < 0  # within a period: no bias
    assert mask[1, 5, 0] > mask[0, 5, 0]  # the second head's slope is gentler
    pe = periodic_positional_encoding(torch.arange(10), 8, period=4)
    assert torch.allclose(pe[1], pe[5]) and not torch.allclose(pe[1], pe[2])


def test_config_spellings():
    cfg = load_preset("tiny")
    cfg.motion.model = "faceformer"
    cfg.validate()
    assert method_of(cfg) == "faceformer" and isinstance(build_motion_model(cfg, 0.001), FaceFormer)
    cfg = load_preset("tiny")
    cfg.motion.model = "regression"
    assert method_of(cfg.validate()) == "regression" and cfg.diffusion.regression
    cfg = load_preset("tiny")
    cfg.diffusion.regression = True
    assert cfg.validate().motion.model == "regression"
    cfg.motion.model = "faceformer"
    with pytest.raises(ConfigError, match="contradicts"):
        cfg.validate()
    cfg = load_preset("tiny")
    cfg.motion.model = "template"
    with pytest.raises(ConfigError, match="nothing to train"):
        cfg.validate()


# ---------------------------------------------------------------- through the shared motion task


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from diffusion_fixtures import make_motion_shards

    return make_motion_shards(tmp_path_factory.mktemp("ff_motion"))


def _ff_config(shards, *extra):
    from diffusion_fixtures import tiny_motion_config

    return tiny_motion_config(shards, "motion.model=faceformer", "faceformer.d_model=32",
                              "faceformer.vertex_embed_rank=8", "faceformer.audio_context=2",
                              "faceformer.dropout=0", *extra)


def test_faceformer_task_fits_a_batch(shards):
    from emodifftalk.train.tasks.motion import MotionTask

    cfg = _ff_config(shards)
    task = MotionTask(cfg)
    torch.manual_seed(0)
    model = task.build_model()
    assert isinstance(model, FaceFormer)
    batch = next(iter(task.train_batches(0, 1, 0, 0)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(40):
        terms = task.loss(model, batch, step)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        first = first if first is not None else float(terms["vertex"])
    assert float(terms["vertex"]) < 0.5 * first


def test_faceformer_trains_exports_and_reloads(shards, tmp_path):
    from emodifftalk.motion.inference import load_motion
    from emodifftalk.train.loop import run_training
    from emodifftalk.train.tasks.motion import MotionTask

    cfg = _ff_config(shards, "train.max_steps=3", "train.val_every=3", "train.ckpt_every=3", "train.log_every=1")
    export = run_training(MotionTask(cfg), tmp_path / "run")
    loaded = load_motion(export)  # inference code, no training task
    assert isinstance(loaded.model, FaceFormer) and method_of(loaded.cfg) == "faceformer"
    assert '"model": "faceformer"' in (export / "motion.json").read_text()
    assert "val/lve_mm" in (tmp_path / "run" / "metrics.jsonl").read_text()


def test_animate_drives_a_faceformer_export():
    import numpy as np

    from emodifftalk.models.audio_frontend import build_frontend
    from emodifftalk.pipeline.animate import Models, motion_offsets

    cfg = load_preset("tiny")
    cfg.motion.model = "faceformer"
    cfg.faceformer.d_model, cfg.faceformer.vertex_embed_rank = 32, 8
    model = build_motion_model(cfg.validate(), offset_scale=0.002).eval()
    models = Models(s2au=None, motion=model, motion_cfg=cfg, schedule=None,
                    motion_frontend=build_frontend(cfg.audio).eval())
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)  # 1 s
    out = motion_offsets(models, torch.randn(40, 3) * 0.05, np.zeros((25, 17), np.float32), audio, cfg)
    assert out.shape == (25, 40, 3) and torch.isfinite(out).all()


def test_eval_motion_refuses_a_faceformer_export(shards, tmp_path):
    from emodifftalk.eval.motion import run_eval
    from emodifftalk.train.loop import run_training
    from emodifftalk.train.tasks.motion import MotionTask

    export = run_training(MotionTask(_ff_config(shards, "train.max_steps=1", "train.val_every=100")), tmp_path / "r")
    with pytest.raises(ValueError, match="eval pipeline"):
        run_eval(export, shards)
