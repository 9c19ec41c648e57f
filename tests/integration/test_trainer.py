"""End-to-end runs of the shared training loop on the toy task (CPU).

In-process (1 process): TensorBoard + export round trip, same seed → same curve, resume, NaN skip
and stop, keep-last-K, EMA. Subprocess (2 processes, gloo): DDP via ``accelerate launch``,
SIGKILL + ``--resume latest`` via torchrun, DeepSpeed ZeRO-2 (and ZeRO-3, marked slow).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from emodifftalk.config import build_config
from emodifftalk.train import load_exported, run_training
from emodifftalk.train.checkpoint import list_checkpoints
from emodifftalk.train.loop import NonFiniteLossError
from emodifftalk.train.toy import ToyTask

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
ACCELERATE = str(Path(PY).with_name("accelerate"))
if not Path(ACCELERATE).exists():
    ACCELERATE = shutil.which("accelerate") or "accelerate"


def curve(out: Path, key: str = "loss") -> dict[int, float]:
    """Last logged value per step (a resumed run re-logs the steps after its checkpoint)."""
    result = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "step" in rec and key in rec:
            result[rec["step"]] = rec[key]
    return result


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def cfg_with(*overrides: str):
    base = ["train.log_every=1", "train.warmup_steps=2", "train.lr=3e-3", "data.batch_size=8"]
    return build_config("tiny", base + list(overrides))


def probe_outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(3, model.seq_len, model.d_in, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        return model.eval()(x)


# --------------------------------------------------------------------------------------------
# One process, in this interpreter
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    cfg = cfg_with("train.max_steps=6", "train.ckpt_every=3", "train.val_every=3", "train.keep_last=3")
    export = run_training(ToyTask(cfg, skip_every=4), out)
    return out, export, cfg


def test_checkpoints_hold_no_pickle(single_run):
    out, _, _ = single_run
    ckpt = out / "checkpoints" / "step_0000006"
    names = {p.name for p in ckpt.iterdir()}
    assert {"model.safetensors", "optimizer.safetensors", "optimizer.json", "rng_0.safetensors",
            "rng_0.json", "trainer_state.json"} <= names
    assert all(n.endswith((".safetensors", ".json")) for n in names), names


def test_single_process_writes_tensorboard_metrics_and_export(single_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, export, cfg = single_run
    assert export == out / "export"
    for name in ("config.json", "run.json", "metrics.jsonl", "ranks/rank0.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "run.json").read_text())["seed"] == cfg.train.seed
    acc = EventAccumulator(str(out / "tb"), size_guidance={"images": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("loss", "loss/mse", "loss/smooth", "lr", "grad_norm", "samples_per_s", "nonfinite/total",
                "data/skipped_corrupt_samples", "val/mse"):
        assert tag in tags, f"{tag} not in {sorted(tags)}"
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    assert acc.Scalars("data/skipped_corrupt_samples")[-1].value == 1  # batch index 3 lost a sample
    assert "toy/prediction_vs_target" in acc.Tags()["images"]
    losses = curve(out)
    assert losses[6] < losses[1]  # it learns
    # the export holds exactly the final checkpoint's weights
    model, cfg2 = load_exported(export)
    assert cfg2.to_dict() == cfg.to_dict()
    ref = ToyTask(cfg).build_model()
    ref.load_state_dict(load_file(str(out / "checkpoints" / "step_0000006" / "model.safetensors")))
    assert torch.equal(probe_outputs(model), probe_outputs(ref))
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [3, 6]


def test_same_seed_same_loss_curve_and_other_seed_differs(single_run, tmp_path):
    out, _, cfg = single_run
    run_training(ToyTask(cfg, skip_every=4), tmp_path / "again")
    assert curve(tmp_path / "again") == curve(out)  # bitwise on CPU
    cfg_other = cfg_with("train.max_steps=2", "train.seed=1", "train.ckpt_every=3", "train.val_every=0")
    run_training(ToyTask(cfg_other, skip_every=4), tmp_path / "seed1")
    assert curve(tmp_path / "seed1")[1] != curve(out)[1]


def test_resume_from_checkpoint_continues_the_same_curve(single_run, tmp_path):
    out, export, cfg = single_run
    with pytest.raises(FileExistsError, match="--resume latest"):
        run_training(ToyTask(cfg, skip_every=4), out)  # never mixes two runs in one dir
    resumed = run_training(ToyTask(cfg, skip_every=4), tmp_path / "r",
                           resume=str(out / "checkpoints" / "step_0000003"))
    ref, got = curve(out), curve(tmp_path / "r")
    assert sorted(got) == [4, 5, 6]
    for s in got:  # dropout RNG, optimizer state and data position all restored
        assert abs(got[s] - ref[s]) < 1e-6, (s, got[s], ref[s])
    assert curve(tmp_path / "r", "data/skipped_corrupt_samples")[6] == 1
    assert torch.allclose(probe_outputs(load_exported(resumed)[0]), probe_outputs(load_exported(export)[0]),
                          atol=1e-6)


def test_nan_steps_are_skipped_and_keep_last_k(tmp_path):
    cfg = cfg_with("train.max_steps=5", "train.ckpt_every=1", "train.keep_last=2", "train.val_every=0")
    run_training(ToyTask(cfg, nan_steps=(4,)), tmp_path)  # step index 4 = the 5th and last step
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [4, 5]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    before = load_file(str(tmp_path / "checkpoints" / "step_0000004" / "model.safetensors"))
    after = load_file(str(tmp_path / "checkpoints" / "step_0000005" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update on the NaN step
    state = json.loads((tmp_path / "checkpoints" / "step_0000005" / "trainer_state.json").read_text())
    assert state["nonfinite_total"] == 1 and state["nonfinite_in_a_row"] == 1
    last = [m for m in metrics(tmp_path) if m.get("step") == 5 and "lr" in m][-1]
    assert last["nonfinite/total"] == 1 and "loss" not in last
    assert all(torch.isfinite(v).all() for v in load_file(str(tmp_path / "export" / "model.safetensors")).values())


def test_nan_in_a_row_stops_with_clear_error(tmp_path):
    cfg = cfg_with("train.max_steps=20", "train.max_nonfinite_in_a_row=3", "train.val_every=0",
                   "train.ckpt_every=100")
    with pytest.raises(NonFiniteLossError, match=r"3 optimizer steps in a row \(steps 2\.\.4"):
        run_training(ToyTask(cfg, nan_steps=(2, 3, 4)), tmp_path)
    events = [m for m in metrics(tmp_path) if m.get("event") == "nonfinite_abort"]
    assert events and events[0]["step"] == 4
    assert not (tmp_path / "export").exists()
    # two in a row stay below the limit
    run_training(ToyTask(cfg_with("train.max_steps=5", "train.max_nonfinite_in_a_row=3", "train.val_every=0"),
                         nan_steps=(2, 3)), tmp_path / "ok")
    assert curve(tmp_path / "ok", "nonfinite/total")[5] == 2


def test_ema_is_checkpointed_and_exported(tmp_path):
    cfg = cfg_with("train.max_steps=4", "train.ckpt_every=4", "train.val_every=4", "train.ema_decay=0.9")
    export = run_training(ToyTask(cfg, ema=True), tmp_path)
    ckpt = tmp_path / "checkpoints" / "step_0000004"
    ema = load_file(str(ckpt / "ema.safetensors"))
    exported = load_file(str(export / "model.safetensors"))
    raw = load_file(str(export / "model_raw.safetensors"))
    assert torch.equal(exported["embed.weight"], ema["embed.weight"])
    assert torch.equal(raw["embed.weight"], load_file(str(ckpt / "model.safetensors"))["embed.weight"])
    assert not torch.equal(exported["embed.weight"], raw["embed.weight"])
    assert 4 in curve(tmp_path, "val_ema/mse") and 4 in curve(tmp_path, "val/mse")


def test_grad_accumulation_counts_batches_and_resumes(tmp_path):
    cfg = cfg_with("train.max_steps=4", "train.grad_accum=2", "train.ckpt_every=2", "train.val_every=0",
                   "data.batch_size=4", "data.max_skip_fraction=0.1")  # the toy drops 2 of 32 samples
    run_training(ToyTask(cfg, skip_every=3), tmp_path / "a")
    state = json.loads((tmp_path / "a" / "checkpoints" / "step_0000002" / "trainer_state.json").read_text())
    assert state["batches_per_rank"] == 4
    stats = json.loads((tmp_path / "a" / "ranks" / "rank0.json").read_text())
    assert stats["samples"] == 4 * 2 * 4 - 2  # 8 batches of 4, batch indices 2 and 5 lost one sample
    run_training(ToyTask(cfg, skip_every=3), tmp_path / "b", resume=str(tmp_path / "a/checkpoints/step_0000002"))
    ref, got = curve(tmp_path / "a"), curve(tmp_path / "b")
    assert sorted(got) == [3, 4] and all(abs(got[s] - ref[s]) < 1e-6 for s in got)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_single_gpu_run(tmp_path):
    cfg = cfg_with("train.max_steps=4", "train.ckpt_every=4", "train.val_every=4", "train.mixed_precision=bf16")
    export = run_training(ToyTask(cfg), tmp_path)
    run = json.loads((tmp_path / "run.json").read_text())["runs"][0]
    assert run["mixed_precision"] == "bf16"
    state = load_file(str(export / "model.safetensors"))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values())
    assert "peak_cuda_mb" in json.loads((tmp_path / "ranks" / "rank0.json").read_text())


# --------------------------------------------------------------------------------------------
# Two processes (gloo on CPU)
# --------------------------------------------------------------------------------------------

DDP_OVERRIDES = ["train.max_steps=12", "train.log_every=1", "train.ckpt_every=4", "train.val_every=6",
                 "train.keep_last=2", "train.warmup_steps=2", "train.lr=3e-3", "data.batch_size=8"]
DDP_ENV = {"EMODIFFTALK_TOY_NAN_STEPS": "5", "EMODIFFTALK_TOY_NAN_RANK": "1", "EMODIFFTALK_TOY_SKIP_EVERY": "4"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMODIFFTALK_TOY_", "ACCELERATE_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **DDP_ENV)
    env.update(extra)
    return env


def accelerate_cmd(*launch_args: str) -> list[str]:
    return [ACCELERATE, "launch", "--num_machines", "1", "--num_processes", "2", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(free_port()), *launch_args]


def torchrun_cmd() -> list[str]:
    return [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]


def train_args(out: Path, *extra: str) -> list[str]:
    return ["-m", "emodifftalk.cli", "train", "toy", "--out", str(out), *extra, *DDP_OVERRIDES]


def run_launch(cmd: list[str], env: dict, log: Path, timeout: float = 400) -> None:
    with open(log, "w") as f:
        rc = subprocess.run(cmd, check=False, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                            timeout=timeout).returncode
    assert rc == 0, f"{' '.join(cmd)} failed ({rc}):\n{log.read_text()[-4000:]}"


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and its ranks (torchrun starts each rank in its own session, so a
    process-group kill would orphan them): no clean-up code runs, as in a node failure."""
    import psutil

    try:
        victims = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        victims = []
    for p in [*victims]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(victims, timeout=30)


