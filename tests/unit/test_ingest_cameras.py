"""Camera conventions, crop/resize of K, projection and undistortion (emodifftalk.ingest.cameras)."""

from __future__ import annotations

import numpy as np
import pytest
from smc_fixtures import CAMERA_CENTRES, HEAD, MARK, intrinsics, look_at_c2w, project_opencv

from emodifftalk.ingest.cameras import (
    CameraError,
    Convention,
    CropResize,
    all_conventions,
    camera_center,
    check_rigid,
    distort_normalized,
    from_viewmat,
    project,
    remap,
    shift_pixel_center,
    to_viewmat,
    undistort_maps,
)


def _random_rigid(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = q, rng.normal(size=3)
    return m


def test_every_convention_round_trips():
    rng = np.random.default_rng(0)
    for conv in all_conventions():
        v = _random_rigid(rng)
        raw = from_viewmat(v, conv)
        np.testing.assert_allclose(to_viewmat(raw, conv), v, atol=1e-12)
        assert Convention.parse(str(conv)) == conv
    assert Convention.parse("opencv_c2w") == Convention("opencv", "c2w", "m")
    with pytest.raises(CameraError, match="unknown camera convention"):
        Convention.parse("colmap_w2c_m")


def test_renderme_rt_is_camera_to_world():
    """RT = c2w (OpenCV, metres): viewmat = inv(RT); the frontal camera sees the head centre at
    the principal point and the camera centre comes back out."""
    rt = look_at_c2w(CAMERA_CENTRES["25"])
    v = to_viewmat(rt, "opencv_c2w_m")
    np.testing.assert_allclose(v, np.linalg.inv(rt), atol=1e-12)
    np.testing.assert_allclose(camera_center(v), CAMERA_CENTRES["25"], atol=1e-12)
    k = shift_pixel_center(intrinsics(20, 16), 0.0)
    uv, z = project(HEAD, v, k)
    np.testing.assert_allclose(uv[0], [10.0, 8.0], atol=1e-9)  # image centre in the +0.5 convention
    assert z[0] == pytest.approx(1.2)
    # the same point projected with OpenCV's convention is 0.5 px less on both axes
    np.testing.assert_allclose(project_opencv(MARK, intrinsics(20, 16), rt)[0] + 0.5, project(MARK, v, k)[0][0],
                               atol=1e-9)


def test_opengl_and_units_are_converted():
    rt = look_at_c2w(CAMERA_CENTRES["00"])
    gl = rt.copy()
    gl[:3, 1:3] *= -1  # NeRF/Blender c2w: y up, z backward
    np.testing.assert_allclose(to_viewmat(gl, "opengl_c2w_m"), np.linalg.inv(rt), atol=1e-12)
    mm = rt.copy()
    mm[:3, 3] *= 1000.0
    np.testing.assert_allclose(to_viewmat(mm, "opencv_c2w_mm"), np.linalg.inv(rt), atol=1e-9)
    w2c_gl = np.diag([1.0, -1.0, -1.0, 1.0]) @ np.linalg.inv(rt)
    np.testing.assert_allclose(to_viewmat(w2c_gl, "opengl_w2c_m"), np.linalg.inv(rt), atol=1e-12)
    # a wrong convention moves the head behind the camera
    _, z = project(HEAD, to_viewmat(rt, "opencv_w2c_m"), intrinsics(20, 16))
    assert z[0] < 0


def test_non_rigid_matrices_are_rejected():
    m = look_at_c2w(CAMERA_CENTRES["25"])
    bad = m.copy()
    bad[3] = [0, 0, 1, 1]
    with pytest.raises(CameraError, match="last row"):
        check_rigid(bad, "cam X")
    refl = m.copy()
    refl[:3, 0] *= -1
    with pytest.raises(CameraError, match="det"):
        check_rigid(refl, "cam X")
    scaled = m.copy()
    scaled[:3, :3] *= 2
    with pytest.raises(CameraError, match="orthonormal"):
        check_rigid(scaled, "cam X")


def test_crop_resize_keeps_projection():
    """A point's pixel after crop + resize equals the crop/resize applied to its original pixel."""
    k = shift_pixel_center(intrinsics(48, 40), 0.0)
    v = np.linalg.inv(look_at_c2w(CAMERA_CENTRES["00"]))
    crop = CropResize.square(48, 40, 20)
    assert crop.box == (4, 0, 44, 40) and (crop.out_w, crop.out_h) == (20, 20)
    pts = HEAD + np.random.default_rng(1).normal(scale=0.05, size=(10, 3))
    uv, _ = project(pts, v, k)
    uv2, _ = project(pts, v, crop.apply_to_K(k))
    np.testing.assert_allclose(uv2, (uv - [4, 0]) * 0.5, atol=1e-9)
    keep = CropResize.square(48, 40, 0)
    assert keep.identity and np.allclose(keep.apply_to_K(k), k)


def test_undistortion_moves_a_dot_to_the_pinhole_projection():
    w = h = 64
    k = np.array([[60.0, 0, 32.0], [0, 60.0, 32.0], [0, 0, 1]])
    d = np.array([-0.4, 0.08, 0.002, -0.001, 0.0])
    ideal = np.array([[0.4, -0.35]])  # normalised coordinates of a ray
    dist = distort_normalized(ideal, d)[0]
    ud, vd = k[0, 0] * dist[0] + k[0, 2], k[1, 1] * dist[1] + k[1, 2]
    img = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    img += np.exp(-((xx - ud) ** 2 + (yy - vd) ** 2) / (2 * 1.2 ** 2))  # a blob where the distorted camera saw it
    out = remap(img, undistort_maps(k, d, w, h))
    wgt = out / out.sum()
    centroid = np.array([(wgt * xx).sum(), (wgt * yy).sum()])
    expected = np.array([k[0, 0] * ideal[0, 0] + k[0, 2], k[1, 1] * ideal[0, 1] + k[1, 2]])
    assert np.hypot(ud - expected[0], vd - expected[1]) > 2  # the distortion is visible
    np.testing.assert_allclose(centroid, expected, atol=0.35)


def test_generic_vertex_sets_find_the_regions_of_a_head():
    """The geometric fallback on the project's synthetic head (whose true sets are known), and
    its invariance to the world frame (RenderMe-360 is y-down with the face toward -z)."""
    from emodifftalk.data.synthetic.head import make_template
    from emodifftalk.ingest.manifest import generic_vertex_sets

    t = make_template(24, np.random.default_rng(0))
    g = generic_vertex_sets(t.verts, forward=(0, 0, 1), up=(0, 1, 0))

    def precision_recall(name):
        a, b = set(g[name]), set(t.vertex_sets[name])
        return len(a & b) / len(a), len(a & b) / len(b)

    assert precision_recall("face")[0] > 0.9 and precision_recall("face")[1] > 0.7
    assert precision_recall("lips")[1] > 0.8 and precision_recall("eyes")[1] > 0.6
    assert precision_recall("upper_face")[0] > 0.9
    flip = np.diag([1.0, -1.0, -1.0])  # y-down, face toward -z
    g2 = generic_vertex_sets(t.verts @ flip.T + [0, -0.5, 0], forward=(0, 0, -1), up=(0, -1, 0))
    assert g2 == g
