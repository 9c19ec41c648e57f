#!/usr/bin/env python
"""RenderMe-360 ingest throughput, 1 vs 2 Ray workers, and a paper estimate for the full data set
(not a test).

1. Generate ``--clips`` Part-2-style single ``.smc`` files (``--cameras`` x ``--frames`` JPEG
   frames at ``--src-size``², 48 kHz stereo audio, calibration, masks) with textured images so
   JPEG sizes are realistic-ish.
2. Ingest them with ``data.frames_stride=1`` (every frame of every camera is decoded, composited
   with its matte, resized to ``--out-size`` and re-encoded) in this process (``plain``) and on a
   local Ray with 1 and 2 workers. Reports images/s (= decoded camera frames/s), MB/s of encoded
   input read from the .smc files and MB/s of shards written. Ray wall times include Ray's
   start-up (~10-30 s on a loaded machine); ``task_s`` is the sum of the tasks' own seconds.
3. Time the real-resolution path once: a 2448x2048 JPEG (the RenderMe-360 resolution; content
   like the fixtures) decoded with draft mode, cropped, resized to 512 and re-encoded.
4. Paper estimate for the full RenderMe-360 (Part 2: 500 identities, ~8.3 TB; Part 1: 21
   identities, 5.8 TB; sizes from ``docs/formats/renderme360-smc.md``): images from
   bytes / ``--jpeg-kb`` (the notes' 15-60 GB per 60-camera x ~2.5k-frame speech file gives
   100-400 KB per image), wall time on N workers = max(CPU work / N, bytes read / min(N x
   ``--read-mbps``, ``--storage-gbps``)), and shard counts, for frames_stride 0 (rig: first frame
   per clip), 30 (one frame per second) and 1 (every frame).

Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RM360 = {  # from docs/formats/renderme360-smc.md
    # (performances, cameras with frames) per identity; Part 2 keeps the frontal view only for
    # s1, s2, s4-s6, 38 views for s3, all views (key frames only) for expressions and hair
    "part2": {"identities": 500, "bytes": 8.3e12, "perfs": [(12, 60), (1, 38), (5, 1), (3, 60)]},
    "part1": {"identities": 21, "bytes": 5.8e12, "perfs": [(21, 60)]},
    "resolution": (2048, 2448),
    "speech_perfs": 6,
}


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth, face-sized blob over a gradient with mild noise: JPEG sizes like camera frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.3 + 0.4 * xx, 0.35 + 0.3 * yy, 0.5 + 0.2 * np.sin(6 * xx + 3 * yy)], -1)
    blob = np.exp(-(((xx - 0.5) / 0.18) ** 2 + ((yy - 0.5) / 0.24) ** 2))
    img = img * (1 - blob[..., None]) + blob[..., None] * np.array([0.85, 0.62, 0.5])
    img += rng.normal(scale=0.03, size=img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def jpeg(img: np.ndarray, q: int = 90) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=q)
    return np.frombuffer(buf.getvalue(), np.uint8)


def png(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), np.uint8)


def write_bench_smc(path: Path, actor: str, n_cams: int, n_frames: int, size: int) -> int:
    """One Part-2-style file (raw + labels in one); returns the encoded image bytes written."""
    import h5py

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))
    import smc_fixtures as fx

    frames = [jpeg(textured(size, size, s)) for s in range(8)]  # 8 distinct frames, cycled
    yy, xx = np.mgrid[0:size, 0:size]
    mask = png((((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < (0.35 * size) ** 2).astype(np.uint8) * 255)
    nbytes = 0
    with h5py.File(path, "w") as f:
        f.attrs.update({"actor_id": actor, "performance_part": "s1_all"})
        cam = f.create_group("Camera")
        cam.attrs.update({"num_device": n_cams, "num_frame": n_frames, "resolution": [size, size]})
        calib = f.create_group("Calibration")
        for c in range(n_cams):
            cid = f"{c:02d}"
            g = cam.create_group(cid)
            color, masks = g.create_group("color"), g.create_group("mask")
            for fid in range(n_frames):
                data = frames[(fid + c) % len(frames)]
                color.create_dataset(str(fid), data=data)
                masks.create_dataset(str(fid), data=mask)
                nbytes += data.size
            angle = 2 * math.pi * c / n_cams
            centre = fx.HEAD + 1.2 * np.array([math.sin(angle), 0.0, -math.cos(angle)])
            cg = calib.create_group(cid)
            cg.create_dataset("K", data=fx.intrinsics(size, size, focal=2.0 * size))
            cg.create_dataset("D", data=np.zeros(5))
            cg.create_dataset("RT", data=fx.look_at_c2w(centre))
        n = int(48000 * n_frames / 30)
        t = np.arange(n) / 48000
        a = cam["00"].create_group("audio")
        a.create_dataset("audio", data=np.stack([np.sin(440 * t), np.sin(330 * t)], 1).astype(np.float32) * 0.3)
        a.create_dataset("sample_rate", data=48000)
    return nbytes


def run(tasks, out: Path, cfg, opts, *, use_ray: bool, num_cpus: int | None) -> dict:
    from emodifftalk.ingest.ray_ingest import run_ingest

    t0 = time.perf_counter()
    s = run_ingest(tasks, out, cfg, opts, name="bench", dataset="renderme360", use_ray=use_ray, num_cpus=num_cpus,
                   progress=False)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "task_s": s["task_seconds"], "images": s["images"], "ok": s["ok"], "failed": s["failed"],
            "out_bytes": s["bytes"]}


def image_cost(h: int, w: int, out_size: int, n: int = 6) -> dict:
    """Seconds per frame of h x w: decode (draft) [+ matte] + crop/resize + JPEG encode, one core."""
    from emodifftalk.ingest.cameras import CropResize
    from emodifftalk.ingest.images import composite, decode_mask, decode_rgb, encode_image

    data = jpeg(textured(h, w, 0))
    yy, xx = np.mgrid[0:h, 0:w]
    mask = png((((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (0.35 * h) ** 2).astype(np.uint8) * 255)
    crop = CropResize.square(w, h, out_size)
    times, times_mask = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        encode_image(decode_rgb(data, crop), "jpg", 95)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        encode_image(composite(decode_rgb(data, crop), decode_mask(mask, crop), (1, 1, 1)), "jpg", 95)
        times_mask.append(time.perf_counter() - t0)
    return {"jpeg_kb": data.size / 1e3, "s_per_image": float(np.median(times)),
            "s_per_image_with_mask": float(np.median(times_mask))}


def estimate(cost_s: float, per_clip_s: float, jpeg_kb: float, workers: list[int], read_mbps: float,
             storage_gbps: float, out_kb: float, shard_max_bytes: int, shard_max_samples: int) -> list[dict]:
    """Wall time and shard count of ingesting all of RenderMe-360 (see the module docstring)."""
    rows = []
    for part in ("part2", "part1"):
        p = RM360[part]
        clips = p["identities"] * sum(n for n, _ in p["perfs"])
        cams_per_clip = sum(n * c for n, c in p["perfs"]) / sum(n for n, _ in p["perfs"])
        all_images = p["bytes"] / (jpeg_kb * 1e3)
        for stride in (0, 30, 1):
            if stride == 0:  # one frames sample per clip: its first frame, every camera
                n_img = clips * cams_per_clip
            else:
                n_img = all_images / stride
            read = n_img * jpeg_kb * 1e3  # h5py reads only the frames that are decoded
            cpu = n_img * cost_s + clips * per_clip_s
            per_clip_bytes = n_img / clips * out_kb * 1e3
            per_clip_samples = n_img / clips / cams_per_clip
            frames_shards = clips * max(1, math.ceil(max(per_clip_bytes / shard_max_bytes,
                                                         per_clip_samples / shard_max_samples)))
            shards = (frames_shards + p["identities"] * RM360["speech_perfs"]
                      + math.ceil(p["identities"] / shard_max_samples))
            for n in workers:
                io_s = read / min(n * read_mbps * 1e6, storage_gbps * 1e9)
                rows.append({"part": part, "frames_stride": stride, "workers": n, "clips": clips, "images": n_img,
                             "read_tb": read / 1e12, "cpu_hours": cpu / 3600, "wall_hours": max(cpu / n, io_s) / 3600,
                             "bound": "cpu" if cpu / n >= io_s else "io", "shards": int(shards),
                             "out_tb": n_img * out_kb * 1e3 / 1e12})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--src-size", type=int, default=512)
    ap.add_argument("--out-size", type=int, default=256, help="ingest --size (256: 2x downscale, draft decode)")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to time")
    ap.add_argument("--no-ray", action="store_true", help="only the in-process run")
    ap.add_argument("--jpeg-kb", type=float, default=250.0, help="mean encoded RenderMe-360 frame size")
    ap.add_argument("--read-mbps", type=float, default=200.0, help="read bandwidth per worker (MB/s)")
    ap.add_argument("--storage-gbps", type=float, default=5.0, help="aggregate storage bandwidth (GB/s)")
    ap.add_argument("--estimate-workers", default="1,8,32,128")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", default=None, help="keep the generated data/outputs in this folder")
    args = ap.parse_args()

    from emodifftalk.config import build_config
    from emodifftalk.ingest.clip import IngestOptions
    from emodifftalk.ingest.renderme360 import plan_renderme360

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_ingest_"))
    smc = work / "smc"
    smc.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    in_bytes = sum(write_bench_smc(smc / f"{i:04d}_s1_all_raw.smc", f"{i:04d}", args.cameras, args.frames,
                                   args.src_size)
                   for i in range(args.clips))
    gen_s = time.perf_counter() - t0
    cfg = build_config("tiny", ["data.frames_stride=1"])
    opts = IngestOptions.from_config(cfg, size=args.out_size, fps=30)
    tasks, _ = plan_renderme360(smc)
    n_img = args.clips * args.cameras * args.frames
    results = {}
    modes = [("plain", False, None)]
    if not args.no_ray:
        modes += [(f"ray_{n}", True, int(n)) for n in args.workers.split(",")]
    for name, use_ray, n in modes:
        r = run(tasks, work / f"out_{name}", cfg, opts, use_ray=use_ray, num_cpus=n)
        assert r["failed"] == 0 and r["images"] == n_img, r
        r.update(images_per_s=n_img / r["wall_s"], in_mb_per_s=in_bytes / 1e6 / r["wall_s"],
                 out_mb_per_s=r["out_bytes"] / 1e6 / r["wall_s"],
                 images_per_task_s=n_img / r["task_s"] if r["task_s"] else None)
        results[name] = r
        print(f"{name:8s} wall {r['wall_s']:7.2f} s  tasks {r['task_s']:7.2f} s  {r['images_per_s']:7.1f} img/s  "
              f"in {r['in_mb_per_s']:6.2f} MB/s  out {r['out_mb_per_s']:6.2f} MB/s", flush=True)
    h, w = RM360["resolution"]
    full = image_cost(h, w, 512)
    bench_img = image_cost(args.src_size, args.src_size, args.out_size)
    # fixed per-clip work (open, audio resample, tar/part writing): an in-process run that packs one
    # frames sample per clip (frames_stride=0), minus the images of that sample
    cfg0 = build_config("tiny", ["data.frames_stride=0"])
    r0 = run(tasks, work / "out_stride0", cfg0, IngestOptions.from_config(cfg0, size=args.out_size, fps=30),
             use_ray=False, num_cpus=None)
    per_clip = max(0.0, (r0["task_s"] - r0["images"] * bench_img["s_per_image_with_mask"]) / args.clips)
    results["plain_stride0"] = r0
    out_kb = results["plain"]["out_bytes"] / n_img / 1e3 * (512 / args.out_size) ** 2
    est = estimate(full["s_per_image_with_mask"], per_clip, args.jpeg_kb,
                   [int(x) for x in args.estimate_workers.split(",")], args.read_mbps, args.storage_gbps, out_kb,
                   cfg.data.shard_max_bytes, cfg.data.shard_max_samples)
    print(f"\nper frame at the bench size ({args.src_size}² -> {args.out_size}²): "
          f"{1e3 * bench_img['s_per_image_with_mask']:.1f} ms with matte; per clip overhead {per_clip:.2f} s")
    print(f"\nfull-resolution frame (2448x2048 JPEG {full['jpeg_kb']:.0f} KB -> 512 JPEG): "
          f"{1e3 * full['s_per_image']:.1f} ms, with matte {1e3 * full['s_per_image_with_mask']:.1f} ms "
          f"(one core)")
    print(f"\npaper estimate, full RenderMe-360 (assumptions: {args.jpeg_kb:.0f} KB/frame, "
          f"{args.read_mbps:.0f} MB/s per worker, {args.storage_gbps:.0f} GB/s storage, "
          f"512² JPEG out ≈ {out_kb:.0f} KB):")
    print(f"{'part':6s} {'stride':>6s} {'workers':>7s} {'images':>10s} {'read TB':>8s} {'CPU h':>8s} {'wall h':>8s} "
          f"{'bound':>5s} {'shards':>8s} {'out TB':>7s}")
    for r in est:
        print(f"{r['part']:6s} {r['frames_stride']:6d} {r['workers']:7d} {r['images']:10.3g} {r['read_tb']:8.3f} "
              f"{r['cpu_hours']:8.1f} {r['wall_hours']:8.2f} {r['bound']:>5s} {r['shards']:8d} {r['out_tb']:7.3f}")
    report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
              "setup": {"clips": args.clips, "cameras": args.cameras, "frames": args.frames, "src_size": args.src_size,
                        "out_size": args.out_size, "images": n_img, "input_mb": in_bytes / 1e6, "generate_s": gen_s},
              "runs": results, "full_resolution": full, "bench_image": bench_img, "per_clip_s": per_clip,
              "estimate": est,
              "assumptions": {"jpeg_kb": args.jpeg_kb, "read_mbps": args.read_mbps, "storage_gbps": args.storage_gbps,
                              "out_kb_512": out_kb, "perfs": {k: RM360[k]["perfs"] for k in ("part1", "part2")}}}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
