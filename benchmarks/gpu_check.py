"""One prepared GPU check: every CUDA path of the project in one command, within a stated budget.

Checks (``gpu_check_cases.py``), in this order:

* ``env``: torch/CUDA/GPU and which optional packages import;
* ``gsplat_build`` (in the background, from the start): gsplat's first render, which JIT-compiles
  its CUDA kernels (minutes; cached in TORCH_EXTENSIONS_DIR for the next run);
* ``train_s2au``, ``train_motion``, ``train_text2au``: N steps each in fp32 and bf16 through the
  shared loop at the paper preset's model sizes: losses finite and close, samples/s, peak memory;
* ``zero2``: Speech-to-AU under ``accelerate launch --use_deepspeed --zero_stage 2`` on one GPU;
* ``loader``: the fraction of training time the loop waits for data (the GPU's idle fraction);
* ``render`` (waits for ``gsplat_build``): gsplat vs the pure-torch renderer on the same scenes at
  512² and 1024² with 50k and 200k Gaussians: images, alpha, depth and gradients within stated
  tolerances (``TOL``), FPS of each;
* ``rig``: rig reconstruction steps/s at 512² (tiny and paper rig sizes);
* ``animate``: real-time factor per stage for 10 s of audio at 512², with the models and rig above.

Each check runs in its own process with its own time budget: a check that fails, crashes or runs
out of time is recorded and the others go on. The whole run stops by itself at ``--budget``.

    python benchmarks/gpu_check.py --prepare .gpu_check/assets      # on any machine: tiny shards to carry
    python benchmarks/gpu_check.py --assets .gpu_check/assets --out gpu_check.json --budget 420
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json   # CPU, tiny sizes, same code paths

``scripts/gpu_check.sh`` wraps it (offline installs from ``scripts/gpu_wheels.sh``'s wheels first).
``--dry-run`` uses the CPU, tiny sizes, and the tile renderer vs the baseline design in place of
gsplat vs torch; it is run by the test suite so that this script does not rot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# (name, budget in seconds on a GPU, runs in the background, waits for): 8 minutes in all with the
# installs of gpu_check.sh; the foreground budgets sum to 425 s, the gsplat build overlaps them.
PLAN = [
    ("env", 30, False, ()),
    ("gsplat_build", 330, True, ()),
    ("train_s2au", 50, False, ()),
    ("train_motion", 60, False, ()),
    ("train_text2au", 35, False, ()),
    ("zero2", 60, False, ()),
    ("loader", 40, False, ()),
    ("render", 90, False, ("gsplat_build",)),
    ("rig", 35, False, ("gsplat_build",)),
    ("animate", 25, False, ("gsplat_build",)),
]
# ok | skipped (does not apply here, e.g. gsplat without CUDA) | failed | crashed | timeout (its own
# budget) | not_run (the total budget was spent before it)
STATUSES = ("ok", "skipped", "failed", "crashed", "timeout", "not_run")
FAULT_ENV = "EMODIFFTALK_GPU_CHECK_FAULT"  # tests: "name=raise" | "name=hang" | "name=crash"


# ------------------------------------------------------------------------------------- assets


def prepare_assets(out: Path, image_size: int) -> Path:
    """Synthetic data packed into shards (3 identities x 2 clips of 2 s, 4 cameras, neutral frames
    only): what the checks train, rig and animate on. Made here, carried to the GPU machine, so
    that it needs neither scipy (synthesis) nor minutes of rendering."""
    from emodifftalk.config import build_config
    from emodifftalk.data.shards import pack_dataset
    from emodifftalk.data.synthetic import generate_dataset

    cfg = build_config("tiny", ["synth.n_identities=3", "synth.clips_per_identity=2", "synth.clip_seconds=2.0",
                                f"synth.image_size={image_size}", "synth.image_stride=1000", "synth.n_cameras=4",
                                "data.frames_stride=0"])
    raw = generate_dataset(cfg.synth, out / "raw", overwrite=True, progress=False)
    pack_dataset(raw, out / "shards", cfg, overwrite=True)
    import shutil

    shutil.rmtree(out / "raw")
    return out


# ------------------------------------------------------------------------------------- one check


def run_child(name: str, ctx: dict, result_path: Path, log_path: Path) -> None:
    """In the check's own process: run it, write its result JSON. Exceptions become 'failed'."""
    os.setsid()  # its own process group: a timeout also stops its DataLoader workers and launchers
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import gpu_check_cases as cases

    ctx = cases.Ctx(device=ctx["device"], dry_run=ctx["dry_run"], assets=Path(ctx["assets"]), work=Path(ctx["work"]),
                    deadline=float(ctx["deadline"]), gsplat=bool(ctx.get("gsplat")))
    if ctx.dry_run:
        import torch

        torch.set_num_threads(1)  # tiny tensors; the CI machine is small and shared
    fault = dict(f.split("=", 1) for f in os.environ.get(FAULT_ENV, "").split(",") if "=" in f).get(name)
    t0 = time.perf_counter()
    try:
        if fault == "raise":
            raise RuntimeError("injected fault")
        if fault == "hang":
            time.sleep(3600)
        if fault == "crash":
            os._exit(3)
        result = cases.CHECKS[name](ctx)
        status = "failed" if "error" in result else "skipped" if "skipped" in result else "ok"
    except Exception as e:  # noqa: BLE001 - recorded; the orchestrator goes on with the next check
        result = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc(limit=8)[-3000:]}
        status = "failed"
    result = {"status": status, "seconds": round(time.perf_counter() - t0, 1), **result}
    result_path.write_text(json.dumps(result, indent=2, default=str))
    sys.stdout.flush()
    sys.stderr.flush()


