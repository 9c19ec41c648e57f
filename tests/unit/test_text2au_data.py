import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from emodifftalk.au import AU_NAMES, NUM_AUS
from emodifftalk.cli import main
from emodifftalk.text2au import validate as validate_mod
from emodifftalk.text2au.dataset import (
    DATA_VERSION,
    DEFAULT_DATA,
    TYPES,
    DataError,
    Entry,
    assign_splits,
    concept_folds,
    concept_key,
    load_entries,
    near_duplicate_pairs,
    normalize_text,
    split_entries,
)
from emodifftalk.text2au.validate import check_data

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped():
    return load_entries()


def _written(e) -> bool:
    """An entry made from a hand-written sentence (the generator's ``written-TAG-...`` ids)."""
    return e.id.startswith("written-")


def _entry(i, desc, aus=("AU12",), pos=None, neg=None, typ="simple expression"):
    vec = [1 if a in aus else 0 for a in AU_NAMES]
    return {"id": f"e{i:03d}", "version": 1, "description": desc, "type": typ, "aus": vec,
            "au_names": [a for a in AU_NAMES if a in aus],
            "positives": pos or [f"{desc} p{k}" for k in range(3)],
            "negatives": neg or [f"contrast {i} n{k}" for k in range(3)]}


def _write(tmp_path, objs, name="d.jsonl", header=None):
    p = tmp_path / name
    lines = ([header] if header else []) + [json.dumps(o) for o in objs]
    p.write_text("\n".join(lines) + "\n")
    return p


def _filler(n=30):
    return [_entry(100 + i, f"filler sentence number {i} {'x' * (i + 1)}") for i in range(n)]


def test_shipped_data_is_valid_and_large_enough(shipped):
    assert len(shipped) >= 600
    report = check_data(DEFAULT_DATA)
    assert report.ok, report.errors[:5]
    assert set(report.per_type) == set(TYPES) and all(v >= 40 for v in report.per_type.values())
    assert all(c > 0 for c in report.au_counts.values()), report.au_counts
    assert sum(report.per_split.values()) == len(shipped) and report.per_split["test"] >= 25


def test_shipped_descriptions_unique_and_not_near_duplicates(shipped):
    norms = [normalize_text(e.description) for e in shipped]
    assert len(set(norms)) == len(norms)
    # two writers may word one face alike ("Eyebrows raised and mouth wide open."): allowed between
    # hand-written entries with the same labels (the split keeps near-duplicates together)
    for i, j in near_duplicate_pairs([e.description for e in shipped]):
        a, b = shipped[i], shipped[j]
        assert _written(a) and _written(b) and a.aus == b.aus, (a.id, b.id)
    for e in shipped:
        assert len(e.positives) == 3 and len(e.negatives) == 3
        assert not {normalize_text(p) for p in e.positives} & {normalize_text(n) for n in e.negatives}
        assert e.version == DATA_VERSION and len(e.aus) == NUM_AUS
        # a neutral face has no AU; so has a written "not smiling"
        assert sum(e.aus) >= 1 or concept_key(e) == "act-neutral" or _written(e)


def test_shipped_au_sets_follow_facs_prototypes(shipped):
    shipped = [e for e in shipped if not _written(e)]  # the generator's conventions
    by_desc = {e.description: set(e.au_names) for e in shipped}
    emo = {e.id: set(e.au_names) for e in shipped}
    assert emo["emo-happiness-01"] == {"AU06", "AU12"}
    assert emo["emo-sadness-01"] == {"AU01", "AU04", "AU15"}
    assert emo["emo-anger-01"] == {"AU04", "AU05", "AU07", "AU23"}
    assert emo["emo-disgust-01"] == {"AU09", "AU10", "AU15"}
    assert emo["emo-contempt-01"] == {"AU14"}
    assert emo["emo-fear-01"] == {"AU01", "AU02", "AU04", "AU05", "AU25"}
    assert emo["emo-surprise-01"] >= {"AU01", "AU02", "AU05", "AU26"}
    # convention: a dropped jaw (AU26) always parts the lips (AU25)
    assert all("AU25" in s for s in by_desc.values() if "AU26" in s)
    winks = [e for e in shipped if ("wink" in e.description or "blink" in e.description)
             and "without blinking" not in e.description]
    assert winks and all("AU45" in e.au_names for e in winks)
    assert all(e.au_names == ["AU45"] for e in winks if e.type == "simple expression")


