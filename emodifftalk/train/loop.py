"""The one training loop: ``run_training(task, out_dir, resume)``.

accelerate handles devices, DDP across processes/nodes, DeepSpeed ZeRO-2/3 (when launched with
``--use_deepspeed`` or a DeepSpeed accelerate config), mixed precision, gradient accumulation,
TensorBoard and ``save_state``/``load_state``. The same function runs in one plain process
(``emodifftalk train toy``) and under ``accelerate launch`` / ``torchrun``.

Run directory ``out_dir``::

    config.json     resolved config + git SHA          run.json       task, seed, world size, resumes, skips
    metrics.jsonl   one JSON line per log step (rank 0) tb/            TensorBoard event files
    checkpoints/    step_XXXXXXX (see checkpoint.py)    export/        model.safetensors + config.json
    ranks/rank<r>.json   per-rank peak RSS, samples, seconds (written at the end)

Step semantics: ``step`` counts optimizer steps (skipped non-finite steps included, so the data
position and the learning-rate schedule stay a pure function of ``step``). One step consumes
``train.grad_accum`` batches per rank.

Data: the task's ``check_data`` hook runs before anything is created (shard folder, manifest,
checksums); corrupt samples met while training (``skip_stats()["corrupt_samples"]``) are logged,
recorded in run.json and stop the run past ``data.max_skip_fraction`` of the samples drawn.

Non-finite steps: the loss is checked on every rank *before* backward (one tiny all-reduce per
micro-batch, so all ranks skip together and no collective is left half-done); a skipped step makes
no optimizer update. Without DeepSpeed a non-finite gradient norm also skips the step (except
under fp16, whose grad scaler handles overflow). Under DeepSpeed the engine steps inside
``backward``, so only the loss check applies, and with ``grad_accum > 1`` a NaN in a later
micro-batch cannot take back the earlier micro-batches' reduced gradients (best effort).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from emodifftalk.config import Config, load_config, save_config
from emodifftalk.distributed.seed import seed_everything
from emodifftalk.train.checkpoint import (
    clean_stale_temp,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from emodifftalk.train.ema import EMA
from emodifftalk.train.export import export_model, gather_state_dict
from emodifftalk.train.optim import build_optimizer, lr_at, set_lr
from emodifftalk.train.task import check_task, optional_hook
from emodifftalk.utils import atomic_write_text, git_sha

log = logging.getLogger(__name__)

TB_RUN_NAME = "tb"


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a NaN/inf loss or gradient norm."""


class DataSkipError(RuntimeError):
    """More of the training data was unreadable than ``data.max_skip_fraction`` allows."""


CORRUPT_KEY = "corrupt_samples"  # the skip_stats() count that data.max_skip_fraction bounds
MIN_READ_FOR_SKIP_CHECK = 100  # samples read before a mid-run fraction means anything  # choice


# --------------------------------------------------------------------------------------------
# Accelerator set-up
# --------------------------------------------------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def running_on_cpu() -> bool:
    return not torch.cuda.is_available() or _env_true("ACCELERATE_USE_CPU")


