"""Unit tests of the training loop's parts: seeding, schedule, EMA, checkpoint helpers, registry,
toy task data, export round trip and CLI parsing (no accelerate run here)."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch

from emodifftalk.config import TrainConfig, build_config
from emodifftalk.distributed.seed import derive_seed, seed_everything, torch_generator
from emodifftalk.train import checkpoint as ck
from emodifftalk.train.ema import EMA
from emodifftalk.train.optim import build_optimizer, lr_at, param_groups
from emodifftalk.train.task import TASKS, Task, Validation, get_task, optional_hook, register_task
from emodifftalk.train.toy import ToyTask

# ---- seeding --------------------------------------------------------------------------------------


def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_everything_reproducible_and_rank_dependent():
    seed_everything(7, rank=0)
    a = _draw()
    seed_everything(7, rank=0)
    assert _draw() == a
    seed_everything(7, rank=1)
    b = _draw()
    assert b != a
    seed_everything(8, rank=0)
    assert _draw() != a
    assert derive_seed(7, 0) == 7
    assert len({derive_seed(s, r) for s in range(4) for r in range(4)}) == 16
    with pytest.raises(ValueError):
        derive_seed(-1, 0)


def test_torch_generator_is_independent_of_global_rng():
    x1 = torch.randn(5, generator=torch_generator(3, 1, 2))
    torch.manual_seed(123)
    torch.rand(10)
    x2 = torch.randn(5, generator=torch_generator(3, 1, 2))
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, torch.randn(5, generator=torch_generator(3, 2, 1)))


# ---- optimizer and schedule ---------------------------------------------------------------------------


def test_lr_schedule_warmup_cosine_constant():
    t = TrainConfig(max_steps=110, lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, t) == pytest.approx(1e-4)
    assert lr_at(9, t) == pytest.approx(1e-3)
    assert lr_at(10, t) == pytest.approx(1e-3)
    assert lr_at(60, t) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way: cos = 0
    assert lr_at(110, t) == pytest.approx(1e-4)
    assert lr_at(500, t) == pytest.approx(1e-4)  # clamped after max_steps
    lrs = [lr_at(s, t) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    t.schedule = "constant"
    assert lr_at(80, t) == pytest.approx(1e-3)
    t.warmup_steps = 0
    assert lr_at(0, t) == pytest.approx(1e-3)


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    groups = param_groups(model, 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}
    opt = build_optimizer(model, TrainConfig(lr=2e-3, betas=(0.8, 0.9)))
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.param_groups[0]["lr"] == 2e-3


# ---- EMA ------------------------------------------------------------------------------------------------


def test_ema_update_formula_save_load_and_swap(tmp_path):
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    d = ema.current_decay()
    assert d == pytest.approx(min(0.9, 1 / 10))
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], d * w0 + (1 - d) * model.weight)
    ema.save(tmp_path / "ema.safetensors")
    other = EMA(torch.nn.Linear(3, 2), decay=0.9)
    other.load(tmp_path / "ema.safetensors")
    assert other.updates == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    raw = model.weight.detach().clone()
    with ema.swapped_in(model):
        assert torch.equal(model.weight, ema.shadow["weight"])
    assert torch.equal(model.weight, raw)
    with pytest.raises(ValueError, match="does not match"):
        EMA(torch.nn.Linear(3, 4, bias=False), 0.9).load(tmp_path / "ema.safetensors")
    with pytest.raises(ValueError):
        EMA(model, decay=0.0)


# ---- checkpoint helpers --------------------------------------------------------------------------------


def _fake_ckpt(d, step, complete=True):
    p = d / ck.checkpoint_name(step)
    p.mkdir(parents=True)
    if complete:
        (p / ck.STATE_FILE).write_text(json.dumps({"step": step}))
    return p


def test_checkpoint_listing_resume_and_prune(tmp_path):
    d = tmp_path / "checkpoints"
    assert ck.resolve_resume("latest", d) is None and ck.resolve_resume(None, d) is None
    for s in (5, 20, 10):
        _fake_ckpt(d, s)
    _fake_ckpt(d, 30, complete=False)  # no trainer_state.json: not a checkpoint
    (d / ".tmp-step_0000040").mkdir()
    assert [s for s, _ in ck.list_checkpoints(d)] == [5, 10, 20]
    assert ck.resolve_resume("latest", d).name == "step_0000020"
    assert ck.resolve_resume(str(d / "step_0000005"), d).name == "step_0000005"
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        ck.resolve_resume(str(d / "nope"), d)
    with pytest.raises(FileNotFoundError, match="not a finished checkpoint"):
        ck.resolve_resume(str(d / "step_0000030"), d)
    removed = ck.prune_checkpoints(d, keep_last=2)
    assert [p.name for p in removed] == ["step_0000005"]
    assert [s for s, _ in ck.list_checkpoints(d)] == [10, 20]
    ck.clean_stale_temp(d)
    assert not (d / ".tmp-step_0000040").exists()
    assert (d / "step_0000030").exists()  # never touched: not ours to judge


# ---- registry -------------------------------------------------------------------------------------------


def test_registry_lazy_import_and_clear_errors():
    cfg = build_config("tiny")
    task = get_task("toy", cfg)
    assert isinstance(task, ToyTask) and task.cfg is cfg
    with pytest.raises(ValueError, match="unknown training task 'no_such_task'.*toy"):
        get_task("no_such_task", cfg)

    class Proto:  # protocol-only task, not a Task subclass
        def __init__(self, cfg):
            self.cfg = cfg

        def build_model(self): ...
        def train_batches(self, *a): ...
        def loss(self, *a): ...

    register_task("_unit_proto", Proto)
    try:
        t = get_task("_unit_proto", cfg)
        assert optional_hook(t, "validate")(None, 0) == Validation({})
        assert optional_hook(t, "skip_stats")() == {}

        @register_task("_unit_bad")
        class Bad:
            def __init__(self, cfg):
                self.cfg = cfg

        with pytest.raises(TypeError, match="missing build_model, train_batches, loss"):
            get_task("_unit_bad", cfg)
    finally:
        TASKS.pop("_unit_proto", None)
        TASKS.pop("_unit_bad", None)
    assert Task(cfg).batch_size({"meta": "x", "a": torch.zeros(5, 2)}) == 5


# ---- toy task data ----------------------------------------------------------------------------------------


def test_toy_batches_deterministic_per_rank_and_resumable():
    cfg = build_config("tiny", ["data.batch_size=4"])
    task = ToyTask(cfg, skip_every=3)
    it = task.train_batches(rank=0, world_size=2, seed=5, start_step=0)
    first = [next(it) for _ in range(5)]
    assert task.skip_stats() == {"corrupt_samples": 1}  # batch index 2 lost a sample
    assert [b["x"].shape[0] for b in first] == [4, 4, 3, 4, 4]
    again = list(zip(range(5), ToyTask(cfg, skip_every=3).train_batches(0, 2, 5, 0)))
    assert all(torch.equal(a["x"], b["x"]) for a, (_, b) in zip(first, again))
    resumed_task = ToyTask(cfg, skip_every=3)
    resumed = next(resumed_task.train_batches(0, 2, 5, start_step=3))
    assert torch.equal(resumed["x"], first[3]["x"]) and resumed_task.skip_stats() == {"corrupt_samples": 1}
    other = next(ToyTask(cfg).train_batches(1, 2, 5, 0))
    assert not torch.equal(other["x"], first[0]["x"])
    assert set(other["sample_id"].tolist()).isdisjoint(first[0]["sample_id"].tolist())
    model = task.build_model()
    out = task.loss(model, first[0], step=0)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert not torch.isfinite(ToyTask(cfg, nan_steps=(2,)).loss(model, first[0], step=2)["loss"])


def test_toy_from_env(monkeypatch):
    monkeypatch.setenv("EMODIFFTALK_TOY_NAN_STEPS", "3, 5")
    monkeypatch.setenv("EMODIFFTALK_TOY_NAN_RANK", "1")
    monkeypatch.setenv("EMODIFFTALK_TOY_EMA", "1")
    cfg = build_config("tiny")
    t = ToyTask.from_env(cfg)
    assert t.cfg is cfg and t.nan_steps == (3, 5) and t.nan_rank == 1 and t.ema is True


# ---- export round trip --------------------------------------------------------------------------------------


def test_export_and_load_exported_roundtrip(tmp_path):
    from emodifftalk.train.export import export_model, load_exported

    cfg = build_config("tiny")
    task = ToyTask(cfg)
    torch.manual_seed(0)
    model = task.build_model().eval()
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema = {k: v + 0.5 for k, v in model.named_parameters()}
    out = export_model(task, raw, tmp_path / "export", ema_state=ema, meta={"step": 3})
    assert json.loads((out / "task.json").read_text())["task"] == "toy"
    assert (out / "toy_model.txt").is_file()  # export_extra ran
    x = torch.randn(2, task.seq_len, task.d_in)
    loaded_raw, cfg2 = load_exported(out, weights="model_raw")
    assert cfg2.to_dict() == cfg.to_dict()
    assert torch.equal(loaded_raw(x), model(x))
    loaded, _ = load_exported(out, "toy")
    assert torch.equal(loaded.embed.weight, model.embed.weight + 0.5)
    with pytest.raises(FileNotFoundError, match="training export dir"):
        load_exported(tmp_path / "missing")


# ---- CLI -------------------------------------------------------------------------------------------------


def test_cli_train_parses_overrides_after_options():
    from emodifftalk.cli import parse_args

    args = parse_args(["train", "toy", "--config", "tiny", "train.lr=1e-4", "--out", "x",
                                      "train.max_steps=3", "--resume", "latest"])
    assert (args.task, args.out, args.resume) == ("toy", "x", "latest")
    assert args.overrides == ["train.lr=1e-4", "train.max_steps=3"]
    assert math.isclose(build_config(args.config, args.overrides).train.lr, 1e-4)


def test_optimizer_and_rng_state_round_trip_without_pickle(tmp_path):
    import json
    import random

    import numpy as np
    from safetensors.torch import load_file, save_file

    from emodifftalk.train.safe_state import (optimizer_from_files, optimizer_to_files, rng_from_files,
                                              rng_to_files)

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().mean().backward()
        opt.step()
    tensors, meta = optimizer_to_files(opt.state_dict())
    save_file(tensors, str(tmp_path / "o.safetensors"))
    (tmp_path / "o.json").write_text(json.dumps(meta))
    restored = torch.optim.AdamW(model.parameters(), lr=5.0)
    restored.load_state_dict(optimizer_from_files(load_file(str(tmp_path / "o.safetensors")),
                                                  json.loads((tmp_path / "o.json").read_text())))
    a, b = opt.state_dict(), restored.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid, entries in a["state"].items():
        for name, v in entries.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][name])), (pid, name)

    # RNG: draws after restoring repeat the draws after saving
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # a cached Gaussian / mid-stream state
    t, m = rng_to_files()
    save_file(t, str(tmp_path / "r.safetensors"))
    (tmp_path / "r.json").write_text(json.dumps(m))
    first = (random.random(), np.random.normal(size=3), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    rng_from_files(load_file(str(tmp_path / "r.safetensors")), json.loads((tmp_path / "r.json").read_text()))
    again = (random.random(), np.random.normal(size=3), torch.rand(3))
    assert first[0] == again[0] and np.array_equal(first[1], again[1]) and torch.equal(first[2], again[2])
