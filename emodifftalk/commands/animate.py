"""``emodifftalk animate RIG_DIR WAV --model RUNS --out DIR``: audio (+ text, + AU edits) → talking-head video.

Outputs in ``--out``: ``video.mp4`` (audio muxed), ``aus.csv`` / ``aus_speech.csv`` (AU curves),
``aus.png`` (plot), ``offsets.npy`` (T, V, 3) per-frame vertex offsets, ``animation.json``, and with
``--ply`` one standard 3DGS PLY per frame under ``ply/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("animate", help="animate a rig from audio (+ text prompt, + per-AU edits)",
                              description=__doc__)
    p.add_argument("rig", metavar="RIG_DIR", help="identity rig directory (from `emodifftalk rig`)")
    p.add_argument("wav", metavar="WAV", help="speech audio (any sample rate, any length)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", default=None,
                   help="folder holding s2au/, motion/, text2au/ training runs (their export/ is used)")
    p.add_argument("--s2au", default=None, help="Speech-to-AU export dir (overrides --model)")
    p.add_argument("--motion", default=None, help="motion diffusion export dir (overrides --model)")
    p.add_argument("--text2au", default=None, help="Text-to-AU export dir (overrides --model)")
    p.add_argument("--text", default=None, help='text prompt, e.g. "a nervous smile" (an empty prompt is an error)')
    p.add_argument("--text-strength", type=float, default=None, metavar="S",
                   help="scale of the text's AU request (default text2au.modulation_strength = 1.0; 0 = off)")
    p.add_argument("--edits", default=None, help="per-AU edit curves, JSON/YAML (format: examples/README.md, "
                   "example: examples/edits.json)")
    p.add_argument("--camera", default=None,
                   help="'front' (the capture camera facing the face), a capture camera index, 'orbit', "
                   "or a cameras JSON file (default: infer.camera, 'front')")
    p.add_argument("--ply", action="store_true", help="also write a 3DGS PLY per frame (OpenCV axes, y down; "
                   "render.ply_y_up=true for y-up)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    from emodifftalk.cli import add_config_args

    add_config_args(p)
    p.set_defaults(func=run)


def resolve_export(explicit: str | None, model_root: str | None, name: str, required: bool) -> Path | None:
    if explicit:
        return Path(explicit)
    if model_root:
        for cand in (Path(model_root) / name / "export", Path(model_root) / name):
            if (cand / "model.safetensors").is_file():
                return cand
    if required:
        raise ValueError(f"no {name} model: pass --{name} EXPORT_DIR or --model RUNS_DIR containing {name}/export")
    return None


def run(args: argparse.Namespace) -> int:
    from emodifftalk.cli import config_from_args
    from emodifftalk.pipeline.animate import animate, check_inputs, check_text, load_models

    check_text(args.text)  # before loading anything: --text "" and --text "  " fail alike
    cfg = config_from_args(args)
    if args.text_strength is not None:
        cfg.text2au.modulation_strength = args.text_strength
        cfg.validate()
    camera = args.camera or cfg.infer.camera
    # every input checked before the models load (seconds) and the render starts (minutes)
    check_inputs(args.rig, args.wav, args.out, edits_path=args.edits, camera=camera, overwrite=args.overwrite)
    s2au = resolve_export(args.s2au, args.model, "s2au", True)
    motion = resolve_export(args.motion, args.model, "motion", True)
    # the Text-to-AU controller (and its sentence encoder, ~10 s to load) only when there is a prompt
    t2a = resolve_export(args.text2au, args.model, "text2au", True) if args.text is not None else None
    models = load_models(s2au, motion, t2a)
    res = animate(args.rig, args.wav, models, args.out, cfg, text=args.text, edits_path=args.edits,
                  camera=camera, ply=args.ply, seed=args.seed, overwrite=args.overwrite)
    print(f"{res.n_frames} frames ({res.seconds_audio:.1f} s of audio) written to {res.out_dir}")
    for name, path in res.files.items():
        print(f"  {path}")
    return 0
