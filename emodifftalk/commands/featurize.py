"""``emodifftalk featurize SHARDS --out SHARDS_WITH_FEATS``: cache audio features in the shards.

Runs the configured audio front end (``audio.frontend=mel`` or ``hubert`` with
``audio.hubert_path=/local/dir``) on every seq clip and writes a copy of the shard folder whose seq
samples carry ``feats.npy`` (float16) + ``feats.json`` (encoder id, rate, dim). Training and
evaluation use the cache when its encoder id matches the config and refuse it otherwise.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from emodifftalk.cli import add_config_args

    p = subparsers.add_parser("featurize", help="precompute audio features (mel / HuBERT) into shards",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", metavar="SHARDS", help="packed shard folder (with manifest.json)")
    p.add_argument("--out", required=True, help="output shard folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--device", default="cpu", help="torch device for the front end (default: cpu)")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emodifftalk.cli import config_from_args
    from emodifftalk.featurize import featurize_shards
    from emodifftalk.models.audio_frontend import encoder_id

    cfg = config_from_args(args)
    out = featurize_shards(args.shards, args.out, cfg, overwrite=args.overwrite, device=args.device)
    print(f"wrote {out} with features from {encoder_id(cfg.audio)}")
    return 0
