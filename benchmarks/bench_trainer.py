"""Throughput and memory of the shared training loop: 1 process vs 2-process DDP vs DeepSpeed ZeRO-2.

Runs ``emodifftalk train toy`` (a 4-layer d=128 transformer by default, ~0.5 M parameters) on CPU
through the real launchers and reads what the loop itself records:

* samples/s: global samples per second of training time (``metrics.jsonl``; the first log window,
  which includes warm-up, is dropped);
* peak memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of every rank (``ranks/rank<r>.json``);
* wall: the whole launch, start-up and checkpoint/export included.

Every process gets one thread (OMP_NUM_THREADS=1), so "ddp"/"zero2" use two cores; "single_2t"
gives one process the same two cores for a fair comparison.

    python benchmarks/bench_trainer.py [--steps 60] [--modes single,single_2t,ddp,zero2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ACCELERATE = str(Path(PY).with_name("accelerate")) if Path(PY).with_name("accelerate").exists() else "accelerate"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher(mode: str) -> tuple[list[str], dict[str, str]]:
    common = ["--num_machines", "1", "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_port())]
    if mode in ("single", "single_2t"):
        return [PY], {"OMP_NUM_THREADS": "2" if mode == "single_2t" else "1"}
    if mode == "ddp":
        return [ACCELERATE, "launch", "--multi_gpu", *common], {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    if mode == "zero2":
        return [ACCELERATE, "launch", "--use_deepspeed", "--zero_stage", "2", *common], {"OMP_NUM_THREADS": "1"}
    raise ValueError(f"unknown mode {mode!r}")


def run_mode(mode: str, args, work: Path) -> dict:
    out = work / mode
    launcher, extra_env = _launcher(mode)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMODIFFTALK_TOY_", "ACCELERATE_"))}
    env.update(extra_env, PYTHONUNBUFFERED="1", EMODIFFTALK_TOY_D_MODEL=str(args.d_model),
               EMODIFFTALK_TOY_LAYERS=str(args.layers), EMODIFFTALK_TOY_SEQ=str(args.seq))
    cmd = [*launcher, "-m", "emodifftalk.cli", "train", "toy", "--out", str(out),
           f"train.max_steps={args.steps}", f"train.log_every={args.log_every}", f"train.ckpt_every={args.steps}",
           "train.val_every=0", f"data.batch_size={args.batch}", "train.warmup_steps=5"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r][1:]
    ranks = sorted((out / "ranks").glob("rank*.json"))
    stats = [json.loads(p.read_text()) for p in ranks]
    return {
        "mode": mode, "processes": len(stats), "steps": args.steps,
        "samples_per_s": sum(rates) / len(rates),
        "samples_per_s_min": min(rates), "samples_per_s_max": max(rates),
        "peak_rss_mb_per_rank": [round(s["peak_rss_mb"], 1) for s in stats],
        "train_seconds_per_rank": [round(s["train_seconds"], 2) for s in stats],
        "final_loss": [r["loss"] for r in records if "loss" in r][-1],
        "wall_s": round(wall, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="single,single_2t,ddp,zero2")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--batch", type=int, default=16, help="per-process batch size")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "bench_trainer.json"))
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    results = []
    try:
        for mode in args.modes.split(","):
            res = run_mode(mode.strip(), args, work)
            results.append(res)
            print(f"{res['mode']:>10}: {res['samples_per_s']:8.1f} samples/s  (min {res['samples_per_s_min']:.1f}, "
                  f"max {res['samples_per_s_max']:.1f})  peak RSS/rank MB {res['peak_rss_mb_per_rank']}  "
                  f"wall {res['wall_s']} s  final loss {res['final_loss']:.4f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    payload = {"model": {"d_model": args.d_model, "layers": args.layers, "seq": args.seq, "batch_per_process": args.batch},
               "device": "cpu", "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
