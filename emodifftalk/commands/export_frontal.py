"""``emodifftalk export-frontal SMC_DIR OUT_DIR``: frontal-camera mp4 per RenderMe-360 clip for OpenFace.

Writes ``OUT_DIR/<actor>_<perf>.mp4`` (camera ``--camera``, default 25, with the clip's audio)
and ``OUT_DIR/run_openface.sh`` (one ``FeatureExtraction -f ... -out_dir CSV_DIR -aus`` per
video). Then ``emodifftalk ingest renderme360 SMC_DIR OUT --openface-dir CSV_DIR`` attaches the
CSVs (named ``<actor>_<perf>.csv`` by OpenFace). Existing videos are kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("export-frontal", help="frontal-camera videos of .smc clips for OpenFace AU extraction",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("smc_dir", metavar="SMC_DIR", help="folder with .smc files (searched recursively)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder for <actor>_<perf>.mp4")
    p.add_argument("--camera", default="25", help="camera id (default 25, the frontal one)")
    p.add_argument("--size", type=int, default=0, help="square crop resized to SIZE; 0 = full frame (default)")
    p.add_argument("--fps", type=float, default=None, help="video frame rate (default: the source rate)")
    p.add_argument("--no-audio", action="store_true", help="do not mux the clip's audio")
    p.add_argument("--csv-dir", default=None,
                   help="OpenFace output folder in run_openface.sh (default OUT_DIR/openface)")
    p.add_argument("--openface-bin", default="FeatureExtraction", help="OpenFace binary in run_openface.sh")
    p.add_argument("--overwrite", action="store_true", help="re-export existing videos")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emodifftalk.ingest.export_frontal import OPENFACE_SCRIPT, export_frontal

    records = export_frontal(args.smc_dir, args.out_dir, camera=args.camera, size=args.size, fps=args.fps,
                             overwrite=args.overwrite, with_audio=not args.no_audio, openface_bin=args.openface_bin,
                             csv_dir=args.csv_dir)
    for r in records:
        print(f"{r['clip']:24s} {r['status']:8s} {r.get('path') or ''} {r.get('reason') or ''}".rstrip())
    n_ok = sum(r["status"] in ("ok", "exists") for r in records)
    print(f"{n_ok} video(s) in {args.out_dir}; OpenFace commands: {args.out_dir}/{OPENFACE_SCRIPT}")
    return 1 if any(r["status"] == "failed" for r in records) else 0
