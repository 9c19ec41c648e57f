#!/usr/bin/env python
"""Shard read throughput vs the raw folder layout vs plain tar reading (not a test).

In one run: generate a data set (``emodifftalk.data.synthetic``; or ``--raw DIR``; or, with
``--random``, random arrays in the raw layout at the preset's sizes), pack it, then time:

* ``shards_decoded``   — ``stream_samples`` over the seq shards with the full safe decode
                         (member crc32 checks, .npy/.wav/.json decoders, shape checks);
* ``shards_decoded_dl2`` — the same through a 2-worker ``DataLoader`` (``--workers``) that also
                         collates batches of 8 to padded tensors (persistent workers);
* ``wds_no_decode``    — ``wds.WebDataset`` over the same shards, raw bytes only;
* ``tarfile``          — a plain sequential ``tarfile`` read of every member's bytes
                         (``tarfile_stream``: the same in stream mode ``r|``, as webdataset reads);
* ``raw_files``        — the same clips from the raw layout: ``np.load(verts.npy)`` + wav + meta.json;
* ``raw_files_csv``    — as above plus parsing ``openface.csv`` (what shards save you);
* ``frames_decoded``   — frames shards (PNG decode) for samples/s.

MB/s counts the bytes of the files each method reads (shard bytes for shard methods, raw file
bytes for raw methods). "cold" is the first pass after evicting the files from the page cache
(fsync + posix_fadvise DONTNEED: cold-ish, no root needed); "warm" is the median of ``--passes``.
Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from emodifftalk.config import build_config
from emodifftalk.data.shards import load_manifest, pack_dataset, shard_urls, stream_samples


def evict(paths) -> None:
    """Drop the files' pages from the page cache (clean pages only, hence the fsync)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def random_raw(cfg, root: Path) -> Path:
    """Random arrays in the raw layout, sized like ``cfg.synth`` (when the generator is missing)."""
    from PIL import Image

    from emodifftalk.data.audio import write_wav
    from emodifftalk.data.openface import write_openface_csv

    s = cfg.synth
    rng = np.random.default_rng(s.seed)
    n_frames, n_verts = int(round(s.clip_seconds * s.fps)), s.mesh_resolution ** 2
    ids = [f"id{i:03d}" for i in range(s.n_identities)]
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"name": "random", "fps": s.fps, "sample_rate": 16000,
                                                   "schema_version": 1, "identities": ids}))
    size = s.image_size
    cams = [{"name": f"cam{c}", "K": [[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]],
             "viewmat": np.eye(4).tolist(), "width": size, "height": size} for c in range(s.n_cameras)]
    for ident in ids:
        t = root / ident / "template"
        t.mkdir(parents=True)
        np.save(t / "verts.npy", rng.normal(size=(n_verts, 3)).astype(np.float32))
        np.save(t / "faces.npy", rng.integers(0, n_verts, (2 * n_verts, 3)).astype(np.int32))
        (t / "vertex_sets.json").write_text(json.dumps({k: list(range(10)) for k in
                                                        ("lips", "upper_face", "eyes", "jaw", "face")}))
        (root / ident / "cameras.json").write_text(json.dumps({"cameras": cams}))
        for c in range(s.clips_per_identity):
            d = root / ident / f"clip{c:02d}"
            d.mkdir()
            (d / "meta.json").write_text(json.dumps({"identity": ident, "clip": d.name, "fps": s.fps,
                                                     "n_frames": n_frames, "sample_rate": 16000,
                                                     "emotion": "neutral"}))
            write_wav(d / "audio.wav", rng.uniform(-0.3, 0.3, int(s.clip_seconds * 16000)), 16000)
            write_openface_csv(d / "openface.csv", rng.uniform(0, 1, (n_frames, 17)), s.fps)
            np.save(d / "verts.npy", rng.normal(size=(n_frames, n_verts, 3)).astype(np.float32))
            for cam in cams:
                (d / "images" / cam["name"]).mkdir(parents=True)
                for f in range(0, n_frames, s.image_stride):
                    img = (rng.random((size, size, 3)) * 40 + np.linspace(0, 200, size)[:, None, None])
                    Image.fromarray(img.astype(np.uint8)).save(d / "images" / cam["name"] / f"{f:05d}.png")
    return root


