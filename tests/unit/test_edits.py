import json

import numpy as np
import pytest

from emodifftalk import au
from emodifftalk.edits import EditError, apply_edits, edits_to_dict, load_edits, parse_edits

FPS = 10.0


def test_keyframes_linear_offset_only_inside_range():
    aus = np.zeros((50, 17), np.float32)
    curves = parse_edits({"AU12": {"keyframes": [[1.0, 0.0], [2.0, 0.5], [3.0, 0.5]]}})
    out = apply_edits(aus, curves, FPS)
    k = au.AU_INDEX["AU12"]
    assert out[5, k] == 0  # t=0.5 before the curve
    assert out[15, k] == pytest.approx(0.25)  # halfway up the ramp
    assert out[25, k] == pytest.approx(0.5)
    assert out[35, k] == 0  # after the last keyframe
    assert np.count_nonzero(np.delete(out, k, axis=1)) == 0


def test_constant_offset_window_and_set_mode():
    aus = np.full((40, 17), 0.2, np.float32)
    curves = parse_edits({"au4": {"offset": 0.3, "start": 1.0, "end": 2.0},
                          "45": {"keyframes": [[0.0, 1.0], [0.5, 0.0]], "mode": "set", "interpolation": "step"}})
    out = apply_edits(aus, curves, FPS, lip_lock=False)
    k4, k45 = au.AU_INDEX["AU04"], au.AU_INDEX["AU45"]
    assert out[9, k4] == pytest.approx(0.2) and out[10, k4] == pytest.approx(0.5) and out[20, k4] == pytest.approx(0.5)
    assert out[21, k4] == pytest.approx(0.2)
    assert out[0, k45] == 1.0 and out[4, k45] == 1.0 and out[5, k45] == 0.0 and out[6, k45] == pytest.approx(0.2)


def test_lip_lock_never_suppresses_speech_aus():
    rng = np.random.default_rng(0)
    aus = rng.uniform(0, 1, (30, 17)).astype(np.float32)
    curves = parse_edits({"AU26": {"offset": -0.5}, "AU01": {"offset": -0.5}})
    locked = apply_edits(aus, curves, FPS, lip_lock=True)
    unlocked = apply_edits(aus, curves, FPS, lip_lock=False)
    k26, k1 = au.AU_INDEX["AU26"], au.AU_INDEX["AU01"]
    np.testing.assert_allclose(locked[:, k26], aus[:, k26])
    np.testing.assert_allclose(unlocked[:, k26], np.clip(aus[:, k26] - 0.5, 0, 1), atol=1e-6)
    np.testing.assert_allclose(locked[:, k1], np.clip(aus[:, k1] - 0.5, 0, 1), atol=1e-6)


@pytest.mark.parametrize("spec, needle", [
    ({"AU20": {"offset": 0.1}}, "unknown Action Unit 'AU20'"),
    ({"AU12": {"offset": 2.0}}, r"offset values must be in \[-1.0, 1.0\]"),
    ({"AU12": {"keyframes": [[1, 0.1], [1, 0.2]]}}, "strictly increasing"),
    ({"AU12": {"keyframes": [[0, 0.1]], "mode": "set", "interpolation": "cubic"}}, "interpolation must be"),
    ({"AU12": {"keyframes": [[0, 1.5]], "mode": "set"}}, r"set values must be in \[0.0, 1.0\]"),
    ({"AU12": {"offst": 0.1}}, "unknown field"),
    ({"AU12": "up"}, "expected a number or an object"),
])
def test_bad_edits_name_the_source_and_au(spec, needle):
    with pytest.raises(EditError, match=needle):
        parse_edits(spec, "my_edits.json")


def test_file_round_trip_json_and_yaml(tmp_path):
    spec = {"AU12": {"keyframes": [[2.0, 0.0], [2.5, 0.6]]}}
    p = tmp_path / "e.json"
    p.write_text(json.dumps(spec))
    curves = load_edits(p)
    y = tmp_path / "e.yaml"
    y.write_text("AU12:\n  keyframes: [[2.0, 0.0], [2.5, 0.6]]\n")
    assert load_edits(y) == curves
    again = parse_edits(edits_to_dict(curves))
    assert again == curves


def test_missing_and_unparseable_files(tmp_path):
    with pytest.raises(EditError, match="does not exist"):
        load_edits(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EditError, match="bad.json: cannot parse"):
        load_edits(bad)