def make_accelerator(cfg: Config, out_dir: Path, find_unused_parameters: bool = False):
    from accelerate import Accelerator
    from accelerate.utils import (
        DistributedDataParallelKwargs,
        GradientAccumulationPlugin,
        InitProcessGroupKwargs,
        ProjectConfiguration,
    )

    on_cpu = running_on_cpu()
    mixed = "no" if on_cpu else cfg.train.mixed_precision  # CPU autocast is slow and not what we test
    if on_cpu and cfg.train.mixed_precision != "no":
        log.warning("train.mixed_precision=%s ignored on CPU (training in fp32)", cfg.train.mixed_precision)
    handlers = []
    if on_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a backend without a launcher breaks accelerate
        handlers.append(InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30)))
    if find_unused_parameters:  # models with branches that some batches skip (DDP would hang/raise)
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    # The plugin (not ACCELERATE_GRADIENT_ACCUMULATION_STEPS) decides: the config is the source of truth.
    plugin = GradientAccumulationPlugin(num_steps=cfg.train.grad_accum, sync_with_dataloader=False)
    deepspeed = _env_true("ACCELERATE_USE_DEEPSPEED")
    acc = Accelerator(
        # cpu=True: without it torchrun on a CPU-only machine gives N independent non-DDP replicas;
        # but accelerate only sets up DeepSpeed when cpu=False (the gloo backend then comes from `handlers`)
        cpu=on_cpu and not deepspeed,
        mixed_precision=mixed,
        gradient_accumulation_plugin=plugin,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir)),
        kwargs_handlers=handlers,
    )
    from accelerate.utils import DistributedType

    if deepspeed and acc.distributed_type != DistributedType.DEEPSPEED:
        raise RuntimeError("launched with DeepSpeed but accelerate did not enable it "
                           f"(distributed_type={acc.distributed_type})")
    if acc.num_processes > 1 and acc.distributed_type == DistributedType.NO:
        raise RuntimeError(f"{acc.num_processes} processes but accelerate chose no distributed mode; "
                           "launch with accelerate launch --multi_gpu (ACCELERATE_USE_CPU=1 on CPU) or torchrun")
    return acc


