"""Atomic, resumable training checkpoints: ``<out>/checkpoints/step_XXXXXXX``.

Layout of one checkpoint (all ranks write into a shared temp dir, rank 0 renames it):

    step_0000200/
      model.safetensors, optimizer.{safetensors,json},          pickle-free training state
      rng_<rank>.{safetensors,json}, scaler.json                (``safe_state.py``)
        — or, under DeepSpeed, the engine's own checkpoint      accelerate ``save_state``
          (pytorch_model/ shards, torch.save files)
      ema.safetensors                                           EMA weights (if the task keeps one)
      trainer_state.json                                        step, counters, data position
      checksums.json                                            sha256 of every file above (last)

A crash while saving leaves only ``.tmp-step_*`` (removed on the next start); a directory named
``step_*`` is therefore always complete. A complete checkpoint can still rot later (a truncated
copy, a flipped block): ``--resume`` re-hashes it against ``checksums.json`` and, for ``latest``,
falls back to the newest checkpoint that verifies, with a warning. The output directory must be on a file system that all
ranks share (as with any multi-node accelerate/DeepSpeed checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from emodifftalk.train.safe_state import OPTIMIZER_JSON, has_safe_state, load_safe_state, save_safe_state
from emodifftalk.utils import atomic_write_text, file_sha256

log = logging.getLogger(__name__)

CKPT_PREFIX = "step_"
_CKPT_RE = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
CHECKSUM_FILE = "checksums.json"


class CheckpointError(ValueError):
    """A checkpoint that fails its integrity check (or no checkpoint that passes)."""


def checkpoint_name(step: int) -> str:
    return f"{CKPT_PREFIX}{step:07d}"


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``ckpt_dir``, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1][1] if ckpts else None


def _checkpoint_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.is_file() and p.name != CHECKSUM_FILE)


def write_checksums(path: Path) -> None:
    """sha256 of every file of the checkpoint directory ``path``, into ``checksums.json``."""
    sums = {name: file_sha256(path / name) for name in _checkpoint_files(path)}
    atomic_write_text(path / CHECKSUM_FILE, json.dumps({"algorithm": "sha256", "files": sums}, indent=1,
                                                       sort_keys=True))


def verify_checkpoint(path: str | Path) -> str | None:
    """Why ``path`` cannot be trusted, or ``None`` when every file matches ``checksums.json``.

    Checkpoints written before checksums existed pass with a warning (their safetensors files
    are still checked for truncation when loaded)."""
    path = Path(path)
    sums_path = path / CHECKSUM_FILE
    if not sums_path.is_file():
        log.warning("%s has no %s (written by an older version): resuming without an integrity check",
                    path, CHECKSUM_FILE)
        return None
    try:
        expected = json.loads(sums_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{CHECKSUM_FILE} unreadable ({e})"
    missing = sorted(set(expected) - set(_checkpoint_files(path)))
    if missing:
        return f"file(s) missing: {', '.join(missing)}"
    for name, digest in sorted(expected.items()):
        if file_sha256(path / name) != digest:
            return f"{name} differs from its checksum (truncated or corrupted)"
    return None


def resolve_resume(resume: str | os.PathLike | None, ckpt_dir: Path) -> Path | None:
    """``None`` → fresh start; ``"latest"`` → newest checkpoint in ``ckpt_dir`` that passes its
    integrity check (damaged newer ones are skipped with a warning; fresh start if there is none,
    so a requeued job can always pass ``--resume latest``); else a checkpoint path, which must pass."""
    if resume is None or str(resume) == "":
        return None
    if str(resume) == "latest":
        ckpts = list_checkpoints(ckpt_dir)
        if not ckpts:
            log.warning("--resume latest: no checkpoint in %s yet; starting from step 0", ckpt_dir)
            return None
        damaged = []
        for _, path in reversed(ckpts):
            problem = verify_checkpoint(path)
            if problem is None:
                if damaged:
                    log.warning("--resume latest: using %s, the newest checkpoint that verifies", path.name)
                return path
            log.warning("--resume latest: checkpoint %s is damaged (%s); falling back to the previous one",
                        path, problem)
            damaged.append(f"{path.name}: {problem}")
        raise CheckpointError(f"--resume latest: no checkpoint in {ckpt_dir} passes its integrity check "
                              f"({'; '.join(damaged)}); start a new run (another --out) or restore one")
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint directory")
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: {STATE_FILE} missing (not a finished checkpoint)")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"--resume {resume}: checkpoint is damaged ({problem}); pick an earlier one "
                              "or --resume latest")
    return path


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text())


def clean_stale_temp(ckpt_dir: Path) -> None:
    """Remove half-written ``.tmp-step_*`` dirs a killed run left behind (rank 0 only)."""
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.glob(f".tmp-{CKPT_PREFIX}*"):
        log.warning("removing incomplete checkpoint %s (left by an interrupted save)", p)
        shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(ckpt_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; return what was removed."""
    ckpts = list_checkpoints(ckpt_dir)
    removed = []
    for _, p in ckpts[: max(0, len(ckpts) - keep_last)]:
        shutil.rmtree(p)
        removed.append(p)
    return removed


def _deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def save_checkpoint(accelerator, ckpt_dir: Path, step: int, trainer_state: dict[str, Any],
                    model, optimizer, ema=None, keep_last: int = 3) -> Path:
    """Collective: every rank must call this. Returns the final checkpoint path."""
    final = ckpt_dir / checkpoint_name(step)
    tmp = ckpt_dir / f".tmp-{final.name}"
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    if _deepspeed(accelerator):
        accelerator.save_state(str(tmp))  # the engine's per-rank shards, RNG per rank
    else:
        save_safe_state(accelerator, model, optimizer, tmp)
    if accelerator.is_main_process:
        if ema is not None:
            ema.save(tmp / EMA_FILE)
        # written last: its presence marks the checkpoint complete
        atomic_write_text(tmp / STATE_FILE, json.dumps(trainer_state, indent=2, sort_keys=True))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_checksums(tmp)  # every rank's files are in: hash them, then publish the directory
        if final.exists():  # e.g. a resumed run saving the same step again
            shutil.rmtree(final)
        os.replace(tmp, final)
        for p in prune_checkpoints(ckpt_dir, keep_last):
            log.info("removed old checkpoint %s (train.keep_last=%d)", p.name, keep_last)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, model, optimizer, ema=None) -> dict[str, Any]:
    """Collective: restore model, optimizer, per-rank RNG and EMA; return trainer state."""
    state = read_trainer_state(path)
    if has_safe_state(path):
        load_safe_state(accelerator, model, optimizer, path)
    elif _deepspeed(accelerator):
        accelerator.load_state(str(path))
    else:
        raise ValueError(f"{path} holds no pickle-free training state ({OPTIMIZER_JSON}); only DeepSpeed "
                         "runs resume from accelerate/DeepSpeed checkpoint files")
    if ema is not None:
        ema_path = path / EMA_FILE
        if not ema_path.is_file():
            raise FileNotFoundError(f"{ema_path} missing: the checkpoint was written without EMA "
                                    "but this task keeps one (train.ema_decay > 0)")
        ema.load(ema_path)
    return state
