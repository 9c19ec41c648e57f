"""``emodifftalk pack RAW_DIR OUT_DIR``: raw folder layout -> WebDataset shards + manifest."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("pack", help="pack a raw data folder into WebDataset shards",
                              description=__doc__)
    p.add_argument("raw_dir", metavar="RAW_DIR", help="raw folder (see emodifftalk/data/schema.py)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder for shards + manifest.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    from emodifftalk.cli import add_config_args

    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emodifftalk.cli import config_from_args
    from emodifftalk.data.shards import format_report, inspect_report, pack_dataset

    cfg = config_from_args(args)
    out = pack_dataset(args.raw_dir, args.out_dir, cfg, overwrite=args.overwrite)
    print(format_report(inspect_report(out)))
    return 0