def _is_deepspeed(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def _zero_stage(acc) -> int:
    return int(acc.state.deepspeed_plugin.zero_stage) if _is_deepspeed(acc) else 0


def _configure_deepspeed(acc, cfg: Config) -> None:
    """Make the DeepSpeed config agree with ours (accumulation, clipping, batch size, ZeRO-3 export)."""
    ds = acc.state.deepspeed_plugin.deepspeed_config
    t = cfg.train
    for key, value in (("gradient_accumulation_steps", t.grad_accum),
                       ("gradient_clipping", float(t.grad_clip) if t.grad_clip > 0 else 0.0)):
        if ds.get(key, "auto") not in ("auto", value):
            log.warning("DeepSpeed config %s=%s overridden by train config (%s)", key, ds[key], value)
        ds[key] = value
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    ds["train_batch_size"] = ds["train_micro_batch_size_per_gpu"] * t.grad_accum * acc.num_processes
    if _zero_stage(acc) == 3:
        # accelerator.get_state_dict needs this to gather the full weights for the export
        ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ValueError(f"DeepSpeed config has an '{key}' section; remove it: the trainer builds "
                             "AdamW and the warmup/cosine schedule from train.* itself")


def _release(acc) -> None:
    """End trackers/process group and reset accelerate's singletons so a later run in the same
    process (e.g. a pipeline training several tasks) can build a fresh Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        acc.end_training()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def check_run_dir(out_dir: str | Path, resume) -> Path | None:
    """The checkpoint a run into ``out_dir`` resumes from (None: fresh); ``FileExistsError`` when a
    fresh run would mix with an earlier one. Cheap: callers with slow setup check it first."""
    ckpt_dir = Path(out_dir) / "checkpoints"
    resume_path = resolve_resume(resume, ckpt_dir)
    if resume_path is None and list_checkpoints(ckpt_dir):
        raise FileExistsError(f"{ckpt_dir} already has checkpoints; pass --resume latest to continue "
                              "that run or choose a new --out")
    return resume_path


def run_training(task: Any, out_dir: str | Path, resume: str | os.PathLike | None = None) -> Path:
    """Train ``task`` (with its config, ``task.cfg``) into ``out_dir``; return the export directory.

    ``resume``: ``None`` (fresh; refuses a dir that already has checkpoints), ``"latest"`` (newest
    checkpoint in ``out_dir/checkpoints``, or fresh if none) or a checkpoint directory.
    Collective: under a launcher every process calls it with the same arguments.
    """
    check_task(task)
    cfg = task.cfg.validate()
    out_dir = Path(out_dir)
    optional_hook(task, "check_data")()  # bad data fails here: no run folder, no model yet
    if cfg.train.warmup_steps >= cfg.train.max_steps:
        log.warning("train.warmup_steps=%d >= train.max_steps=%d: the run ends while the learning rate is "
                    "still warming up (it never reaches train.lr=%g); lower train.warmup_steps",
                    cfg.train.warmup_steps, cfg.train.max_steps, cfg.train.lr)
    acc = make_accelerator(cfg, out_dir, bool(getattr(task, "ddp_find_unused_parameters", False)))
    try:
        return _Trainer(task, cfg, out_dir, acc).run(resume)
    finally:
        _release(acc)


class _Trainer:
    def __init__(self, task: Any, cfg: Config, out_dir: Path, acc):
        self.task, self.cfg, self.t, self.out, self.acc = task, cfg, cfg.train, out_dir, acc
        self.rank, self.world = acc.process_index, acc.num_processes
        self.ckpt_dir = out_dir / "checkpoints"
        self.metrics_path = out_dir / "metrics.jsonl"
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self.samples_seen = 0  # this rank
        self.skip_totals: dict[str, int] = {}  # all ranks, as of the last log step
        self._resume_requested = None
        self.train_seconds = 0.0
        self._window: dict[str, Any] = {}
        self._reset_window()

    # ---- helpers ---------------------------------------------------------------------------------

    def _any_rank(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.acc.device)
        return bool(self.acc.reduce(t, reduction="sum").item() > 0)

    def _reset_window(self) -> None:
        self._window = {"terms": {}, "steps": 0, "samples": 0, "seconds": 0.0, "grad_norms": []}

    def _zero_grads(self, model, optimizer) -> None:
        if _is_deepspeed(self.acc):
            model.zero_grad()  # the engine; accelerate's optimizer wrapper zero_grad is a no-op
        else:
            optimizer.zero_grad(set_to_none=True)

    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "batches_per_rank": self.step * self.t.grad_accum,
                "grad_accum": self.t.grad_accum, "world_size": self.world, "seed": self.t.seed,
                "nonfinite_total": self.nonfinite_total, "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "samples_seen_rank0": self.samples_seen, "task": getattr(self.task, "name", "task")}

    def _write_run_files(self, resume_path: Path | None) -> None:
        run_json = self.out / "run.json"
        info = json.loads(run_json.read_text()) if run_json.is_file() else {}
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "git_sha": git_sha(), "world_size": self.world,
                 "distributed_type": str(self.acc.distributed_type), "zero_stage": _zero_stage(self.acc),
                 "mixed_precision": self.acc.mixed_precision, "resumed_from": str(resume_path or ""),
                 "resume_requested": str(self._resume_requested or "")}
        if resume_path is None:
            info = {"task": getattr(self.task, "name", "task"), "seed": self.t.seed, "git_sha": git_sha(),
                    "runs": [entry]}
        else:
            info.setdefault("runs", []).append(entry)
            old_cfg = self.out / "config.json"
            if old_cfg.is_file() and load_config(old_cfg).to_dict() != self.cfg.to_dict():
                log.warning("resuming with a config that differs from %s; the new one is saved", old_cfg)
        save_config(self.cfg, self.out)
        atomic_write_text(run_json, json.dumps(info, indent=2, sort_keys=True))

    # ---- main ------------------------------------------------------------------------------------

    def _record_data_skips(self) -> None:
        """Skip counts into this run's run.json entry (main process)."""
        run_json = self.out / "run.json"
        if not (self.acc.is_main_process and run_json.is_file()):
            return
        info = json.loads(run_json.read_text())
        info["runs"][-1].update(skipped=dict(self.skip_totals), samples_read=self._samples_read())
        atomic_write_text(run_json, json.dumps(info, indent=2, sort_keys=True))

    def _samples_read(self) -> int:
        """Samples the run has drawn so far, all ranks: a pure function of ``step``, like the
        tasks' skip counters, so the fraction below means the same after a resume."""
        return self.step * self.t.grad_accum * self.cfg.data.batch_size * self.world

    def _check_data_skips(self, final: bool) -> None:
        """Fail when the corrupt share of what was read exceeds ``data.max_skip_fraction``."""
        bad = int(self.skip_totals.get(CORRUPT_KEY, 0))
        read = max(self._samples_read(), bad)
        if not bad or (not final and read < MIN_READ_FOR_SKIP_CHECK):
            return
        limit = self.cfg.data.max_skip_fraction
        if bad / read > limit:
            self._record_data_skips()
            root = self.cfg.data.root
            where = f"`emodifftalk inspect {root} --validate` lists them; re-pack or restore the shards" if root \
                else "see the skip warnings above"
            raise DataSkipError(f"{bad} of {read} training samples read so far were corrupt or unreadable "
                                f"({bad / read:.1%} > data.max_skip_fraction={limit:g}); {where}, or raise the limit")

    def run(self, resume) -> Path:
        acc, t, task = self.acc, self.t, self.task
        self._resume_requested = resume
        resume_path = check_run_dir(self.out, resume)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            clean_stale_temp(self.ckpt_dir)
            self._write_run_files(resume_path)
        acc.wait_for_everyone()

        # Identical initial weights on every rank, then a per-rank stream for dropout & co.
        seed_everything(t.seed, rank=0)
        model = task.build_model()
        optimizer = build_optimizer(model, t)
        if _is_deepspeed(acc):
            _configure_deepspeed(acc, self.cfg)
        model, optimizer = acc.prepare(model, optimizer)
        unwrapped = acc.unwrap_model(model)
        zero3 = _zero_stage(acc) == 3
        use_ema = bool(getattr(task, "ema", False)) and t.ema_decay > 0
        if getattr(task, "ema", False) and not use_ema:
            log.info("task %s asks for EMA but train.ema_decay=0: EMA disabled", getattr(task, "name", ""))
        ema = EMA(unwrapped, t.ema_decay, zero3=zero3) if use_ema else None
        seed_everything(t.seed, rank=self.rank)

        if resume_path is not None:
            state = load_checkpoint(acc, resume_path, model, optimizer, ema)  # also each rank's RNG
            self.step = int(state["step"])
            self.nonfinite_total = int(state.get("nonfinite_total", 0))
            self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
            if state.get("world_size") != self.world or state.get("grad_accum") != t.grad_accum:
                log.warning("resuming a run saved with world_size=%s grad_accum=%s on world_size=%d "
                            "grad_accum=%d: data order will differ from an uninterrupted run",
                            state.get("world_size"), state.get("grad_accum"), self.world, t.grad_accum)
            if acc.is_main_process:
                self._append_metrics({"event": "resume", "step": self.step, "from": str(resume_path)})
            log.info("resumed from %s at step %d", resume_path, self.step)

        hparams = {f"train.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
                   for k, v in vars(t).items()}
        hparams.update(task=getattr(task, "name", "task"), world_size=self.world, zero_stage=_zero_stage(acc))
        acc.init_trackers(TB_RUN_NAME, config=hparams)

        batches = iter(task.train_batches(self.rank, self.world, t.seed, self.step * t.grad_accum))
        self._train(model, optimizer, unwrapped, ema, batches, zero3)
        self._check_data_skips(final=True)
        self._record_data_skips()
        if acc.is_main_process and self.skip_totals:
            log.info("data: %s skipped of %d samples read", ", ".join(f"{v} {k.replace('_', ' ')}"
                     for k, v in sorted(self.skip_totals.items())), self._samples_read())
        digest = self._params_digest(unwrapped, zero3)

        # ---- export ----
        raw = gather_state_dict(acc, model)  # collective
        export_dir = self.out / "export"
        if acc.is_main_process:
            log.info("exporting the model to %s ...", export_dir)  # task export hooks can take a while
            export_model(task, raw, export_dir, ema.state_dict() if ema is not None else None,
                         meta={"step": self.step, "seed": t.seed, "world_size": self.world})
            self._append_metrics({"event": "done", "step": self.step, "nonfinite_total": self.nonfinite_total,
                                  "export": str(export_dir)})
        self._write_rank_stats(digest)
        acc.wait_for_everyone()
        return export_dir

    def _train(self, model, optimizer, unwrapped, ema, batches, zero3: bool) -> None:
        from accelerate.utils import send_to_device
        from tqdm.auto import tqdm

        acc, t, task = self.acc, self.t, self.task
        batch_size = optional_hook(task, "batch_size")
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not acc.is_main_process,
                   desc=f"train {getattr(task, 'name', '')}", dynamic_ncols=True)
        model.train()
        while self.step < t.max_steps:
            t0 = time.perf_counter()
            step = self.step
            set_lr(optimizer, lr_at(step, t))
            bad = False
            terms_sum: dict[str, float] = {}
            n_micro = 0
            n_samples = 0
            for _ in range(t.grad_accum):
                batch = next(batches)
                n_samples += batch_size(batch)
                batch = send_to_device(batch, acc.device)
                with acc.accumulate(model):  # called for every micro-batch so accelerate's count stays aligned
                    if bad:
                        continue  # the step is lost anyway; still consume the batch (data position)
                    with acc.autocast():
                        terms = task.loss(model, batch, step)
                    loss = terms["loss"]
                    # all ranks agree before backward: one rank skipping a DDP/ZeRO all-reduce would hang
                    bad = self._any_rank(not bool(torch.isfinite(loss.detach()).all()))
                    if bad:
                        continue
                    acc.backward(loss)
                    n_micro += 1
                    for k, v in terms.items():
                        terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach().float().mean())

            grad_norm = float("nan")
            if not bad:
                if _is_deepspeed(acc):
                    # the engine clipped (train.grad_clip) and stepped inside backward()
                    gn = acc.clip_grad_norm_(model.parameters(), t.grad_clip)
                    grad_norm = float(gn) if gn is not None else float("nan")
                else:
                    gn = acc.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
                    grad_norm = float(gn)
                    if not math.isfinite(grad_norm) and acc.scaler is None:
                        bad = True  # finite loss but exploding gradients; fp16's scaler handles its own overflow
                    else:
                        optimizer.step()
            if bad:
                self._zero_grads(model, optimizer)
                self.nonfinite_total += 1
                self.nonfinite_in_a_row += 1
                log.warning("step %d: non-finite loss/gradient, update skipped (%d in a row)",
                            step, self.nonfinite_in_a_row)
                if self.nonfinite_in_a_row >= t.max_nonfinite_in_a_row:
                    if acc.is_main_process:
                        self._append_metrics({"event": "nonfinite_abort", "step": step,
                                              "nonfinite_total": self.nonfinite_total})
                    raise NonFiniteLossError(
                        f"loss or gradient norm was NaN/inf for {self.nonfinite_in_a_row} optimizer steps in a "
                        f"row (steps {step - self.nonfinite_in_a_row + 1}..{step}, "
                        f"train.max_nonfinite_in_a_row={t.max_nonfinite_in_a_row}). Lower train.lr, check the "
                        f"data, or resume from the last checkpoint in {self.ckpt_dir}")
            else:
                if not _is_deepspeed(acc):
                    optimizer.zero_grad(set_to_none=True)
                self.nonfinite_in_a_row = 0
                if ema is not None:
                    ema.update(unwrapped)
            self.step += 1
            self.samples_seen += n_samples
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            w = self._window
            w["steps"] += 1
            w["samples"] += n_samples
            w["seconds"] += dt
            if not bad:
                w["grad_norms"].append(grad_norm)
                for k, v in terms_sum.items():
                    s, n = w["terms"].get(k, (0.0, 0))
                    w["terms"][k] = (s + v / max(1, n_micro), n + 1)
            bar.update(1)

            done = self.step >= t.max_steps
            if self.step % t.log_every == 0 or done:
                self._log(bar)
                self._check_data_skips(final=False)  # same totals on every rank: all stop together
            if t.val_every > 0 and (self.step % t.val_every == 0 or done):
                self._validate(model, unwrapped, ema, zero3)
            if self.step % t.ckpt_every == 0 or done:
                save_checkpoint(acc, self.ckpt_dir, self.step, self._trainer_state(), model, optimizer, ema,
                                t.keep_last)
        bar.close()

    # ---- logging / validation ----------------------------------------------------------------------

    def _append_metrics(self, record: dict[str, Any]) -> None:
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def _log(self, bar) -> None:
        from accelerate.utils import gather_object

        acc, w = self.acc, self._window
        names = sorted(w["terms"])
        # one all-reduce for: per-term (sum of step means, count), samples, seconds
        vec = []
        for k in names:
            vec += list(w["terms"][k])
        vec += [float(w["samples"]), w["seconds"]]
        t = torch.tensor(vec, dtype=torch.float64, device=acc.device)
        if self.world > 1:
            t = acc.reduce(t, reduction="sum")
        vals = t.tolist()
        scalars: dict[str, float] = {}
        for i, k in enumerate(names):
            s, n = vals[2 * i], vals[2 * i + 1]
            scalars["loss" if k == "loss" else f"loss/{k}"] = s / max(n, 1.0)
        samples, seconds = vals[-2], vals[-1] / self.world  # ranks run in lock step: mean wall time
        scalars["samples_per_s"] = samples / max(seconds, 1e-9)
        scalars["lr"] = lr_at(self.step - 1, self.t)
        if w["grad_norms"]:
            scalars["grad_norm"] = sum(w["grad_norms"]) / len(w["grad_norms"])
        scalars["nonfinite/total"] = float(self.nonfinite_total)
        scalars["nonfinite/in_a_row"] = float(self.nonfinite_in_a_row)
        skips = optional_hook(self.task, "skip_stats")()
        all_skips = gather_object([skips]) if self.world > 1 else [skips]
        totals: dict[str, int] = {}
        for d in all_skips:
            for k, v in (d or {}).items():
                totals[k] = totals.get(k, 0) + int(v)
        for k, v in totals.items():
            scalars[f"data/skipped_{k}"] = float(v)
        self.skip_totals = totals
        self._reset_window()
        if acc.is_main_process:
            acc.log(scalars, step=self.step)
            self._append_metrics({"step": self.step, **scalars})
            if "loss" in scalars:
                bar.set_postfix(loss=f"{scalars['loss']:.4g}", lr=f"{scalars['lr']:.2e}")

    def _validate(self, model, unwrapped, ema, zero3: bool) -> None:
        acc, task = self.acc, self.task
        validate = optional_hook(task, "validate")
        model.eval()
        try:
            with torch.no_grad(), acc.autocast():
                result = validate(unwrapped, self.step)
                metrics = {f"val/{k}": float(v) for k, v in result.metrics.items()}
                if ema is not None and not zero3 and metrics:
                    with ema.swapped_in(unwrapped):
                        result = validate(unwrapped, self.step)
                        metrics.update({f"val_ema/{k}": float(v) for k, v in result.metrics.items()})
            if acc.is_main_process:
                if metrics:
                    acc.log(metrics, step=self.step)
                    self._append_metrics({"step": self.step, **metrics})
                if not zero3:
                    writer = acc.get_tracker("tensorboard", unwrap=True)
                    with torch.no_grad(), acc.autocast():
                        optional_hook(task, "log_media")(writer, self.step, result.media)
        finally:
            model.train()
        acc.wait_for_everyone()

    def _params_digest(self, unwrapped, zero3: bool) -> str | None:
        """sha256 of this rank's parameter bytes: replicas (DDP, ZeRO-1/2) must agree exactly."""
        if zero3:
            return None  # each rank holds a different shard
        h = hashlib.sha256()
        for name, p in unwrapped.named_parameters():
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _write_rank_stats(self, digest: str | None) -> None:
        stats = {"rank": self.rank, "world_size": self.world, "steps": self.step,
                 "samples": self.samples_seen, "train_seconds": self.train_seconds,
                 # Linux reports ru_maxrss in KiB
                 "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                 "params_sha256": digest}
        if torch.cuda.is_available() and not running_on_cpu():
            stats["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        path = self.out / "ranks" / f"rank{self.rank}.json"
        atomic_write_text(path, json.dumps(stats, indent=2, sort_keys=True))
