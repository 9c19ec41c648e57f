"""Text-to-AU evaluation: a split of the training data set or a file of labelled texts.

Metrics are ``text2au.metrics.multilabel_metrics`` (definitions there). Two kinds of evaluation
data: a split of the training data set (:func:`evaluate_model`), and a file of labelled texts (:func:`evaluate_texts`, ``text2au eval --texts FILE``): JSONL lines
``{"text": ..., "aus": ["AU06", "AU12"], "style": "idiom"}``. The shipped
``data/holdout_s30.jsonl`` is such a file: written blind, apart from the training data, and never
used for training or threshold calibration (it chose between two drafts of data v5: README,
Text-to-AU round 6).
The ``data/written_*.jsonl`` files have the same format but are training data since data v5.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodifftalk.au import AU_NAMES, NUM_AUS, au_vector_from_names
from emodifftalk.text2au.dataset import DATA_DIR, SPLITS, DataError, data_fingerprint, load_entries, split_entries
from emodifftalk.text2au.metrics import PAPER_RESULTS, multilabel_metrics, weak_aus
from emodifftalk.text2au.predict import Text2AU

log = logging.getLogger(__name__)


def evaluate_model(model_dir, data=None, split: str = "test", encoder=None) -> dict:
    """Evaluate an exported Text-to-AU model on one split of its data set (the split it was trained with)."""
    if split not in SPLITS + ("all",):
        raise ValueError(f"split must be one of {', '.join(SPLITS)} or all, got {split!r}")
    t2a = Text2AU.load(model_dir, encoder=encoder)
    path = data or t2a.info.get("data_path") or None
    entries = load_entries(path)
    sha = data_fingerprint(path)
    if t2a.info.get("data_sha256") and sha != t2a.info["data_sha256"]:
        log.warning("evaluating on %s, which differs from the data file the model was trained on (sha256 %s..., "
                    "trained on %s...): split membership may differ", path or "the shipped data", sha[:12],
                    t2a.info["data_sha256"][:12])
    chosen = entries if split == "all" else split_entries(entries, t2a.info.get("split_seed", 0))[split]
    if not chosen:
        raise ValueError(f"split {split!r} of the data set is empty")
    probs = t2a.predict_probs([e.description for e in chosen]).numpy()
    labels = np.array([e.aus for e in chosen], dtype=np.float64)
    out = multilabel_metrics(probs, labels, t2a.threshold)
    out.update(split=split, encoder_id=t2a.encoder_id, data_sha256=sha, paper=PAPER_RESULTS,
               weakest_aus=[{"au": a, "f1": f} for a, f in weak_aus(out)])
    return out


# --------------------------------------------------------------------------------------------
# Labelled-text files (the hand-written hold-out set)
# --------------------------------------------------------------------------------------------

HOLDOUT_DATA = DATA_DIR / "holdout_s30.jsonl"


@dataclass(frozen=True)
class LabelledText:
    text: str
    aus: tuple[int, ...]  # (17,) 0/1 in AU_NAMES order
    style: str = ""


def load_labelled_texts(path: str | Path | None = None) -> list[LabelledText]:
    """Read ``{"text", "aus": [AU names], "style"?}`` JSONL (default: the shipped hold-out set)."""
    path = Path(path) if path else HOLDOUT_DATA
    if not path.is_file():
        raise FileNotFoundError(f"labelled-text file {path} does not exist")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise DataError(f"{where}: need a non-empty 'text' string")
        if not isinstance(obj.get("aus"), list):
            raise DataError(f"{where}: 'aus' must be a list of AU names, e.g. [\"AU06\", \"AU12\"]")
        try:
            vec = au_vector_from_names(obj["aus"])
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        out.append(LabelledText(obj["text"], tuple(vec), str(obj.get("style", ""))))
    if not out:
        raise DataError(f"{path}: no labelled texts")
    return out


def texts_metrics(probs, items: list[LabelledText], threshold) -> dict:
    """Metrics over all items, micro-F1 per style, and the items whose AU set is wrong."""
    labels = np.array([it.aus for it in items], dtype=np.float64)
    out = multilabel_metrics(probs, labels, threshold)
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (NUM_AUS,))
    pred = np.asarray(probs) >= thr
    styles = sorted({it.style for it in items})
    out["per_style"] = {}
    for st in styles:
        idx = [i for i, it in enumerate(items) if it.style == st]
        m = multilabel_metrics(np.asarray(probs)[idx], labels[idx], threshold)
        out["per_style"][st] = {"n": len(idx), "f1_micro": m["micro"]["f1"], "exact_match": m["exact_match"]}
    out["mistakes"] = [
        {"text": it.text, "expected": [a for a, v in zip(AU_NAMES, it.aus) if v],
         "predicted": [a for a, v in zip(AU_NAMES, pred[i]) if v]}
        for i, it in enumerate(items) if (pred[i] != (labels[i] >= 0.5)).any()]
    return out


def evaluate_texts(model_dir, path: str | Path | None = None, encoder=None) -> dict:
    """Evaluate an exported model on a labelled-text file (default: the shipped hold-out set)."""
    items = load_labelled_texts(path)
    t2a = Text2AU.load(model_dir, encoder=encoder)
    probs = t2a.predict_probs([it.text for it in items]).numpy()
    out = texts_metrics(probs, items, t2a.threshold)
    out.update(data=str(Path(path) if path else HOLDOUT_DATA), encoder_id=t2a.encoder_id)
    return out