def rank_stats(out: Path) -> list[dict]:
    return [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = child_env(ACCELERATE_USE_CPU="1", EMODIFFTALK_TOY_SAMPLE_LOG=str(out / "samples"))
    run_launch(accelerate_cmd("--multi_gpu") + train_args(out), env, out.parent / "ddp.log")
    return out


def test_ddp_two_processes_split_data_and_stay_in_sync(ddp_run):
    out = ddp_run
    run = json.loads((out / "run.json").read_text())["runs"][0]
    assert run["world_size"] == 2 and run["distributed_type"].endswith("MULTI_CPU")
    ids, sums = {}, {}
    for r in (0, 1):
        lines = (out / "samples" / f"rank{r}.txt").read_text().split("\n")[:-1]
        assert [int(ln.split()[0]) for ln in lines] == list(range(12))  # one batch per step, in order
        ids[r] = {int(v) for ln in lines for v in ln.split()[1:-1]}
        sums[r] = [ln.split()[-1] for ln in lines]
    assert ids[0].isdisjoint(ids[1]) and len(ids[0]) == len(ids[1]) == 12 * 8 - 3
    assert sums[0] != sums[1]
    # NaN on rank 1 only at step index 5: both ranks skipped it and the replicas stayed identical
    stats = rank_stats(out)
    assert stats[0]["params_sha256"] == stats[1]["params_sha256"] is not None
    assert stats[0]["samples"] == stats[1]["samples"] == 12 * 8 - 3
    final = [m for m in metrics(out) if m.get("step") == 12 and "lr" in m][-1]
    assert final["nonfinite/total"] == 1 and final["data/skipped_corrupt_samples"] == 6  # 3 per rank
    assert curve(out, "nonfinite/in_a_row")[6] == 1 and 6 not in curve(out)
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [8, 12]
    model, _ = load_exported(out / "export")
    assert torch.isfinite(probe_outputs(model)).all()


def test_sigkill_mid_run_then_resume_matches_uninterrupted(ddp_run, tmp_path):
    out = tmp_path / "killed"
    env = child_env(EMODIFFTALK_TOY_SLEEP="0.25")
    log = tmp_path / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(torchrun_cmd() + train_args(out), env=env, cwd=REPO, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            done = curve(out) if (out / "metrics.jsonl").is_file() else {}
            if list_checkpoints(out / "checkpoints") and max(done, default=0) >= 6:
                break
            assert proc.poll() is None, f"run ended before it could be killed:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
        else:
            pytest.fail(f"no checkpoint within 300 s:\n{log.read_text()[-3000:]}")
    finally:
        kill_tree(proc)
    assert not (out / "export").exists(), "the run finished before the kill"
    killed_at = max(curve(out))
    assert 6 <= killed_at < 12

    run_launch(torchrun_cmd() + train_args(out, "--resume", "latest"), child_env(), tmp_path / "resumed.log")
    ref, got = curve(ddp_run), curve(out)
    assert sorted(got) == sorted(ref) == [s for s in range(1, 13) if s != 6]  # step 6 was the NaN step
    for s in ref:
        assert abs(got[s] - ref[s]) < 1e-5, (s, got[s], ref[s])
    resumes = [m for m in metrics(out) if m.get("event") == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] in (4, 8)
    assert curve(out, "nonfinite/total")[12] == 1
    assert curve(out, "data/skipped_corrupt_samples")[12] == 6
    assert len(json.loads((out / "run.json").read_text())["runs"]) == 2
    a = load_file(str(out / "export" / "model.safetensors"))
    b = load_file(str(ddp_run / "export" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _check_deepspeed_run(out: Path, ddp_out: Path, stage: int, tol: float) -> None:
    run = json.loads((out / "run.json").read_text())["runs"][0]
    assert run["distributed_type"].endswith("DEEPSPEED") and run["zero_stage"] == stage
    ref, got = curve(ddp_out), curve(out)
    assert sorted(got) == sorted(ref)
    for s in ref:  # same math as DDP: AdamW, clipping, schedule and NaN skip all go through DeepSpeed
        assert abs(got[s] - ref[s]) < tol, (s, got[s], ref[s])
    assert curve(out, "nonfinite/total")[12] == 1
    a = load_file(str(out / "export" / "model.safetensors"))
    b = load_file(str(ddp_out / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert any((out / "checkpoints" / "step_0000012" / "pytorch_model").iterdir())


def test_deepspeed_zero2_two_processes_matches_ddp(ddp_run, tmp_path):
    out = tmp_path / "z2"
    run_launch(accelerate_cmd("--use_deepspeed", "--zero_stage", "2") + train_args(out), child_env(),
               tmp_path / "z2.log")
    _check_deepspeed_run(out, ddp_run, stage=2, tol=1e-4)
    stats = rank_stats(out)
    assert stats[0]["params_sha256"] == stats[1]["params_sha256"]


@pytest.mark.slow
def test_deepspeed_zero3_two_processes_with_ema(ddp_run, tmp_path):
    out = tmp_path / "z3"
    run_launch(accelerate_cmd("--config_file", "launch/accelerate_zero3.yaml") + train_args(out, "train.ema_decay=0.9"),
               child_env(EMODIFFTALK_TOY_EMA="1"), tmp_path / "z3.log")
    # EMA changes only what is exported as model.safetensors; the raw weights must match DDP's
    raw = load_file(str(out / "export" / "model_raw.safetensors"))
    ref = load_file(str(ddp_run / "export" / "model.safetensors"))
    assert raw.keys() == ref.keys() and all(torch.allclose(raw[k], ref[k], atol=1e-4) for k in ref)
    got, want = curve(out), curve(ddp_run)
    assert sorted(got) == sorted(want) and all(abs(got[s] - want[s]) < 1e-4 for s in want)
    ema = load_file(str(out / "export" / "model.safetensors"))
    assert not torch.equal(ema["embed.weight"], raw["embed.weight"])
    assert (out / "checkpoints" / "step_0000012" / "ema.safetensors").is_file()
    model, _ = load_exported(out / "export")
    assert torch.isfinite(probe_outputs(model)).all()
