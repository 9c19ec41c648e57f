"""Scale rehearsal on one machine: a RenderMe-360-shaped data set at tiny resolution through the
pipeline's data path, Ray rig scheduling and two-process DDP reading. Not a test; prints a report
and writes JSON.

* ``synth`` + ``pack``: the synthetic generator writes 500 identities x 12 clips x 60 cameras (``--scale``
  of the identities), 32² images of each clip's neutral frame, 1 s clips; ``emodifftalk pack``'s
  packer packs them. Reported: synth and pack throughput, shard count and bytes, manifest size
  and load time, ``inspect`` (report + full validation) time, bytes per item.
* ``ray``: one rig task per identity on local Ray (``run_rig_jobs``, tiny steps), while a chaos
  thread SIGKILLs workers in the middle of tasks; then the same job again. Reported: wall time,
  scheduling overhead per task, kills and retries, every identity complete exactly once (no
  leftovers but the killed writers' temp folders), the re-run skips all and rewrites nothing.
* ``ddp``: ``torchrun`` with 2 processes (gloo) and with 1 reading the packed ``seq`` shards:
  one pass without resampling must hand ranks disjoint samples covering the split; resampled
  streams (what training uses) must differ per rank; Speech-to-AU batches/s per process.

    python benchmarks/scale_rehearsal.py --scale 0.2 --json benchmarks/results/scale_rehearsal.json
    python benchmarks/scale_rehearsal.py --scale 1.0      # the full shape: 30-60 min of synth, 2 GB of shards

Extrapolation to full RenderMe-360 on N GPU nodes: launch/README.md ("Scale").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL = {"identities": 500, "clips": 12, "cameras": 60}


def shape_overrides(n_identities: int) -> list[str]:
    """Config of the rehearsal data: RenderMe-360's counts, the smallest content per item."""
    return [f"synth.n_identities={n_identities}", f"synth.clips_per_identity={FULL['clips']}",
            f"synth.n_cameras={FULL['cameras']}", "synth.image_size=32", "synth.clip_seconds=1.0",
            "synth.image_stride=1000", "synth.mesh_resolution=20", "synth.n_free_points=300",
            "data.frames_stride=0", "rig.steps=2", "rig.n_free_points=50", "rig.densify_every=0",
            "rig.log_images_every=0", "feature_line.steps=0", "rig.num_cpus_per_task=1", "rig.max_retries=3"]


# ------------------------------------------------------------------------------------------- data


def stage_synth(cfg, work: Path) -> dict:
    from emodifftalk.data.synthetic import generate_dataset

    n = cfg.synth.n_identities
    t0 = time.perf_counter()
    generate_dataset(cfg.synth, work / "raw", overwrite=True, progress=True)
    synth_s = time.perf_counter() - t0
    raw_bytes = sum(p.stat().st_size for p in (work / "raw").rglob("*") if p.is_file())
    return {"synth_s": round(synth_s, 1), "synth_s_per_identity": round(synth_s / n, 3),
            "raw_mb": round(raw_bytes / 1e6, 1)}


