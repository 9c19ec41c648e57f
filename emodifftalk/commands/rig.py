"""``emodifftalk rig SHARDS OUT_DIR``: canonical Gaussian rig per identity, one Ray task each.

Each OUT_DIR/<identity>/ holds rig.safetensors + rig.json (what animate/view load), rig.ply (the
canonical rig as a standard 3DGS PLY; OpenCV axes, y down — render.ply_y_up=true for y-up),
feature_line.*, preview.png.

Local Ray by default (all CPUs of this machine, no dashboard, RAY_TMPDIR=/tmp/ray_edt unless
set); ``--address`` (or $RAY_ADDRESS, set by ``ray job submit``) uses a running cluster.
Identities whose rig is complete are skipped (``--overwrite`` redoes them). Exit code 1 when
any identity failed; the table at the end says which and why.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from emodifftalk.cli import add_config_args

    p = subparsers.add_parser("rig", help="reconstruct canonical Gaussian rigs (Ray, one task per identity)",
                              description=__doc__)
    p.add_argument("shards", metavar="SHARDS", help="packed shard folder (with manifest.json)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="rig folder: OUT_DIR/<identity>/rig.safetensors ...")
    p.add_argument("--address", default=None,
                   help="Ray cluster to use: HOST:PORT of its GCS (e.g. 10.0.0.10:6379) or 'auto' "
                        "(default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--identities", default=None, help="comma-separated identities (default: all)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--overwrite", action="store_true", help="redo identities whose rig already exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emodifftalk.cli import config_from_args
    from emodifftalk.config import save_config
    from emodifftalk.data.shards import check_shard_folder
    from emodifftalk.distributed.ray_jobs import format_summary, run_rig_jobs
    from emodifftalk.utils import ensure_writable

    cfg = config_from_args(args)
    check_shard_folder(args.shards, [("template", None)])
    ensure_writable(args.out_dir)
    identities = [s.strip() for s in args.identities.split(",") if s.strip()] if args.identities else None
    save_config(cfg, args.out_dir, filename="rig_config.json")
    records = run_rig_jobs(args.shards, args.out_dir, cfg, identities=identities, address=args.address,
                           overwrite=args.overwrite, num_cpus=args.num_cpus, progress=not args.no_progress)
    print(format_summary(records))
    failed = [r["identity"] for r in records if r["status"] == "failed"]
    if failed:
        print(f"emodifftalk rig: {len(failed)} identit{'y' if len(failed) == 1 else 'ies'} failed: "
              f"{', '.join(failed)}")
        return 1
    return 0
