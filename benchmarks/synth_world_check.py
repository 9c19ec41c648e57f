"""The synthetic v2 world's own figures, from its meshes, true AUs, labels and clean audio (no
rendering, no packing; ~10 s for the tiny preset):

* speech vs mouth: per clip r(speech envelope, mesh lip opening) and the mean true mouth AU
  (max AU25, AU26) in frames 40 dB below the clip's peak, measured exactly as ``eval speech``
  measures a model (``eval.speech.envelope_db`` / ``mouth_opening`` / ``mouth_au``): what a
  model that imitates the world can reach at best;
* label reliability per AU (r of the OpenFace-like labels against the truth, success frames,
  AU24 left out as in the CSV) and the AU-unexplained lip variance per identity, with the same
  functions ``emodifftalk inspect`` uses on shards.

Usage: python benchmarks/synth_world_check.py [--config tiny] [section.key=value ...]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.config import PRESETS, build_config
from emodifftalk.data.synthetic.writer import identity_name, make_clip, make_identity
from emodifftalk.eval.metrics import pearson
from emodifftalk.eval.metrics import lip_gap
from emodifftalk.eval.speech import SILENCE_DB, envelope_db, mouth_au
from emodifftalk.data.synthetic_truth import label_reliability, lip_unexplained_variance


def world_figures(cfg) -> dict:
    rs, silent, labels, masks, truths, unexplained = [], [], [], [], [], {}
    for i in range(cfg.n_identities):
        ident = make_identity(cfg, i)
        tmpl = ident.template
        clips = [make_clip(cfg, ident, i, c) for c in range(cfg.clips_per_identity)]
        for clip in clips:
            env, _ = envelope_db(clip.speech.audio, len(clip.verts), cfg.fps)
            rs.append(pearson(env, lip_gap(clip.verts, tmpl.verts, tmpl.vertex_sets["lips"])))
            quiet = env <= SILENCE_DB
            if quiet.any():
                silent.append(float(mouth_au(clip.aus_true)[quiet].mean()))
            mask = np.repeat(clip.success[:, None], NUM_AUS, 1)
            mask[:, AU_INDEX["AU24"]] = False  # OpenFace 2.x has no AU24 column
            labels.append(clip.aus_observed)
            masks.append(mask)
            truths.append(clip.aus_true)
        unexplained[identity_name(i)] = lip_unexplained_variance(
            [c.verts for c in clips], [c.aus_true for c in clips], tmpl.verts, tmpl.vertex_sets["lips"])
    rel = label_reliability(labels, masks, truths)
    return {"n_clips": len(rs),
            "r_envelope_opening": {"mean": float(np.mean(rs)), "min": float(np.min(rs)), "max": float(np.max(rs))},
            "silent_mouth_au": {"mean": float(np.mean(silent)), "max": float(np.max(silent))} if silent else None,
            "label_r": {k: v["r"] for k, v in rel.items() if v["r"] is not None},
            "lip_unexplained": unexplained}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tiny", choices=PRESETS)
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. synth.seed=1")
    args = ap.parse_args()
    out = world_figures(build_config(args.config, args.overrides).synth)
    r, s = out["r_envelope_opening"], out["silent_mouth_au"]
    print(f"{out['n_clips']} clips")
    print(f"r(envelope, mesh lip opening) per clip: mean {r['mean']:.2f} (min {r['min']:.2f}, max {r['max']:.2f})")
    if s:
        print(f"true mouth AU in frames {-SILENCE_DB:.0f} dB below the peak: mean {s['mean']:.3f} (max {s['max']:.3f})")
    print("label r per AU: " + ", ".join(f"{k} {v:.2f}" for k, v in out["label_r"].items()))
    print("AU-unexplained lip variance: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in out["lip_unexplained"].items()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
