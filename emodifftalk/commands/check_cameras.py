"""``emodifftalk check-cameras MANIFEST_OR_SHARDS``: does the declared camera convention fit the images?

Projects meshes (or FLAME verts / keypoints) into the images with the declared convention and
all alternatives, and reports the fraction of points in front of the camera, inside the image
and on the foreground (plus the keypoint reprojection error where 2D keypoints exist). Accepts a
folder data manifest (.yaml/.json), a shard folder or a folder of RenderMe-360 .smc files.
Exit code 1 when a clip's convention looks wrong (the report suggests the one that fits).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("check-cameras", help="check camera conventions by projecting meshes into the images",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="MANIFEST_OR_SHARDS", help="data manifest, shard folder or .smc folder")
    p.add_argument("--frames", type=int, default=2, help="frames (or samples) checked per clip (default 2)")
    p.add_argument("--json", default=None, help="also write the full report as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emodifftalk.ingest.check_cameras import check_cameras, format_check_report, report_json
    from emodifftalk.utils import atomic_write_text

    results = check_cameras(args.path, args.frames)
    print(format_check_report(results))
    if args.json:
        atomic_write_text(args.json, report_json(results))
    return 1 if any(r.get("flag") or "error" in r for r in results) else 0