def _processes():
    """Checks run in processes forked from a server that has imported torch and the checks but
    never touched CUDA (torch's recommended pattern): isolation without paying torch's import
    (seconds) per check."""
    import multiprocessing

    sys.path.insert(0, str(HERE))
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "gpu_check_cases"])
    forkserver.ensure_running()
    warm = ctx.Process(target=_noop)  # returns once the server has imported: outside every check's budget
    warm.start()
    warm.join()
    return ctx


def _noop() -> None:
    pass


class Running:
    """A check in its own process (own session, so a timeout kills its children too)."""

    def __init__(self, mp, name: str, ctx: dict, work: Path, budget: float):
        self.name, self.budget, self.t0 = name, budget, time.time()
        ctx = dict(ctx, deadline=self.t0 + budget - 5)
        self.result_path = work / f"{name}.result.json"
        self.log_path = work / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.result_path.unlink(missing_ok=True)
        self.proc = mp.Process(target=run_child, args=(name, ctx, self.result_path, self.log_path), name=name)
        self.proc.start()

    def wait(self, until: float) -> dict:
        """Wait until the check ends or ``until`` (absolute time); its result record."""
        timeout = max(0.0, min(self.t0 + self.budget, until) - time.time())
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.join()
            return {"status": "timeout", "seconds": round(time.time() - self.t0, 1), "budget_s": self.budget,
                    "error": f"stopped after {timeout:.0f} s", "log_tail": self._tail()}
        if not self.result_path.is_file():
            return {"status": "crashed", "seconds": round(time.time() - self.t0, 1), "budget_s": self.budget,
                    "error": f"process exited with {self.proc.exitcode} and no result", "log_tail": self._tail()}
        result = json.loads(self.result_path.read_text())
        result["budget_s"] = self.budget
        if result["status"] == "failed":
            result["log_tail"] = self._tail()
        return result

    def _tail(self, n: int = 2500) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.is_file() else ""


# ------------------------------------------------------------------------------------- the run


def run_all(ctx: dict, work: Path, budget: float, only: set[str] | None, budget_scale: float = 1.0) -> dict:
    mp = None  # the process server starts with the first check that runs
    start = time.time()
    end = start + budget
    results: dict[str, dict] = {}
    background: dict[str, Running] = {}
    plan = [p for p in PLAN if only is None or p[0] in only]
    for name, check_budget, in_background, waits_for in plan:
        check_budget *= budget_scale
        for dep in waits_for:
            if dep in background:
                results[dep] = background.pop(dep).wait(end)
                _print_line(dep, results[dep])
        ctx = dict(ctx, gsplat=results.get("gsplat_build", {}).get("status") == "ok")
        if mp is None and end - time.time() >= 10:
            mp = _processes()
        left = end - time.time()
        if left < 10:
            results[name] = {"status": "not_run", "error": "total budget spent", "budget_s": check_budget}
            _print_line(name, results[name])
            continue
        running = Running(mp, name, ctx, work, min(check_budget, left))
        if in_background:
            background[name] = running
            continue
        results[name] = running.wait(end)
        _print_line(name, results[name])
    for name, running in background.items():
        results[name] = running.wait(end)
        _print_line(name, results[name])
    return {name: results[name] for name, *_ in plan}


def _print_line(name: str, r: dict) -> None:
    print(f"[gpu_check] {name:14s} {r['status']:8s} {r.get('seconds', 0):6.1f} s  {headline(name, r)}", flush=True)