def test_generator_is_deterministic_and_matches_shipped_file(monkeypatch):
    spec = importlib.util.spec_from_file_location("make_t2a", ROOT / "tools" / "make_text2au_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_t2a", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    a = mod.build(0)
    assert [e.to_json() for e in a] == [e.to_json() for e in mod.build(0)]
    assert [e.to_json() for e in a] == [e.to_json() for e in load_entries()], \
        "shipped JSONL is stale: rerun tools/make_text2au_dataset.py"


def test_splits_reproducible_grouped_and_roughly_80_10_10(shipped):
    s1, s2 = assign_splits(shipped, seed=0), assign_splits(shipped, seed=0)
    assert s1 == s2
    assert assign_splits(shipped, seed=1) != s1
    parts = split_entries(shipped, 0)
    frac = {k: len(v) / len(shipped) for k, v in parts.items()}
    assert 0.7 < frac["train"] < 0.9 and 0.04 < frac["val"] < 0.16 and 0.04 < frac["test"] < 0.16
    # near-duplicates (same words, other order) always share a split
    objs = [_entry(0, "a man with raised brows and pressed lips"), _entry(1, "a man with pressed lips and raised brows"),
            _entry(2, "The man with raised brows and pressed lips!")]
    entries = [Entry(o["id"], o["description"], o["type"], tuple(o["aus"]), tuple(o["positives"]),
                     tuple(o["negatives"])) for o in objs]
    for seed in range(20):
        assert len(set(assign_splits(entries, seed).values())) == 1


def test_normalisation_ignores_case_articles_punctuation():
    assert normalize_text("A Furious,  man!") == normalize_text("the furious man") == "furious man"


@pytest.mark.parametrize("mutate,needle", [
    (lambda o: o.update(aus=o["aus"][:16]), "17"),
    (lambda o: o.update(aus=[2] + o["aus"][1:]), "0 and 1"),
    (lambda o: o.update(au_names=["AU01"]), "does not match"),
    (lambda o: o.update(type="emotion"), "type"),
    (lambda o: o.update(positives=o["positives"][:2]), "exactly 3"),
    (lambda o: o.update(negatives=o["negatives"] + ["x"]), "exactly 3"),
    (lambda o: o.update(negatives=[o["positives"][0], "b", "c"]), "identical to a positive"),
    (lambda o: o.pop("description"), "missing"),
])
def test_validator_reports_schema_errors(tmp_path, mutate, needle):
    bad = _entry(0, "a smiling woman")
    mutate(bad)
    report = check_data(_write(tmp_path, [bad] + _filler()))
    assert not report.ok
    assert any(needle in e for e in report.errors), report.errors


def test_validator_duplicates_header_and_cli_exit_code(tmp_path, capsys):
    objs = [_entry(0, "A smiling woman."), _entry(1, "the smiling woman")] + _filler()
    report = check_data(_write(tmp_path, objs))
    assert any("duplicate description" in e for e in report.errors)
    objs[1]["id"] = objs[0]["id"]
    assert any("duplicate id" in e for e in check_data(_write(tmp_path, objs)).errors)
    with_header = _write(tmp_path, _filler(), name="h.jsonl", header="id,description,aus")
    assert any("pure JSONL" in e for e in check_data(with_header).errors)
    assert main(["text2au", "check-data", "--data", str(with_header)]) == 1
    good = _write(tmp_path, _filler(), name="ok.jsonl")
    assert main(["text2au", "check-data", "--data", str(good)]) == 0
    out = capsys.readouterr().out
    assert "AU balance" in out and "AU12" in out


def test_validator_flags_near_duplicates_across_splits(tmp_path, monkeypatch):
    objs = [_entry(0, "a man with raised brows and pressed lips"),
            _entry(1, "a man with pressed lips and raised brows")] + _filler()
    path = _write(tmp_path, objs)
    assert check_data(path).ok  # grouped split keeps them together
    monkeypatch.setattr(validate_mod, "assign_splits",
                        lambda entries, seed: {e.id: ("test" if e.id == "e000" else "train") for e in entries})
    report = check_data(path)
    assert any("near-duplicate descriptions in different splits" in e for e in report.errors)


def test_load_entries_errors_name_file_and_line(tmp_path):
    p = _write(tmp_path, _filler(2) + [{"id": "x"}])
    with pytest.raises(DataError, match=r"d\.jsonl:3.*missing"):
        load_entries(p)
    with pytest.raises(FileNotFoundError):
        load_entries(tmp_path / "nope.jsonl")


def test_concept_folds_share_no_concept_or_au_vector_and_are_balanced(shipped):
    train = split_entries(shipped, 0)["train"]
    folds = concept_folds(train, 5, seed=0)
    assert folds == concept_folds(train, 5, seed=0) and set(folds) == set(range(5))
    where_concept, where_aus = {}, {}
    for e, f in zip(train, folds):
        assert where_concept.setdefault(concept_key(e), f) == f, concept_key(e)
        assert where_aus.setdefault(e.aus, f) == f, e.au_names
    sizes = [folds.count(k) for k in range(5)]
    assert max(sizes) - min(sizes) <= 0.1 * len(train), sizes
    assert concept_key(train[0]) == train[0].id.rsplit("-", 1)[0].removesuffix("-slight").removesuffix("-strong")
    with pytest.raises(ValueError):
        concept_folds(train, 1)


# hand-written sets: written_* are training data since v5 (the generator makes each sentence an
# entry), holdout_* are kept apart
WRITTEN_SETS = [("written_eval.jsonl", 80), ("written_fresh.jsonl", 40), ("written_s26.jsonl", 60),
                ("written_s27.jsonl", 70), ("written_s28.jsonl", 75), ("written_s29.jsonl", 55)]
HOLDOUT_SETS = [("holdout_s30.jsonl", 70), ("holdout_s31.jsonl", 80)]


def test_the_hand_written_sets_are_the_ones_on_disk():
    from emodifftalk.text2au.dataset import DATA_DIR, HOLDOUT_GLOB, WRITTEN_GLOB

    assert sorted(p.name for p in DATA_DIR.glob(WRITTEN_GLOB)) == sorted(n for n, _ in WRITTEN_SETS)
    assert sorted(p.name for p in DATA_DIR.glob(HOLDOUT_GLOB)) == sorted(n for n, _ in HOLDOUT_SETS)


@pytest.mark.parametrize("name, min_size", HOLDOUT_SETS)
def test_holdout_sets_are_kept_apart_from_the_training_data(shipped, name, min_size):
    from emodifftalk.text2au.evaluate import HOLDOUT_DATA, load_labelled_texts

    held = load_labelled_texts(HOLDOUT_DATA.parent / name)
    assert len(held) >= min_size and len({h.style for h in held}) >= 6
    seen = {normalize_text(t) for e in shipped for t in (e.description, *e.positives, *e.negatives)}
    assert not [h.text for h in held if normalize_text(h.text) in seen]


@pytest.mark.parametrize("name, min_size", WRITTEN_SETS)
def test_written_sentences_are_entries_with_their_writers_labels(shipped, name, min_size):
    from emodifftalk.text2au.evaluate import HOLDOUT_DATA, load_labelled_texts

    written = load_labelled_texts(HOLDOUT_DATA.parent / name)
    assert len(written) >= min_size
    by_text = {e.description: e for e in shipped if _written(e)}
    # the generator leaves out a sentence only when no paraphrase of its AU set exists (AU26 without AU25)
    missing = [w for w in written if w.text not in by_text]
    assert all(w.aus[AU_NAMES.index("AU26")] and not w.aus[AU_NAMES.index("AU25")] for w in missing), missing
    assert len(missing) <= 2
    assert all(by_text[w.text].aus == w.aus for w in written if w.text in by_text)
    # a written sentence is never also a template text
    others = {normalize_text(t) for e in shipped if not _written(e)
              for t in (e.description, *e.positives, *e.negatives)}
    assert not [w.text for w in written if normalize_text(w.text) in others]


def test_hand_written_sets_share_no_sentence():
    from emodifftalk.text2au.evaluate import HOLDOUT_DATA, load_labelled_texts

    seen: dict[str, str] = {}
    for name, _ in WRITTEN_SETS + HOLDOUT_SETS:
        for h in load_labelled_texts(HOLDOUT_DATA.parent / name):
            key = normalize_text(h.text)
            assert key not in seen, f"{h.text!r} is in {name} and {seen[key]}"
            seen[key] = name


def _generator(monkeypatch):
    spec = importlib.util.spec_from_file_location("make_t2a", ROOT / "tools" / "make_text2au_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_t2a", mod)
    spec.loader.exec_module(mod)
    return mod


def _has_word(text, word):
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text.lower()) is not None