def stage_pack(cfg, work: Path) -> dict:
    from emodifftalk.data.shards import format_report, inspect_report, load_manifest, pack_dataset, validate_shards

    n = cfg.synth.n_identities
    t0 = time.perf_counter()
    shards = pack_dataset(work / "raw", work / "shards", cfg, overwrite=True)
    pack_s = time.perf_counter() - t0
    files = sorted(p for p in shards.iterdir() if p.suffix == ".tar")
    shard_bytes = sum(p.stat().st_size for p in files)
    manifest_path = shards / "manifest.json"
    loads = []
    for _ in range(5):
        t0 = time.perf_counter()
        manifest = load_manifest(shards)
        loads.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    report = inspect_report(shards)
    inspect_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    problems = validate_shards(shards)
    validate_s = time.perf_counter() - t0
    print("\n".join(format_report(report).splitlines()[:12]))
    by_kind = {k: sum(p.stat().st_size for p in files if p.name.startswith(k + "-")) for k in
               ("seq", "frames", "templates")}
    counts = {k: sum(1 for p in files if p.name.startswith(k + "-")) for k in by_kind}
    clips = n * cfg.synth.clips_per_identity
    images = clips * cfg.synth.n_cameras  # neutral frame of every clip, every camera
    return {
        "identities": n, "clips": clips, "cameras": cfg.synth.n_cameras, "images": images,
        "image_size": cfg.synth.image_size, "pack_s": round(pack_s, 1), "pack_clips_per_s": round(clips / pack_s, 1),
        "pack_images_per_s": round(images / pack_s, 1), "pack_mb_per_s": round(shard_bytes / 1e6 / pack_s, 2),
        "shard_mb": round(shard_bytes / 1e6, 1), "shards": len(files),
        "shards_by_kind": counts, "mb_by_kind": {k: round(v / 1e6, 2) for k, v in by_kind.items()},
        "bytes_per_image": round(by_kind["frames"] / images), "bytes_per_seq_clip": round(by_kind["seq"] / clips),
        "manifest_kb": round(manifest_path.stat().st_size / 1e3, 1), "manifest_clips": len(manifest.get("clips", {})),
        "manifest_load_ms": round(1e3 * statistics.median(loads), 2), "inspect_s": round(inspect_s, 2),
        "validate_s": round(validate_s, 1), "validate_problems": len(problems),
    }


# -------------------------------------------------------------------------------------------- ray


class WorkerKiller(threading.Thread):
    """SIGKILLs Ray worker processes while they run a rig task (``ray::_ray_task`` in their
    process title), ``kills`` times, one every ``every`` seconds: crashed workers, as on a cluster."""

    def __init__(self, kills: int, every: float):
        super().__init__(daemon=True)
        self.kills, self.every, self.killed = kills, every, []
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while len(self.killed) < self.kills and not self.stop.wait(self.every):
            for p in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if cmd.startswith("ray::_ray_task") and p.info["pid"] not in self.killed:
                    try:
                        p.send_signal(signal.SIGKILL)
                        self.killed.append(p.info["pid"])
                    except psutil.Error:
                        continue
                    break


def stage_ray(cfg, shards: Path, work: Path, workers: int, kills: int) -> dict:
    """Ray is started here (timed on its own) and stopped at the end; run_rig_jobs reuses it."""
    import ray

    from emodifftalk.distributed.ray_jobs import init_ray

    t0 = time.perf_counter()
    init_ray(num_cpus=workers)
    init_s = time.perf_counter() - t0
    try:
        return {"ray_init_s": round(init_s, 1), **_rig_jobs(cfg, shards, work, workers, kills)}
    finally:
        ray.shutdown()


