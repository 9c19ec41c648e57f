"""Benchmark the Gaussian rasterizer: forward and forward+backward milliseconds (medians).

Scene: a head-like cloud, N Gaussians on a noisy ellipsoid shell (0.16 x 0.22 x 0.18 m) 0.6 m in
front of one camera (25 degree fov) so the head fills about half the frame; scales cover the
shell (~0.6 Gaussian spacings, log-normal), random rotations, opacities uniform in [0.2, 1].

Compared side by side in one process, runs interleaved (the machines are noisy, so the ratio
is the number to trust):

* ``torch``: ``emodifftalk.render.rasterize(backend="torch")`` (tile renderer, default tiles);
* ``baseline`` (``--baseline``): the straightforward pure-torch design PERFORMANCE.md quotes
  (per-Gaussian 3-sigma boxes -> (Gaussian, pixel) pairs, depth sort, segmented transmittance
  as a log-space cumulative sum, autograd backward), same projection and compositing rules.
  This is our own rendition of that design, not the code behind PERFORMANCE.md's figures,
  and it is slower than those figures, so its ratios flatter the tile renderer;
* ``gsplat`` on CUDA when available.

Wall-clock and process CPU time are both recorded (CPU time is less sensitive to other
processes on a shared machine, and equals wall time for one uncontended thread).

    python benchmarks/bench_render.py --out bench_render.json [--runs 5] [--threads 1] [--baseline] [--malloc-env]

On a small machine shared with other jobs, use ``--threads 1``: two OpenMP threads on two busy
cores spin-wait and run several times slower than one.

Allocator note (set only here, never by the library): on glibc, freed large buffers are returned
to the OS and re-faulted on the next allocation. ``--malloc-env`` re-executes this script with
``MALLOC_MMAP_THRESHOLD_=1000000000000 MALLOC_TRIM_THRESHOLD_=1000000000000`` so that freed
buffers stay in the heap. The JSON records which environment was used. (The tile renderer
reuses its scratch buffers, so it depends on this much less than the baseline does.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1000000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000000"}
PARAMS = ("means", "quats", "scales", "opacities", "colors")


def head_scene(n: int, size: int, device="cpu", seed: int = 0) -> dict:
    """N head-like Gaussians in front of one camera rendering size x size pixels."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, 3, generator=gen)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    shell = 1.0 + 0.05 * torch.randn(n, 1, generator=gen)
    means = direction * shell * torch.tensor([0.08, 0.11, 0.09]) + torch.tensor([0.0, 0.0, 0.6])
    spacing = math.sqrt(4 * math.pi * 0.1**2 / n)
    scales = 0.6 * spacing * torch.exp(0.3 * torch.randn(n, 3, generator=gen))
    quats = torch.randn(n, 4, generator=gen)
    opacities = 0.2 + 0.8 * torch.rand(n, generator=gen)
    colors = torch.rand(n, 3, generator=gen)
    focal = size / (2 * math.tan(math.radians(12.5)))
    Ks = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])[None]
    viewmats = torch.eye(4)[None]
    out = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
           "viewmats": viewmats, "Ks": Ks}
    return {k: v.to(device) for k, v in out.items()}


def baseline_rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height):
    """Straightforward reference renderer (one camera): 3-sigma boxes, (Gaussian, pixel) pairs
    sorted by pixel then depth, transmittance as a segmented log-space cumsum, autograd."""
    from emodifftalk.render.projection import ALPHA_THRESHOLD, project_gaussians

    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height)
    vis = proj.visible[0].nonzero().squeeze(1)
    order = vis.index_select(0, torch.argsort(proj.depths[0].detach().index_select(0, vis)))
    m2d, con = proj.means2d[0].index_select(0, order), proj.conics[0].index_select(0, order)
    with torch.no_grad():
        cov = proj.cov2d[0].index_select(0, order)
        mid = 0.5 * (cov[:, 0, 0] + cov[:, 1, 1])
        lam = mid + torch.sqrt((mid * mid - (cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2)).clamp(min=0.1))
        r = torch.ceil(3.0 * lam.sqrt())
        x0 = (m2d[:, 0].detach() - r).floor().clamp(0, width).long()
        x1 = (m2d[:, 0].detach() + r).ceil().clamp(0, width).long()
        y0 = (m2d[:, 1].detach() - r).floor().clamp(0, height).long()
        y1 = (m2d[:, 1].detach() + r).ceil().clamp(0, height).long()
        bw = (x1 - x0).clamp(min=0)
        count = bw * (y1 - y0).clamp(min=0)
        gid = torch.repeat_interleave(torch.arange(len(order)), count)
        local = torch.arange(len(gid)) - (torch.cumsum(count, 0) - count).index_select(0, gid)
        bwg = bw.index_select(0, gid)
        px = x0.index_select(0, gid) + local % bwg
        py = y0.index_select(0, gid) + torch.div(local, bwg, rounding_mode="floor")
        pixel, perm = torch.sort((py * width + px).int(), stable=True)  # pairs were in depth order
        pixel = pixel.long()
        gid = gid.index_select(0, perm)
        pxy = torch.stack([px, py], 1).index_select(0, perm).to(m2d.dtype) + 0.5
        _, seg_len = torch.unique_consecutive(pixel, return_counts=True)
        seg_start = torch.repeat_interleave(torch.cumsum(seg_len, 0) - seg_len, seg_len)
    d = m2d.index_select(0, gid) - pxy
    dx, dy = d[:, 0], d[:, 1]
    c = con.index_select(0, gid)
    sigma = 0.5 * (c[:, 0] * dx * dx + c[:, 2] * dy * dy) + c[:, 1] * dx * dy
    alpha = torch.clamp(opacities.index_select(0, order).index_select(0, gid) * torch.exp(-sigma), max=0.999)
    alpha = torch.where(alpha >= ALPHA_THRESHOLD, alpha, torch.zeros_like(alpha))
    log_keep = torch.log1p(-alpha).double()
    excl = torch.cumsum(log_keep, 0) - log_keep
    t_before = torch.exp(excl - excl.index_select(0, seg_start)).to(alpha.dtype)
    w = alpha * t_before * ((t_before * (1 - alpha)) > 1e-4)
    feats = torch.cat([colors.index_select(0, order), torch.ones_like(alpha[:1]).expand(len(order), 1),
                       proj.depths[0].index_select(0, order)[:, None]], dim=1)
    img = torch.zeros(height * width, feats.shape[1], dtype=alpha.dtype).index_add(
        0, pixel, w[:, None] * feats.index_select(0, gid))
    img = img.reshape(1, height, width, -1)
    return img[..., :3], img[..., 3:4], img[..., 4:5] / img[..., 3:4].clamp(min=1e-10)


