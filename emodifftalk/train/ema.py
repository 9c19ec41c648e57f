"""Exponential moving average of model weights (kept in fp32, saved as safetensors)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from emodifftalk.safetensors_io import load_tensors_and_metadata


def _gathered(params: list[torch.nn.Parameter], zero3: bool):
    """Under ZeRO-3 each rank holds a shard; gather full tensors (collective: all ranks call)."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


class EMA:
    """``shadow = d * shadow + (1 - d) * param`` after each optimizer step.

    The effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` (n = updates so far) so
    short runs are not dominated by the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float, zero3: bool = False):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.zero3 = zero3
        self.updates = 0
        named = list(model.named_parameters(remove_duplicate=False))  # tied weights under every name
        with _gathered([p for _, p in named], zero3):
            self.shadow = {n: p.detach().float().clone() for n, p in named}

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        named = list(model.named_parameters(remove_duplicate=False))
        with _gathered([p for _, p in named], self.zero3):
            for n, p in named:
                s = self.shadow[n]
                s.mul_(d).add_(p.detach().to(device=s.device, dtype=s.dtype), alpha=1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full-precision CPU copy of the averaged parameters (keys = ``model.named_parameters()``)."""
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def save(self, path: str | Path) -> None:
        save_file(self.state_dict(), str(path), metadata={"updates": str(self.updates), "decay": str(self.decay)})

    def load(self, path: str | Path) -> None:
        tensors, meta = load_tensors_and_metadata(path)
        if set(tensors) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(tensors))[:5]
            extra = sorted(set(tensors) - set(self.shadow))[:5]
            raise ValueError(f"EMA file {path} does not match the model (missing {missing}, unexpected {extra})")
        for n, t in tensors.items():
            self.shadow[n].copy_(t)
        self.updates = int(meta.get("updates", 0))

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite ``model``'s parameters with the averages (plain, non-ZeRO-3 models)."""
        for n, p in model.named_parameters(remove_duplicate=False):
            p.copy_(self.shadow[n].to(device=p.device, dtype=p.dtype))

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """Temporarily run ``model`` with the EMA weights (e.g. for validation); restores the raw ones."""
        backup = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(backup[n])
