"""``emodifftalk demo --out DIR``: synth → pack → rig (Ray) → train s2au/motion/text2au → animate → results."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from emodifftalk.pipeline.demo import DEFAULT_TEXT, STAGES

    p = subparsers.add_parser("demo", help="run the whole pipeline end to end on synthetic data",
                              description=__doc__)
    p.add_argument("--out", default="results/demo", help="output folder (default: results/demo)")
    p.add_argument("--preset", dest="config", default="tiny", choices=("tiny", "small", "paper"),
                   help="config preset (alias of --config; default tiny)")
    p.add_argument("--text", default=DEFAULT_TEXT, help="text prompt for the edited animation")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="training stages (s2au, motion, text2au) run side by side, one process each "
                        "(default: all 3, one thread each on a 2-core machine)")
    for stage in STAGES:
        p.add_argument(f"--skip-{stage}", action="store_true", help=f"reuse the earlier {stage} output in --out")
    from emodifftalk.cli import add_config_args

    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emodifftalk.cli import config_from_args
    from emodifftalk.pipeline.demo import STAGES, run_demo

    cfg = config_from_args(args)
    skip = {s for s in STAGES if getattr(args, f"skip_{s}")}
    run_demo(args.out, cfg, skip=skip, text=args.text, jobs=args.jobs)
    return 0