def timed(fn, paths, passes: int) -> dict:
    evict(paths)
    t0 = time.perf_counter()
    n = fn()
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(passes):
        t0 = time.perf_counter()
        assert fn() == n
        warm.append(time.perf_counter() - t0)
    return {"n_samples": n, "cold_s": cold, "warm_s": statistics.median(warm), "warm_best_s": min(warm),
            "warm_all_s": warm}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", help="existing raw folder (default: generate one)")
    ap.add_argument("--random", action="store_true", help="random arrays instead of the synthetic generator")
    ap.add_argument("--work", help="working folder (default: a temp folder, removed afterwards)")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--passes", type=int, default=3, help="warm passes (median reported)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the extra line (0: skip)")
    ap.add_argument("--json", default="bench_shards.json", help="where to write the results")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. synth.n_identities=12")
    args = ap.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    cfg = build_config(args.config, args.overrides)
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="bench_shards_")
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    if args.raw:
        raw, source = Path(args.raw), f"--raw {args.raw}"
    elif args.random:
        raw, source = random_raw(cfg, work / "raw"), "random arrays (--random)"
    else:
        from emodifftalk.data.synthetic import generate_dataset

        raw, source = generate_dataset(cfg.synth, work / "raw", overwrite=True, progress=False), "synthetic"
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    shards = pack_dataset(raw, work / "shards", cfg, overwrite=True)
    pack_s = time.perf_counter() - t0

    manifest = load_manifest(shards)
    seq_urls = [u for split in ("train", "val", "test") for u in shard_urls(shards, "seq", split)]
    frame_urls = [u for split in ("train", "val", "test") for u in shard_urls(shards, "frames", split)]
    clips = [c for c in manifest["clips"].values() if "seq_shard" in c]
    clip_dirs = [raw / c["identity"] / c["clip"] for c in clips]
    raw_files = [d / n for d in clip_dirs for n in ("verts.npy", "audio.wav", "meta.json") if (d / n).is_file()]
    csv_files = [d / "openface.csv" for d in clip_dirs]
    nbytes = lambda paths: sum(Path(p).stat().st_size for p in paths)  # noqa: E731

    def shards_decoded():
        return sum(1 for _ in stream_samples(seq_urls, split_by_node=False, split_by_worker=False))

    loaders = []

    def shards_decoded_dl():
        """Training-style: decode + collate to tensors in persistent workers (the first pass pays
        for starting them; tensors come back through shared memory)."""
        import torch

        from emodifftalk.data.shards import collate_sequences

        if not loaders:
            ds = stream_samples(seq_urls, split_by_node=False)
            loaders.append(torch.utils.data.DataLoader(ds, num_workers=args.workers, batch_size=8,
                                                       collate_fn=collate_sequences, persistent_workers=True))
        return sum(len(b["keys"]) for b in loaders[0])

    def wds_no_decode():
        import webdataset as wds

        return sum(1 for _ in wds.WebDataset(seq_urls, shardshuffle=False, empty_check=False))

    def plain_tarfile(mode: str):
        def run():
            n = 0
            for u in seq_urls:
                with tarfile.open(u, mode=mode) as tar:
                    for m in tar:
                        tar.extractfile(m).read()
                        n += m.name.endswith(".meta.json")
            return n
        return run

    def raw_layout(with_csv: bool):
        import soundfile as sf

        from emodifftalk.data.openface import read_openface_csv

        def run():
            for d in clip_dirs:
                meta = json.loads((d / "meta.json").read_text())
                np.load(d / "verts.npy", allow_pickle=False)
                sf.read(str(d / "audio.wav"), dtype="float32")
                if with_csv:
                    read_openface_csv(d / "openface.csv", fps=meta["fps"], n_frames=meta["n_frames"])
            return len(clip_dirs)
        return run

    def frames_decoded():
        return sum(1 for _ in stream_samples(frame_urls, split_by_node=False, split_by_worker=False))

    methods = {
        "shards_decoded": (shards_decoded, seq_urls),
        "wds_no_decode": (wds_no_decode, seq_urls),
        "tarfile": (plain_tarfile("r:"), seq_urls),
        "tarfile_stream": (plain_tarfile("r|"), seq_urls),
        "raw_files": (raw_layout(False), raw_files),
        "raw_files_csv": (raw_layout(True), raw_files + csv_files),
        "frames_decoded": (frames_decoded, frame_urls),
    }
    if args.workers > 0:
        methods[f"shards_decoded_dl{args.workers}"] = (shards_decoded_dl, seq_urls)
    results = {}
    for name, (fn, paths) in methods.items():
        r = timed(fn, paths, args.passes)
        b = nbytes(paths)
        r.update(bytes=b, cold_MBps=b / 1e6 / r["cold_s"], warm_MBps=b / 1e6 / r["warm_s"],
                 warm_best_MBps=b / 1e6 / r["warm_best_s"],
                 cold_samples_per_s=r["n_samples"] / r["cold_s"], warm_samples_per_s=r["n_samples"] / r["warm_s"])
        results[name] = r

    seq_bytes = nbytes(seq_urls)
    out = {
        "source": source, "config": args.config, "overrides": args.overrides,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "data": {"n_seq_samples": len(clips), "seq_shard_bytes": seq_bytes, "n_seq_shards": len(seq_urls),
                 "mean_seq_sample_MB": seq_bytes / 1e6 / max(len(clips), 1),
                 "n_frames_samples": sum(sum(v.values()) for k, v in manifest["counts"].items() if k == "frames"),
                 "total_shard_bytes": manifest["totals"]["bytes"], "audio_hours": manifest["totals"]["audio_hours"]},
        "generate_s": gen_s, "pack_s": pack_s,
        "pack_MBps": manifest["totals"]["bytes"] / 1e6 / pack_s,
        "results": results,
    }
    print(f"data: {source}, {len(clips)} seq samples in {len(seq_urls)} shards, "
          f"{seq_bytes / 1e6:.1f} MB ({out['data']['mean_seq_sample_MB']:.2f} MB/sample); "
          f"generate {gen_s:.1f} s, pack {pack_s:.1f} s ({out['pack_MBps']:.0f} MB/s of shards)")
    print(f"{'method':22s} {'cold MB/s':>10s} {'warm MB/s':>10s} {'best MB/s':>10s} {'cold smp/s':>11s} "
          f"{'warm smp/s':>11s}")
    for name, r in results.items():
        print(f"{name:22s} {r['cold_MBps']:10.0f} {r['warm_MBps']:10.0f} {r['warm_best_MBps']:10.0f} "
              f"{r['cold_samples_per_s']:11.1f} {r['warm_samples_per_s']:11.1f}")
    base = results["shards_decoded"]["warm_s"]
    print("warm time relative to shards_decoded: " + ", ".join(
        f"{k} {r['warm_s'] / base:.2f}x" for k, r in results.items() if k != "shards_decoded"))
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
