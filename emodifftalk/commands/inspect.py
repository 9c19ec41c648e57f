"""``emodifftalk inspect SHARDS``: describe a packed folder; ``--validate`` checks every shard
against the manifest (sha256, sizes, counts) and decodes every sample; non-zero exit on problems."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="describe (and --validate) a packed shard folder",
                              description=__doc__)
    p.add_argument("shards", metavar="SHARDS", help="folder written by `emodifftalk pack`")
    p.add_argument("--validate", action="store_true", help="check sha256 and decode every sample")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emodifftalk.data.shards import format_report, inspect_report, validate_shards

    problems = validate_shards(args.shards) if args.validate else []
    try:
        report = inspect_report(args.shards)
    except (OSError, ValueError) as e:  # unreadable manifest: the problems say why
        if not problems:
            raise
        report = {"root": args.shards, "error": str(e)}
    if args.json:
        if args.validate:
            report["problems"] = [{"shard": p.shard, "key": p.key, "reason": p.reason} for p in problems]
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_report(report) if "error" not in report else f"{args.shards}: {report['error']}")
        if args.validate:
            print(f"\nvalidation: {len(problems)} problem(s)" + (":" if problems else " — all shards OK"))
            for p in problems:
                print(f"  {p}")
    if problems:
        print(f"emodifftalk inspect: {len(problems)} problem(s) in {args.shards}", file=sys.stderr)
        return 1
    return 0
