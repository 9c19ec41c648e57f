"""``emodifftalk synth --out DIR``: generate the procedural multi-view talking-head data set."""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("synth", help="generate the synthetic multi-view talking-head data set",
                              description=__doc__)
    p.add_argument("--out", required=True, help="output raw folder (see emodifftalk/data/schema.py)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while rendering (default 1: the renders are tiny; 0 = torch default)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="identities written at once, one process each (default: one per usable core; "
                        "the bytes do not depend on it)")
    from emodifftalk.cli import add_config_args

    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emodifftalk.cli import config_from_args
    from emodifftalk.data.synthetic import generate_dataset, make_cameras

    cfg = config_from_args(args)
    s = cfg.synth
    if s.version == 2 and s.speech == "tts":
        from emodifftalk.data.synthetic import espeak_available
        from emodifftalk.data.synthetic.tts import INSTALL_HINT

        if not espeak_available():
            print(f"warning: {INSTALL_HINT}; using formant speech instead", file=sys.stderr)
    from emodifftalk.threads import usable_cores

    if args.workers is not None and args.workers < 1:
        raise SystemExit("emodifftalk synth: --workers must be >= 1")
    start = time.perf_counter()
    out = generate_dataset(s, args.out, overwrite=args.overwrite, progress=not args.no_progress,
                           num_threads=args.threads or None, workers=args.workers or usable_cores())
    print(f"wrote {s.n_identities} identities x {s.clips_per_identity} clips x {s.clip_seconds:g} s, "
          f"{len(make_cameras(s)[0])} cameras at {s.image_size}px to {out} in {time.perf_counter() - start:.1f} s"
          + (f"; gallery: {out / 'gallery.png'}" if s.version == 2 else ""))
    return 0