def test_every_emotion_word_of_the_tables_has_an_anchor(shipped, monkeypatch):
    mod = _generator(monkeypatch)
    anchors = {}
    for e in shipped:
        anchors.setdefault(concept_key(e), []).append(e.description)
    missing = []
    for name, spec in mod.BASIC.items():
        texts = anchors[f"emo-{name}"]
        missing += [w for w, _ in spec["adjs"] + spec["nouns"] if not any(_has_word(t, w) for t in texts)]
    for name, spec in mod.MIXED.items():
        texts = anchors[f"mix-{name}"]
        missing += [w for w in spec["names"] if not any(_has_word(t, w) for t in texts)]
    assert not missing, missing


def test_degree_adverbs_mark_the_level_of_an_emotion_anchor(shipped, monkeypatch):
    mod = _generator(monkeypatch)
    levels = {"slight": mod.SLIGHT_ADVERBS, "strong": mod.STRONG_ADVERBS}
    own_level = {"slight": 0, "strong": 0}  # "a little annoyed": an adverb on a word of its own level
    for e in shipped:
        if e.type != "basic emotion" or " not " in f" {e.description} " or _written(e):
            continue
        level = next((lv for lv in levels if f"-{lv}-" in e.id), "base")
        name = e.id.split("-")[1]
        for lv, advs in levels.items():
            for adv in advs:
                for w, wl in mod.BASIC[name]["adjs"]:
                    if _has_word(e.description, f"{adv} {w}"):
                        assert level == lv, (e.id, e.description)
                        own_level[lv] += wl == lv
    assert own_level["slight"] >= 5 and own_level["strong"] >= 5, own_level
