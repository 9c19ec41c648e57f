"""OpenFace 2.x CSV reader/writer: round trip, masking, errors, fps resampling."""

from __future__ import annotations

import numpy as np
import pytest

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.data.openface import (
    OpenFaceError,
    read_openface_csv,
    write_openface_csv,
)

AU24 = AU_INDEX["AU24"]


def _aus(t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (t, NUM_AUS)).astype(np.float32)


def test_round_trip_padded_header(tmp_path):
    aus = _aus(30)
    p = write_openface_csv(tmp_path / "of.csv", aus, fps=25.0)
    header = p.read_text().splitlines()[0]
    assert header.startswith("frame, face_id, timestamp, confidence, success, AU01_r")
    assert " AU20_r" in header and "AU24" not in header and " AU28_c" in header
    got = read_openface_csv(p)
    assert got.aus.shape == (30, NUM_AUS) and got.mask.shape == (30, NUM_AUS)
    keep = [k for k in range(NUM_AUS) if k != AU24]
    # 2 decimals on the 0..5 scale -> error <= 0.005 / 5
    np.testing.assert_allclose(got.aus[:, keep], aus[:, keep], atol=0.0011)
    assert got.mask[:, keep].all()
    np.testing.assert_allclose(got.timestamps, np.arange(30) / 25.0, atol=1e-3)


def test_round_trip_unpadded_header(tmp_path):
    aus = _aus(10, seed=1)
    p = write_openface_csv(tmp_path / "of.csv", aus, fps=30.0)
    p.write_text(p.read_text().replace(", ", ","))
    assert " AU01_r" not in p.read_text()
    got = read_openface_csv(p)
    np.testing.assert_allclose(got.aus[:, 0], aus[:, 0], atol=0.0011)


def test_au24_is_masked_unless_column_present(tmp_path):
    aus = _aus(8)
    aus[:, AU24] = 0.8
    p = write_openface_csv(tmp_path / "of.csv", aus, fps=25.0)
    got = read_openface_csv(p)
    assert not got.mask[:, AU24].any() and (got.aus[:, AU24] == 0).all()
    # a file that does carry AU24_r (another tracker in this format) is read
    lines = p.read_text().splitlines()
    lines[0] += ", AU24_r"
    lines[1:] = [ln + ", 4.00" for ln in lines[1:]]
    p.write_text("\n".join(lines) + "\n")
    got = read_openface_csv(p)
    assert got.mask[:, AU24].all()
    np.testing.assert_allclose(got.aus[:, AU24], 0.8)


def test_failure_and_low_confidence_rows_are_masked(tmp_path):
    aus = _aus(12) * 0.9 + 0.1  # all clearly non-zero
    success = np.ones(12, bool)
    success[3] = False
    conf = np.full(12, 0.95)
    conf[7] = 0.5
    p = write_openface_csv(tmp_path / "of.csv", aus, fps=25.0, success=success, confidence=conf)
    got = read_openface_csv(p, min_confidence=0.75)
    for row in (3, 7):
        assert not got.mask[row].any()
        assert (got.aus[row] == 0).all()
    assert got.mask[0, 0] and got.mask[11, 0]
    assert got.frame_valid.sum() == 10
    # with a lower threshold the low-confidence row becomes valid again
    assert read_openface_csv(p, min_confidence=0.4).mask[7, 0]


def test_missing_column_names_file_and_column(tmp_path):
    p = write_openface_csv(tmp_path / "of.csv", _aus(5), fps=25.0)
    lines = p.read_text().splitlines()
    lines[0] = lines[0].replace("AU12_r", "AU12_x")
    p.write_text("\n".join(lines))
    with pytest.raises(OpenFaceError, match=r"of\.csv.*AU12_r"):
        read_openface_csv(p)


def test_empty_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(OpenFaceError, match="empty.csv.*empty"):
        read_openface_csv(empty)
    p = write_openface_csv(tmp_path / "hdr.csv", _aus(3), fps=25.0)
    p.write_text(p.read_text().splitlines()[0] + "\n")
    with pytest.raises(OpenFaceError, match="hdr.csv.*no rows"):
        read_openface_csv(p)


def _edit_cell(p, row, column, value):
    lines = [ln.split(", ") for ln in p.read_text().splitlines()]
    j = lines[0].index(column)
    lines[row][j] = value
    p.write_text("\n".join(", ".join(c) for c in lines) + "\n")


def test_nan_in_valid_row_is_an_error_but_ok_in_failed_row(tmp_path):
    success = np.array([1, 1, 0, 1], bool)
    p = write_openface_csv(tmp_path / "of.csv", _aus(4), fps=25.0, success=success)
    _edit_cell(p, 3, "AU06_r", "nan")  # file line 4 = data row 2 = the failed row
    got = read_openface_csv(p)
    assert not got.mask[2].any()
    _edit_cell(p, 2, "AU06_r", "nan")  # file line 3 = data row 1, tracked
    with pytest.raises(OpenFaceError, match=r"of\.csv.*AU06_r.*line 3"):
        read_openface_csv(p)


def test_non_monotonic_timestamps(tmp_path):
    p = write_openface_csv(tmp_path / "of.csv", _aus(6), fps=25.0)
    _edit_cell(p, 4, "timestamp", "0.010")
    with pytest.raises(OpenFaceError, match=r"of\.csv.*timestamp"):
        read_openface_csv(p)


def test_resample_to_fps(tmp_path):
    # 30 fps source with a ramp in AU12; read at 25 fps
    t = 31
    aus = np.zeros((t, NUM_AUS), np.float32)
    aus[:, AU_INDEX["AU12"]] = np.linspace(0, 1, t)
    success = np.ones(t, bool)
    success[15] = False
    p = write_openface_csv(tmp_path / "of.csv", aus, fps=30.0, success=success)
    got = read_openface_csv(p, fps=25.0, n_frames=27)
    assert got.aus.shape == (27, NUM_AUS)
    np.testing.assert_allclose(got.timestamps, np.arange(27) / 25.0)
    k = AU_INDEX["AU12"]
    # the ramp is linear in time: value(t) = t / 1.0 s
    ok = got.mask[:, k]
    np.testing.assert_allclose(got.aus[ok, k], got.timestamps[ok], atol=0.01)
    # source row 15 (t = 0.5 s) failed: the target frame at 0.48 s (neighbours 0.467/0.5) is invalid
    # while 0.4 s (coincides with source row 12) stays valid
    assert not got.mask[12, k] and got.mask[10, k]
    # frames past the tracked span (1.0 s) are invalid
    assert got.mask[25, k] and not got.mask[26, k]


def test_n_frames_without_fps_pads_with_invalid(tmp_path):
    p = write_openface_csv(tmp_path / "of.csv", _aus(5), fps=25.0)
    got = read_openface_csv(p, n_frames=8)
    assert got.aus.shape == (8, NUM_AUS)
    assert got.mask[:5, 0].all() and not got.mask[5:].any()
    assert read_openface_csv(p, n_frames=3).n_frames == 3
