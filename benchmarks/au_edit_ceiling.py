"""What AU-edit response can a motion model learn from a synthetic data set? A ceiling for
``eval pipeline``'s bar (gain 0.7–1.3, cosine ≥ 0.8 for every editable AU).

On the ``train`` split, a pooled linear least-squares map from AU codes to per-vertex offsets
(one intercept + 17 fields, all training frames, the same vertices for every identity of the
tiny world's shared topology) is fitted from

* ``true``: the world's true activations (``aus_true``; no model ever sees these),
* ``labels``: the OpenFace-like labels the models train on,
* ``labels + de-attenuation``: the labels' map times ``motion.au_calibration.deattenuation_matrix``
  (estimated from the labels alone), what ``diffusion.edit_path=fields`` applies;

and each fitted field is scored like ``eval/au_response.py`` scores an edit (gain and cosine
against the true per-unit field), averaged over the ``--split`` identities. The linear map is
what an edit of one code can at best be taught by these data: it has no audio to explain the
motion away and it extrapolates exactly. Also printed: how much of each AU the other 16 explain
(R² of the true activations; grouped AUs leave little of their own to learn from).

Usage: python benchmarks/au_edit_ceiling.py --data SHARDS [--split test] [--out ceiling.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from emodifftalk.au import AU_NAMES
from emodifftalk.config import build_config
from emodifftalk.data.shards import iter_dataset
from emodifftalk.eval.au_response import EDITABLE_AUS
from emodifftalk.eval.pipeline import synthetic_fields_of
from emodifftalk.motion.au_calibration import deattenuation_matrix
from emodifftalk.motion.data import load_template_infos

BAR_GAIN, BAR_COSINE = (0.7, 1.3), 0.8


def score(fields: np.ndarray, truth: dict[str, np.ndarray]) -> dict:
    """fields (17, V·3) fitted per-unit offsets → per AU mean gain/cosine over identities' true fields."""
    out = {}
    for k, name in enumerate(AU_NAMES):
        g, c = [], []
        for true in truth.values():
            d = true[k].ravel().astype(np.float64)
            w = fields[k].astype(np.float64)
            g.append(float(w @ d / (d @ d)))
            c.append(float(w @ d / (np.linalg.norm(w) * np.linalg.norm(d) + 1e-30)))
        out[name] = {"gain": float(np.mean(g)), "cosine": float(np.mean(c))}
    out["in_band"] = sum(BAR_GAIN[0] <= out[a]["gain"] <= BAR_GAIN[1] and out[a]["cosine"] >= BAR_COSINE
                         for a in EDITABLE_AUS)
    return out


def own_variance(truths: np.ndarray) -> dict[str, float | None]:
    """Per AU, R² of its true activation on the other 16 (1 = never moves on its own)."""
    out = {}
    for k, name in enumerate(AU_NAMES):
        y = truths[:, k]
        if y.std() < 1e-8:
            out[name] = None
            continue
        x = np.c_[np.ones(len(y)), np.delete(truths, k, axis=1)]
        res = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
        out[name] = float(1.0 - res.var() / y.var())
    return out


def ceiling(data: str, split: str = "test") -> dict:
    cfg = build_config("tiny")
    templates = load_template_infos(data)
    fields_of = synthetic_fields_of(data, cfg.synth, templates)
    offsets, labels, masks, truths = [], [], [], []
    for s in iter_dataset(data, "seq", "train"):
        tpl = templates[s["meta"]["identity"]]
        offsets.append((s["verts"] - tpl.verts).reshape(len(s["verts"]), -1))
        labels.append(s["aus"] * s["au_mask"])
        masks.append(s["au_mask"].astype(bool))
        truths.append(s["aus_true"])
    held_out = sorted({s["meta"]["identity"] for s in iter_dataset(data, "seq", split)})
    truth = {i: f.reshape(len(AU_NAMES), -1) for i in held_out if (f := fields_of(i)) is not None}
    if not truth:
        raise ValueError(f"no {split} identity of {data} is one the synthetic world regenerates")
    y = np.concatenate(offsets).astype(np.float64)

    def fit(codes: list[np.ndarray]) -> np.ndarray:
        x = np.concatenate(codes).astype(np.float64)
        return np.linalg.lstsq(np.c_[np.ones(len(x)), x], y, rcond=None)[0][1:]

    on_labels = fit(labels)
    a = deattenuation_matrix(labels, masks).astype(np.float64)
    return {"data": data, "split": split, "identities": sorted(truth), "train_frames": len(y),
            "fits": {"true": score(fit(truths), truth), "labels": score(on_labels, truth),
                     "labels + de-attenuation": score(a.T @ on_labels, truth)},
            "own_variance_r2": own_variance(np.concatenate(truths))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="packed shards of a synthetic world")
    ap.add_argument("--split", default="test", help="identities to score on (default test)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    rep = ceiling(args.data, args.split)
    print(f"pooled linear AU→offset fits on {rep['train_frames']} training frames, scored on "
          f"{', '.join(rep['identities'])} (gain / cosine; bar {BAR_GAIN[0]}–{BAR_GAIN[1]} / ≥ {BAR_COSINE})")
    r2 = rep["own_variance_r2"]
    print("| AU | R² on the other AUs | " + " | ".join(rep["fits"]) + " |")
    print("|---|---:|" + "---:|" * len(rep["fits"]))
    for a in EDITABLE_AUS:
        cells = [f"{f[a]['gain']:.2f} / {f[a]['cosine']:.2f}" for f in rep["fits"].values()]
        print(f"| {a} | {'–' if r2[a] is None else f'{r2[a]:.2f}'} | " + " | ".join(cells) + " |")
    print("| in band | | " + " | ".join(f"{f['in_band']}/{len(EDITABLE_AUS)}" for f in rep["fits"].values()) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rep, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