def headline(name: str, r: dict) -> str:
    """One line of the figures that matter for a check (or why it did not pass)."""
    if r["status"] != "ok":
        msg = r.get("error") or r.get("skipped") or ""
        return msg.splitlines()[0][:160] if msg else ""
    if name == "env":
        return f"{r.get('gpu', 'cpu')} torch {r['torch']} cuda {r['cuda']}"
    if name == "gsplat_build":
        return f"first render {r['first_render_s']} s (kernel build included)"
    if name.startswith("train_"):
        mem = "peak_cuda_mb" if r["fp32"]["peak_cuda_mb"] else "peak_rss_mb"
        return (f"samples/s fp32 {r['fp32']['samples_per_s']} bf16 {r['bf16']['samples_per_s']}; {mem} "
                f"{r['fp32'][mem]}/{r['bf16'][mem]}; first-window loss rel diff {r['first_window_loss_rel_diff']}")
    if name == "zero2":
        return (f"ZeRO-{r['zero_stage']} {r['mixed_precision']}: {r['samples_per_s']} samples/s, "
                f"peak {r['peak_cuda_mb']} MB")
    if name == "loader":
        return "; ".join(f"{x['task']} w{x['num_workers']}: idle {x['gpu_idle_fraction']:.1%}" for x in r["runs"]
                         if "gpu_idle_fraction" in x)
    if name == "render":
        return "; ".join(f"{c['gaussians'] // 1000}k@{c['size']}: {c[c['candidate'] + '_fps']}/"
                         f"{c[c['reference'] + '_fps']} fps" for c in r["cases"])
    if name == "rig":
        return "; ".join(f"{x['preset']} ({x['gaussians']} G): {x['steps_per_second']} steps/s" for x in r["runs"])
    if name == "animate":
        return f"RTF {r['rtf']} total {r['rtf_total']} ({r['frames']} frames at {r['size']}²)"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json", help="result JSON")
    ap.add_argument("--assets", default=None, help="folder made by --prepare (default: make one in --work)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder, removed at the end)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all checks; the run stops by itself")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, same code paths")
    ap.add_argument("--budget-scale", type=float, default=None,
                    help="multiply every check's budget (default 1; 3 for --dry-run: CPUs are slow and shared)")
    ap.add_argument("--only", default=None, help="comma-separated check names")
    ap.add_argument("--prepare", default=None, metavar="DIR", help="only write the assets to DIR and exit")
    ap.add_argument("--prepare-size", type=int, default=512, help="image size of the prepared assets")
    args = ap.parse_args(argv)
    if args.prepare:
        t0 = time.perf_counter()
        prepare_assets(Path(args.prepare), args.prepare_size)
        print(f"assets in {args.prepare} ({time.perf_counter() - t0:.1f} s)")
        return 0

    import shutil

    import torch

    sys.path.insert(0, str(HERE))
    from gpu_check_cases import SIZES, TOL

    t0 = time.time()
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {p[0] for p in PLAN}
    if unknown:
        print(f"gpu_check: unknown checks {sorted(unknown)}; known: {[p[0] for p in PLAN]}", file=sys.stderr)
        return 2
    scale = args.budget_scale or (3.0 if args.dry_run else 1.0)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        assets = Path(args.assets) if args.assets else prepare_assets(work / "assets", 32 if args.dry_run else 512)
        if not (assets / "shards" / "manifest.json").is_file():
            print(f"gpu_check: {assets}/shards/manifest.json missing; make it with --prepare {assets}", file=sys.stderr)
            return 2
        device = "cpu" if args.dry_run else "cuda"
        ctx = {"device": device, "dry_run": args.dry_run, "assets": str(assets.resolve()), "work": str(work.resolve())}
        budget = args.budget - (time.time() - t0)
        print(f"[gpu_check] {device}{' dry run' if args.dry_run else ''}: {len(only or PLAN)} checks, budget "
              f"{budget:.0f} s (per check: {', '.join(f'{n} {b * scale:.0f}' for n, b, *_ in PLAN)})", flush=True)
        results = run_all(ctx, work, budget, only, scale)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    counts = {s: sum(r["status"] == s for r in results.values()) for s in STATUSES}
    report = {"device": "cpu (dry run)" if args.dry_run else results.get("env", {}).get("gpu", "cuda"),
              "dry_run": args.dry_run, "budget_s": args.budget, "budget_scale": scale,
              "total_s": round(time.time() - t0, 1),
              "sizes": SIZES["dry" if args.dry_run else "cuda"], "tolerances": TOL, "counts": counts,
              "plan": [dict(zip(("name", "budget_s", "background", "waits_for"), p)) for p in PLAN],
              "checks": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"[gpu_check] {counts} in {report['total_s']} s -> {args.out}")
    return 0 if counts["ok"] + counts["skipped"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
