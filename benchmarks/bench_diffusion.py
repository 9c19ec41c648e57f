"""Motion diffusion sampling speed on CPU: real-time factor of DDIM-10/25 and DDPM-full.

Random weights, two sizes:
  tiny : d_model 128, 3 layers, rank 64, mel features (80-d), V ≈ 1600, N = 200 train steps
  paper: d_model 512, 6 layers, 8 heads, rank 64, HuBERT-sized features (768-d), V = 5023, N = 1000
Clip: 250 frames at 25 fps (10 s of audio, 500 feature frames at 50 Hz).

Reported per size:
  * step_ms_window: one denoiser call on one generation window (diffusion.window_frames frames);
  * step_ms_250: one denoiser call over all 250 frames, next to the PERFORMANCE.md reference
    architecture measured in the same run (same transformer, Linear(V·3 → d) in and
    Linear(d → V·3) out, FaceFormer style) -> ``reference_step_ms_250``;
  * rtf_<sampler>: sample_motion wall time / 10 s, the full windowed long-sequence path
    (windows of 100 frames with 10 context frames -> 3 windows for 250 frames);
    rtf_ddim<k>_one_window: the same with one 250-frame window, next to
    reference_rtf_ddim<k>_one_window = k x reference step time / 10 s.
    DDPM-full of the paper size is extrapolated from measured steps unless --full.

Usage: python benchmarks/bench_diffusion.py [--sizes tiny,paper] [--threads N] [--full] [--out FILE]
Every figure is a median (step timings interleaved with the reference). Benchmarks are not tests:
nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from emodifftalk.config import build_config
from emodifftalk.diffusion import NoiseSchedule
from emodifftalk.motion.denoiser import Denoiser, sinusoidal_embedding
from emodifftalk.diffusion.windowed import sample_motion, window_starts

FPS, SECONDS = 25.0, 10.0
N_FRAMES = int(FPS * SECONDS)

SIZES = {
    "tiny": {"preset": "tiny", "n_verts": 1600, "overrides": ["diffusion.vertex_embed_rank=64"]},
    # HuBERT-sized (768-d) features without HuBERT weights: a 768-bin mel front end
    "paper": {"preset": "paper", "n_verts": 5023, "overrides": ["audio.frontend=mel", "audio.n_mels=768"]},
}


class ReferenceDenoiser(nn.Module):
    """PERFORMANCE.md's reference: transformer over frames with full Linear(V·3) in/out layers."""

    def __init__(self, n_verts: int, audio_dim: int, d_model: int, n_heads: int, n_layers: int):
        super().__init__()
        self.inp = nn.Linear(n_verts * 3, d_model)
        self.cond = nn.Linear(17 + 9 * audio_dim, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, 0.0, "gelu", batch_first=True,
                                           norm_first=True)
        self.tf = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.out = nn.Linear(d_model, n_verts * 3)
        self.d = d_model

    def forward(self, x, aus, audio_win, n):
        b, t, v, _ = x.shape
        h = self.inp(x.reshape(b, t, v * 3)) + self.cond(torch.cat([aus, audio_win], -1))
        h = h + sinusoidal_embedding(n, self.d)[:, None]
        return self.out(self.tf(h)).view(b, t, v, 3)


