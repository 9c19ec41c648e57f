"""``emodifftalk view RIG_DIR [--animation DIR_OR_WAV]``: browser viewer and AU editor (local viser server).

Shows the canonical head, an ``emodifftalk animate`` output folder, or animates an audio file with the
models. The AU editor offsets the 17 AU codes for the whole clip or a time range, re-samples the
motion of the changed frames (few DDIM steps) and exports the edit curves (``animate --edits``
JSON), an mp4 and the PLY sequence under ``--out``. Binds to 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("view", help="browser viewer and AU editor for a rig / animation",
                              description=__doc__)
    p.add_argument("rig", metavar="RIG_DIR", help="identity rig directory (from `emodifftalk rig`)")
    p.add_argument("--animation", default=None, metavar="DIR_OR_WAV",
                   help="an `animate` output folder (offsets.npy, aus.csv, animation.json) or an audio file to "
                        "animate with the models; default: the canonical head")
    p.add_argument("--audio", default=None, help="sound for an --animation folder (default: its video.mp4's)")
    p.add_argument("--model", default=None,
                   help="folder holding s2au/, motion/, text2au/ training runs (their export/ is used)")
    p.add_argument("--s2au", default=None, help="Speech-to-AU export dir (overrides --model)")
    p.add_argument("--motion", default=None, help="motion diffusion export dir (overrides --model); "
                   "without it AU edits change only the feature-line opacity")
    p.add_argument("--text2au", default=None, help="Text-to-AU export dir (overrides --model), for text prompts")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1, this machine only); anything else exposes the "
                        "editor, without authentication, to the network")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--out", default=None, help="export folder (default: view_out/<identity>)")
    p.add_argument("--camera", default=None, help="camera of the mp4 export: 'front', a capture camera index, 'orbit', "
                   "or a cameras JSON (default: front, or orbit for a rig without cameras)")
    p.add_argument("--edit-steps", type=int, default=8, help="DDIM steps per AU edit (default 8)")
    p.add_argument("--seed", type=int, default=0)
    from emodifftalk.cli import add_config_args

    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emodifftalk.cli import config_from_args
    from emodifftalk.commands.animate import resolve_export
    from emodifftalk.viewer.app import LOCAL_HOSTS, check_port_free, load_viewer_models, start_viewer
    from emodifftalk.viewer.source import is_audio_path

    cfg = config_from_args(args)
    if args.edit_steps < 1:
        raise ValueError(f"--edit-steps must be >= 1, got {args.edit_steps}")
    check_port_free(args.host, args.port)
    animating = args.animation is not None and is_audio_path(args.animation)
    s2au = resolve_export(args.s2au, args.model, "s2au", animating)
    motion = resolve_export(args.motion, args.model, "motion", animating)
    t2a = resolve_export(args.text2au, args.model, "text2au", False)
    if motion is None:
        print("NOTE: no motion model (--model RUNS or --motion EXPORT): AU edits will change only the "
              "feature-line opacity, not the face's shape", file=sys.stderr)
    models = load_viewer_models(s2au, motion, t2a)
    if args.host not in LOCAL_HOSTS:
        print(f"WARNING: binding to {args.host}: anyone who can reach this address can view the rig, run edits "
              "and write exports to the --out folder; the viewer has no authentication.", file=sys.stderr)
    app = start_viewer(args.rig, cfg, animation=args.animation, audio=args.audio, models=models, host=args.host,
                       port=args.port, out_dir=args.out, camera=args.camera, edit_steps=args.edit_steps,
                       seed=args.seed, verbose=False)
    print(f"EmoDiffTalk viewer: {app.url}  ({app.n_gaussians} Gaussians; exports to {app.out_dir}; Ctrl-C stops)",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        app.stop()
    return 0
