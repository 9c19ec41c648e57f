"""Re-export of :mod:`emodifftalk.distributed.seed` (the one seeding function)."""

from emodifftalk.distributed.seed import derive_seed, seed_everything, torch_generator

__all__ = ["derive_seed", "seed_everything", "torch_generator"]
