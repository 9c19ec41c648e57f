"""The checks of ``gpu_check.py``: each is ``check_<name>(ctx) -> dict`` and raises on failure.

``ctx`` (a :class:`Ctx`) says the device, whether this is the CPU dry run, where the prepared assets
(packed shards) and this run's work folder are, and the check's soft deadline: loops that time
things stop early when it passes, so the result still comes back inside the hard budget.
Sizes: ``SIZES["cuda"]`` on a GPU, ``SIZES["dry"]`` for the CPU dry run (same code, tiny).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PARAMS = ("means", "quats", "scales", "opacities", "colors")

# Stated tolerances, candidate vs reference renderer on the same scene (float32):
#  images/alpha: max |Δ| (one 8-bit level is 3.9e-3) and mean |Δ|;
#  depth: max |Δ| / depth where alpha > 0.5 (elsewhere depth = Σwz/α is ill-conditioned);
#  gradients of means/quats/scales/opacities/colors: ‖Δg‖/‖g‖ and cosine(g_a, g_b)
#  (float32 sums in different orders over up to 200k Gaussians: elementwise checks are noise).
TOL = {"rgb_max": 4e-3, "rgb_mean": 1e-4, "alpha_max": 4e-3, "alpha_mean": 1e-4, "depth_rel_max": 1e-3,
       "grad_rel_l2": 2e-2, "grad_cos": 0.999,
       "loss_rel_bf16": 0.05}  # |mean loss of the first log window, bf16 vs fp32| / fp32

SIZES = {
    "cuda": {"render_sizes": (512, 1024), "render_gaussians": (50_000, 200_000), "render_runs": 5,
             "rig_steps": 100, "train_steps": 40, "log_every": 5, "preset": "paper", "batch": None,
             "zero2_steps": 30, "loader_steps": 40, "loader_workers": (0, 4), "animate_seconds": 10.0,
             "animate_size": 512},
    "dry": {"render_sizes": (40,), "render_gaussians": (400,), "render_runs": 2,
            "rig_steps": 2, "train_steps": 4, "log_every": 2, "preset": "tiny", "batch": 2,
            "zero2_steps": 2, "loader_steps": 4, "loader_workers": (0,), "animate_seconds": 1.0,
            "animate_size": 32},
}


@dataclass
class Ctx:
    device: str  # "cuda" | "cpu"
    dry_run: bool
    assets: Path  # prepared by gpu_check.py --prepare: shards/
    work: Path  # this run's scratch folder (checks leave outputs for later checks here)
    deadline: float  # time.time() by which the check should have returned
    gsplat: bool = False  # gsplat_build passed: later checks may use gsplat (else its lock could hang them)

    @property
    def sizes(self) -> dict:
        return SIZES["dry" if self.dry_run else "cuda"]

    def left(self) -> float:
        return self.deadline - time.time()

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def _cfg(ctx: Ctx, *overrides: str):
    """The preset of this run's size class, made to run offline on the prepared shards."""
    from emodifftalk.config import build_config

    s = ctx.sizes
    base = [f"data.root={ctx.assets / 'shards'}", "audio.frontend=mel", "text2au.encoder=hashing",
            "train.val_every=0", f"train.log_every={s['log_every']}", "train.warmup_steps=2", "data.num_workers=0",
            "rig.num_gpus_per_task=0"]
    if s["batch"]:
        base.append(f"data.batch_size={s['batch']}")
    return build_config(s["preset"], [*base, *overrides])


# ---------------------------------------------------------------------------------------------- env


def check_env(ctx: Ctx) -> dict:
    """What this machine has: torch/CUDA, the GPU, and which optional packages import."""
    import importlib.metadata
    import importlib.util
    import platform

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    bf16_supported=torch.cuda.is_bf16_supported())
    elif not ctx.dry_run:
        raise RuntimeError("no CUDA device (run with --dry-run on a CPU machine)")
    mods = {}
    for name, dist in (("gsplat", "gsplat"), ("webdataset", "webdataset"), ("deepspeed", "deepspeed"),
                       ("accelerate", "accelerate"), ("ray", "ray"), ("open_clip", "open_clip_torch"),
                       ("sentence_transformers", "sentence-transformers"), ("imageio_ffmpeg", "imageio-ffmpeg"),
                       ("scipy", "scipy"), ("matplotlib", "matplotlib")):
        # metadata only: importing ray or open_clip costs seconds; gsplat_build exercises gsplat itself
        found = importlib.util.find_spec(name) is not None
        mods[name] = importlib.metadata.version(dist) if found else "missing"
    info["packages"] = mods
    info["nvcc"] = shutil.which("nvcc")
    info["ffmpeg"] = shutil.which("ffmpeg")
    return info


