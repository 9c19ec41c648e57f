"""The one place seeds are set: ``seed_everything(seed, rank)`` (python, numpy, torch).

Every process derives its own stream from ``(seed, rank)`` so ranks draw different dropout masks
and data, while the same ``(seed, rank)`` always gives the same numbers on CPU.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(seed: int, rank: int = 0) -> int:
    """A 32-bit seed for ``(seed, rank)``; rank 0 gets ``seed`` itself (so 1-process runs read naturally)."""
    if seed < 0 or rank < 0:
        raise ValueError(f"seed and rank must be >= 0, got seed={seed} rank={rank}")
    if rank == 0:
        return int(seed) % (2**32)
    # SeedSequence mixes the bits so (seed, rank) streams do not overlap for nearby seeds.
    return int(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(rank),)).generate_state(1)[0])


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> int:
    """Seed python ``random``, numpy and torch (CPU and all CUDA devices); return the derived seed.

    ``deterministic=True`` additionally asks torch for deterministic kernels (slower on GPU).
    """
    s = derive_seed(seed, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return s


def torch_generator(seed: int, *keys: int) -> torch.Generator:
    """A private CPU generator for ``(seed, *keys)`` (e.g. ``(seed, rank, step)``), independent of global RNG."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in keys)).generate_state(2)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g
