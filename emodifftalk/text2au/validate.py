"""Checks for a Text-to-AU data file (``emodifftalk text2au check-data``).

Errors (exit non-zero): schema problems (wrong field types, AU vector not 17 ints of 0/1,
``au_names`` not matching ``aus``, unknown ``type``, not exactly 3 positives / 3 negatives),
duplicate ids, descriptions equal after normalisation, near-duplicate descriptions
(normalised token Jaccard >= 0.9) that land in different splits, a negative identical to a
positive (or to the description), a positive equal to the description, and a positive/negative
text that is the description of an entry in another split (leakage).

Report: entries per type and split, and the class balance per AU (count + fraction).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from emodifftalk.au import AU_NAMES
from emodifftalk.text2au.dataset import (
    DEFAULT_DATA,
    NEAR_DUP_JACCARD,
    SPLITS,
    TYPES,
    DataError,
    Entry,
    assign_splits,
    near_duplicate_pairs,
    normalize_text,
    parse_entry,
)


@dataclass
class DataReport:
    path: str
    n_entries: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    per_type: dict[str, int] = field(default_factory=dict)
    per_split: dict[str, int] = field(default_factory=dict)
    au_counts: dict[str, int] = field(default_factory=dict)
    near_duplicate_pairs: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        n = max(self.n_entries, 1)
        return {"path": self.path, "ok": self.ok, "n_entries": self.n_entries, "errors": self.errors,
                "warnings": self.warnings, "per_type": self.per_type, "per_split": self.per_split,
                "near_duplicate_pairs": self.near_duplicate_pairs,
                "au_balance": {a: {"count": c, "fraction": round(c / n, 4)} for a, c in self.au_counts.items()}}

    def format(self) -> str:
        head = f"{self.path}: {self.n_entries} entries, {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        lines = [head]
        lines.append("types:  " + ", ".join(f"{t}={c}" for t, c in self.per_type.items()))
        lines.append("splits: " + ", ".join(f"{s}={c}" for s, c in self.per_split.items()))
        lines.append(f"near-duplicate description pairs (same split by construction): {self.near_duplicate_pairs}")
        lines.append("AU balance (entries with the AU active):")
        n = max(self.n_entries, 1)
        for a, c in self.au_counts.items():
            lines.append(f"  {a}  {c:4d}  {c / n:6.1%}")
        lines += [f"WARNING: {w}" for w in self.warnings]
        lines += [f"ERROR: {e}" for e in self.errors]
        return "\n".join(lines)


def check_data(path: str | Path | None = None, split_seed: int = 0, max_errors: int = 200) -> DataReport:
    """Validate a JSONL data file; never raises on bad content (everything lands in the report)."""
    path = Path(path) if path else DEFAULT_DATA
    report = DataReport(path=str(path))
    if not path.is_file():
        report.errors.append(f"data file {path} does not exist")
        return report
    entries: list[Entry] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                report.warnings.append(f"line {lineno}: blank line")
                continue
            try:
                entries.append(parse_entry(json.loads(line), f"line {lineno}"))
            except json.JSONDecodeError as e:
                report.errors.append(f"line {lineno}: not valid JSON ({e.msg}); the file must be pure JSONL")
            except DataError as e:
                report.errors.append(str(e))
    report.n_entries = len(entries)
    if not entries:
        report.errors.append("no valid entries")
        return report
    check_entries(entries, report, split_seed)
    if len(report.errors) > max_errors:
        extra = len(report.errors) - max_errors
        report.errors = report.errors[:max_errors] + [f"... and {extra} more error(s)"]
    return report


def check_entries(entries: list[Entry], report: DataReport, split_seed: int = 0) -> None:
    errors = report.errors
    # ids and versions
    seen: dict[str, int] = {}
    for e in entries:
        seen[e.id] = seen.get(e.id, 0) + 1
    errors += [f"duplicate id {i!r} ({n} entries)" for i, n in seen.items() if n > 1]
    versions = sorted({e.version for e in entries})
    if len(versions) > 1:
        errors.append(f"mixed data versions in one file: {versions}")

    # per-entry text checks
    for e in entries:
        d = normalize_text(e.description)
        pos = [normalize_text(p) for p in e.positives]
        neg = [normalize_text(n) for n in e.negatives]
        if not d:
            errors.append(f"{e.id}: description has no words after normalisation")
        if len(set(pos)) < len(pos):
            errors.append(f"{e.id}: positives are not distinct")
        if len(set(neg)) < len(neg):
            errors.append(f"{e.id}: negatives are not distinct")
        if d in pos:
            errors.append(f"{e.id}: a positive repeats the description")
        both = set(pos) & set(neg)
        if both:
            errors.append(f"{e.id}: negative(s) identical to a positive: {sorted(both)}")
        if d in neg:
            errors.append(f"{e.id}: a negative repeats the description")

    # exact duplicates after normalisation (anywhere)
    by_norm: dict[str, list[str]] = {}
    for e in entries:
        by_norm.setdefault(normalize_text(e.description), []).append(e.id)
    errors += [f"duplicate description {k!r}: {', '.join(ids)}" for k, ids in by_norm.items() if len(ids) > 1]

    # near-duplicates must share a split
    splits = assign_splits(entries, split_seed) if not any(n > 1 for n in seen.values()) else {}
    pairs = near_duplicate_pairs([e.description for e in entries], NEAR_DUP_JACCARD)
    report.near_duplicate_pairs = len(pairs)
    for i, j in pairs:
        a, b = entries[i], entries[j]
        if splits and splits[a.id] != splits[b.id]:
            errors.append(f"near-duplicate descriptions in different splits: {a.id} ({splits[a.id]}) "
                          f"{a.description!r} ~ {b.id} ({splits[b.id]}) {b.description!r}")

    # leakage: a paraphrase/contrast text of one split is the description of another split's entry
    if splits:
        desc_split = {normalize_text(e.description): (e.id, splits[e.id]) for e in entries}
        for e in entries:
            for kind, texts in (("positive", e.positives), ("negative", e.negatives)):
                for t in texts:
                    hit = desc_split.get(normalize_text(t))
                    if hit and hit[0] != e.id and hit[1] != splits[e.id]:
                        errors.append(f"{e.id} ({splits[e.id]}): {kind} {t!r} is the description of "
                                      f"{hit[0]} ({hit[1]})")
        report.per_split = {s: sum(1 for v in splits.values() if v == s) for s in SPLITS}
        for s, c in report.per_split.items():
            if c == 0:
                errors.append(f"split {s!r} is empty: need more entries")

    # report
    report.per_type = {t: sum(1 for e in entries if e.type == t) for t in TYPES}
    report.au_counts = {a: sum(e.aus[k] for e in entries) for k, a in enumerate(AU_NAMES)}
    for a, c in report.au_counts.items():
        if c == 0:
            report.warnings.append(f"{a} is never active: the model cannot learn it")
    for e in entries:
        if sum(e.aus) == 0:
            report.warnings.append(f"{e.id}: no AU active")
