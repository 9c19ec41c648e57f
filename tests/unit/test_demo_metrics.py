"""The demo's reported figures (``pipeline/demo_metrics.py``) on hand-made videos."""

import numpy as np
import pytest
from PIL import Image

from emodifftalk.render.cameras import orbit_cameras

from emodifftalk.edits import parse_edits
from emodifftalk.pipeline.demo_metrics import (
    change_agreement,
    edit_face_move_mm,
    edit_pixel_change,
    edit_windows,
    mean_spread,
    true_field_edit_change,
    true_field_offsets,
)

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


def test_true_field_offsets_add_the_au_change_times_its_field():
    t, v = 30, 5
    rng = np.random.default_rng(0)
    speech_offsets = rng.normal(0, 1e-3, (t, v, 3)).astype(np.float32)
    speech = rng.uniform(0, 1, (t, 17)).astype(np.float32)
    edited = speech.copy()
    edited[12:21, 0] += 0.5  # AU01 raised by 0.5 on the plateau only
    fields = np.zeros((17, v, 3), np.float32)
    fields[0, 2, 1] = 0.004  # AU01 moves vertex 2 up by 4 mm per unit
    fields[3, :, 0] = 1.0  # another AU's field: its codes did not change, so it must not count
    ideal = true_field_offsets(speech_offsets, speech, edited, fields)
    np.testing.assert_allclose(ideal[:12], speech_offsets[:12], atol=1e-7)
    np.testing.assert_allclose(ideal[15, 2, 1] - speech_offsets[15, 2, 1], 0.002, atol=1e-6)
    # 2 mm on one of the face vertices {1, 2}: a mean of 1 mm over the plateau
    assert edit_face_move_mm(speech_offsets, ideal, np.array([1, 2]), EDITS, FPS) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="fields"):
        true_field_offsets(speech_offsets, speech, edited, fields[:, :4])


def test_true_field_edit_change_renders_the_ideal_follower():
    from test_rig_gaussians import make_rig

    from emodifftalk.config import build_config

    rig = make_rig()
    viewmats, ks = orbit_cameras(1, radius=0.6, cam_height=0.0, target=(0, 0, 0), fov_deg=30, width=32, height=32)
    rig.info["cameras"] = {"viewmats": viewmats.tolist(), "Ks": ks.tolist(), "width": 32, "height": 32}
    cfg = build_config("tiny")
    cfg.infer.image_size = 32
    t, v = 30, rig.n_bound
    speech = np.zeros((t, 17), np.float32)
    edited = speech.copy()
    edited[12:21, 0] = 1.0
    fields = np.zeros((17, v, 3), np.float32)
    fields[0, rig.facial_idx.numpy(), 0] = 0.02  # AU01 slides the face 2 cm sideways
    still = np.zeros((t, v, 3), np.float32)
    ideal = true_field_offsets(still, speech, edited, fields)

    def edit(model_offsets):
        return true_field_edit_change(rig, None, still, speech, edited, model_offsets, fields, "0", cfg, EDITS, FPS,
                                      (0, 0, 32, 32))

    out = edit(ideal)  # a model that follows its codes exactly
    assert out["inside_edit"]["face"] > 1.0  # the slide shows
    assert out["outside_edit"]["face"] == 0  # identical offsets and codes render identical frames
    assert out["face_move_mm"] == pytest.approx(20.0, rel=1e-4)
    assert out["model_agreement"] == pytest.approx(1.0)
    assert edit(-ideal)["model_agreement"] < 0.5  # slides the other way: another picture change
    assert edit(still)["model_agreement"] is None  # changes nothing


def test_change_agreement_is_a_cosine_over_the_plateau_and_the_box():
    speech = np.zeros((30, 20, 20, 3), np.uint8)
    reference = speech.copy()
    reference[12:21, 2:6, 2:18] = 10
    same_shape = speech.copy()
    same_shape[12:21, 2:6, 2:18] = 3  # weaker, same place: agreement is about shape, not size
    same_shape[:12, 10:14] = 50  # outside the plateau: ignored
    same_shape[12:21, 0:2] = 50  # outside the box: ignored
    assert change_agreement(speech, same_shape, reference, EDITS, FPS, (2, 2, 18, 18)) == pytest.approx(1.0)
    elsewhere = speech.copy()
    elsewhere[12:21, 10:14, 2:18] = 10  # the lower face instead
    assert change_agreement(speech, elsewhere, reference, EDITS, FPS, (2, 2, 18, 18)) == pytest.approx(0.0)


def test_frame_grid_crops_captures_and_larger_videos_at_the_same_face(tmp_path):
    """``--preset small`` captures at 256² and animates at 512²: the face box must scale with the video."""
    from emodifftalk.pipeline.demo import _frame_grid, _scaled_box
    from emodifftalk.render.video import write_video

    capture_box = (4, 2, 20, 18)
    video_box = _scaled_box(capture_box, 2.0)
    assert video_box == (8, 4, 40, 36)
    video = np.zeros((5, 64, 64, 3), np.uint8)
    video[:, 4:36, 8:40] = 200  # the face, where the scaled box is
    write_video(tmp_path / "video.mp4", iter(video), 25.0)
    write_video(tmp_path / "video_speech.mp4", iter(video), 25.0)
    capture = np.zeros((32, 32, 3), np.uint8)
    capture[2:18, 4:20] = 200
    frames = [{"meta": {"frame": t}, "images": {"cam0": capture}} for t in range(5)]
    grid = np.asarray(Image.open(_frame_grid(tmp_path, frames, "cam0", capture_box, video_box, zoom=1)))
    assert grid.shape == (4 * 32, 5 * 32, 3)  # 4 rows (captured, speech, edited, diff) of 32² tiles
    assert grid[:96].mean() > 150  # captured and both videos: every tile is the face
    assert grid[96:].mean() < 20  # identical videos: no difference
