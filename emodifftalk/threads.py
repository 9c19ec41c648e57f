"""How many CPU threads a command's torch / OpenMP work may use: ``--threads`` on every CPU-heavy verb.

Why: torch's default is one intra-op thread per core. On a small or busy machine those threads
spin against each other and against other processes: ``animate`` of 4 s of audio rendered in
44 s with the default vs 3 s with one thread on a loaded 2-core box. So the default is chosen,
not inherited:

1. ``--threads N`` when given;
2. else ``OMP_NUM_THREADS`` / ``EMODIFFTALK_THREADS`` when set (a launcher or the user decided);
3. else the cores this process may use (its CPU affinity) minus the load already on them
   (1-minute load average), at most ``MAX_DEFAULT_THREADS``, and exactly 1 when there are no
   more than 2 cores — there a second thread never pays for its synchronisation.

The choice is applied once, before any heavy work (``apply_threads``), to torch's intra-op pool
and exported as ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` so worker processes (Ray tasks,
DataLoader workers, ffmpeg is unaffected) start with the same budget.
"""

from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger(__name__)

MAX_DEFAULT_THREADS = 8  # beyond this the CPU kernels we run (rasterizer, small transformers) gain little  # choice
SMALL_MACHINE_CORES = 2
ENV_VARS = ("EMODIFFTALK_THREADS", "OMP_NUM_THREADS")


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """The thread count for this machine now (rule 3 of the module docstring)."""
    cores = usable_cores() if cores is None else int(cores)
    load = _load_average() if load is None else float(load)
    if cores <= SMALL_MACHINE_CORES:
        return 1
    idle = int(cores - load + 0.5)
    return max(1, min(idle, cores, MAX_DEFAULT_THREADS))


def choose_threads(requested: int | None = None, env: dict[str, str] | None = None,
                   cores: int | None = None, load: float | None = None) -> tuple[int, str]:
    """``(threads, why)``: ``--threads`` beats the environment beats the machine's default."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return int(requested), "--threads"
    env = os.environ if env is None else env
    for name in ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a whole number of threads") from None
            if n >= 1:
                return n, name
    return default_threads(cores, load), f"default for {usable_cores() if cores is None else cores} core(s)"


def apply_threads(n: int) -> None:
    """Use ``n`` intra-op threads in this process and in processes it starts."""
    import torch

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(n)
    torch.set_num_threads(n)


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch/OpenMP (default: $OMP_NUM_THREADS, else 1 on <= 2 cores or "
                        "a busy machine, else the idle cores up to 8)")


def setup_threads(requested: int | None) -> int:
    """Choose and apply; returns the count (logged at debug level, with why)."""
    n, why = choose_threads(requested)
    apply_threads(n)
    log.debug("using %d CPU thread(s) (%s)", n, why)
    return n