# ------------------------------------------------------------------------------------ gsplat build


def check_gsplat_build(ctx: Ctx) -> dict:
    """Import gsplat and render once, so its CUDA kernels are compiled (JIT, minutes) and cached in
    TORCH_EXTENSIONS_DIR for the later checks. Runs in the background beside the training checks."""
    if ctx.device != "cuda":
        return {"skipped": "no CUDA: gsplat is CUDA-only (the dry run renders with the torch backends)"}
    from bench_render import head_scene

    from emodifftalk.render import rasterize

    ext_dir = os.environ.get("TORCH_EXTENSIONS_DIR")
    stale = [p for p in Path(ext_dir).glob("*/*/lock")] if ext_dir else []
    for lock in stale:  # left by a build that was killed: torch would wait on it for ever
        lock.unlink()
    t0 = time.perf_counter()
    scene = head_scene(1000, 64, "cuda")
    out = rasterize(**scene, width=64, height=64, backend="gsplat")
    torch.cuda.synchronize()
    return {"first_render_s": round(time.perf_counter() - t0, 1), "alpha_mean": float(out.alpha.mean()),
            "torch_extensions_dir": ext_dir, "stale_locks_removed": len(stale)}


# ----------------------------------------------------------------------------------- render parity


def _render_fn(backend: str, scene: dict, size: int):
    from bench_render import baseline_rasterize

    from emodifftalk.render import rasterize

    def fn():
        if backend == "baseline":  # independent pure-torch design: the dry run's reference
            return baseline_rasterize(**scene, width=size, height=size)
        out = rasterize(**scene, width=size, height=size, backend=backend)
        return out.rgb, out.alpha, out.depth
    return fn


def _loss_weights(shape, device, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(shape[:-1] + (c,), generator=gen).to(device) for c in (3, 1, 1))


def compare_renders(ref: tuple, cand: tuple, grads_ref: list, grads_cand: list) -> dict:
    """Differences and pass flags (``TOL``) between two renders of one scene and their gradients."""
    (rgb_a, alpha_a, depth_a), (rgb_b, alpha_b, depth_b) = cand, ref
    d_rgb, d_alpha = (rgb_a - rgb_b).abs(), (alpha_a - alpha_b).abs()
    solid = (alpha_b > 0.5) & (alpha_a > 0.5)
    depth_rel = ((depth_a - depth_b).abs() / depth_b.abs().clamp(min=1e-6))[solid]
    m = {"rgb_max": float(d_rgb.max()), "rgb_mean": float(d_rgb.mean()), "alpha_max": float(d_alpha.max()),
         "alpha_mean": float(d_alpha.mean()), "depth_rel_max": float(depth_rel.max()) if depth_rel.numel() else 0.0,
         "coverage": round(float(alpha_b.mean()), 3)}
    ok = all(m[k] <= TOL[k] for k in ("rgb_max", "rgb_mean", "alpha_max", "alpha_mean", "depth_rel_max"))
    for name, ga, gb in zip(PARAMS, grads_cand, grads_ref):
        ga, gb = ga.double().flatten(), gb.double().flatten()
        rel = float((ga - gb).norm() / gb.norm().clamp(min=1e-30))
        cos = float(torch.nn.functional.cosine_similarity(ga, gb, dim=0))
        m[f"grad_{name}_rel_l2"], m[f"grad_{name}_cos"] = rel, cos
        ok &= rel <= TOL["grad_rel_l2"] and cos >= TOL["grad_cos"]
    m["within_tolerance"] = bool(ok)
    return m


def _render_case(ctx: Ctx, n: int, size: int, backends: tuple[str, str]) -> dict:
    from bench_render import head_scene

    scene = head_scene(n, size, ctx.device, seed=n + size)
    for k in PARAMS:
        scene[k].requires_grad_(True)
    outs, grads, fps = {}, {}, {}
    for backend in backends:
        fn = _render_fn(backend, scene, size)
        rgb, alpha, depth = fn()
        w_rgb, w_alpha, w_depth = _loss_weights(rgb.shape, ctx.device, seed=1)
        loss = (rgb * w_rgb).sum() + (alpha * w_alpha).sum() + (depth * w_depth * (alpha.detach() > 0.5)).sum()
        loss.backward()
        outs[backend] = tuple(t.detach() for t in (rgb, alpha, depth))
        grads[backend] = [scene[k].grad.detach().clone() for k in PARAMS]
        for k in PARAMS:
            scene[k].grad = None
        fps[backend] = _fps(ctx, fn, scene)
    ref, cand = backends[1], backends[0]
    row = {"gaussians": n, "size": size, "candidate": cand, "reference": ref,
           **compare_renders(outs[ref], outs[cand], grads[ref], grads[cand])}
    for b in backends:
        row[f"{b}_fps"], row[f"{b}_fwd_bwd_per_s"] = fps[b]
    return row


