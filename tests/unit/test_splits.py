"""Splits: reproducible, disjoint, stable when identities are added, small-set guarantees."""

from __future__ import annotations

import random

import pytest

from emodifftalk.config import DataConfig
from emodifftalk.data.splits import assign_clip_splits, assign_identity_splits, make_splits, unit_hash


def _names(n: int, prefix: str = "spk") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def test_reproducible_and_order_independent():
    names = _names(40)
    a = assign_identity_splits(names, 0.2, 0.1, seed=5)
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    assert assign_identity_splits(shuffled, 0.2, 0.1, seed=5) == a
    assert assign_identity_splits(names, 0.2, 0.1, seed=6) != a  # the seed matters


def test_every_identity_in_exactly_one_split_with_roughly_the_fractions():
    names = _names(2000)
    split = assign_identity_splits(names, 0.2, 0.1, seed=1)
    assert set(split) == set(names) and set(split.values()) == {"train", "val", "test"}
    frac = {s: sum(v == s for v in split.values()) / len(names) for s in ("train", "val", "test")}
    assert frac["val"] == pytest.approx(0.2, abs=0.03)
    assert frac["test"] == pytest.approx(0.1, abs=0.03)


def test_adding_identities_keeps_existing_assignments():
    old = assign_identity_splits(_names(60), 0.17, 0.17, seed=1234)
    new = assign_identity_splits(_names(60) + _names(30, "new"), 0.17, 0.17, seed=1234)
    assert {n: new[n] for n in old} == old


@pytest.mark.parametrize("n", [3, 4, 5, 6, 8])
@pytest.mark.parametrize("seed", range(12))
def test_small_sets_get_one_identity_in_each_split(n, seed):
    split = assign_identity_splits(_names(n), 0.17, 0.17, seed=seed)
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}
    assert min(counts.values()) >= 1, counts


def test_zero_fraction_means_no_such_split():
    split = assign_identity_splits(_names(10), 0.3, 0.0, seed=0)
    assert "test" not in split.values() and "val" in split.values()
    assert set(assign_identity_splits(_names(2), 0.17, 0.17, seed=0).values()) <= {"train", "val", "test"}
    with pytest.raises(ValueError):
        assign_identity_splits(_names(5), 0.6, 0.5, seed=0)


def test_clip_holdout_only_touches_train_identities_and_keeps_a_train_clip():
    ids = _names(30)
    clips = {i: [f"c{k}" for k in range(6)] for i in ids}
    id_split = assign_identity_splits(ids, 0.2, 0.2, seed=3)
    out = assign_clip_splits(clips, id_split, 0.5, seed=3)
    assert set(out) == {(i, c) for i in ids for c in clips[i]}
    held = 0
    for i in ids:
        mine = [out[(i, c)] for c in clips[i]]
        if id_split[i] != "train":
            assert set(mine) == {id_split[i]}
        else:
            assert set(mine) <= {"train", "val"} and "train" in mine
            held += mine.count("val")
    n_train_clips = 6 * sum(s == "train" for s in id_split.values())
    assert 0.3 < held / n_train_clips < 0.6
    assert assign_clip_splits(clips, id_split, 0.0, seed=3) == {(i, c): id_split[i] for i in ids for c in clips[i]}
    one = assign_clip_splits({"a": ["only"]}, {"a": "train"}, 0.99, seed=0)
    assert one == {("a", "only"): "train"}


def test_make_splits_uses_the_data_config():
    cfg = DataConfig(val_identity_fraction=0.25, test_identity_fraction=0.25, val_clip_fraction=0.3, split_seed=9)
    clips = {i: ["a", "b", "c"] for i in _names(8)}
    s = make_splits(clips, cfg)
    assert s.identities == assign_identity_splits(clips, 0.25, 0.25, 9)
    assert s.clips == assign_clip_splits(clips, s.identities, 0.3, 9)
    train_ids = [i for i, v in s.identities.items() if v == "train"]
    assert set(s.identities_in("train")) == set(train_ids)
    assert set(s.identities_in("val")) >= {i for i, v in s.identities.items() if v == "val"}


def test_unit_hash_is_stable_across_processes():
    # sha256-based, so it does not depend on PYTHONHASHSEED (splits must agree across machines)
    import hashlib

    digest = hashlib.sha256(b"0\x00identity\x00a").digest()
    assert unit_hash(0, "identity", "a") == int.from_bytes(digest[:8], "big") / 2.0**64
    assert 0.0 <= unit_hash(1234, "identity", "spk0001") < 1.0
    assert unit_hash(0, "identity", "a") != unit_hash(1, "identity", "a")
