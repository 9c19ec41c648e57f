"""Benchmark the thread budget (``emodifftalk/threads.py``): animate's render loop with torch's own
default (one intra-op thread per core) vs the count ``--threads``' default chooses.

Workload: ``--frames`` renders of the head-like cloud of ``bench_render.py`` (``--gaussians``
Gaussians, ``--size``² pixels, the torch tile renderer), i.e. what ``animate`` does per frame.
Each setting runs in a fresh process (thread pools are fixed at start-up), settings interleaved
``--runs`` times; ``--busy K`` keeps K extra processes spinning meanwhile, the "busy machine"
of issue 17. The ratio (torch default / chosen) is the figure to read; it is printed, not asserted.

    python benchmarks/bench_threads.py --out bench_threads.json [--busy 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2**31


def worker(threads: int, gaussians: int, size: int, frames: int) -> float:
    import torch

    sys.path.insert(0, str(HERE))
    from bench_render import head_scene

    from emodifftalk.render import rasterize

    torch.set_num_threads(threads)
    scene = head_scene(gaussians, size)
    with torch.no_grad():
        rasterize(**scene, width=size, height=size, backend="torch")  # warm-up: allocations, first calls
        t0 = time.perf_counter()
        for _ in range(frames):
            rasterize(**scene, width=size, height=size, backend="torch")
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    p.add_argument("--gaussians", type=int, default=20000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--busy", type=int, default=0, help="extra spinning processes during the runs")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker is not None:
        print(json.dumps({"seconds": worker(a.worker, a.gaussians, a.size, a.frames)}))
        return

    from emodifftalk.threads import choose_threads, usable_cores

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                            "EMODIFFTALK_THREADS")}
    cores = usable_cores()
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(a.busy)]
    for s in spinners:
        s.start()
    time.sleep(1.0 if spinners else 0.0)
    chosen, why = choose_threads(None, env=env)
    settings = {"torch_default": cores, "chosen": chosen}
    times: dict[str, list[float]] = {k: [] for k in settings}
    try:
        for _ in range(a.runs):
            for name, n in settings.items():
                cmd = [sys.executable, __file__, "--worker", str(n), "--gaussians", str(a.gaussians),
                       "--size", str(a.size), "--frames", str(a.frames)]
                out = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": str(n)}, capture_output=True, text=True,
                                     check=True)
                times[name].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    finally:
        stop.set()
        for s in spinners:
            s.join()
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"cores": cores, "busy_processes": a.busy, "load_1min": os.getloadavg()[0], "threads": settings,
              "why": why, "gaussians": a.gaussians, "size": a.size, "frames": a.frames, "runs": a.runs,
              "seconds": times, "median_seconds": med,
              "ratio_default_over_chosen": med["torch_default"] / med["chosen"],
              "python": platform.python_version(), "machine": platform.machine()}
    for name, n in settings.items():
        print(f"{name:>13}: {n} thread(s)  {med[name]:.2f} s for {a.frames} frames (runs: "
              + ", ".join(f"{t:.2f}" for t in times[name]) + ")")
    print(f"torch default / chosen = {result['ratio_default_over_chosen']:.2f}x  ({why}; {a.busy} busy process(es))")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