def _fps(ctx: Ctx, fn, scene: dict) -> tuple[float, float]:
    """Median forward-only frames/s and forward+backward iterations/s, within the deadline."""
    def fwd():
        with torch.no_grad():
            fn()

    def fwd_bwd():
        rgb, _, depth = fn()
        (rgb.sum() + depth.mean()).backward()
        for k in PARAMS:
            scene[k].grad = None

    rates = []
    for step in (fwd, fwd_bwd):
        step()  # warm-up
        times = []
        for _ in range(ctx.sizes["render_runs"]):
            if times and ctx.left() < 20:
                break
            ctx.sync()
            t0 = time.perf_counter()
            step()
            ctx.sync()
            times.append(time.perf_counter() - t0)
        rates.append(round(1.0 / statistics.median(times), 2))
    return rates[0], rates[1]


def check_render(ctx: Ctx) -> dict:
    """gsplat vs the pure-torch renderer (CUDA), or the tile renderer vs the straightforward
    baseline design (dry run): images, alpha, depth, gradients, FPS."""
    if ctx.device == "cuda" and not ctx.gsplat:
        return {"skipped": "gsplat_build did not pass (see its record)"}
    backends = ("gsplat", "torch") if ctx.device == "cuda" else ("torch", "baseline")
    rows, errors = [], []
    for n in ctx.sizes["render_gaussians"]:
        for size in ctx.sizes["render_sizes"]:
            if ctx.left() < 30 and rows:
                errors.append(f"{n}@{size}: not run (check budget spent)")
                continue
            try:
                rows.append(_render_case(ctx, n, size, backends))
            except Exception as e:  # noqa: BLE001 - one case (e.g. out of memory) does not stop the others
                errors.append(f"{n}@{size}: {type(e).__name__}: {e}"[:300])
            if ctx.device == "cuda":
                torch.cuda.empty_cache()
    if not rows:
        raise RuntimeError(f"no render case ran: {errors}")
    bad = [f"{r['gaussians']}@{r['size']}" for r in rows if not r["within_tolerance"]]
    result = {"tolerances": {k: TOL[k] for k in TOL if not k.startswith("loss")}, "cases": rows, "errors": errors}
    if bad or errors:
        result["error"] = f"outside tolerance: {bad}; errors: {errors}"
    return result


# ------------------------------------------------------------------------------------------- rig


def check_rig(ctx: Ctx) -> dict:
    """Rig reconstruction steps/s on this device: the run's preset and the paper's rig sizes."""
    from emodifftalk.config import build_config
    from emodifftalk.distributed.ray_jobs import list_identities, load_identity
    from emodifftalk.rig.reconstruct import reconstruct_identity

    shards = ctx.assets / "shards"
    identity = list_identities(shards)[0]
    frames, template = load_identity(shards, identity)
    out = {"identity": identity, "image_size": int(frames[0]["cameras"][0]["width"]), "runs": []}
    variants = [("tiny", []), ("paper", [] if not ctx.dry_run else ["rig.n_free_points=200"])]
    for preset, extra in variants:
        cfg = build_config(preset, [f"rig.steps={ctx.sizes['rig_steps']}", "rig.log_images_every=0",
                                    f"render.backend={_backend(ctx)}", *extra])
        rig_dir = ctx.work / "rigs" / preset / identity
        res = reconstruct_identity(frames, template, cfg, rig_dir, overwrite=True, progress=False, device=ctx.device)
        out["runs"].append({
            "preset": preset, "n_free_points": cfg.rig.n_free_points, "gaussians": res.n_bound + res.n_free,
            "steps": res.steps, "steps_per_second": round(res.steps_per_second, 2),
            "seconds": round(res.seconds, 1), "psnr_holdout": res.metrics.get("psnr_holdout")})
    out["rig_dir"] = str(ctx.work / "rigs" / "tiny" / identity)
    out["render_backend"] = _backend(ctx)
    return out


def _backend(ctx: Ctx) -> str:
    return "gsplat" if ctx.gsplat else "torch"


