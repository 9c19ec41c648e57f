"""Export the trained model as ``<out>/export/{model.safetensors, config.json, task.json}``.

``model.safetensors`` holds the weights inference should use (the EMA when the task keeps one;
then the raw weights are in ``model_raw.safetensors``). All tensors are full (ZeRO-3 shards are
gathered) CPU tensors stored in float32. ``load_exported`` rebuilds the model through the task
(training tools and tests; inference loads through each family's own loader, e.g.
``motion.inference.load_motion``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from emodifftalk.config import Config, load_config, save_config
from emodifftalk.safetensors_io import load_tensors
from emodifftalk.train.task import get_task, optional_hook
from emodifftalk.utils import atomic_dir, atomic_write_text, git_sha

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
RAW_MODEL_FILE = "model_raw.safetensors"
TASK_FILE = "task.json"


def _to_cpu_fp32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.float()
        out[k] = v.contiguous().clone()  # clone: tied weights must not share storage in safetensors
    return out


def gather_state_dict(accelerator, model) -> dict[str, torch.Tensor] | None:
    """Collective. Full state dict on the main process (``None`` elsewhere under ZeRO-3)."""
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    return _to_cpu_fp32(state)


def export_model(task: Any, raw_state: dict[str, torch.Tensor], out_dir: Path,
                 ema_state: dict[str, torch.Tensor] | None = None, meta: dict | None = None) -> Path:
    """Main process only: write the export dir (with ``task.cfg``) atomically and run ``task.export_extra``."""
    cfg = task.cfg
    final = Path(out_dir)
    model_state = dict(raw_state)
    if ema_state is not None:
        unknown = sorted(set(ema_state) - set(raw_state))
        if unknown:
            raise ValueError(f"EMA has parameters the model does not: {unknown[:5]}")
        model_state.update(_to_cpu_fp32(ema_state))  # buffers (e.g. norm statistics) stay raw
    info = {"task": getattr(task, "name", type(task).__name__), "ema": ema_state is not None,
            "git_sha": git_sha(), **(meta or {})}
    with atomic_dir(final, overwrite=True) as tmp:
        save_file(model_state, str(tmp / MODEL_FILE), metadata={"task": info["task"]})
        if ema_state is not None:
            save_file(raw_state, str(tmp / RAW_MODEL_FILE), metadata={"task": info["task"]})
        save_config(cfg, tmp)
        atomic_write_text(tmp / TASK_FILE, json.dumps(info, indent=2, sort_keys=True))
        # export_extra sees a clean CPU model holding exactly the exported weights (also under ZeRO-3)
        model = task.build_model()
        model.load_state_dict(model_state, strict=True)
        model.eval()
        optional_hook(task, "export_extra")(model, tmp)
    return final


def load_exported(export_dir: str | Path, task: str | None = None, weights: str = "model",
                  map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """Rebuild the exported model (eval mode) and its config.

    ``task``: a task name, or ``None`` (read from ``task.json``); it is built for the export's
    config. ``weights``: ``"model"`` (EMA if there was one) or ``"model_raw"``.
    """
    export_dir = Path(export_dir)
    if weights not in ("model", "model_raw"):
        raise ValueError(f"weights must be 'model' or 'model_raw', got {weights!r}")
    weights_path = export_dir / f"{weights}.safetensors"
    for needed in (export_dir / "config.json", weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: is {export_dir} a training export dir?")
    cfg = load_config(export_dir / "config.json")
    name = task
    if name is None:
        task_file = export_dir / TASK_FILE
        if not task_file.is_file():
            raise FileNotFoundError(f"{task_file} not found; pass the task explicitly")
        name = json.loads(task_file.read_text())["task"]
    task = get_task(name, cfg)
    model = task.build_model()
    state = load_tensors(weights_path, device=map_location)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights_path} does not fit the model built by task "
                         f"{getattr(task, 'name', task)!r}: {e}") from None
    model.to(map_location)
    model.eval()
    return model, cfg
