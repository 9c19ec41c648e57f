"""``emodifftalk eval WHAT ...``: evaluation reports, one subcommand per model.

* ``eval s2au --model EXPORT --data SHARDS [--split test] [--out metrics.json]``: Speech-to-AU
  per-AU MAE / Pearson / binarised accuracy-precision-recall-F1 on held-out identities, next to
  training-mean, training-median and ridge-regression baselines.
* ``eval motion --model EXPORT --data SHARDS [--split test] [--baseline REGRESSION_EXPORT] [--out DIR]``:
  LVE / FDD / MOD of DDPM-full and DDIM-10/25/50 vs. the regression baseline and the template.
* ``eval speech --model RUNS --audio FILE_OR_DIR --out DIR``: on recordings without labels, per
  file r(speech envelope, the animated mesh's mouth opening), the mouth AU in silent frames and a
  PNG (``emodifftalk/eval/speech.py``).
* ``eval pipeline --models RUNS --data SHARDS --out DIR``: audio → Speech-to-AU → motion → mesh for
  every motion method of RUNS (diffusion, regression, faceformer) and the template on held-out
  identities: LVE, FDD, MOD, lip-closure F1, upper-face diversity, AU-edit response of every AU
  (``emodifftalk/eval/pipeline.py``).
* ``eval rig RIG_DIR... --data RAW_DIR [--out DIR]``: a rig's PSNR/SSIM per camera on the held-out
  ring that ``emodifftalk synth`` renders and on its capture cameras (``emodifftalk/eval/rig.py``).

``s2au``, ``motion`` and ``rig`` print their table; ``--out`` also writes it (nothing is written
without it). The model's config comes from its export (EXPORT/config.json); trailing ``section.key=value`` items adjust it.
"""

from __future__ import annotations

import argparse
import json

from emodifftalk.threads import add_threads_arg

EXPORT_CONFIG_NOTE = ("eval uses the config stored with the model (EXPORT/config.json), not a preset; "
                      "adjust it with trailing section.key=value overrides")


