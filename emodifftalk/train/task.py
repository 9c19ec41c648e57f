"""The Task protocol the shared training loop runs, and the task registry.

A task says *what* to train (model, data, loss, validation); :func:`emodifftalk.train.loop.run_training`
says *how* (devices, DDP/DeepSpeed, precision, accumulation, logging, checkpoints, export).

A task is built for one config (``S2AUTask(cfg)``) and keeps it as ``self.cfg``: its methods
take no config, and nothing a later call needs is left behind by an earlier one (validation
returns its media for ``log_media`` in a ``Validation``).

Tasks register a factory ``factory(cfg) -> Task`` under a name (``register_task("s2au", S2AUTask)``).
``get_task(name, cfg)`` imports ``emodifftalk.train.tasks.<name>`` on first use, so a task module
registers itself on import and nothing heavy is imported until a task is asked for.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from emodifftalk.config import Config


@dataclass
class Validation:
    """What ``Task.validate`` measured: scalar ``metrics`` (logged as ``val/<name>``) and ``media``,
    anything the task's ``log_media`` draws (e.g. a curve of the first val clip), or None."""

    metrics: dict[str, float]
    media: Any = None


class Task:
    """Base class / protocol for a trainable task, built for one config (``self.cfg``). Override the
    first three methods.

    ``ema``: keep an exponential moving average of the weights (decay ``cfg.train.ema_decay``);
    the EMA weights are exported as ``model.safetensors`` and the raw ones as ``model_raw.safetensors``.
    """

    name: str = "task"
    ema: bool = False
    ddp_find_unused_parameters: bool = False  # set if some batches leave parameters unused (DDP)

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self) -> torch.nn.Module:
        """Architecture only; called with the same RNG state on every rank (identical init)."""
        raise NotImplementedError

    def train_batches(self, rank: int, world_size: int, seed: int, start_step: int) -> Iterator[dict]:
        """Infinite iterator of collated CPU batches (dict of tensors + any python values) for this rank.

        Deterministic in ``(seed, rank)``. ``start_step`` is the number of batches this rank has
        already consumed (optimizer steps x ``train.grad_accum``); resume the data position there.
        """
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict, step: int) -> dict[str, Tensor]:
        """Must contain ``"loss"`` (scalar, the optimised total); other entries are logged as ``loss/<name>``.

        ``step`` is the 0-based index of the optimizer step this batch contributes to.
        """
        raise NotImplementedError

    # ---- optional hooks ------------------------------------------------------------------------

    def validate(self, model: torch.nn.Module, step: int) -> Validation:
        """Validation metrics (and media). Called on *every* rank with the unwrapped model in eval mode
        (under ZeRO-3 the forward pass gathers parameters collectively); rank 0's values are logged."""
        return Validation({})

    def log_media(self, writer: Any, step: int, media: Any) -> None:
        """TensorBoard images/figures of ``media`` (from the last ``validate``: the EMA weights' when
        the task keeps an EMA) via ``writer`` (a ``SummaryWriter``); rank 0 only, not under ZeRO-3."""

    def check_data(self) -> None:
        """Raise a clear error when the task's data is missing or damaged. Called once per process
        before the run folder or any model exists (e.g. shard folder, manifest, checksums)."""

    def skip_stats(self) -> dict[str, int]:
        """Cumulative data-skip counts of this rank (e.g. the shard reader's SkipStats); summed over ranks.
        ``corrupt_samples`` (unreadable or damaged data) counts against ``data.max_skip_fraction``."""
        return {}

    def export_extra(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Extra files next to ``model.safetensors``; ``model`` is a CPU model with the exported weights."""

    def batch_size(self, batch: dict) -> int:
        """Samples in a batch (for samples/s); default: leading dim of the first tensor."""
        for v in batch.values():
            if isinstance(v, Tensor) and v.dim() > 0:
                return int(v.shape[0])
        return 1


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

TaskFactory = Callable[[Config], Task]
TASKS: dict[str, TaskFactory] = {}

# Modules that register a task, for names that do not live under emodifftalk.train.tasks.
_BUILTIN_MODULES = {"toy": "emodifftalk.train.toy"}


def register_task(name: str, factory: TaskFactory | None = None):
    """Register ``factory`` (``factory(cfg)`` returns a Task) under ``name``.

    Usable directly (``register_task("s2au", S2AUTask)``) or as a class/function decorator.
    """

    def _register(f: TaskFactory) -> TaskFactory:
        if not callable(f):
            raise TypeError(f"task factory for {name!r} must be callable, got {type(f).__name__}")
        TASKS[name] = f
        return f

    return _register if factory is None else _register(factory)


def task_module(name: str) -> str:
    return _BUILTIN_MODULES.get(name, f"emodifftalk.train.tasks.{name}")


def get_task(name: str, cfg: Config) -> Task:
    """The task registered as ``name``, built for ``cfg``, importing its module on first use."""
    if name not in TASKS:
        module = task_module(name)
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise  # the task module exists but one of *its* imports is missing: show that
            known = sorted(set(TASKS) | set(_BUILTIN_MODULES))
            raise ValueError(
                f"unknown training task {name!r}: no module {module} (known tasks: {', '.join(known)}; "
                "a task registers itself with emodifftalk.train.register_task)") from None
        if name not in TASKS:
            raise ValueError(f"module {module} was imported but did not call register_task({name!r}, ...)")
    task = TASKS[name](cfg)
    check_task(task)
    return task


REQUIRED_METHODS = ("build_model", "train_batches", "loss")


def check_task(task: Any) -> None:
    """Tasks may subclass :class:`Task` or just follow the protocol; the three core methods are required."""
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(task, m, None))]
    if missing:
        raise TypeError(f"{type(task).__name__} is not a training Task: missing {', '.join(missing)}")


def optional_hook(task: Any, name: str) -> Callable:
    """The task's ``name`` hook, or :class:`Task`'s default for protocol-only tasks."""
    fn = getattr(task, name, None)
    if callable(fn):
        return fn
    return functools.partial(getattr(Task, name), task)
