"""``emodifftalk preview SHARDS --out clip.mp4``: one packed clip from several cameras, with its audio."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("preview", help="render a packed clip (camera grid + audio) to mp4",
                              description=__doc__)
    p.add_argument("shards", metavar="SHARDS", help="packed shard folder (with manifest.json)")
    p.add_argument("--out", default="preview.mp4", help="output mp4 (default: preview.mp4)")
    p.add_argument("--clip", default=None, help="sequence key IDENTITY__CLIP (default: the first clip)")
    p.add_argument("--cameras", type=int, default=4, help="how many cameras to show (default 4)")
    from emodifftalk.threads import add_threads_arg

    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emodifftalk.pipeline.preview import preview_clip

    out = preview_clip(args.shards, args.out, clip_key=args.clip, max_cameras=args.cameras)
    print(f"preview written to {out}")
    return 0
