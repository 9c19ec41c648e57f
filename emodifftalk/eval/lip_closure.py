"""Lip closure on bilabials (/p b m/): does the animated mouth close where the tracked one does?

Per frame (its centre time), from the clip's IPA phone timeline (``meta["phones"]``, written by the
v2 synthetic world) and the lip gap ``eval.metrics.lip_gap`` (upper/lower lip centroid distance
minus the template's, metres):

* *speech frames*: inside a phone that is not a pause;
* *bilabial frames*: the world's own bilabial-closure articulator (``data/synthetic/visemes.py``,
  dominance-weighted /p b m/) is at least ``BILABIAL_LEVEL``;
* *closed*: the opening is at most ``CLOSED_MM`` above the template's (the tracked meshes' median
  opening at bilabial frames is 0.5 mm, elsewhere 3.8 mm: v2 tiny-preset test split).

Truth positives are bilabial frames whose **tracked** lips are closed; predicted positives are speech
frames whose **predicted** lips are closed. Speech frames where the tracked lips are closed for
another reason (a near-closed jaw on /t/, a rest between words) are left out: neither closing nor
opening them there is wrong. ``f1`` pools the counts over clips; the tracked meshes score 1 by
construction, the neutral template (always closed) scores its precision's share.
"""

from __future__ import annotations

import numpy as np

from emodifftalk.data.synthetic.visemes import A_CLOSE, articulation

BILABIAL_LEVEL = 0.5  # bilabial-closure articulator level (0..1) that marks a /p b m/ frame
CLOSED_MM = 1.0  # lips count as closed when their opening is at most this above the template's


def frame_labels(phones, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(speech, bilabial) bool (T,) masks from an IPA timeline [(phone, start_s, end_s)] ('' = pause)."""
    phones = [(str(p), float(s), float(e)) for p, s, e in phones]
    centres = (np.arange(n_frames) + 0.5) / fps
    speech = np.zeros(n_frames, bool)
    for p, s, e in phones:
        if p:
            speech |= (centres >= s) & (centres < e)
    bilabial = articulation(phones, centres)[:, A_CLOSE] >= BILABIAL_LEVEL
    return speech, bilabial & speech


def closure_counts(pred_opening: np.ndarray, true_opening: np.ndarray, speech: np.ndarray,
                   bilabial: np.ndarray, closed_mm: float = CLOSED_MM) -> dict[str, int]:
    """TP/FP/FN of one clip (openings (T,) in metres relative to the template; see module docstring)."""
    th = closed_mm / 1000.0
    true_closed, pred_closed = true_opening <= th, pred_opening <= th
    truth = bilabial & true_closed
    considered = speech & ~(true_closed & ~bilabial)
    pred = pred_closed & considered
    return {"tp": int((pred & truth).sum()), "fp": int((pred & ~truth).sum()),
            "fn": int((~pred & truth).sum()), "bilabial_frames": int(truth.sum())}


def f1_of(counts: dict[str, int]) -> float | None:
    """F1 of pooled counts; None when there is neither a true nor a predicted closure."""
    denom = 2 * counts["tp"] + counts["fp"] + counts["fn"]
    return 2 * counts["tp"] / denom if denom else None


def add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b[k] for k in b}