def _timed(fn, sync) -> tuple[float, float]:
    sync()
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync()
    return (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3


def bench_case(n: int, size: int, impls: list, device: str, runs: int) -> list:
    from emodifftalk.render import rasterize

    scene = head_scene(n, size, device)
    for k in PARAMS:
        scene[k].requires_grad_(True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def render(impl):
        if impl == "baseline":
            return baseline_rasterize(**scene, width=size, height=size)
        out = rasterize(**scene, width=size, height=size, backend=impl)
        return out.rgb, out.alpha, out.depth

    def fwd(impl):
        with torch.no_grad():
            render(impl)

    def fwd_bwd(impl):
        rgb, _, depth = render(impl)
        (rgb.sum() + depth.mean()).backward()
        for k in PARAMS:
            scene[k].grad = None

    times = {impl: {"fwd": [], "fwd_bwd": []} for impl in impls}
    for impl in impls:  # warm-up
        fwd(impl)
        fwd_bwd(impl)
    for _ in range(runs):
        for impl in impls:  # interleaved, so that load changes hit every implementation alike
            times[impl]["fwd"].append(_timed(lambda i=impl: fwd(i), sync))
            times[impl]["fwd_bwd"].append(_timed(lambda i=impl: fwd_bwd(i), sync))
    with torch.no_grad():
        _, alpha, _ = render(impls[0])
    rows = []
    for impl in impls:
        row = {"impl": impl, "gaussians": n, "size": size, "device": device,
               "coverage": round(float(alpha.mean()), 3)}
        for key, samples in times[impl].items():
            row[f"{key}_ms"] = round(statistics.median(s[0] for s in samples), 1)
            row[f"{key}_cpu_ms"] = round(statistics.median(s[1] for s in samples), 1)
        rows.append(row)
    if "baseline" in impls and "torch" in impls:
        ours, base = rows[impls.index("torch")], rows[impls.index("baseline")]
        for key in ("fwd_ms", "fwd_bwd_ms", "fwd_cpu_ms", "fwd_bwd_cpu_ms"):
            ours[f"speedup_vs_baseline_{key[:-3]}"] = round(base[key] / max(ours[key], 1e-9), 2)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--gaussians", default="10000,50000")
    parser.add_argument("--baseline", action="store_true",
                        help="also time the straightforward reference design (slow: minutes at 512 px)")
    parser.add_argument("--malloc-env", action="store_true",
                        help=f"re-run with {MALLOC_ENV} (glibc keeps freed large buffers)")
    args = parser.parse_args(argv)
    if args.malloc_env and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    cases = [(n, s) for n in map(int, args.gaussians.split(",")) for s in map(int, args.sizes.split(","))]
    results = []
    cpu_impls = ["torch"] + (["baseline"] if args.baseline else [])
    for n, size in cases:
        for row in bench_case(n, size, cpu_impls, "cpu", args.runs):
            results.append(row)
            print(json.dumps(row), flush=True)
    if torch.cuda.is_available():
        for n, size in cases:
            for row in bench_case(n, size, ["gsplat", "torch"], "cuda", args.runs):
                results.append(row)
                print(json.dumps(row), flush=True)
    report = {
        "results": results,
        "env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.processor(),
        "cpu_count": os.cpu_count(), "runs": args.runs,
    }
    if args.out:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        from emodifftalk.utils import atomic_write_text
        atomic_write_text(args.out, json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