def median_ms(*fns, reps: int, warmup: int = 1) -> list[float]:
    """Median wall time (ms) of each function; calls are interleaved (a, b, a, b, ...) so a busy
    spell of a shared machine hits every candidate alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1000)
    return [statistics.median(t) for t in times]


@torch.no_grad()
def bench_size(name: str, spec: dict, reps: int, rtf_reps: int, full: bool) -> dict:
    cfg = build_config(spec["preset"], spec["overrides"])
    d = cfg.diffusion
    torch.manual_seed(0)
    model = Denoiser.from_config(cfg, offset_scale=0.002).eval()
    v = spec["n_verts"]
    template = torch.randn(v, 3) * 0.08
    aus = torch.rand(N_FRAMES, 17)
    feats = torch.randn(int(SECONDS * cfg.audio.feature_rate), cfg.audio.feature_dim)
    schedule = NoiseSchedule.from_config(d)
    code = model.encode_template(template[None])
    n_params = sum(p.numel() for p in model.parameters())

    def step(frames):
        x = torch.randn(1, frames, v, 3)
        return lambda: model(x, None, aus[None, :frames], feats[None], torch.tensor([500 % d.num_train_steps]),
                             template_code=code)

    res = {"preset": spec["preset"], "n_verts": v, "d_model": d.d_model, "n_layers": d.n_layers,
           "rank": d.vertex_embed_rank, "audio_dim": cfg.audio.feature_dim, "params_M": n_params / 1e6,
           "num_train_steps": d.num_train_steps, "window_frames": d.window_frames,
           "context_frames": d.context_frames,
           "windows_for_250_frames": len(window_starts(N_FRAMES, d.window_frames, d.context_frames))}
    res["template_encode_ms"], = median_ms(lambda: model.encode_template(template[None]), reps=reps)
    res["step_ms_window"], = median_ms(step(d.window_frames), reps=reps)

    ref = ReferenceDenoiser(v, cfg.audio.feature_dim, d.d_model, d.n_heads, d.n_layers).eval()
    xr, aw = torch.randn(1, N_FRAMES, v, 3), torch.randn(1, N_FRAMES, 9 * cfg.audio.feature_dim)
    res["reference_params_M"] = sum(p.numel() for p in ref.parameters()) / 1e6
    res["step_ms_250"], res["reference_step_ms_250"] = median_ms(
        step(N_FRAMES), lambda: ref(xr, aus[None], aw, torch.tensor([5])), reps=reps)
    res["step_speedup_vs_reference"] = res["reference_step_ms_250"] / res["step_ms_250"]

    def rtf(sampler, steps=None, window=None):
        def go():
            sample_motion(model, schedule, template, aus, feats, cfg, sampler=sampler, steps=steps,
                          generator=torch.Generator().manual_seed(0), window_frames=window)
        return median_ms(go, reps=rtf_reps, warmup=0)[0] / 1000 / SECONDS

    for k in (10, 25):
        res[f"rtf_ddim{k}"] = rtf("ddim", k)
        # the whole clip as one window (what the reference figure assumes) and the reference
        # architecture's DDIM cost from its measured step time
        res[f"rtf_ddim{k}_one_window"] = rtf("ddim", k, window=N_FRAMES)
        res[f"reference_rtf_ddim{k}_one_window"] = k * res["reference_step_ms_250"] / 1000 / SECONDS
    if full or name == "tiny":
        res["rtf_ddpm_full"] = rtf("ddpm")
        res["rtf_ddpm_full_extrapolated"] = False
    else:
        # ddim-25 time is ~25 denoiser calls per window: scale to N calls per window
        res["rtf_ddpm_full"] = res["rtf_ddim25"] * d.num_train_steps / 25
        res["rtf_ddpm_full_extrapolated"] = True
    res["rtf_regression"] = rtf("regression")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,paper")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine a second OpenMP thread "
                         "stalls whenever another process runs; 0 = torch default)")
    ap.add_argument("--reps", type=int, default=7, help="repetitions of each step timing (median)")
    ap.add_argument("--rtf-reps", type=int, default=3, help="repetitions of each whole-clip sampling (median)")
    ap.add_argument("--full", action="store_true", help="run DDPM-full for the paper size too (slow)")
    ap.add_argument("--out", default="results/bench_diffusion.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "torch": torch.__version__, "python": platform.python_version(),
                       "malloc_env": {k: os.environ[k] for k in os.environ if k.startswith("MALLOC_")}},
           "clip": {"frames": N_FRAMES, "fps": FPS, "seconds": SECONDS}, "sizes": {}}
    for name in args.sizes.split(","):
        r = bench_size(name, SIZES[name], args.reps, args.rtf_reps, args.full)
        out["sizes"][name] = r
        print(f"[{name}] V={r['n_verts']} d={r['d_model']} L={r['n_layers']} params={r['params_M']:.2f}M | "
              f"step(window {r['window_frames']})={r['step_ms_window']:.1f} ms  step(250)={r['step_ms_250']:.1f} ms "
              f"vs reference {r['reference_step_ms_250']:.1f} ms (x{r['step_speedup_vs_reference']:.2f}) | "
              f"RTF ddim10={r['rtf_ddim10']:.3f} ddim25={r['rtf_ddim25']:.3f} "
              f"(one 250-frame window: {r['rtf_ddim25_one_window']:.3f}, reference {r['reference_rtf_ddim25_one_window']:.3f}) "
              f"ddpm-full={r['rtf_ddpm_full']:.2f}{' (extrapolated)' if r['rtf_ddpm_full_extrapolated'] else ''} "
              f"regression={r['rtf_regression']:.4f}", flush=True)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
