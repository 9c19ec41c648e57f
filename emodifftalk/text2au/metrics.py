"""Multi-label metrics for Text-to-AU (paper supp. §3, "Evaluation").

Definitions (binary predictions ``prob >= threshold``, default 0.5; N entries x 17 AUs):

* ``accuracy``  mean per-label accuracy: (TP + TN) / (N * 17), i.e. the mean over the 17 AUs of
  each AU's accuracy (all AUs have N entries, so the two are the same number).
* per AU: ``precision`` = TP / (TP + FP), ``recall`` = TP / (TP + FN), ``f1`` = 2TP / (2TP + FP + FN).
  A ratio whose denominator is 0 is undefined and reported as ``null`` (e.g. recall of an AU that
  never occurs in the split), not as 0.
* ``macro``: mean of the per-AU values over the AUs where the value is defined; ``n_aus`` says
  how many AUs entered each mean. ``micro``: the same ratios on TP/FP/FN summed over all AUs.
* ``exact_match``: fraction of entries whose whole 17-AU vector is right (stricter; not in the paper).

The threshold may be one number or one per AU (17,), as calibrated by training.

The paper reports accuracy 0.9753, mean F1 0.9030, mean precision 0.8958, mean recall 0.9386; we
read its "mean" as the macro average over AUs.
"""

from __future__ import annotations

import numpy as np

from emodifftalk.au import AU_NAMES, NUM_AUS

PAPER_RESULTS = {"accuracy": 0.9753, "f1": 0.9030, "precision": 0.8958, "recall": 0.9386}


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def multilabel_metrics(probs, labels, threshold: float = 0.5) -> dict:
    """probs (N, 17) in [0, 1], labels (N, 17) in {0, 1} -> JSON-ready metric dict (see module doc)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 2 or p.shape[1] != NUM_AUS:
        raise ValueError(f"probs {p.shape} and labels {y.shape} must both be (N, {NUM_AUS})")
    if p.shape[0] == 0:
        raise ValueError("no entries to evaluate")
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (NUM_AUS,))
    pred = p >= thr
    gt = y >= 0.5
    tp = (pred & gt).sum(0).astype(np.float64)
    fp = (pred & ~gt).sum(0).astype(np.float64)
    fn = (~pred & gt).sum(0).astype(np.float64)
    tn = (~pred & ~gt).sum(0).astype(np.float64)
    n = p.shape[0]
    per_au = {}
    for k, name in enumerate(AU_NAMES):
        per_au[name] = {"accuracy": float((tp[k] + tn[k]) / n), "precision": _ratio(tp[k], tp[k] + fp[k]),
                        "recall": _ratio(tp[k], tp[k] + fn[k]), "f1": _ratio(2 * tp[k], 2 * tp[k] + fp[k] + fn[k]),
                        "support": int(tp[k] + fn[k]), "predicted": int(tp[k] + fp[k])}
    macro, n_aus = {}, {}
    for m in ("precision", "recall", "f1"):
        vals = [per_au[a][m] for a in AU_NAMES if per_au[a][m] is not None]
        macro[m] = float(np.mean(vals)) if vals else None
        n_aus[m] = len(vals)
    T, F, N_ = tp.sum(), fp.sum(), fn.sum()
    micro = {"precision": _ratio(T, T + F), "recall": _ratio(T, T + N_), "f1": _ratio(2 * T, 2 * T + F + N_)}
    return {
        "n_entries": int(n),
        "threshold": float(thr[0]) if np.ndim(threshold) == 0 else [round(float(t), 4) for t in thr],
        "accuracy": float((tp + tn).sum() / (n * NUM_AUS)),
        "exact_match": float((pred == gt).all(1).mean()),
        "macro": macro, "micro": micro, "n_aus": n_aus, "per_au": per_au,
    }


def weak_aus(metrics: dict, k: int = 4) -> list[tuple[str, float]]:
    """The ``k`` AUs with the lowest defined F1 (for reports)."""
    f1 = [(a, v["f1"]) for a, v in metrics["per_au"].items() if v["f1"] is not None]
    return sorted(f1, key=lambda x: x[1])[:k]
