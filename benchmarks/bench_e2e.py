"""End-to-end real-time factor of ``animate`` for N seconds of audio, split by stage.

Needs a finished demo folder (``emodifftalk demo --out DIR``) for its rig and models:

    python benchmarks/bench_e2e.py --demo results/demo --seconds 10 --out e2e.json
    python benchmarks/bench_e2e.py --demo results/demo --text "a nervous smile"   # guided sampling

Stages: ``aus`` (audio → Speech-to-AU), ``diffusion`` (DDIM sampling of vertex offsets),
``render`` (deform + rasterize every frame), ``encode`` (H.264 + AAC mux of the rendered frames).
RTF = stage seconds / audio seconds. Prints a table and writes JSON; not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def time_stages(models, rig, feature_line, clip: np.ndarray, sr: int, cfg, seconds: float, *, text: str | None = None,
                camera: str = "1", size: int = 128, encode: bool = True) -> tuple[dict[str, float], int]:
    """Seconds per stage of animating ``seconds`` of ``clip`` (looped real speech) with loaded models
    and rig, on whatever device they are on; returns (stage seconds, frames). Also used by gpu_check."""
    from emodifftalk.pipeline.animate import (camera_path, edit_aus, guidance_reference, motion_offsets, render_frames,
                                              speech_aus)
    from emodifftalk.render.video import write_video

    n = int(seconds * sr)
    audio = np.tile(clip, int(np.ceil(n / clip.size)))[:n].astype(np.float32)
    fps = models.frame_rate(cfg)
    sync = torch.cuda.synchronize if rig.means.is_cuda else (lambda: None)
    t = {}
    t0 = time.perf_counter()
    speech = speech_aus(models, audio, fps)
    t["aus"] = time.perf_counter() - t0
    aus, _ = edit_aus(models, speech, fps, text, [], cfg)
    t0 = time.perf_counter()  # guided (two network calls per step) only where the prompt changed the codes
    offsets = motion_offsets(models, rig.canonical_verts, aus, audio, cfg,
                             reference_aus=guidance_reference(cfg, speech))
    sync()
    t["diffusion"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    frames = list(render_frames(rig, feature_line, offsets, aus, camera_path(rig, camera, aus.shape[0], size), cfg,
                                progress=False))
    t["render"] = time.perf_counter() - t0
    if encode:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_video(Path(tmp) / "v.mp4", frames, fps, audio=audio, sample_rate=sr)
            t["encode"] = time.perf_counter() - t0
    return t, len(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="folder written by `emodifftalk demo --out`")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--text", default=None, help="text prompt (needs the demo's text2au model): the guided path")
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from emodifftalk.config import load_config
    from emodifftalk.data.audio import read_audio
    from emodifftalk.pipeline.animate import load_models
    from emodifftalk.rig.feature_line_fit import load_feature_line
    from emodifftalk.rig.gaussians import GaussianRig

    demo = Path(args.demo)
    runs, rigs = demo / "work" / "runs", demo / "work" / "rigs"
    cfg = load_config(demo / "config.json")
    models = load_models(runs / "s2au" / "export", runs / "motion" / "export",
                         runs / "text2au" / "export" if args.text else None)
    rig_dir = next(p for p in sorted(rigs.iterdir()) if (p / "rig.json").is_file())
    rig = GaussianRig.load(rig_dir)
    feature_line = load_feature_line(rig_dir, rig)
    clip, sr = read_audio(demo / "results" / "input.wav")
    t, n_frames = time_stages(models, rig, feature_line, clip, sr, cfg, args.seconds, text=args.text)
    total = sum(t.values())
    report = {"seconds_audio": args.seconds, "frames": n_frames, "device": "cpu", "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "n_gaussians": rig.n_points,
              "ddim_steps": cfg.diffusion.ddim_steps, "stage_seconds": {k: round(v, 3) for k, v in t.items()},
              "rtf": {k: round(v / args.seconds, 4) for k, v in t.items()}, "rtf_total": round(total / args.seconds, 4)}
    print(f"{args.seconds:.0f} s of audio, {n_frames} frames, {rig.n_points} Gaussians, DDIM-{cfg.diffusion.ddim_steps}")
    for k, v in t.items():
        print(f"  {k:10s} {v:7.2f} s   RTF {v / args.seconds:.3f}")
    print(f"  {'total':10s} {total:7.2f} s   RTF {total / args.seconds:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
