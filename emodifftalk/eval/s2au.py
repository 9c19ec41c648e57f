"""``emodifftalk eval s2au``: Speech-to-AU accuracy on held-out identities, with two baselines.

Methods, all scored by :mod:`emodifftalk.eval.au_metrics` on every valid (frame, AU) label:

* ``s2au``        the trained encoder, full clips, windowed inference exactly as ``predict_aus``.
* ``train_mean``  a constant: the per-AU mean of the ``train`` split's valid labels.
* ``train_median`` a constant: the per-AU median of those labels (from a 1000-bin histogram, exact
  to 1e-3) — the best constant under MAE, since the encoder is trained with an L1 loss and a mean
  is not the fair constant to compare MAE against.
* ``ridge``       per-AU ridge regression from the frame-pooled audio features of one frame
  (the encoder's own input features, box-pooled onto the video grid with ``pool_to_frames``) plus a
  bias, fit on the ``train`` split: minimises ``sum_t m_tk (y_tk - w_k.z_t - b_k)^2 + alpha |w_k|^2``
  with ``z`` the features standardised by the train mean/std (``alpha`` = ``--ridge-alpha``,
  default 1.0); predictions clipped to [0, 1]. Statistics are accumulated as Gram matrices, so
  one streaming pass over ``train`` fits it.

Splits are by identity (``val`` / ``test`` hold identities never seen in training); ``overall``
pools the evaluated splits. The JSON report holds every metric per AU and method and split,
the excluded AUs (no valid label, e.g. AU24 under OpenFace), and ``beats_baselines``: per
baseline and AU group (``mean`` = all AUs, ``mean_speech`` = mouth/jaw AUs), whether the
encoder's mean MAE is lower and its mean Pearson r and F1 higher (where the baseline has them),
on the pooled evaluated splits.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from emodifftalk.au import NUM_AUS
from emodifftalk.data.shards import SkipStats, iter_dataset, load_manifest, shard_urls
from emodifftalk.eval.au_metrics import AUMetricAccumulator
from emodifftalk.featurize import FeatureSource
from emodifftalk.s2au.inference import load_s2au, predict_from_features
from emodifftalk.s2au.model import pool_to_frames
from emodifftalk.utils import atomic_write_text

log = logging.getLogger(__name__)

METHODS = ("s2au", "train_mean", "train_median", "ridge")
BASELINES = METHODS[1:]
HIST_BINS = 1000
HELD_OUT = ("val", "test")


class RidgeBaseline:
    """Streaming per-AU ridge regression on standardised features (see module docstring)."""

    def __init__(self, dim: int, alpha: float = 1.0):
        self.dim, self.alpha = int(dim), float(alpha)
        d1 = self.dim + 1
        self.gram = np.zeros((NUM_AUS, d1, d1))  # per AU: sum m x~ x~^T, x~ = [x, 1]
        self.xty = np.zeros((NUM_AUS, d1))
        self.all_gram = np.zeros((d1, d1))  # every frame: for the standardisation statistics
        self.w: np.ndarray | None = None

    @staticmethod
    def _aug(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x.astype(np.float64), np.ones((x.shape[0], 1))], axis=1)

    def update(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> None:
        """x (T, D) frame-pooled features, y (T, 17) labels, mask (T, 17) bool."""
        xa = self._aug(x)
        m = mask.astype(np.float64)
        self.all_gram += xa.T @ xa
        self.gram += np.einsum("tk,ti,tj->kij", m, xa, xa)
        self.xty += np.einsum("tk,ti,tk->ki", m, xa, np.where(mask, y, 0.0))

    def fit(self) -> None:
        n = self.all_gram[-1, -1]
        if n == 0:
            raise ValueError("ridge baseline: no training frames")
        mean = self.all_gram[-1, :-1] / n
        var = np.clip(np.diag(self.all_gram)[:-1] / n - mean**2, 1e-8, None)
        # ridge on z = (x - mean) / std  <=>  penalty alpha * var_j on the original-scale weights
        penalty = np.diag(np.concatenate([self.alpha * var, [0.0]]))
        self.w = np.zeros((NUM_AUS, self.dim + 1))
        for k in range(NUM_AUS):
            if self.gram[k, -1, -1] == 0:
                continue  # no valid label for this AU (AU24): predicts 0, excluded in the metrics
            self.w[k] = np.linalg.solve(self.gram[k] + penalty + 1e-9 * np.eye(self.dim + 1), self.xty[k])

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert self.w is not None, "fit() first"
        return np.clip(self._aug(x) @ self.w.T, 0.0, 1.0)


def _clips(root: str, split: str, features, stats):
    """Decoded seq clips of ``split`` with their features (Ta, D) attached."""
    if not shard_urls(root, "seq", split):
        return
    for s in iter_dataset(root, "seq", split, stats=stats):
        yield s, torch.from_numpy(features(s))


def _frame_feats(feats: torch.Tensor, n_frames: int, fps: float, rate: float) -> np.ndarray:
    return pool_to_frames(feats[None].double(), None, n_frames, fps, rate)[0].numpy()


def run_eval(model_dir: str | Path, data_root: str | Path, splits: tuple[str, ...] = HELD_OUT,
             out: str | Path | None = None, device: str = "cpu", ridge_alpha: float = 1.0,
             overrides: list[str] | None = None) -> dict:
    """Evaluate an s2au export on ``splits`` of the packed folder ``data_root``; returns the report
    (and writes it as JSON to ``out`` when given)."""
    manifest = load_manifest(data_root)  # clear error for a folder that is not packed shards
    bundle = load_s2au(model_dir, device=device, overrides=overrides)
    cfg = bundle.cfg
    model, rate = bundle.model, bundle.model.feature_rate
    threshold = cfg.s2au.binarize_threshold
    features = FeatureSource(cfg)
    stats = SkipStats()
    root = str(data_root)

    # ---- baselines: one streaming pass over train ----
    au_sum, au_n = np.zeros(NUM_AUS), np.zeros(NUM_AUS)
    hist = np.zeros((NUM_AUS, HIST_BINS))
    ridge = RidgeBaseline(model.in_dim, ridge_alpha)
    n_train = 0
    for s, feats in _clips(root, "train", features, stats):
        fps, t = float(s["meta"]["fps"]), int(s["meta"]["n_frames"])
        m = s["au_mask"]
        au_sum += np.where(m, s["aus"], 0.0).sum(0)
        au_n += m.sum(0)
        bins = np.clip((s["aus"] * HIST_BINS).astype(int), 0, HIST_BINS - 1)
        for k in range(NUM_AUS):
            hist[k] += np.bincount(bins[m[:, k], k], minlength=HIST_BINS)
        ridge.update(_frame_feats(feats, t, fps, rate), s["aus"], m)
        n_train += 1
    if n_train == 0:
        raise ValueError(f"{data_root} has no train clips: the baselines need the train split")
    train_mean = np.where(au_n > 0, au_sum / np.maximum(au_n, 1), 0.0)
    train_median = np.array([(np.searchsorted(np.cumsum(h), h.sum() / 2) + 0.5) / HIST_BINS if h.sum() else 0.0
                             for h in hist])
    ridge.fit()

    # ---- evaluate ----
    accs = {sp: {m: AUMetricAccumulator(threshold) for m in METHODS} for sp in splits}
    n_clips = {}
    for split in splits:
        n = 0
        for s, feats in _clips(root, split, features, stats):
            fps, t = float(s["meta"]["fps"]), int(s["meta"]["n_frames"])
            gt, m = s["aus"], s["au_mask"]
            pred = predict_from_features(model, feats, t, fps, cfg.s2au.window_seconds,
                                         cfg.s2au.overlap_seconds, device).numpy()
            accs[split]["s2au"].update(pred, gt, m)
            accs[split]["train_mean"].update(np.broadcast_to(train_mean, gt.shape), gt, m)
            accs[split]["train_median"].update(np.broadcast_to(train_median, gt.shape), gt, m)
            accs[split]["ridge"].update(ridge.predict(_frame_feats(feats, t, fps, rate)), gt, m)
            n += 1
        n_clips[split] = n
        if n == 0:
            log.warning("split %s of %s has no seq clips", split, data_root)
    overall = {m: AUMetricAccumulator(threshold) for m in METHODS}
    for split in splits:
        for m in METHODS:
            overall[m].merge(accs[split][m])

    results = {sp: {m: accs[sp][m].compute() for m in METHODS} for sp in splits if n_clips[sp]}
    results["overall"] = {m: overall[m].compute() for m in METHODS}
    beats = {b: _beats_all(results["overall"]["s2au"], results["overall"][b]) for b in BASELINES}
    report = {
        "model": str(model_dir), "data": root, "splits": list(splits), "n_clips": n_clips,
        "n_train_clips": n_train, "identities": {sp: manifest.get("identities", {}).get(sp, []) for sp in splits},
        "encoder_id": bundle.encoder_id, "threshold": threshold, "ridge_alpha": ridge_alpha,
        "excluded_aus": results["overall"]["s2au"]["excluded_aus"], "train_mean": train_mean.tolist(),
        "train_median": train_median.tolist(),
        "results": results, "beats_baselines": beats, "skipped_samples": stats.n_skipped,
        "table": format_table(results),
    }
    if out is not None:
        atomic_write_text(out, json.dumps(report, indent=2, sort_keys=True))
    return report


def _beats_all(ours: dict, baseline: dict) -> dict:
    return {group: _beats(ours[group], baseline[group]) for group in ("mean", "mean_speech")}


def _beats(ours: dict, baseline: dict) -> bool:
    """Lower mean MAE, and a higher mean Pearson r and binarised F1 wherever the baseline has one
    (a constant has no r; its F1 counts)."""
    if ours["mae"] is None or baseline["mae"] is None or ours["mae"] >= baseline["mae"]:
        return False
    for metric in ("pearson", "f1"):
        if baseline[metric] is not None and (ours[metric] is None or ours[metric] <= baseline[metric]):
            return False
    return True


def format_table(results: dict) -> str:
    """Plain-text summary: one row per (split, method): macro means over all AUs, then over the
    speech (mouth/jaw) AUs."""
    head = (f"{'split':<8} {'method':<13} {'MAE':>6} {'r':>6} {'Acc':>6} {'Prec':>6} {'Rec':>6} {'F1':>6}"
            f" | {'speech AUs: MAE':>15} {'r':>6} {'F1':>6}")
    lines = [head, "-" * len(head)]

    def f(v, w=6):
        return f"{v:>{w}.3f}" if v is not None else f"{'n/a':>{w}}"

    for split, per in results.items():
        for method, r in per.items():
            m, sp = r["mean"], r["mean_speech"]
            lines.append(f"{split:<8} {method:<13} {f(m['mae'])} {f(m['pearson'])} {f(m['accuracy'])} "
                         f"{f(m['precision'])} {f(m['recall'])} {f(m['f1'])} | {f(sp['mae'], 15)} "
                         f"{f(sp['pearson'])} {f(sp['f1'])}")
    return "\n".join(lines)
