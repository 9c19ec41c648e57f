"""Training state without pickle: model, optimizer, grad scaler and per-rank RNG as safetensors + JSON.

accelerate's ``save_state`` writes the optimizer with ``torch.save`` and the RNG states as ``.pkl``
files; loading them unpickles, so a checkpoint from elsewhere could run code. For every run that
is not under DeepSpeed (whose engine owns its checkpoint format) we write instead:

    model.safetensors                  the unwrapped model's state dict (main process)
    optimizer.safetensors + .json      optimizer tensors by "state/<param>/<name>"; the rest
                                       (param groups, scalar state) as JSON (main process: under
                                       DDP every rank holds the same optimizer state)
    scaler.json                        the fp16 grad scaler, if there is one (main process)
    rng_<rank>.safetensors + .json     torch CPU/CUDA generator states, numpy's MT19937 keys;
                                       python ``random``'s state and numpy's counters as JSON

Every tensor goes through ``safetensors`` and everything else is plain JSON, so loading never
unpickles.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file, save_model

from emodifftalk.safetensors_io import load_saved_model, load_tensors

from emodifftalk.utils import atomic_write_text

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
SCALER_FILE = "scaler.json"


def _rng_files(rank: int) -> tuple[str, str]:
    return f"rng_{rank}.safetensors", f"rng_{rank}.json"


def has_safe_state(path: str | Path) -> bool:
    return (Path(path) / OPTIMIZER_JSON).is_file()


def _json_value(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (tuple, list)):  # tuples (e.g. betas) become lists; optimizer_from_files restores betas
        return [_json_value(x) for x in v]
    raise TypeError(f"optimizer state value of type {type(v).__name__} is neither a tensor nor JSON-able")


def optimizer_to_files(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer ``state_dict()`` → (tensors by key, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state_dict["state"].items():
        for name, v in entries.items():
            if torch.is_tensor(v):
                tensors[f"state/{pid}/{name}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = _json_value(v)
    groups = []
    for g, group in enumerate(state_dict["param_groups"]):
        out = {}
        for k, v in group.items():
            if torch.is_tensor(v):  # e.g. a tensor lr (capturable optimizers)
                tensors[f"group/{g}/{k}"] = v.detach().cpu().contiguous()
            else:
                out[k] = _json_value(v)
        groups.append(out)
    return tensors, {"scalars": scalars, "param_groups": groups}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`optimizer_to_files` (param ids are ints again, betas tuples)."""
    state: dict[int, dict[str, Any]] = {}
    groups = [dict(g) for g in meta["param_groups"]]
    for key, v in tensors.items():
        kind, idx, name = key.split("/", 2)
        if kind == "state":
            state.setdefault(int(idx), {})[name] = v
        else:
            groups[int(idx)][name] = v
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def rng_to_files() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's python / numpy / torch (CPU + CUDA) RNG states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    tensors = {"torch_cpu": torch.get_rng_state(),
               "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda/{i}"] = s
    version, internal, gauss_next = random.getstate()
    meta = {"python": [version, list(internal), gauss_next],
            "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}}
    return tensors, meta


def rng_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = meta["numpy"]
    np.random.set_state((n["kind"], tensors["numpy_keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted((k for k in tensors if k.startswith("torch_cuda/")), key=lambda k: int(k.split("/")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def save_safe_state(accelerator, model: torch.nn.Module, optimizer, directory: str | Path) -> None:
    """Collective-free: each rank writes its RNG; the main process writes model/optimizer/scaler."""
    directory = Path(directory)
    tensors, meta = rng_to_files()
    rng_tensors, rng_json = _rng_files(accelerator.process_index)
    save_file(tensors, str(directory / rng_tensors))
    atomic_write_text(directory / rng_json, json.dumps(meta))
    if not accelerator.is_main_process:
        return
    save_model(accelerator.unwrap_model(model), str(directory / MODEL_FILE))
    opt_tensors, opt_meta = optimizer_to_files(optimizer.state_dict())
    save_file(opt_tensors, str(directory / OPTIMIZER_TENSORS))
    atomic_write_text(directory / OPTIMIZER_JSON, json.dumps(opt_meta))
    if accelerator.scaler is not None:
        atomic_write_text(directory / SCALER_FILE, json.dumps(accelerator.scaler.state_dict()))


def load_safe_state(accelerator, model: torch.nn.Module, optimizer, directory: str | Path) -> None:
    """Restore what :func:`save_safe_state` wrote (every rank reads the shared model/optimizer)."""
    directory = Path(directory)
    # read on the CPU; load_state_dict copies into the parameters wherever they live
    load_saved_model(accelerator.unwrap_model(model), directory / MODEL_FILE)
    optimizer.load_state_dict(optimizer_from_files(load_tensors(directory / OPTIMIZER_TENSORS),
                                                   json.loads((directory / OPTIMIZER_JSON).read_text())))
    if accelerator.scaler is not None and (directory / SCALER_FILE).is_file():
        accelerator.scaler.load_state_dict(json.loads((directory / SCALER_FILE).read_text()))
    rng_tensors, rng_json = _rng_files(accelerator.process_index)
    if not (directory / rng_tensors).is_file():  # fewer ranks saved it: keep this rank's fresh seed
        log.warning("%s missing (checkpoint written by fewer processes): rank %d keeps its seeded RNG",
                    directory / rng_tensors, accelerator.process_index)
        return
    rng_from_files(load_tensors(directory / rng_tensors), json.loads((directory / rng_json).read_text()))