def _rig_jobs(cfg, shards: Path, work: Path, workers: int, kills: int) -> dict:
    from emodifftalk.distributed.ray_jobs import list_identities, run_rig_jobs

    out = work / "rigs"
    ids = list_identities(shards)
    load_s, scan_s = _load_identity_costs(shards, ids[0])
    killer = WorkerKiller(kills, every=3.0)
    killer.start()
    t0 = time.perf_counter()
    records = run_rig_jobs(shards, out, cfg, num_cpus=workers, progress=True)
    wall = time.perf_counter() - t0
    killer.stop.set()
    statuses = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    rigs = sorted(p for p in out.iterdir() if (p / "rig.json").is_file())
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith(".tmp-"))
    mtimes = {p.name: (p / "rig.json").stat().st_mtime_ns for p in rigs}
    task_s = [r["seconds"] or 0.0 for r in records if r["status"] == "ok"]
    t0 = time.perf_counter()
    again = run_rig_jobs(shards, out, cfg, num_cpus=workers, progress=False)
    rerun_wall = time.perf_counter() - t0
    unchanged = all((out / name / "rig.json").stat().st_mtime_ns == m for name, m in mtimes.items())
    return {
        "tasks": len(ids), "workers": workers, "wall_s": round(wall, 1), "sum_task_s": round(sum(task_s), 1),
        "mean_task_s": round(statistics.mean(task_s), 3) if task_s else None,
        "load_identity_s": round(load_s, 3), "load_identity_by_split_scan_s": round(scan_s, 3),
        "overhead_s_per_task": round((wall - sum(task_s) / workers) / len(ids), 3),
        "statuses": statuses, "workers_killed": len(killer.killed),
        "failed": [f"{r['identity']}: {r['error']}" for r in records if r["status"] == "failed"][:5],
        "complete_rigs": len(rigs), "all_complete_once": len(rigs) == len(ids) and statuses["failed"] == 0,
        "temp_leftovers": len(leftovers),
        "rerun_wall_s": round(rerun_wall, 1), "rerun_statuses": {s: sum(r["status"] == s for r in again)
                                                                 for s in ("ok", "skipped", "failed")},
        "rerun_rewrote_nothing": unchanged,
    }


def _load_identity_costs(shards: Path, identity: str) -> tuple[float, float]:
    """What a rig task reads first: its identity's samples from its own shards (the manifest's
    index), vs the scan of its whole split that manifests without the index need (O(data set))."""
    from emodifftalk.data.shards import SkipStats, load_manifest, shard_urls
    from emodifftalk.distributed.ray_jobs import _identity_splits, _samples_with_prefix, load_identity

    load_identity(shards, identity)  # warm-up: imports, page cache
    t0 = time.perf_counter()
    load_identity(shards, identity)
    load_s = time.perf_counter() - t0
    splits = _identity_splits(load_manifest(shards), identity)
    t0 = time.perf_counter()
    for kind in ("frames", "seq"):  # the task reads both (seq for the feature line)
        urls = [u for split in splits for u in shard_urls(shards, kind, split)]
        list(_samples_with_prefix(urls, f"{identity}__", SkipStats()))
    return load_s, time.perf_counter() - t0


# -------------------------------------------------------------------------------------------- ddp


def ddp_worker(shards: str, batches: int, resample_draws: int, out: str) -> None:
    """One rank under torchrun: sample keys of one pass and of a resampled stream, then timed
    Speech-to-AU training batches (the real data path: read, decode, mel features, crop, collate)."""
    import torch
    import torch.distributed as dist

    from emodifftalk.config import build_config
    from emodifftalk.data.shards import shard_urls, stream_samples
    from emodifftalk.distributed.seed import derive_seed
    from emodifftalk.train.tasks.s2au import S2AUTask

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    urls = shard_urls(shards, "seq", "train")
    one_pass = [s["key"] for s in stream_samples(urls, split_by_node=True, split_by_worker=False)]
    stream = iter(stream_samples(urls, resampled=True, shuffle_buffer=64, seed=derive_seed(0, rank),
                                 split_by_node=False, split_by_worker=False))
    resampled = [next(stream)["key"] for _ in range(resample_draws)]
    cfg = build_config("tiny", [f"data.root={shards}", "audio.frontend=mel"])
    it = iter(S2AUTask(cfg).train_batches(rank, world, 0, 0))
    next(it)  # warm-up (first shard open, feature set-up)
    dist.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    samples = sum(int(next(it)["aus"].shape[0]) for _ in range(batches))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "one_pass": one_pass, "resampled": resampled,
                                      "samples": samples, "wall_s": wall, "cpu_s": cpu})
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


