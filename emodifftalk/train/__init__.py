"""The shared training loop (accelerate / DeepSpeed) and the task registry.

Light imports only here: task modules do ``from emodifftalk.train import Task, register_task``
without pulling in accelerate. ``run_training`` and ``load_exported`` load on first use.
"""

from emodifftalk.train.task import TASKS, Task, get_task, register_task

__all__ = [
    "TASKS",
    "NonFiniteLossError",
    "Task",
    "get_task",
    "load_exported",
    "register_task",
    "run_training",
    "seed_everything",
]


def __getattr__(name):
    if name in ("run_training", "NonFiniteLossError"):
        from emodifftalk.train import loop

        return getattr(loop, name)
    if name == "load_exported":
        from emodifftalk.train.export import load_exported

        return load_exported
    if name == "seed_everything":
        from emodifftalk.distributed.seed import seed_everything

        return seed_everything
    raise AttributeError(f"module 'emodifftalk.train' has no attribute {name!r}")
