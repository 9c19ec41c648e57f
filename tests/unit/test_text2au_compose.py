import numpy as np
import pytest

from emodifftalk.text2au.compose import combine, compose_probs, is_negated, read, split_clauses


@pytest.mark.parametrize("text, clauses", [
    ("raised brows and a dropped jaw", ["raised brows", "a dropped jaw"]),
    ("smiling, eyes squeezed shut", ["smiling", "eyes squeezed shut"]),
    ("frowning while pressing her lips; chin up", ["frowning", "pressing her lips", "chin up"]),
    ("a man with a wrinkled nose", ["a wrinkled nose"]),  # "a man" says nothing about the face
    ("furious", ["furious"]),
])
def test_split_clauses(text, clauses):
    assert split_clauses(text) == clauses


def test_negated_clauses_and_the_whole_text_drop_out():
    assert is_negated("not smiling") and is_negated("without blinking") and is_negated("doesn't smile")
    assert not is_negated("knotted brows") and not is_negated("nose wrinkled")
    r = read("not frowning, just smiling")
    assert r.clauses == ("just smiling",) and r.negated and r.composed
    assert read("sad but not crying").clauses == ("sad",)
    # one clause, or only negated clauses: the head reads the whole text
    for text in ("doing her best not to smile", "no smile, no frown"):
        r = read(text)
        assert not r.composed and r.parts == (text,)
    r = read("raised brows and a dropped jaw")
    assert r.parts == ("raised brows and a dropped jaw", "raised brows", "a dropped jaw") and not r.negated


def test_compose_probs_combines_whole_text_and_clauses_and_predicts_each_part_once():
    table = {"raised brows and a dropped jaw": [0.9, 0.1, 0.0], "raised brows": [0.8, 0.0, 0.0],
             "a dropped jaw": [0.0, 0.7, 0.2], "not frowning, just smiling": [0.0, 0.9, 0.3],
             "just smiling": [0.0, 0.0, 0.9], "furious": [0.3, 0.2, 0.1]}
    calls = []

    def predict(parts):
        calls.append(list(parts))
        return np.array([table[p] for p in parts])

    texts = ["raised brows and a dropped jaw", "not frowning, just smiling", "furious"]
    probs, composed = compose_probs(texts, predict, "mean")
    # mean of the whole text and the clause max; a negated clause drops the whole text too
    np.testing.assert_allclose(probs, [[0.85, 0.4, 0.1], [0.0, 0.0, 0.9], [0.3, 0.2, 0.1]])
    assert composed.tolist() == [True, True, False]
    assert len(calls) == 1 and sorted(calls[0]) == sorted(table)
    probs, _ = compose_probs(texts, predict, "max")
    np.testing.assert_allclose(probs[0], [0.9, 0.7, 0.2])
    np.testing.assert_allclose(combine(np.array([0.2, 0.2]), np.zeros((0, 2)), False), [0.2, 0.2])
    with pytest.raises(ValueError, match="compose mode"):
        combine(np.zeros(2), np.zeros((1, 2)), False, "none")


def test_thresholds_by_reading_are_calibrated_and_applied_per_group():
    from emodifftalk.text2au.calibration import apply_by_reading, calibrate_by_reading

    rng = np.random.default_rng(0)
    labels = rng.random((400, 17)) < 0.3
    composed = np.arange(400) % 2 == 0
    # composed rows run high: the positives sit above 0.8, the negatives at 0.6
    probs = np.where(labels, np.where(composed[:, None], 0.9, 0.45), np.where(composed[:, None], 0.6, 0.1))
    whole, comp = calibrate_by_reading(probs, labels, composed)
    assert 0.1 < whole[0] <= 0.45 and 0.6 < comp[0] <= 0.9
    out = apply_by_reading(probs, whole, comp, composed)
    assert ((out >= 0.5) == labels).all()
    # one shared threshold cannot separate both groups; without groups both thresholds are it
    shared, same = calibrate_by_reading(probs, labels, np.zeros(400, dtype=bool))
    assert (shared == same).all()
    assert ((apply_by_reading(probs, shared, same, composed) >= 0.5) != labels).any()