def _launch_ddp(nproc: int, shards: Path, work: Path, batches: int, draws: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = work / f"ddp_{nproc}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
           str(Path(__file__).resolve()), "--ddp-worker", str(shards), "--batches", str(batches), "--draws",
           str(draws), "--ddp-out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(out.read_text())


def stage_ddp(shards: Path, work: Path, batches: int, draws: int) -> dict:
    from emodifftalk.data.shards import load_manifest

    manifest = load_manifest(shards)
    n_train = sum(c["split"] == "train" for c in manifest["clips"].values())
    two = _launch_ddp(2, shards, work, batches, draws)
    one = _launch_ddp(1, shards, work, batches, draws)
    a, b = (set(r["one_pass"]) for r in two)
    r0, r1 = (set(r["resampled"]) for r in two)

    def rate(ranks):  # ranks read in parallel: samples over the slowest rank's time
        return sum(r["samples"] for r in ranks) / max(r["wall_s"] for r in ranks)

    two_rate, one_rate = rate(two), rate(one)
    return {
        "train_clips": n_train, "one_pass_per_rank": [len(r["one_pass"]) for r in two],
        "one_pass_disjoint": not (a & b), "one_pass_covers_split": len(a | b) == n_train,
        "resampled_draws_per_rank": draws, "resampled_distinct_per_rank": [len(r0), len(r1)],
        "resampled_shared_keys": len(r0 & r1),
        "resampled_streams_differ": [r["resampled"] for r in two][0] != [r["resampled"] for r in two][1],
        "batch_size": 8, "batches_per_rank": batches,
        "samples_per_s_1proc": round(one_rate, 1), "samples_per_s_2proc": round(two_rate, 1),
        "speedup_2proc": round(two_rate / one_rate, 2),
        "samples_per_s_per_core": round(two_rate / 2, 1),
        "cpu_s_per_sample": round(statistics.mean(r["cpu_s"] / r["samples"] for r in two), 4),
    }


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.1, help="fraction of RenderMe-360's 500 identities")
    ap.add_argument("--stages", default="synth,pack,ray,ddp", help="synth,pack,ray,ddp (later ones reuse --work)")
    ap.add_argument("--workers", type=int, default=2, help="Ray CPUs (one task each)")
    ap.add_argument("--kills", type=int, default=3, help="Ray workers to SIGKILL mid-task")
    ap.add_argument("--batches", type=int, default=20, help="Speech-to-AU batches (of 8) per DDP rank")
    ap.add_argument("--draws", type=int, default=100, help="resampled samples per rank for the overlap check")
    ap.add_argument("--work", default=None, help="keep the data here (default: a temp folder, removed)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ddp-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, args.batches, args.draws, args.ddp_out)
        return 0

    import torch

    from emodifftalk.config import build_config

    torch.set_num_threads(1)
    os.environ.setdefault("RAY_TMPDIR", "/tmp/ray_sr")
    n_ids = max(3, round(FULL["identities"] * args.scale))
    cfg = build_config("tiny", shape_overrides(n_ids))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="scale_rehearsal_"))
    stages = args.stages.split(",")
    result = {"benchmark": "scale_rehearsal", "scale": args.scale, "identities": n_ids, "cpu_count": os.cpu_count(),
              "python": platform.python_version(), "torch": torch.__version__, "load_avg_before": os.getloadavg()}
    t_all = time.perf_counter()
    try:
        if "synth" in stages:
            result["synth"] = stage_synth(cfg, work)
            print(json.dumps(result["synth"], indent=1), flush=True)
        if "pack" in stages:
            result["pack"] = stage_pack(cfg, work)
            print(json.dumps(result["pack"], indent=1), flush=True)
        shards = work / "shards"
        if "ray" in stages:
            result["ray"] = stage_ray(cfg, shards, work, args.workers, args.kills)
            print(json.dumps(result["ray"], indent=1), flush=True)
        if "ddp" in stages:
            result["ddp"] = stage_ddp(shards, work, args.batches, args.draws)
            print(json.dumps(result["ddp"], indent=1), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result["total_s"] = round(time.perf_counter() - t_all, 1)
    result["load_avg_after"] = os.getloadavg()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"scale rehearsal ({n_ids} identities) done in {result['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
