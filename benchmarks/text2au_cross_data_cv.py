"""Concept CV of a trained model on the rows of ANOTHER data file: compares models trained on
different data sets (``text2au train --data``) on the same rows.

The concept CV that ``text2au train`` prints is over the model's own training rows, so it is not
comparable between two data sets (a larger set adds rows, and other concepts). This script scores
a model on the training rows (anchors and paraphrases) of a reference file ``--data`` (default:
the shipped data set), each row read out of concept: by the member that never saw the row's
concept in the model's own training (the model's concept fold of the row's concept key, else of
its AU vector; a concept the model never trained on is read by the mean of all members). The
reading is the model's (``text2au.compose``), and the thresholds are calibrated nested over the
reference file's concept folds, as ``text2au train`` does. For a model trained on the reference
file itself this is exactly the concept CV that training printed.

Usage: python benchmarks/text2au_cross_data_cv.py --model RUN [--data FILE] [--model-data FILE] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emodifftalk.config import load_config
from emodifftalk.text2au.calibration import concept_cv
from emodifftalk.text2au.compose import compose_probs
from emodifftalk.text2au.dataset import concept_folds, concept_key, load_entries, split_entries
from emodifftalk.text2au.encoders import FeatureCache
from emodifftalk.text2au.predict import Text2AU
from emodifftalk.text2au.tuned_top import text_features


def member_of(model_train, k: int, seed: int) -> tuple[dict, dict]:
    """{concept key: fold} and {AU vector: fold} of a model's training entries."""
    folds = concept_folds(model_train, k, seed)
    by_key, by_aus = {}, {}
    for e, f in zip(model_train, folds):
        by_key[concept_key(e)] = f
        by_aus[e.aus] = f
    return by_key, by_aus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="text2au run dir (uses its features/ cache when there)")
    ap.add_argument("--data", default=None, help="reference JSONL (default: the shipped data set)")
    ap.add_argument("--model-data", default=None,
                    help="the JSONL the model was trained on, when its text2au.json records none (it was "
                         "trained on the data set shipped then)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    t2a = Text2AU.load(args.model)
    cfg = load_config(t2a.model_dir / "config.json")
    K, seed = cfg.text2au.members, t2a.info.get("split_seed", 0)
    run = Path(args.model)
    cache = FeatureCache(run / "features", t2a.encoder) if (run / "features").is_dir() else None
    model_data = args.model_data or t2a.info.get("data_path")
    by_key, by_aus = member_of(split_entries(load_entries(model_data), seed)["train"], K, seed)

    ref = split_entries(load_entries(args.data), seed)["train"]
    ref_folds = np.array(concept_folds(ref, K, seed))
    P = len(ref[0].positives)
    texts = [e.description for e in ref] + [p for e in ref for p in e.positives]
    entry_of = list(range(len(ref))) + [i for i in range(len(ref)) for _ in range(P)]
    labels = np.array([ref[i].aus for i in entry_of], dtype=np.float64)
    folds = ref_folds[entry_of]
    member = np.array([by_key.get(concept_key(ref[i]), by_aus.get(ref[i].aus, -1)) for i in entry_of])

    @torch.no_grad()
    def member_probs(strs):  # (K, N, 17)
        feats = cache.encode(strs) if cache is not None else text_features(t2a.model, t2a.encoder, strs)
        return t2a.model.member_probs(feats).numpy()

    probs = np.zeros(labels.shape)
    composed = np.zeros(len(texts), dtype=bool)
    for k in range(-1, K):
        rows = np.flatnonzero(member == k)
        if not rows.size:
            continue

        def predict(s, k=k):
            p = member_probs(s)
            return p.mean(0) if k < 0 else p[k]

        strs = [texts[i] for i in rows]
        if t2a.compose == "none":
            probs[rows] = predict(strs)
        else:
            probs[rows], composed[rows] = compose_probs(strs, predict, t2a.compose)
    groups = composed if cfg.text2au.threshold_by_reading else np.zeros_like(composed)
    res = concept_cv(probs, labels, folds, composed=groups,
                     mode="global" if cfg.text2au.calibration == "none" else cfg.text2au.calibration)
    out = {"model": str(run), "data": str(args.data or "shipped"), "rows": len(texts),
           "rows_unseen_concept": int((member < 0).sum()),
           "cv_f1_macro": round(res["calibrated"]["macro"]["f1"], 4),
           "cv_f1_micro": round(res["calibrated"]["micro"]["f1"], 4),
           "at_0.5_f1_macro": round(res["at_0.5"]["macro"]["f1"], 4)}
    if cache is not None:
        cache.save()
    print(json.dumps(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
