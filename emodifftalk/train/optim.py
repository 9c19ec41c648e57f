"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedule.

The schedule is a pure function of the step (no scheduler object): resuming needs only the step,
and accelerate's scheduler wrapper (which steps once per process) cannot skew it.
"""

from __future__ import annotations

import math

import torch

from emodifftalk.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices/embeddings; never biases, norm gains or other 1-D parameters."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ValueError("model has no trainable parameters")
    return groups


def build_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=tcfg.lr,
                             betas=tuple(tcfg.betas), weight_decay=tcfg.weight_decay)


def lr_at(step: int, tcfg: TrainConfig) -> float:
    """Learning rate for the 0-based optimizer step ``step``.

    Linear warmup over ``warmup_steps`` (step 0 already gets lr/warmup), then cosine decay to
    ``lr * min_lr_ratio`` at ``max_steps`` (``schedule="cosine"``) or constant ``lr``.
    """
    base = tcfg.lr
    if tcfg.warmup_steps > 0 and step < tcfg.warmup_steps:
        return base * (step + 1) / tcfg.warmup_steps
    if tcfg.schedule == "constant":
        return base
    span = max(1, tcfg.max_steps - tcfg.warmup_steps)
    progress = min(1.0, max(0.0, (step - tcfg.warmup_steps) / span))
    ratio = tcfg.min_lr_ratio + (1.0 - tcfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base * ratio


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
