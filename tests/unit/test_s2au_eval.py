"""eval s2au pieces: the streaming ridge baseline and the summary table."""

import numpy as np

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.eval.au_metrics import au_metrics
from emodifftalk.eval.s2au import RidgeBaseline, _beats, format_table


def test_ridge_recovers_a_linear_map_and_respects_masks():
    rng = np.random.default_rng(0)
    d = 5
    w_true = rng.uniform(-0.03, 0.03, size=(NUM_AUS, d))  # keeps targets inside (0, 1): no clipping
    ridge = RidgeBaseline(d, alpha=1e-6)
    for _ in range(3):  # streamed in chunks with different feature scales
        x = rng.standard_normal((200, d)) * np.array([1, 10, 0.1, 1, 3])
        y = np.clip(0.5 + (x / np.array([1, 10, 0.1, 1, 3])) @ w_true.T, 0, 1)
        mask = np.ones_like(y, dtype=bool)
        mask[:, AU_INDEX["AU24"]] = False
        y_corrupt = np.where(rng.random(y.shape) < 0.1, 9.0, y)  # masked entries are garbage
        mask &= y_corrupt != 9.0
        ridge.update(x, y_corrupt, mask)
    ridge.fit()
    x = rng.standard_normal((50, d)) * np.array([1, 10, 0.1, 1, 3])
    y = np.clip(0.5 + (x / np.array([1, 10, 0.1, 1, 3])) @ w_true.T, 0, 1)
    pred = ridge.predict(x)
    keep = [k for k in range(NUM_AUS) if k != AU_INDEX["AU24"]]
    np.testing.assert_allclose(pred[:, keep], y[:, keep], atol=1e-6)
    assert np.all(pred[:, AU_INDEX["AU24"]] == 0)  # never labelled: no fit


def test_ridge_penalty_shrinks_towards_the_mean():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 3))
    y = np.clip(0.5 + 0.2 * x[:, :1] + np.zeros((100, NUM_AUS)), 0, 1)
    mask = np.ones_like(y, dtype=bool)
    weak, strong = RidgeBaseline(3, alpha=1e-3), RidgeBaseline(3, alpha=1e6)
    for r in (weak, strong):
        r.update(x, y, mask)
        r.fit()
    assert np.std(weak.predict(x)[:, 0]) > 0.15
    assert np.std(strong.predict(x)[:, 0]) < 1e-3
    np.testing.assert_allclose(strong.predict(x)[:, 0], y[:, 0].mean(), atol=1e-3)


def test_table_lists_every_method_and_split():
    rng = np.random.default_rng(2)
    gt = rng.random((10, NUM_AUS))
    r = au_metrics(gt, gt, threshold=0.2)
    table = format_table({"test": {"s2au": r, "ridge": r}, "overall": {"s2au": r}})
    lines = table.splitlines()
    assert len(lines) == 5 and "MAE" in lines[0] and "speech AUs" in lines[0]
    assert lines[2].split()[:3] == ["test", "s2au", "0.000"]


def test_beating_a_baseline_needs_lower_mae_and_higher_r_and_f1():
    ours = {"mae": 0.10, "pearson": 0.40, "f1": 0.40}
    assert _beats(ours, {"mae": 0.12, "pearson": 0.30, "f1": 0.35})
    assert not _beats(ours, {"mae": 0.09, "pearson": 0.30, "f1": 0.35})  # MAE worse
    assert not _beats(ours, {"mae": 0.12, "pearson": 0.45, "f1": 0.35})  # r worse
    assert not _beats(ours, {"mae": 0.12, "pearson": 0.30, "f1": 0.41})  # F1 worse
    assert _beats(ours, {"mae": 0.12, "pearson": None, "f1": 0.10})  # a constant has no r
    assert not _beats({"mae": 0.10, "pearson": 0.4, "f1": None}, {"mae": 0.12, "pearson": 0.3, "f1": 0.2})