# ------------------------------------------------------------------------------------- training


class TimedBatches:
    """A task whose batch iterator records how long the loop waits for each batch (the GPU is idle
    then: the loop synchronises on the loss every step, so no work is queued while it waits)."""

    def __init__(self, task):
        self._task = task
        self.wait_s = 0.0
        self.batches = 0

    def __getattr__(self, name):
        return getattr(self._task, name)

    def train_batches(self, *args, **kwargs):
        inner = iter(self._task.train_batches(*args, **kwargs))
        while True:
            t0 = time.perf_counter()
            batch = next(inner)
            self.wait_s += time.perf_counter() - t0
            self.batches += 1
            yield batch


def _make_task(name: str, cfg, out: Path):
    from emodifftalk.train.task import get_task

    if name == "text2au":
        from emodifftalk.train.tasks.text2au import Text2AUTask

        return Text2AUTask(cfg, cache_dir=out / "features")
    return get_task(name, cfg)


def train_run(ctx: Ctx, task_name: str, precision: str, out: Path, steps: int, *overrides: str) -> dict:
    """``run_training`` of one task for ``steps`` steps; loss, samples/s, peak memory, data wait."""
    from emodifftalk.train.loop import run_training

    cfg = _cfg(ctx, f"train.max_steps={steps}", f"train.ckpt_every={steps}", f"train.mixed_precision={precision}",
               *overrides)
    if out.exists():
        shutil.rmtree(out)
    task = TimedBatches(_make_task(task_name, cfg, out))
    if task_name == "text2au":
        task.prepare()
    if ctx.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_training(task, out)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in records if "loss" in r and "samples_per_s" in r]
    rank = json.loads((out / "ranks" / "rank0.json").read_text())
    losses = [r["loss"] for r in logs]
    rates = [r["samples_per_s"] for r in logs[1:]] or [r["samples_per_s"] for r in logs]  # first window: warm-up
    return {"precision": precision, "steps": rank["steps"], "batch_size": cfg.data.batch_size, "losses": losses,
            "finite": all(math.isfinite(v) for v in losses), "samples_per_s": round(statistics.median(rates), 1),
            "peak_cuda_mb": round(rank.get("peak_cuda_mb", 0.0), 1), "peak_rss_mb": round(rank["peak_rss_mb"], 1),
            "train_seconds": round(rank["train_seconds"], 2), "wall_s": round(wall, 1),
            "data_wait_fraction": round(task.wait_s / max(rank["train_seconds"], 1e-9), 4),
            "export": str(out / "export")}


def _check_task(ctx: Ctx, name: str) -> dict:
    runs = {p: train_run(ctx, name, p, ctx.work / f"train_{name}" / p, ctx.sizes["train_steps"])
            for p in ("no", "bf16")}
    fp32, bf16 = runs["no"], runs["bf16"]
    rel = abs(bf16["losses"][0] - fp32["losses"][0]) / max(abs(fp32["losses"][0]), 1e-12)
    result = {"fp32": fp32, "bf16": bf16, "first_window_loss_rel_diff": round(rel, 4),
              "bf16_is_fp32_here": ctx.device != "cuda"}  # the loop trains in fp32 on CPU
    problems = [p for p, r in runs.items() if not r["finite"]]
    if problems:
        result["error"] = f"non-finite losses with mixed_precision={problems}"
    elif rel > TOL["loss_rel_bf16"]:
        result["error"] = f"bf16 first-window loss differs from fp32 by {rel:.3f} > {TOL['loss_rel_bf16']}"
    return result


def check_train_s2au(ctx: Ctx) -> dict:
    return _check_task(ctx, "s2au")


def check_train_motion(ctx: Ctx) -> dict:
    return _check_task(ctx, "motion")


def check_train_text2au(ctx: Ctx) -> dict:
    return _check_task(ctx, "text2au")