class _ExportConfigOnly(argparse.Action):
    """``--config`` on eval: the README's shared spelling, answered with what eval does instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"--config {values}: {EXPORT_CONFIG_NOTE}")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action=_ExportConfigOnly, metavar="PRESET", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_threads_arg(p)


def _register_s2au(sub) -> None:
    p = sub.add_parser("s2au", help="Speech-to-AU accuracy vs. baselines on held-out identities",
                       description=_run_s2au.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="export dir of `emodifftalk train s2au` (…/export)")
    p.add_argument("--data", required=True, help="packed shard folder (with manifest.json)")
    p.add_argument("--split", action="append", choices=("train", "val", "test"), default=None,
                   help="split(s) to evaluate; repeatable (default: val and test = held-out identities)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    _add_common(p)
    p.add_argument("--ridge-alpha", type=float, default=1.0,
                   help="ridge baseline penalty on standardised features (default: 1.0)")
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                   help="overrides of the export's config, e.g. audio.hubert_path=/weights/hubert")
    p.set_defaults(func=_run_s2au)


def _run_s2au(args: argparse.Namespace) -> int:
    """Evaluate a Speech-to-AU export; prints the summary table, writes JSON with --out."""
    from emodifftalk.eval.s2au import run_eval

    splits = tuple(dict.fromkeys(args.split)) if args.split else ("val", "test")
    report = run_eval(args.model, args.data, splits=splits, out=args.out, device=args.device,
                      ridge_alpha=args.ridge_alpha, overrides=args.overrides)
    print(report["table"])
    if report["excluded_aus"]:
        print(f"excluded (no valid labels): {', '.join(report['excluded_aus'])}")
    print("encoder better than baseline (lower mean MAE, higher mean Pearson r and F1 where defined):")
    for b, groups in report["beats_baselines"].items():
        print(f"  {b:<13} " + "  ".join(f"{g}: {'yes' if ok else 'NO'}" for g, ok in groups.items()))
    if args.out:
        print(f"wrote {args.out}")
    else:
        print(json.dumps({"overall_mae": {m: r['mean']['mae'] for m, r in report['results']['overall'].items()}}))
    return 0


def _register_motion(sub) -> None:
    p = sub.add_parser("motion", help="diffusion motion (DDPM/DDIM) vs. regression and template on held-out clips",
                       description=_run_motion.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="export dir of `emodifftalk train motion` (…/export)")
    p.add_argument("--data", required=True, help="packed shard folder (with manifest.json)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split (default: test)")
    p.add_argument("--out", default=None, help="also write motion_eval.json + motion_eval.md into this directory")
    p.add_argument("--baseline", default=None, help="export dir of the regression baseline "
                   "(`train motion diffusion.regression=true`)")
    p.add_argument("--methods", default=None, help="comma-separated subset, e.g. ddim-10,template")
    p.add_argument("--max-clips", type=int, default=None, help="evaluate at most this many clips")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    _add_common(p)
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                   help="overrides of the export's config, e.g. diffusion.guidance_scale=2")
    p.set_defaults(func=_run_motion)


def _run_motion(args: argparse.Namespace) -> int:
    """Evaluate a motion export: LVE / FDD / MOD of DDPM-full and DDIM-10/25/50 vs. the regression
    baseline and the template; prints the markdown table, and with --out writes JSON + markdown."""
    from pathlib import Path

    from emodifftalk.eval.motion import REPORT_JSON, run_eval
    from emodifftalk.utils import ensure_writable

    out = ensure_writable(args.out) if args.out else None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    report = run_eval(args.model, args.data, split=args.split, out=out, baseline=args.baseline,
                      device=args.device, seed=args.seed, max_clips=args.max_clips, methods=methods,
                      overrides=args.overrides)
    print(report["table"])
    if out is not None:
        print(f"wrote {out / REPORT_JSON}")
    return 0


def _register_rig(sub) -> None:
    p = sub.add_parser("rig", help="rig novel-view PSNR/SSIM on the synthetic held-out camera ring",
                       description=_run_rig.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rig_dirs", nargs="+", metavar="RIG_DIR", help="one or more rig folders (rigs/id000 ...)")
    p.add_argument("--data", required=True, help="raw folder of `emodifftalk synth` (holds the ring renders)")
    p.add_argument("--out", default=None, help="also write rig_eval.json + rig_eval.md into this directory")
    p.add_argument("--no-feature-line", action="store_true", help="score the rigs without their feature lines")
    p.add_argument("--compare-feature-line", action="store_true",
                   help="score each rig with and without its feature line")
    p.add_argument("--max-frames", type=int, default=None, help="rendered frames per clip (default: all)")
    _add_common(p)
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                   help="eval.lpips_weights=FILE[,FILE] adds LPIPS from local weights (torchvision's AlexNet "
                   "+ the lpips package's v0.1 alex.pth; never downloaded)")
    p.set_defaults(func=_run_rig)


def _run_rig(args: argparse.Namespace) -> int:
    """Render each rig, driven by the tracked meshes, from the held-out ring of cameras that
    `emodifftalk synth` renders (never packed) and from its capture cameras; report PSNR/SSIM per
    camera (emodifftalk/eval/rig.py), and LPIPS with eval.lpips_weights=FILE[,FILE]. Prints the
    table; with --out writes JSON + markdown."""
    from pathlib import Path

    from emodifftalk.config import Config, apply_overrides
    from emodifftalk.eval.lpips import LPIPSError, check_lpips_weights, load_lpips
    from emodifftalk.eval.rig import REPORT_JSON, evaluate_rig, format_table
    from emodifftalk.utils import atomic_write_text, ensure_writable

    cfg = Config()
    apply_overrides(cfg, list(args.overrides))
    cfg.validate()
    try:  # the weights before any rendering
        lpips = load_lpips(cfg.eval.lpips_weights, args.device) if check_lpips_weights(cfg.eval.lpips_weights) else None
    except LPIPSError as e:
        raise SystemExit(f"emodifftalk eval rig: {e}") from None
    out = ensure_writable(args.out) if args.out else None
    settings = [True, False] if args.compare_feature_line else [not args.no_feature_line]
    reports = [evaluate_rig(d, args.data, feature_line=line, max_frames_per_clip=args.max_frames, lpips=lpips)
               for d in args.rig_dirs for line in settings]
    table = format_table(reports)
    print(table)
    if out is not None:  # not utils.write_report: its JSON (sorted keys, indent 2, "table") is another format
        atomic_write_text(Path(out) / REPORT_JSON, json.dumps({"rigs": reports}, indent=1))
        atomic_write_text(Path(out) / "rig_eval.md", table + "\n")
        print(f"wrote {Path(out) / REPORT_JSON}")
    return 0


def _register_speech(sub) -> None:
    p = sub.add_parser("speech", help="mouth vs. speech envelope on real recordings without labels",
                       description=_run_speech.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="folder holding s2au/ and motion/ training runs (their export/)")
    p.add_argument("--audio", required=True, help="an audio/video file, or a folder of them")
    p.add_argument("--out", required=True, help="folder for speech_eval.json/.md and one PNG per file")
    p.add_argument("--data", default=None, help="shard folder with the template meshes "
                   "(default: the one the motion model was trained on)")
    p.add_argument("--identity", default=None, help="template identity (default: the first held-out test identity)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    _add_common(p)
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                   help="overrides of both exports' configs, e.g. diffusion.ddim_steps=25 s2au.silence_gate=false")
    p.set_defaults(func=_run_speech)


def _run_speech(args: argparse.Namespace) -> int:
    """Animate each recording (audio → Speech-to-AU → motion → mesh) and report, per file, Pearson r
    between the speech envelope (dB, 25 fps) and the mesh's mouth opening, the mean mouth AU
    (max of AU25, AU26) in frames 40 dB below the file's peak, and a PNG; writes speech_eval.json
    and speech_eval.md into --out. Bar: r >= 0.5 and silent mouth AU <= 0.15 on every file.
    A file NAME.wav with NAME.mouth.csv beside it (columns time_s, aperture: the speaker's tracked
    mouth, e.g. from tools/track_mouth.py) also gets r between the predicted and the real mouth."""
    from emodifftalk.commands.animate import resolve_export
    from emodifftalk.config import apply_overrides
    from emodifftalk.eval.speech import REPORT_JSON, audio_files, mouth_tracks, pick_template, run_eval
    from emodifftalk.pipeline.animate import load_models
    from emodifftalk.utils import ensure_writable

    files = audio_files(args.audio)  # inputs and output first, models after
    tracks = mouth_tracks(files)
    out = ensure_writable(args.out)
    s2au = resolve_export(None, args.model, "s2au", True)
    motion = resolve_export(None, args.model, "motion", True)
    models = load_models(s2au, motion, device=args.device)
    cfg = models.motion_cfg
    for c in (cfg, models.s2au.cfg):  # e.g. s2au.silence_gate=false reaches Speech-to-AU's config
        apply_overrides(c, list(args.overrides))
        c.validate()
    template = pick_template(args.data or cfg.data.root, args.identity)
    report = run_eval(models, files, template, out, cfg, seed=args.seed, tracks=tracks)
    print(report["table"])
    print(f"wrote {out / REPORT_JSON}")
    return 0


def _register_pipeline(sub) -> None:
    p = sub.add_parser("pipeline", help="audio -> Speech-to-AU -> motion -> mesh for every motion method "
                       "(diffusion, regression, faceformer, template) on held-out identities",
                       description=_run_pipeline.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="folder of training runs: one s2au run and any number of "
                   "motion runs (motion.model=diffusion|regression|faceformer)")
    p.add_argument("--data", required=True, help="packed shard folder (with manifest.json)")
    p.add_argument("--out", required=True, help="folder for pipeline_eval.json and pipeline_eval.md")
    p.add_argument("--split", action="append", choices=("train", "val", "test"), default=None,
                   help="split(s) to evaluate; repeatable (default: val and test = held-out identities)")
    p.add_argument("--max-clips", type=int, default=None, help="at most this many clips per split")
    p.add_argument("--au-clips", type=int, default=4, help="clips for the AU-edit response (default: 4; 0 = skip)")
    p.add_argument("--samples", type=int, default=5, help="samples per clip for upper-face diversity (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    _add_common(p)
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                   help="overrides of every motion export's config, e.g. diffusion.animate_guidance_scale=1 "
                   "synth.seed=0 (the synthetic world that regenerates the true AU fields)")
    p.set_defaults(func=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    """Run audio -> Speech-to-AU -> motion -> mesh for every motion method in --models (plus the
    template) on the held-out clips of --data; report LVE, abs FDD, MOD, lip-closure F1 on bilabials,
    upper-face diversity over several seeds and the AU-edit response of every AU
    (emodifftalk/eval/pipeline.py). Prints the table; writes pipeline_eval.json and .md into --out."""
    from emodifftalk.eval.pipeline import REPORT_JSON, find_runs, run_pipeline_eval
    from emodifftalk.utils import ensure_writable

    if args.samples < 1:
        raise SystemExit("emodifftalk eval pipeline: --samples must be >= 1")
    find_runs(args.models)  # the runs and the output folder before anything loads
    out = ensure_writable(args.out)
    splits = tuple(dict.fromkeys(args.split)) if args.split else ("val", "test")
    report = run_pipeline_eval(args.models, args.data, out=out, splits=splits, device=args.device,
                               seed=args.seed, max_clips=args.max_clips, au_clips=args.au_clips,
                               diversity_samples=args.samples, overrides=args.overrides)
    print(report["table"])
    print(f"wrote {out / REPORT_JSON}")
    return 0


# one ``_register_<what>(sub)`` per subcommand: it adds the parser and points ``func`` at a runner
# that imports its library module lazily (``emodifftalk/eval/<what>.py``)
SUBCOMMANDS = {"s2au": _register_s2au, "motion": _register_motion, "speech": _register_speech,
               "rig": _register_rig, "pipeline": _register_pipeline}


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a trained model (s2au, ...)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="eval_what", metavar="WHAT", required=True)
    for add in SUBCOMMANDS.values():
        add(sub)
