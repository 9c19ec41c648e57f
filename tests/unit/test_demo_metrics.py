"""The demo's reported figures (``pipeline/demo_metrics.py``) on hand-made videos."""

import numpy as np
import pytest

from emodifftalk.edits import parse_edits
from emodifftalk.pipeline.demo_metrics import edit_pixel_change, edit_windows, mean_spread

FPS = 10.0
# 0 -> 0.6 over 1.0-1.2 s, plateau 1.2-2.0 s, back to 0 at 2.2 s; nothing outside 1.0-2.2 s
EDITS = parse_edits({"AU01": {"keyframes": [[1.0, 0.0], [1.2, 0.6], [2.0, 0.6], [2.2, 0.0]]}})


def test_edit_windows_are_the_plateau_and_the_untouched_frames():
    inside, outside = edit_windows(EDITS, 30, FPS)
    assert np.flatnonzero(inside).tolist() == list(range(12, 21))  # 1.2 .. 2.0 s
    assert np.flatnonzero(outside).tolist() == list(range(0, 11)) + list(range(22, 30))


def test_pixel_change_separates_the_edit_from_the_rest():
    speech = np.zeros((30, 20, 20, 3), np.uint8)
    edited = speech.copy()
    edited[:, 2:6, 2:18] = 2  # the text prompt: a small change in the upper face on every frame
    edited[12:21, 2:6, 2:18] = 12  # the brow edit: a larger one during the plateau
    edited[:, 0:2] = 200  # outside the face box: ignored
    out = edit_pixel_change(speech, edited, EDITS, FPS, box=(2, 2, 18, 18))
    # upper half of the box is rows 2..9 (8 rows), the change covers 4 of them
    assert out["inside_edit"]["upper_face"] == pytest.approx(12 * 4 / 8)
    assert out["outside_edit"]["upper_face"] == pytest.approx(2 * 4 / 8)
    assert out["inside_edit"]["lower_face"] == 0 and out["outside_edit"]["lower_face"] == 0
    assert out["inside_edit"]["face"] == pytest.approx(12 * 4 / 16)
    assert out["frames"] == {"inside": 9, "outside": 19, "total": 30}


def test_mean_spread():
    assert mean_spread([1.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 2}
    with pytest.raises(ValueError):
        mean_spread([])