def check_zero2(ctx: Ctx) -> dict:
    """Speech-to-AU through ``accelerate launch --use_deepspeed --zero_stage 2`` on one process."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = ctx.work / "zero2"
    shutil.rmtree(out, ignore_errors=True)
    steps = ctx.sizes["zero2_steps"]
    mixed = "bf16" if ctx.device == "cuda" else "no"
    s = ctx.sizes
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--zero_stage", "2",
           "--num_machines", "1", "--num_processes", "1", "--mixed_precision", mixed, "--dynamo_backend", "no",
           "--main_process_port", str(port), "-m", "emodifftalk.cli", "train", "s2au", "--config", s["preset"],
           "--data", str(ctx.assets / "shards"), "--out", str(out), f"train.max_steps={steps}",
           f"train.ckpt_every={steps}", "train.val_every=0", f"train.log_every={s['log_every']}",
           "audio.frontend=mel", "text2au.encoder=hashing", f"train.mixed_precision={mixed}",
           *([f"data.batch_size={s['batch']}"] if s["batch"] else [])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=max(10.0, ctx.left() - 5))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"accelerate launch failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-2500:]}")
    run = json.loads((out / "run.json").read_text())["runs"][-1]
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in logs if "loss" in r]
    rank = json.loads((out / "ranks" / "rank0.json").read_text())
    result = {"zero_stage": run["zero_stage"], "distributed_type": run["distributed_type"],
              "mixed_precision": run["mixed_precision"], "losses": [r["loss"] for r in logs],
              "samples_per_s": round(logs[-1].get("samples_per_s", 0.0), 1), "peak_cuda_mb": rank.get("peak_cuda_mb"),
              "wall_s": round(wall, 1)}
    if run["zero_stage"] != 2 or not all(math.isfinite(r["loss"]) for r in logs):
        result["error"] = "not ZeRO-2, or non-finite losses"
    return result


def check_loader(ctx: Ctx) -> dict:
    """Does the data loader keep the device busy? Fraction of training time spent waiting for the
    next batch (GPU idle) for Speech-to-AU and motion, per ``data.num_workers``."""
    rows, last = [], 0.0
    for name in ("s2au", "motion"):
        for workers in ctx.sizes["loader_workers"]:
            if rows and ctx.left() < 2 * last:
                rows.append({"task": name, "num_workers": workers, "skipped": "check budget spent"})
                continue
            t0 = time.perf_counter()
            r = train_run(ctx, name, "bf16" if ctx.device == "cuda" else "no", ctx.work / f"loader_{name}_{workers}",
                          ctx.sizes["loader_steps"], f"data.num_workers={workers}")
            rows.append({"task": name, "num_workers": workers, "gpu_idle_fraction": r["data_wait_fraction"],
                         "samples_per_s": r["samples_per_s"], "batch_size": r["batch_size"]})
            last = time.perf_counter() - t0
    return {"runs": rows, "note": "idle = time the loop waits for the next batch / training time"}


# ------------------------------------------------------------------------------------------ animate


def check_animate(ctx: Ctx) -> dict:
    """``animate``'s stages on this device for N s of audio at the check's size: real-time factors."""
    from bench_e2e import time_stages

    from emodifftalk.data.shards import iter_dataset
    from emodifftalk.pipeline.animate import load_models
    from emodifftalk.rig.gaussians import GaussianRig

    rig_dir = ctx.work / "rigs" / "tiny"
    rigs = sorted(p for p in rig_dir.glob("*") if (p / "rig.json").is_file())
    exports = {n: ctx.work / f"train_{n}" / "no" / "export" for n in ("s2au", "motion")}
    missing = [str(p) for p in [*exports.values()] if not (p / "model.safetensors").is_file()] + (
        [] if rigs else [str(rig_dir)])
    if missing:
        return {"skipped": f"needs the outputs of the train/rig checks: missing {missing}"}
    cfg = _cfg(ctx, f"infer.image_size={ctx.sizes['animate_size']}", f"render.backend={_backend(ctx)}")
    models = load_models(exports["s2au"], exports["motion"], device=ctx.device)
    rig = GaussianRig.load(rigs[0], device=ctx.device)
    clip = next(iter(iter_dataset(ctx.assets / "shards", "seq", "train")))
    cfg.diffusion.fps = float(clip["meta"]["fps"])
    encode = _has("imageio_ffmpeg")  # write_video's encoder
    seconds = ctx.sizes["animate_seconds"]
    t, frames = time_stages(models, rig, None, clip["audio"], int(clip["sample_rate"]), cfg, seconds,
                            camera="orbit", size=ctx.sizes["animate_size"], encode=encode)
    total = sum(t.values())
    return {"seconds_audio": seconds, "frames": frames, "size": ctx.sizes["animate_size"],
            "render_backend": cfg.render.backend,
            "gaussians": rig.n_points, "ddim_steps": cfg.diffusion.ddim_steps,
            "stage_seconds": {k: round(v, 3) for k, v in t.items()},
            "rtf": {k: round(v / seconds, 4) for k, v in t.items()}, "rtf_total": round(total / seconds, 4),
            **({} if encode else {"encode": "skipped: no ffmpeg on this machine (imageio-ffmpeg is 66 MB)"})}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}
