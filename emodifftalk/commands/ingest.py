"""``emodifftalk ingest {renderme360,folder} SRC OUT_SHARDS``: real data -> WebDataset shards.

Parallel on Ray (one task per identity x performance; ``--address`` or $RAY_ADDRESS for a
cluster, else a local Ray; ``--no-ray`` runs in this process). Re-running the same command
resumes: finished clips are skipped (``--overwrite`` redoes them). Shards go to
``OUT_SHARDS/clips/<identity>__<clip>/`` or, with ``--shard-url``, to any ``webdataset.gopen``
URL, e.g. ``--shard-url 'pipe:aws s3 cp - s3://bucket/rm360/{name}'``. Config: ``data.*`` (shard
limits, splits, ``frames_stride``) and ``render.background`` (mask compositing). Exit code 1 when a
clip failed; the summary says which and why.
"""

from __future__ import annotations

import argparse


def _common(p: argparse.ArgumentParser) -> None:
    from emodifftalk.cli import add_config_args

    p.add_argument("out_dir", metavar="OUT_SHARDS", help="output folder (manifest.json, clips/, templates)")
    p.add_argument("--size", type=int, default=512, help="square crop resized to SIZE x SIZE; 0 keeps (default 512)")
    p.add_argument("--fps", type=float, default=25.0, help="target frame rate; 0 keeps the source rate (default 25)")
    p.add_argument("--source-fps", type=float, default=None, help="override the source frame rate")
    p.add_argument("--frames-stride", type=int, default=None,
                   help="frames samples: 0 = first frame only, k = every k-th (default: data.frames_stride)")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="frames sample images (default jpg)")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--no-masks", action="store_true", help="keep the raw background (no matte compositing)")
    p.add_argument("--max-mesh-gap", type=int, default=2, help="interpolate per-frame mesh gaps up to this length")
    p.add_argument("--shard-url", default=None,
                   help="write shards to this webdataset URL pattern with {name}, e.g. "
                        "'pipe:aws s3 cp - s3://bucket/prefix/{name}' (manifest stays in OUT_SHARDS)")
    p.add_argument("--template-faces", default=None,
                   help="(F, 3) int .npy faces for templates without faces (FLAME's f)")
    p.add_argument("--template-vertex-sets", default=None, help="JSON vertex sets for templates without them")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--no-ray", action="store_true", help="run the clips one after another in this process")
    p.add_argument("--retries", type=int, default=2, help="retries after worker crashes / transient I/O errors")
    p.add_argument("--task-memory-gb", type=float, default=None, help="Ray memory reservation per task")
    p.add_argument("--overwrite", action="store_true", help="re-ingest clips that are already finished")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--name", default=None, help="data set name in the manifest")
    add_config_args(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("ingest",
                              help="ingest RenderMe-360 .smc files or a manifest-described folder into shards",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    rm = sub.add_parser("renderme360", help="RenderMe-360 .smc files (raw/anno pairs or Part-2 raw files)",
                        description="Pair <actor>_<perf>_{raw,anno}.smc and ingest them (see "
                                    "emodifftalk/ingest/renderme360.py).")
    rm.add_argument("smc_dir", metavar="SMC_DIR", help="folder with .smc files (searched recursively)")
    rm.add_argument("--cameras", default=None, help="comma-separated camera ids to keep, e.g. 00,25 (default: all)")
    rm.add_argument("--openface-dir", default=None,
                    help="OpenFace CSVs named <actor>_<perf>.csv (from `emodifftalk export-frontal` + OpenFace)")
    _common(rm)
    rm.set_defaults(func=run)
    fo = sub.add_parser("folder", help="a data manifest (YAML/JSON) describing a multi-view capture (EmoTalk3D, ...)",
                        description="See emodifftalk/ingest/folder.py for the manifest format.")
    fo.add_argument("manifest", metavar="MANIFEST", help="data manifest (.yaml/.yml/.json)")
    _common(fo)
    fo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from emodifftalk.cli import config_from_args
    from emodifftalk.ingest.clip import IngestOptions
    from emodifftalk.ingest.ray_ingest import format_summary, run_ingest

    cfg = config_from_args(args)
    opts = IngestOptions.from_config(
        cfg, size=args.size, fps=args.fps, source_fps=args.source_fps, frames_stride=args.frames_stride,
        image_format=args.image_format, jpeg_quality=args.jpeg_quality, composite_masks=not args.no_masks,
        max_mesh_gap=args.max_mesh_gap, shard_url=args.shard_url)
    if args.source == "renderme360":
        from emodifftalk.ingest.renderme360 import plan_renderme360

        tasks, skipped = plan_renderme360(args.smc_dir, args.openface_dir)
        if args.cameras:
            keep = [c.strip() for c in args.cameras.split(",") if c.strip()]
            for t in tasks:
                t["source"]["cameras"] = keep
        name, src_path = args.name or Path(args.smc_dir).resolve().name, args.smc_dir
    else:
        from emodifftalk.ingest.folder import plan_folder

        tasks, skipped, name = plan_folder(args.manifest)
        name, src_path = args.name or name, args.manifest
    if not tasks:
        raise ValueError(f"nothing to ingest in {src_path}" + "".join(f"\n  {s['reason']}" for s in skipped))
    summary = run_ingest(tasks, args.out_dir, cfg, opts, name=name, dataset=args.source, discovery_skipped=skipped,
                         use_ray=not args.no_ray, address=args.address, num_cpus=args.num_cpus,
                         overwrite=args.overwrite, retries=args.retries, task_memory_gb=args.task_memory_gb,
                         progress=not args.no_progress, template_faces=args.template_faces,
                         template_vertex_sets=args.template_vertex_sets, source_path=str(src_path))
    print(format_summary(summary))
    return 1 if summary["failed"] else 0
