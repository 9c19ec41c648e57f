"""Where does r(speech envelope, mouth) get lost on real recordings: in Speech-to-AU or in the motion
stage? Measured exactly as ``eval speech`` measures (``eval.speech.envelope_db`` / ``mouth_au``,
the mesh's lip gap on the same held-out template), per file and per variant:

* ``au``       the Speech-to-AU mouth AU (max AU25, AU26) ``animate`` feeds the motion model;
* ``mesh``     the mesh's lip opening, motion sampled as ``animate`` samples it (what ``eval speech`` reports);
* ``au_only``  the mesh with the motion model's audio term null (``feats=None``): the AU path alone;
* ``audio_only`` the mesh with all AU codes 0: the audio path alone;
* ``oracle``   the mesh with AU25 = AU26 = the envelope mapped to [0, 1] (-40 dB -> 0, peak -> 1):
  what the motion stage makes of mouth codes that follow loudness;
* ``lead1``    the mesh with the Speech-to-AU codes moved one frame earlier (a tracker-lag-free
  Speech-to-AU, without retraining).

For each: r at lag 0 (the figure ``eval speech`` reports), the lag in frames (-3..+4; + = the mouth
moves after the sound) with the highest r, and that r; for the meshes also r(mouth AU, opening).
``--synthetic SHARDS`` adds the held-out synthetic clips of the test split, where the truth is
known: the predicted mouth AU against the true one (``aus_true``) and the mesh lip gap against the
tracked mesh's, r and MAE. Every variant runs with the exports' config plus the overrides, so
``s2au.loudness_jaw=false`` / ``=true`` compares the loudness rule.

Usage: python benchmarks/speech_stages.py --model RUNS --audio tests/data/real_speech [--out FILE.json]
          [--variants au,mesh,...] [--synthetic SHARDS] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emodifftalk.au import AU_INDEX
from emodifftalk.commands.animate import resolve_export
from emodifftalk.config import apply_overrides
from emodifftalk.data.audio import SAMPLE_RATE, load_audio
from emodifftalk.data.shards import iter_dataset
from emodifftalk.diffusion.windowed import sample_motion
from emodifftalk.eval.metrics import lagged_pearson, lip_gap, pearson
from emodifftalk.eval.speech import SILENCE_DB, audio_files, envelope_db, mesh_opening, mouth_au, pick_template
from emodifftalk.motion.data import load_template_infos
from emodifftalk.pipeline.animate import load_models, speech_aus
from emodifftalk.s2au.inference import extract_features

VARIANTS = ("au", "mesh", "au_only", "audio_only", "oracle", "lead1")
LAGS = range(-3, 5)


def lag_figures(env: np.ndarray, x: np.ndarray) -> dict:
    rs = {k: lagged_pearson(env, x, k) for k in LAGS}
    best = max((k for k in rs if rs[k] is not None), key=lambda k: rs[k], default=0)
    return {"r": rs[0], "best_lag": best, "r_best": rs[best]}


def variant_opening(models, cfg, template, aus: np.ndarray, audio: np.ndarray, variant: str, seed: int) -> np.ndarray:
    if variant in ("mesh", "lead1"):
        codes = np.concatenate([aus[1:], aus[-1:]]) if variant == "lead1" else aus
        return mesh_opening(models, template, codes, audio, cfg, seed)
    tmpl = torch.from_numpy(template.verts)
    mcfg = models.motion_cfg
    feats = extract_features(models.motion_frontend, audio, mcfg.s2au.window_seconds, mcfg.s2au.overlap_seconds)
    codes = aus.copy()
    if variant == "audio_only":
        codes[:] = 0.0
    elif variant == "oracle":
        env, _ = envelope_db(audio, len(aus), models.frame_rate(cfg))
        codes[:, AU_INDEX["AU25"]] = codes[:, AU_INDEX["AU26"]] = (env - SILENCE_DB) / -SILENCE_DB
    off = sample_motion(models.motion, models.schedule, tmpl, torch.from_numpy(codes),
                        None if variant == "au_only" else feats.float(), cfg,
                        steps=cfg.diffusion.ddim_steps, generator=torch.Generator().manual_seed(seed),
                        window_frames=cfg.diffusion.window_frames, context_frames=cfg.diffusion.context_frames)
    return lip_gap(template.verts[None] + off.numpy(), template.verts, template.lip_idx)


def real_files(models, cfg, template, files: list[Path], variants: list[str], seed: int) -> list[dict]:
    fps = models.frame_rate(cfg)
    rows = []
    for path in files:
        audio = load_audio(path, target_sr=SAMPLE_RATE)
        aus = speech_aus(models, audio, fps)
        env, _ = envelope_db(audio, aus.shape[0], fps)
        row = {"file": path.name}
        for v in variants:
            if v == "au":
                row[v] = lag_figures(env, mouth_au(aus))
                continue
            opening = variant_opening(models, cfg, template, aus, audio, v, seed)
            row[v] = dict(lag_figures(env, opening), r_au_opening=pearson(mouth_au(aus), opening))
        rows.append(row)
        print(path.name, "  ".join(f"{v} {row[v]['r']:.2f} ({row[v]['best_lag']:+d}: {row[v]['r_best']:.2f})"
                                   for v in variants), flush=True)
    return rows


def synthetic_clips(models, cfg, shards: str, seed: int) -> dict:
    fps = models.frame_rate(cfg)
    templates = load_template_infos(shards)
    acc: dict[str, list] = {k: [] for k in ("au_r", "au_mae", "gap_r", "gap_mae_mm", "env_gap_r", "true_env_gap_r")}
    for s in iter_dataset(shards, "seq", "test"):
        tm = templates[s["meta"]["identity"]]
        audio = s["audio"].astype(np.float32)
        aus = speech_aus(models, audio, fps)
        gap = mesh_opening(models, tm, aus, audio, cfg, seed)
        true_gap = lip_gap(s["verts"], tm.verts, tm.lip_idx)
        env, _ = envelope_db(audio, aus.shape[0], fps)
        acc["au_r"].append(pearson(mouth_au(aus), mouth_au(s["aus_true"])))
        acc["au_mae"].append(float(np.abs(mouth_au(aus) - mouth_au(s["aus_true"])).mean()))
        acc["gap_r"].append(pearson(gap, true_gap))
        acc["gap_mae_mm"].append(float(np.abs(gap - true_gap).mean() * 1e3))
        acc["env_gap_r"].append(pearson(env, gap))
        acc["true_env_gap_r"].append(pearson(env, true_gap))
    out = {k: round(float(np.mean([x for x in v if x is not None])), 4) for k, v in acc.items()}
    return dict(out, n_clips=len(acc["au_r"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="folder holding s2au/ and motion/ runs (as eval speech)")
    p.add_argument("--audio", default=None, help="an audio file or folder (as eval speech)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--synthetic", default=None, help="shard folder: also the test split's clips against the truth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value")
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}")
    models = load_models(resolve_export(None, args.model, "s2au", True),
                         resolve_export(None, args.model, "motion", True))
    cfg = models.motion_cfg
    for c in (cfg, models.s2au.cfg):
        apply_overrides(c, list(args.overrides))
    report: dict = {"overrides": args.overrides}
    if args.audio:
        template = pick_template(cfg.data.root, None)
        rows = real_files(models, cfg, template, audio_files(args.audio), variants, args.seed)
        report["files"] = rows
        report["mean"] = {v: {k: round(float(np.mean([r[v][k] for r in rows])), 4) for k in rows[0][v]}
                          for v in variants}
        report["passing_lag0"] = {v: sum(r[v]["r"] >= 0.5 for r in rows) for v in variants}
        print("mean", json.dumps(report["mean"]), "passing", report["passing_lag0"])
    if args.synthetic:
        report["synthetic"] = synthetic_clips(models, cfg, args.synthetic, args.seed)
        print("synthetic", json.dumps(report["synthetic"]))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
