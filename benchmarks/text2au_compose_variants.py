"""Ways of reading a description (``text2au.compose`` and variants), measured on ONE trained model.

The head does not change with the reading, so every variant is scored on the same export:

* concept CV: each training anchor / paraphrase read by the member that never saw its concept
  fold, thresholds calibrated nested (on the other folds; texts read whole and texts read in
  clauses separately, as training does), calibrated macro / micro-F1;
* each ``--texts`` file (hand-written hold-out sets): micro-F1 (P / R) and exact match, with
  the thresholds calibrated on all out-of-concept rows. Hold-out sets are measured, never tuned on.

A variant is ``READING[+by_reading][+per_au]``. Readings: ``none`` (whole text), ``mean`` /
``max`` (``text2au.compose``), ``clauses`` (the clause maximum alone), ``negation`` (the whole
text unless a clause is negated: negation scope only), ``punct`` (``mean`` with clause boundaries
at punctuation only). ``+by_reading``: texts read in clauses get thresholds of their own
(``text2au.threshold_by_reading``); ``+per_au``: per-AU thresholds (``text2au.calibration``).

Usage: python benchmarks/text2au_compose_variants.py --model runs/text2au [--variants none,mean]
       [--texts FILE ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from emodifftalk.config import load_config
from emodifftalk.text2au import compose
from emodifftalk.text2au.calibration import apply_by_reading, calibrate_by_reading
from emodifftalk.text2au.dataset import DATA_DIR, HOLDOUT_GLOB, concept_folds, load_entries, split_entries
from emodifftalk.text2au.encoders import FeatureCache
from emodifftalk.text2au.evaluate import load_labelled_texts, texts_metrics
from emodifftalk.text2au.metrics import multilabel_metrics
from emodifftalk.text2au.predict import Text2AU

READINGS = ("none", "mean", "max", "clauses", "negation", "punct")
VARIANTS = ("none", "mean", "mean+by_reading", "mean+per_au", "max", "max+by_reading", "clauses+by_reading",
            "negation+by_reading", "punct")
DEFAULT_TEXTS = sorted(DATA_DIR.glob(HOLDOUT_GLOB))  # the sets never trained on (data v5)
_PUNCT = re.compile(r"[,;:]")


def read_variant(texts: list[str], predict, reading: str) -> tuple[np.ndarray, np.ndarray]:
    """(B, 17) probabilities and (B,) composed mask of ``texts`` under ``reading``."""
    if reading == "none":
        return np.asarray(predict(texts)), np.zeros(len(texts), dtype=bool)
    if reading in ("mean", "max"):
        return compose.compose_probs(texts, predict, reading)
    if reading == "punct":
        saved, compose._BOUNDARY = compose._BOUNDARY, _PUNCT
        try:
            return compose.compose_probs(texts, predict, "mean")
        finally:
            compose._BOUNDARY = saved
    readings = [compose.read(t) for t in texts]
    parts = sorted({p for r in readings for p in r.parts})
    probs = np.asarray(predict(parts))
    index = {p: i for i, p in enumerate(parts)}
    out = []
    for r in readings:
        whole = probs[index[r.text]]
        best = probs[[index[c] for c in r.clauses]].max(0) if r.clauses else whole
        if reading == "clauses":
            out.append(best)
        elif reading == "negation":
            out.append(best if r.negated else whole)
        else:
            raise ValueError(f"unknown reading {reading!r}; expected one of {', '.join(READINGS)}")
    return np.stack(out), np.array([r.composed for r in readings])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="text2au run dir (uses its features/ cache)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--texts", nargs="*", default=[str(p) for p in DEFAULT_TEXTS])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    t2a = Text2AU.load(args.model)
    cfg = load_config(t2a.model_dir / "config.json")
    run = Path(args.model)
    cache = FeatureCache(run / "features" if (run / "features").is_dir() else run, t2a.encoder)
    train = split_entries(load_entries(t2a.info.get("data_path")), t2a.info.get("split_seed", 0))["train"]
    folds = np.array(concept_folds(train, cfg.text2au.members, t2a.info.get("split_seed", 0)))
    texts = [e.description for e in train] + [p for e in train for p in e.positives]
    row_fold = np.concatenate([folds, np.repeat(folds, len(train[0].positives))])
    labels = np.array([e.aus for e in train] + [e.aus for e in train for _ in e.positives], dtype=np.float64)

    @torch.no_grad()
    def member_probs(strs):  # (K, N, 17)
        return t2a.model.member_probs(cache.encode(strs)).numpy()

    results = {}
    for variant in args.variants.split(","):
        reading, *flags = variant.split("+")
        mode = "per_au" if "per_au" in flags else "global"
        oof = np.zeros(labels.shape)
        composed = np.zeros(len(texts), dtype=bool)
        for k in range(cfg.text2au.members):
            rows = np.flatnonzero(row_fold == k)
            oof[rows], composed[rows] = read_variant([texts[i] for i in rows], lambda s, k=k: member_probs(s)[k],
                                                     reading)
        by_reading = "by_reading" in flags

        def groups(mask, by_reading=by_reading):
            return mask if by_reading else np.zeros_like(mask)

        composed = groups(composed)
        nested = np.zeros_like(oof)
        for f in np.unique(row_fold):
            rest, this = row_fold != f, row_fold == f
            thr = calibrate_by_reading(oof[rest], labels[rest], composed[rest], mode=mode)
            nested[this] = apply_by_reading(oof[this], *thr, composed[this])
        cv = multilabel_metrics(nested, labels)
        thr = calibrate_by_reading(oof, labels, composed, mode=mode)
        res = {"cv_f1_macro": round(cv["macro"]["f1"], 3), "cv_f1_micro": round(cv["micro"]["f1"], 3),
               "threshold_whole": float(thr[0][0]), "threshold_composed": float(thr[1][0])}
        for path in args.texts:
            items = load_labelled_texts(path)
            probs, comp = read_variant([it.text for it in items], lambda s: member_probs(s).mean(0), reading)
            m = texts_metrics(apply_by_reading(probs, *thr, groups(comp)), items, 0.5)
            res[Path(path).stem] = {"f1": round(m["micro"]["f1"], 3), "precision": round(m["micro"]["precision"], 3),
                                    "recall": round(m["micro"]["recall"], 3), "exact": round(m["exact_match"], 3)}
        results[variant] = res
        print(variant, json.dumps(res), flush=True)
    cache.save()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
