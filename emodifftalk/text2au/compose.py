"""Compositional reading of a description: split it into clauses, predict each, combine.

A frozen sentence encoder pools a whole description into one vector, so "raised brows and a
dropped jaw" lands between its two parts and the head fires what the neighbours of that blend
share -- often only one of the parts. Each part alone is a description the head knows. So a
description is split into clauses (:func:`split_clauses`: commas, semicolons and the joiners
``and``, ``while``, ``with``, ``but`` ...), every clause is predicted on its own, and the whole
text's and the clauses' probabilities are combined (:func:`combine`, ``text2au.compose``):

* ``mean`` (default): the mean of the whole text's probability and the clauses' maximum -- an AU
  one clause shows clearly counts even if the pooled text lost it, and the whole text still
  votes on what the clauses imply together ("frowning with her mouth hanging open").
* ``max``: the maximum over the whole text and its clauses.

Measured on the concept CV (calibrated macro-F1 of one trained model, README and
``benchmarks/text2au_compose_variants.py``): ``mean`` 0.731, ``max`` 0.732 (but its threshold,
0.65, starves one-clause prompts), no composition 0.650; clause boundaries at punctuation only
0.677. Texts read in clauses can get a threshold of their own (``text2au.threshold_by_reading``,
:mod:`emodifftalk.text2au.calibration`); with ``mean`` that scored 0.720, so by default one
threshold is shared.

Negation scope: a clause that carries a negation ("not smiling", "no frown", "without
blinking") describes what the face does *not* do, so it adds nothing. In a text with a negated
clause the whole-text prediction is left out as well (the kept clauses' maximum is the result),
since the pooled vector still contains the negated words ("not frowning, just smiling" reads as
a frown). A text that is one clause ("doing her best not to smile") is predicted as a whole:
the head was taught such phrasings.

Pure text handling and numpy; the model is called by :mod:`emodifftalk.text2au.predict`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

COMPOSE_MODES = ("none", "mean", "max")

# clause boundaries: punctuation and joiners between two descriptions of one face
_BOUNDARY = re.compile(r"[,;:]|\s+(?:and|while|with|but|yet|whereas|plus|as well as)\s+", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:not|no|never|without|nor|neither|none)\b|n't\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z']+")
# words that say who or how much, never what the face does: a clause of only these is no clause
_FILLER = frozenset("""a an the this that one someone somebody he she they i we you his her their my our your its
him them me us person man woman boy girl child kid just only also both then even so very""".split())


@dataclass(frozen=True)
class Reading:
    """How a text is read: whole, or as its kept clauses (with the whole text unless negated)."""

    text: str
    clauses: tuple[str, ...]  # the non-negated clauses (empty for a single-clause text)
    negated: bool  # some clause was dropped for carrying a negation

    @property
    def composed(self) -> bool:
        """Read in clauses (else the text as a whole)."""
        return bool(self.clauses)

    @property
    def parts(self) -> tuple[str, ...]:
        """Every text whose prediction is needed: the whole text and the kept clauses."""
        return (self.text, *self.clauses)


def is_negated(clause: str) -> bool:
    return _NEGATION.search(clause) is not None


def _meaningful(clause: str) -> bool:
    return any(w not in _FILLER for w in _WORD.findall(clause.lower()))


def split_clauses(text: str) -> list[str]:
    """Clauses of ``text`` that say something about the face (filler-only pieces are dropped)."""
    pieces = (" ".join(p.split()) for p in _BOUNDARY.split(text))
    return [p for p in pieces if p and _meaningful(p)]


def read(text: str) -> Reading:
    """Split ``text``; a single clause is read whole. If every clause is negated the whole text
    is kept too, so an all-negative description ("no smile, no frown") still gets a prediction."""
    clauses = split_clauses(text)
    if len(clauses) < 2:
        return Reading(text, (), False)
    kept = tuple(c for c in clauses if not is_negated(c))
    if not kept:
        return Reading(text, (), False)
    return Reading(text, kept, len(kept) < len(clauses))


def combine(whole: np.ndarray, clauses: np.ndarray, negated: bool, mode: str = "mean") -> np.ndarray:
    """(17,) whole-text and (C, 17) clause probabilities of one text -> (17,) (see module doc).
    With a negated clause only the kept clauses count."""
    if mode not in COMPOSE_MODES[1:]:
        raise ValueError(f"compose mode must be one of {', '.join(COMPOSE_MODES[1:])}, got {mode!r}")
    clauses = np.asarray(clauses)
    if clauses.shape[0] == 0:
        return np.asarray(whole)
    best = clauses.max(0)
    if negated:
        return best
    return (whole + best) / 2 if mode == "mean" else np.maximum(whole, best)


def compose_probs(texts: list[str], predict, mode: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(B, 17) composed probabilities and the (B,) bool mask of texts read in clauses.

    ``predict(list[str]) -> (N, 17)`` array is called once, on every distinct part of every text."""
    readings = [read(t) for t in texts]
    parts = sorted({p for r in readings for p in r.parts})
    index = {p: i for i, p in enumerate(parts)}
    probs = np.asarray(predict(parts))
    out = [combine(probs[index[r.text]], probs[[index[c] for c in r.clauses]], r.negated, mode)
           if r.composed else probs[index[r.text]] for r in readings]
    return np.stack(out), np.array([r.composed for r in readings])
