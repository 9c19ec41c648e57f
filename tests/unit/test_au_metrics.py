"""AU metrics (MAE, Pearson, binarised acc/P/R/F1) on hand-computed cases."""

import numpy as np
import pytest

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.eval.au_metrics import AUMetricAccumulator, au_metrics


def _arrays():
    t = 4
    pred = np.zeros((t, NUM_AUS))
    gt = np.zeros((t, NUM_AUS))
    k = AU_INDEX["AU12"]
    pred[:, k] = [0.1, 0.3, 0.5, 0.0]
    gt[:, k] = [0.0, 0.4, 0.1, 0.3]
    mask = np.ones((t, NUM_AUS), bool)
    mask[:, AU_INDEX["AU24"]] = False
    return pred, gt, mask, k


def test_hand_computed_au12():
    pred, gt, mask, k = _arrays()
    r = au_metrics(pred, gt, mask, threshold=0.2)
    m = r["per_au"]["AU12"]
    assert m["mae"] == pytest.approx((0.1 + 0.1 + 0.4 + 0.3) / 4)
    # binarised: pred [0,1,1,0], gt [0,1,0,1] -> TP 1, FP 1, FN 1, TN 1
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["pearson"] == pytest.approx(np.corrcoef(pred[:, k], gt[:, k])[0, 1])
    assert m["n"] == 4


def test_excluded_and_constant_aus():
    pred, gt, mask, _ = _arrays()
    r = au_metrics(pred, gt, mask, threshold=0.2)
    assert r["excluded_aus"] == ["AU24"]
    assert all(v is None for key, v in r["per_au"]["AU24"].items() if key != "n")
    # AU01 is all zeros on both sides: Pearson, P, R, F1 undefined (None), accuracy 1
    a = r["per_au"]["AU01"]
    assert a["pearson"] is None and a["accuracy"] == 1.0 and a["mae"] == 0.0
    assert a["precision"] is None and a["recall"] is None and a["f1"] is None
    assert r["mean"]["f1"] == pytest.approx(0.5)  # only AU12 has a defined F1
    # means over the 16 included AUs; pearson only where defined (AU12 only)
    assert r["mean"]["mae"] == pytest.approx(r["per_au"]["AU12"]["mae"] / 16)
    assert r["mean"]["pearson"] == pytest.approx(r["per_au"]["AU12"]["pearson"])
    assert r["n_entries"] == 4 * 16
    # AU12 is a speech AU: 7 speech AUs remain without AU24
    assert r["mean_speech"]["mae"] == pytest.approx(r["per_au"]["AU12"]["mae"] / 8)
    assert r["mean_expression"]["mae"] == 0.0 and r["mean_expression"]["f1"] is None


def test_streaming_equals_one_shot_and_mask_excludes_entries():
    rng = np.random.default_rng(0)
    pred, gt = rng.random((30, NUM_AUS)), rng.random((30, NUM_AUS))
    mask = rng.random((30, NUM_AUS)) > 0.2
    one = au_metrics(pred, gt, mask, threshold=0.3)
    acc = AUMetricAccumulator(0.3)
    acc.update(pred[:10], gt[:10], mask[:10])
    other = AUMetricAccumulator(0.3)
    other.update(pred[10:], gt[10:], mask[10:])
    acc.merge(other)
    two = acc.compute()
    for au in one["per_au"]:
        for key, v in one["per_au"][au].items():
            assert two["per_au"][au][key] == pytest.approx(v)
    # masked entries really are ignored: changing them changes nothing
    gt2 = np.where(mask, gt, 5.0)
    assert au_metrics(pred, gt2, mask, threshold=0.3)["per_au"]["AU01"]["mae"] == pytest.approx(
        one["per_au"]["AU01"]["mae"])
    k = 0
    sel = mask[:, k]
    assert one["per_au"]["AU01"]["pearson"] == pytest.approx(np.corrcoef(pred[sel, k], gt[sel, k])[0, 1])


def test_zero_denominators():
    pred = np.zeros((4, NUM_AUS))
    gt = np.zeros((4, NUM_AUS))
    gt[1, 0] = 0.9  # AU01: one GT positive, never predicted -> precision undefined, recall 0, F1 0
    pred[2, 1] = 0.9  # AU02: one false positive -> precision 0, recall undefined, F1 0
    r = au_metrics(pred, gt, threshold=0.2)["per_au"]
    assert r["AU01"]["precision"] is None and r["AU01"]["recall"] == 0.0 and r["AU01"]["f1"] == 0.0
    assert r["AU02"]["precision"] == 0.0 and r["AU02"]["recall"] is None and r["AU02"]["f1"] == 0.0
    assert r["AU01"]["accuracy"] == 0.75


def test_bad_inputs():
    with pytest.raises(ValueError, match="threshold"):
        AUMetricAccumulator(1.5)
    with pytest.raises(ValueError, match="differ"):
        au_metrics(np.zeros((3, 17)), np.zeros((4, 17)))
