"""Reproducible train/val/test splits: a pure function of names + seed.

By identity: each identity gets a hash value ``u`` in [0, 1) from ``(seed, name)``; ``u`` below
``test_fraction`` is test, below ``test_fraction + val_fraction`` val, otherwise train. Because
an identity's split depends only on its own name, adding identities never moves existing ones
(except for the small-set repair below). With >= 3 identities every split with a non-zero
fraction (and train) gets at least one identity: an empty split takes the identity whose ``u`` is
closest to its interval from a split that has more than one.

By clip (optional): clips of *train* identities whose own hash is below ``val_clip_fraction`` go
to "val"; every train identity keeps at least one train clip.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from emodifftalk.data.schema import SPLITS


def unit_hash(seed: int, *parts: str) -> float:
    """Deterministic value in [0, 1) from a seed and names (sha256; not Python's salted hash)."""
    h = hashlib.sha256("\x00".join((str(int(seed)),) + parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def _intervals(val_fraction: float, test_fraction: float) -> dict[str, tuple[float, float]]:
    return {"test": (0.0, test_fraction), "val": (test_fraction, test_fraction + val_fraction),
            "train": (test_fraction + val_fraction, 1.0)}


def assign_identity_splits(identities, val_fraction: float, test_fraction: float,
                           seed: int) -> dict[str, str]:
    """``{identity: "train" | "val" | "test"}`` (see the module docstring)."""
    names = sorted(set(identities))
    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise ValueError(f"split fractions must be >= 0 and sum below 1, got val={val_fraction}, "
                         f"test={test_fraction}")
    spans = _intervals(val_fraction, test_fraction)
    u = {n: unit_hash(seed, "identity", n) for n in names}
    split = {n: next(s for s in ("test", "val", "train") if u[n] < spans[s][1]) for n in names}
    if len(names) >= 3:
        wanted = [s for s, frac in (("test", test_fraction), ("val", val_fraction), ("train", 1.0)) if frac > 0]
        for target in wanted:
            members = {s: [n for n in names if split[n] == s] for s in SPLITS}
            if members[target]:
                continue
            lo, hi = spans[target]
            donors = [n for n in names if len(members[split[n]]) > 1 and split[n] in wanted]
            best = min(donors, key=lambda n: (max(lo - u[n], u[n] - hi, 0.0), n))
            split[best] = target
    return split


def assign_clip_splits(clips: dict[str, list[str]], identity_splits: dict[str, str],
                       val_clip_fraction: float, seed: int) -> dict[tuple[str, str], str]:
    """``{(identity, clip): split}``: clips inherit their identity's split, except held-out clips
    of train identities (fraction ``val_clip_fraction``) which go to "val"."""
    if not 0 <= val_clip_fraction < 1:
        raise ValueError(f"val_clip_fraction must be in [0, 1), got {val_clip_fraction}")
    out: dict[tuple[str, str], str] = {}
    for identity in sorted(clips):
        base = identity_splits[identity]
        names = sorted(clips[identity])
        for c in names:
            out[(identity, c)] = base
        if base != "train" or val_clip_fraction == 0 or not names:
            continue
        u = {c: unit_hash(seed, "clip", identity, c) for c in names}
        held = [c for c in names if u[c] < val_clip_fraction]
        if len(held) == len(names):  # keep at least one training clip per train identity
            held.remove(max(held, key=lambda c: (u[c], c)))
        for c in held:
            out[(identity, c)] = "val"
    return out


@dataclass(frozen=True)
class Splits:
    identities: dict[str, str]  # identity -> split of the identity
    clips: dict[tuple[str, str], str]  # (identity, clip) -> split of the clip

    def identities_in(self, split: str) -> list[str]:
        """Identities with at least one clip in ``split`` (train identities may also be in val)."""
        with_clips = {i for (i, _), s in self.clips.items() if s == split}
        by_identity = {i for i, s in self.identities.items() if s == split}
        return sorted(with_clips | by_identity)


def make_splits(clips: dict[str, list[str]], data_cfg) -> Splits:
    """Splits for ``{identity: [clip, ...]}`` from a ``DataConfig``."""
    ids = assign_identity_splits(clips.keys(), data_cfg.val_identity_fraction,
                                 data_cfg.test_identity_fraction, data_cfg.split_seed)
    return Splits(ids, assign_clip_splits(clips, ids, data_cfg.val_clip_fraction, data_cfg.split_seed))
