"""Checks that need the synthetic ground truth (``aus_true``): how good the labels are and how
much of the lip motion the 17 AUs cannot explain.

* label reliability per AU: Pearson r, bias (mean label - mean truth) and the best lag between
  the OpenFace-like labels and the true activations, over the valid (mask) frames; an AU without
  a label column (AU24 in OpenFace 2.x) reports ``None``.
* AU-unexplained lip variance: per identity, a least-squares fit of the lip vertices'
  displacement from the template on [1, 17 true AU activations] over all its frames; the share
  of the variance left in the residual. 0 would mean the AUs explain the lips completely (v1);
  a large share means the lips carry information only the audio can supply.
"""

from __future__ import annotations

import numpy as np

from emodifftalk.au import AU_NAMES
from emodifftalk.eval.metrics import pearson

MAX_LAG = 3


def label_reliability(labels: list[np.ndarray], masks: list[np.ndarray], truths: list[np.ndarray]) -> dict:
    """Per AU ``{"r", "bias", "lag", "n"}`` pooled over clips of labels/masks/truths (T, 17)."""
    out = {}
    for k, name in enumerate(AU_NAMES):
        lab = np.concatenate([x[:, k] for x in labels])
        tru = np.concatenate([x[:, k] for x in truths])
        ok = np.concatenate([m[:, k] for m in masks]).astype(bool)
        if ok.sum() < 3:
            out[name] = {"r": None, "bias": None, "lag": None, "n": int(ok.sum())}
            continue
        best = (-2.0, 0)
        for lag in range(MAX_LAG + 1):  # labels[t] ~ truth[t - lag], within each clip
            pairs = [(x[lag:, k], y[: len(y) - lag, k], m[lag:, k].astype(bool))
                     for x, y, m in zip(labels, truths, masks)]
            a = np.concatenate([p[0][p[2]] for p in pairs])
            b = np.concatenate([p[1][p[2]] for p in pairs])
            r = pearson(a, b, min_std=1e-8)
            if r is not None and r > best[0]:
                best = (r, lag)
        out[name] = {"r": pearson(lab[ok], tru[ok], min_std=1e-8), "r_at_lag": best[0] if best[0] > -2 else None,
                     "lag": best[1], "bias": float(lab[ok].mean() - tru[ok].mean()), "n": int(ok.sum())}
    return out


def lip_unexplained_variance(verts: list[np.ndarray], truths: list[np.ndarray], template: np.ndarray,
                             lips: np.ndarray) -> float:
    """Residual variance share of the linear fit of lip displacements on the true AUs (one identity)."""
    lips = np.asarray(lips)
    y = np.concatenate([(v[:, lips] - template[lips][None]).reshape(len(v), -1) for v in verts]).astype(np.float64)
    x = np.concatenate(truths).astype(np.float64)
    x = np.concatenate([np.ones((len(x), 1)), x], axis=1)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    total = float(((y - y.mean(0)) ** 2).sum())
    return float(((y - x @ coef) ** 2).sum() / total) if total > 0 else 0.0


def format_truth_report(rep: dict) -> list[str]:
    lines = ["  synthetic ground truth (aus_true):",
             f"    lip variance a linear fit on the 17 true AUs leaves unexplained: "
             f"{100 * rep['lip_unexplained']['mean']:.1f} % (per identity: "
             + ", ".join(f"{k} {100 * v:.0f} %" for k, v in rep["lip_unexplained"]["per_identity"].items()) + ")",
             "    label reliability per AU (r vs truth | r at best lag, lag in frames | bias on 0-1):"]
    for name, s in rep["label_reliability"].items():
        if s["r"] is None:
            lines.append(f"      {name}  no label (column absent)")
        else:
            lines.append(f"      {name}  r={s['r']:.2f} | r={s['r_at_lag']:.2f} at lag {s['lag']} | "
                         f"bias {s['bias']:+.3f}")
    return lines
