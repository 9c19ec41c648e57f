"""Per-AU decision thresholds from out-of-concept predictions, and the concept cross-validation.

Training (``text2au.members`` = K > 1) deals the training entries into K concept folds
(:func:`emodifftalk.text2au.dataset.concept_folds`: no concept or AU vector shared between
folds) and member k never sees fold k. The *out-of-fold* (OOF) probability of an entry is the
one from the member that did not see its concept: exactly what the model does on a description
of an expression it was never taught.

* :func:`calibrate_thresholds` picks the threshold on the OOF probabilities (grid
  ``THRESHOLD_GRID``; ties go to the value nearest 0.5): ``mode="global"`` one threshold for all
  AUs maximising micro-F1 (the default: the ensemble's averaged probabilities are conservative,
  and one number is hard to overfit); ``mode="per_au"`` one per AU maximising that AU's F1 (AUs
  with fewer than ``MIN_SUPPORT`` positives keep 0.5).
* :func:`concept_cv` reports the OOF metrics at 0.5 and with *nested* calibration (the
  thresholds applied to fold k are calibrated on the other folds only), so the calibrated
  number is not measured on the data it was tuned on.

Texts read clause by clause (``text2au.compose``, :mod:`emodifftalk.text2au.compose`) can get
their own thresholds (:func:`calibrate_by_reading`, ``text2au.threshold_by_reading``): a maximum
over several readings runs higher than one reading of the whole text. With ``compose=mean`` one
shared threshold did better on the concept CV, so that is the default.

Calibrated thresholds are applied as a per-AU logit shift (:func:`apply_thresholds`), so the
exported probabilities keep a single decision threshold (``text2au.threshold``, 0.5).
"""

from __future__ import annotations

import numpy as np

from emodifftalk.au import NUM_AUS
from emodifftalk.text2au.metrics import multilabel_metrics

THRESHOLD_GRID = np.round(np.arange(0.15, 0.851, 0.05), 2)
MIN_SUPPORT = 3


def _f1(pred: np.ndarray, gt: np.ndarray) -> float:
    tp = float((pred & gt).sum())
    denom = 2 * tp + float((pred & ~gt).sum()) + float((~pred & gt).sum())
    return 2 * tp / denom if denom else 1.0


CALIBRATION_MODES = ("none", "global", "per_au")


def calibrate_thresholds(probs: np.ndarray, labels: np.ndarray, default: float = 0.5,
                         mode: str = "global") -> np.ndarray:
    """(N, 17) probabilities and 0/1 labels -> (17,) thresholds (see module doc for ``mode``)."""
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"calibration mode must be one of {', '.join(CALIBRATION_MODES)}, got {mode!r}")
    probs, gt = np.asarray(probs, dtype=np.float64), np.asarray(labels) >= 0.5
    out = np.full(NUM_AUS, default, dtype=np.float64)
    if mode == "none":
        return out
    if mode == "global":
        scores = [(_f1(probs >= t, gt), -abs(t - default), t) for t in THRESHOLD_GRID]
        return np.full(NUM_AUS, max(scores)[2], dtype=np.float64)
    for k in range(NUM_AUS):
        if gt[:, k].sum() < MIN_SUPPORT:
            continue
        scores = [(_f1(probs[:, k] >= t, gt[:, k]), -abs(t - default), t) for t in THRESHOLD_GRID]
        out[k] = max(scores)[2]
    return out


def apply_thresholds(probs, thresholds, decision: float = 0.5):
    """Shift each AU's logit so that ``p >= thresholds[k]`` becomes ``p' >= decision`` (torch or numpy)."""
    import torch

    p = torch.as_tensor(probs, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
    t = torch.as_tensor(np.asarray(thresholds, dtype=np.float32)).clamp(1e-6, 1 - 1e-6)
    shift = torch.logit(t) - float(np.log(decision / (1 - decision)))
    out = torch.sigmoid(torch.logit(p) - shift)
    return out.numpy() if isinstance(probs, np.ndarray) else out


def calibrate_by_reading(probs: np.ndarray, labels: np.ndarray, composed: np.ndarray, default: float = 0.5,
                         mode: str = "global") -> tuple[np.ndarray, np.ndarray]:
    """(17,) thresholds for texts read whole and (17,) for texts read in clauses (``composed``
    (N,) bool), each calibrated on its own rows; a group without rows shares the other's (so an
    all-false ``composed`` gives one calibration for every reading)."""
    probs, labels, composed = np.asarray(probs), np.asarray(labels), np.asarray(composed, dtype=bool)
    if composed.all() or not composed.any():
        shared = calibrate_thresholds(probs, labels, default, mode)
        return shared, shared.copy()
    return (calibrate_thresholds(probs[~composed], labels[~composed], default, mode),
            calibrate_thresholds(probs[composed], labels[composed], default, mode))


def apply_by_reading(probs, thresholds, composed_thresholds, composed, decision: float = 0.5):
    """:func:`apply_thresholds` with ``composed_thresholds`` on the rows where ``composed`` (N,) is true."""
    out = apply_thresholds(probs, thresholds, decision)
    rows = np.flatnonzero(np.asarray(composed, dtype=bool))
    if rows.size:
        out[rows] = apply_thresholds(probs[rows], composed_thresholds, decision)
    return out


def concept_cv(oof_probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, mode: str = "global",
               composed: np.ndarray | None = None) -> dict:
    """Concept cross-validation from OOF probabilities: metrics at 0.5 and with nested calibration
    (separately for the rows read in clauses, ``composed`` (N,) bool, when given)."""
    oof_probs, labels, folds = np.asarray(oof_probs), np.asarray(labels), np.asarray(folds)
    composed = np.zeros(len(folds), dtype=bool) if composed is None else np.asarray(composed, dtype=bool)
    nested = np.empty_like(oof_probs)
    for f in np.unique(folds):
        rest, this = folds != f, folds == f
        thr, thr_c = calibrate_by_reading(oof_probs[rest], labels[rest], composed[rest], mode=mode)
        nested[this] = apply_by_reading(oof_probs[this], thr, thr_c, composed[this])
    per_fold = []
    for f in np.unique(folds):
        m = multilabel_metrics(nested[folds == f], labels[folds == f])
        per_fold.append({"fold": int(f), "n": int((folds == f).sum()), "f1_macro": m["macro"]["f1"],
                         "f1_micro": m["micro"]["f1"]})
    return {"n_folds": int(len(np.unique(folds))), "at_0.5": multilabel_metrics(oof_probs, labels),
            "calibrated": multilabel_metrics(nested, labels), "per_fold": per_fold}
