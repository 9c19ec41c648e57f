"""Benchmark canonical-rig reconstruction: steps/s of one identity, and the wall time of N
identities through Ray with 1 vs 2 workers (one CPU per task), in one run.

    python benchmarks/bench_rig.py --shards /tmp/shards_tiny --identities 4 --json bench_rig.json
    python benchmarks/bench_rig.py --identities 4 rig.steps=60      # makes its own tiny shards

Without ``--shards`` a tiny synthetic data set (tiny preset's synth section, ``--identities``
identities, one clip each) is generated and packed into a temp folder first (not timed).
Ray wall times include starting and stopping the local Ray instance (reported separately as
``ray_overhead_s`` = wall − the slowest worker's summed task time, roughly). Prints a table
and writes JSON. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def make_shards(n_identities: int, root: Path, cfg) -> Path:
    from emodifftalk.config import apply_overrides
    from emodifftalk.data.shards import pack_dataset
    from emodifftalk.data.synthetic import generate_dataset

    apply_overrides(cfg, [f"synth.n_identities={max(3, n_identities)}", "synth.clips_per_identity=1",
                          "synth.clip_seconds=0.4"])
    raw = generate_dataset(cfg.synth, root / "raw", progress=False)
    return pack_dataset(raw, root / "shards", cfg)


def steps_per_second(shards: Path, identity: str, cfg, out: Path) -> dict:
    """In-process reconstruction of one identity with one torch thread (as a Ray task runs)."""
    from emodifftalk.distributed.ray_jobs import load_identity
    from emodifftalk.rig.reconstruct import reconstruct_identity

    frames, template = load_identity(shards, identity)
    torch.set_num_threads(1)
    res = reconstruct_identity(frames, template, cfg, out / identity, progress=False)
    return {"identity": identity, "steps": res.steps, "train_seconds": res.info["train_seconds"],
            "steps_per_second": res.steps_per_second, "seconds": res.seconds, **res.metrics}


def ray_wall_time(shards: Path, identities: list[str], workers: int, cfg, out: Path) -> dict:
    from emodifftalk.distributed.ray_jobs import run_rig_jobs

    t0 = time.perf_counter()
    records = run_rig_jobs(shards, out, cfg, identities=identities, num_cpus=workers, progress=False)
    wall = time.perf_counter() - t0
    task_s = [r["seconds"] or 0.0 for r in records]
    return {"workers": workers, "identities": len(identities), "wall_s": wall,
            "sum_task_s": sum(task_s), "ray_overhead_s": wall - sum(task_s) / workers,
            "sum_task_cpu_s": sum(r.get("cpu_seconds") or 0.0 for r in records),
            "failed": [r["identity"] for r in records if r["status"] != "ok"],
            "psnr_holdout": {r["identity"]: r["psnr_holdout"] for r in records}}


def main(argv: list[str] | None = None) -> int:
    from emodifftalk.config import build_config
    from emodifftalk.distributed.ray_jobs import list_identities

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=None, help="packed shards (default: make tiny ones)")
    ap.add_argument("--identities", type=int, default=4, help="identities per Ray run")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to compare")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("overrides", nargs="*", default=[], help="config overrides, e.g. rig.steps=60")
    args = ap.parse_args(argv)
    cfg = build_config(args.config, ["rig.num_cpus_per_task=1", *args.overrides])

    with tempfile.TemporaryDirectory(prefix="bench_rig_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        shards = Path(args.shards) if args.shards else make_shards(args.identities, tmp / "data", cfg)
        prep = time.perf_counter() - t0
        ids = list_identities(shards)[: args.identities]
        single = steps_per_second(shards, ids[0], cfg, tmp / "single")
        runs = [ray_wall_time(shards, ids, int(w), cfg, tmp / f"ray_w{w}") for w in args.workers.split(",")]

    result = {
        "benchmark": "rig", "config": args.config, "overrides": args.overrides, "rig_steps": cfg.rig.steps,
        "n_free_points": cfg.rig.n_free_points, "image_size": cfg.synth.image_size if not args.shards else None,
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
        "platform": platform.platform(), "load_average": os.getloadavg(), "data_prep_s": prep, "single_identity": single, "ray": runs,
    }
    print(f"one identity ({single['identity']}): {single['steps']} steps in {single['train_seconds']:.1f} s "
          f"= {single['steps_per_second']:.2f} steps/s, held-out PSNR {single['psnr_holdout']:.2f} dB, "
          f"SSIM {single['ssim_holdout']:.3f} (total {single['seconds']:.1f} s incl. setup/eval/save)")
    print(f"{'workers':>7}  {'identities':>10}  {'wall_s':>7}  {'sum_task_s':>10}  {'task_cpu_s':>10}  "
          f"{'overhead_s':>10}  failed")
    for r in runs:
        print(f"{r['workers']:>7}  {r['identities']:>10}  {r['wall_s']:>7.1f}  {r['sum_task_s']:>10.1f}  "
              f"{r['sum_task_cpu_s']:>10.1f}  {r['ray_overhead_s']:>10.1f}  {','.join(r['failed']) or '-'}")
    print(f"(task_cpu_s ≈ sum_task_s means each task had a core to itself; much less means the tasks "
          f"waited for CPU, e.g. other load: load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    if len(runs) >= 2:
        print(f"speed-up {runs[0]['workers']}->{runs[-1]['workers']} workers: {runs[0]['wall_s'] / runs[-1]['wall_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
