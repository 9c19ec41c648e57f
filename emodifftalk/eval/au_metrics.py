"""Speech-to-AU metrics: per-AU MAE, Pearson r and binarised accuracy / precision / recall / F1.

Definitions (all over the *valid* (frame, AU) entries: ``au_mask`` true and the frame real):

* ``mae``      mean |pred - gt| of normalised intensities in [0, 1] (x5 for OpenFace's 0–5 scale).
* ``pearson``  Pearson correlation of pred and gt over all valid frames of all clips pooled;
  ``None`` if either side is constant (correlation undefined).
* binarised at ``threshold`` (``cfg.s2au.binarize_threshold`` = 0.2 = intensity 1.0 on OpenFace's
  0–5 scale, i.e. "AU present at trace level or stronger"): an entry is positive iff value >= threshold.
  ``accuracy`` = (TP + TN) / N, ``precision`` = TP / (TP + FP), ``recall`` = TP / (TP + FN),
  ``f1`` = 2 TP / (2 TP + FP + FN). A ratio with a zero denominator is undefined and reported as
  ``None`` (e.g. F1 of an AU that neither the labels nor the prediction ever switch on): counting
  it as 0 (scikit-learn's ``zero_division=0``) would punish agreeing on "never active".
* An AU with no valid entry at all (AU24 under OpenFace) is listed in ``excluded_aus`` with all
  metrics ``None`` and left out of the means.
* ``mean`` holds the macro average over the included AUs, each metric over the AUs where it is
  defined (``None`` if it is defined for none); ``mean_speech`` / ``mean_expression`` the same over
  the articulation AUs (``au.SPEECH_AUS``, mouth and jaw: what speech can predict) and the others
  (brows, eyes, cheeks, nose, blink: emotion, which the Text-to-AU controller supplies).

Statistics are accumulated as sums (float64) so evaluation streams over any number of clips.
"""

from __future__ import annotations

import numpy as np

from emodifftalk.au import AU_NAMES, EXPRESSION_AUS, NUM_AUS, SPEECH_AUS

METRIC_NAMES = ("mae", "pearson", "accuracy", "precision", "recall", "f1")


class AUMetricAccumulator:
    """Streaming sufficient statistics for the metrics above; ``update`` per clip or batch."""

    def __init__(self, threshold: float):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"AU binarisation threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        z = lambda: np.zeros(NUM_AUS, dtype=np.float64)
        self.n, self.abs_err = z(), z()
        self.sx, self.sy, self.sxx, self.syy, self.sxy = z(), z(), z(), z(), z()
        self.tp, self.fp, self.fn, self.tn = z(), z(), z(), z()

    def update(self, pred, gt, au_mask=None) -> None:
        """pred, gt (..., 17) arrays; au_mask (..., 17) bool (None = all valid)."""
        pred = np.asarray(pred, dtype=np.float64).reshape(-1, NUM_AUS)
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, NUM_AUS)
        if pred.shape != gt.shape:
            raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ")
        m = np.ones_like(pred, dtype=bool) if au_mask is None else np.asarray(au_mask, bool).reshape(-1, NUM_AUS)
        if m.shape != pred.shape:
            raise ValueError(f"au_mask {m.shape} does not match pred {pred.shape}")
        w = m.astype(np.float64)
        x = np.where(m, pred, 0.0)
        y = np.where(m, gt, 0.0)
        self.n += w.sum(0)
        self.abs_err += np.abs(x - y).sum(0)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += (x * x).sum(0)
        self.syy += (y * y).sum(0)
        self.sxy += (x * y).sum(0)
        pp, gp = (x >= self.threshold) & m, (y >= self.threshold) & m
        self.tp += (pp & gp).sum(0)
        self.fp += (pp & ~gp).sum(0)
        self.fn += (~pp & gp).sum(0)
        self.tn += (~pp & ~gp & m).sum(0)

    def merge(self, other: AUMetricAccumulator) -> None:
        for k in ("n", "abs_err", "sx", "sy", "sxx", "syy", "sxy", "tp", "fp", "fn", "tn"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def compute(self) -> dict:
        """``{"per_au": {AU: {metric: value}}, "mean": {...}, "excluded_aus": [...], "n_entries",
        "threshold"}`` with plain Python floats (JSON-ready)."""
        per_au, excluded = {}, []
        for k, name in enumerate(AU_NAMES):
            n = self.n[k]
            if n == 0:
                excluded.append(name)
                per_au[name] = {m: None for m in METRIC_NAMES} | {"n": 0}
                continue
            cov = self.sxy[k] / n - (self.sx[k] / n) * (self.sy[k] / n)
            vx = self.sxx[k] / n - (self.sx[k] / n) ** 2
            vy = self.syy[k] / n - (self.sy[k] / n) ** 2
            pearson = float(cov / np.sqrt(vx * vy)) if vx > 1e-12 and vy > 1e-12 else None
            if pearson is not None:
                pearson = float(np.clip(pearson, -1.0, 1.0))
            tp, fp, fn, tn = self.tp[k], self.fp[k], self.fn[k], self.tn[k]
            per_au[name] = {
                "mae": float(self.abs_err[k] / n),
                "pearson": pearson,
                "accuracy": float((tp + tn) / n),
                "precision": _ratio(tp, tp + fp),
                "recall": _ratio(tp, tp + fn),
                "f1": _ratio(2 * tp, 2 * tp + fp + fn),
                "n": int(n),
            }
        def macro(names) -> dict:
            out = {}
            for m in METRIC_NAMES:
                vals = [per_au[a][m] for a in names if a not in excluded and per_au[a][m] is not None]
                out[m] = float(np.mean(vals)) if vals else None
            return out

        return {"per_au": per_au, "mean": macro(AU_NAMES), "mean_speech": macro(SPEECH_AUS),
                "mean_expression": macro(EXPRESSION_AUS), "excluded_aus": excluded,
                "n_entries": int(self.n.sum()), "threshold": self.threshold}


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def au_metrics(pred, gt, au_mask=None, threshold: float = 0.2) -> dict:
    """One-shot version of :class:`AUMetricAccumulator` for arrays (..., 17)."""
    acc = AUMetricAccumulator(threshold)
    acc.update(pred, gt, au_mask)
    return acc.compute()
