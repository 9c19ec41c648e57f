"""``emodifftalk train TASK [--config tiny] [--out DIR] [--resume latest|PATH] [section.key=value ...]``

Runs the shared training loop for a registered task (``s2au``, ``motion``, ``text2au``, ``toy``).
One process without a launcher; under ``accelerate launch`` / ``torchrun`` every process runs this
same command (see launch/README.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from emodifftalk.cli import add_config_args, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model with the shared accelerate/DeepSpeed loop",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", help="task name: s2au | motion | text2au | toy")
    p.add_argument("--data", default=None, help="packed shard folder (sets data.root)")
    p.add_argument("--out", default=None, help="run directory (default: runs/train-TASK)")
    p.add_argument("--resume", default=None, metavar="latest|PATH",
                   help="continue from the newest checkpoint in --out (latest) or a checkpoint dir")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emodifftalk.train.loop import DataSkipError, NonFiniteLossError, run_training
    from emodifftalk.train.task import get_task

    if args.data:
        args.overrides = [*args.overrides, f"data.root={args.data}"]
    from emodifftalk.utils import ensure_writable

    cfg = config_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / f"train-{args.task}"
    ensure_writable(out.parent)  # the run folder itself appears only once the data checks pass
    try:
        export_dir = run_training(get_task(args.task, cfg), out, resume=args.resume)
    except (NonFiniteLossError, DataSkipError) as e:
        print(f"emodifftalk train: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:  # launchers set RANK; one line per job, not per process
        print(f"exported {export_dir}")
    return 0
