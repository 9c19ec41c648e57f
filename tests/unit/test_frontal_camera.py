"""'front' camera: the capture camera that looks most squarely at the face, whatever the camera
numbering, the head's orientation or the triangles' winding."""

import math

import pytest
import torch

from emodifftalk.render.cameras import face_forward, facing_cosines, most_frontal_camera, orbit_cameras
from emodifftalk.rig.toy import uv_sphere


def _head(yaw_deg: float = 0.0):
    """Unit-ish sphere whose 'face' is the cap around +z, turned by ``yaw_deg`` about y."""
    verts, faces = (torch.as_tensor(a) for a in uv_sphere(10, 16, 0.1))
    verts = verts.float()
    face = torch.nonzero(verts[:, 2] > 0.06).flatten()
    a = math.radians(yaw_deg)
    rot = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    return verts @ rot.T, faces.long(), face


def _ring(n=8):
    viewmats, _ = orbit_cameras(n, radius=1.0, cam_height=0.1, target=(0, 0, 0), fov_deg=30, width=8, height=8)
    return viewmats  # camera 0 in front (+z); camera i at 360 * i / n degrees


@pytest.mark.parametrize("yaw, expected", [(0.0, 0), (90.0, 2), (180.0, 4), (-90.0, 6)])
def test_picks_the_camera_in_front_of_the_face(yaw, expected):
    verts, faces, face = _head(yaw)
    viewmats = _ring()
    eyes = torch.linalg.inv(viewmats)[:, :3, 3]
    # the answer must not depend on where the ring starts: the picked camera's eye is what counts
    got = most_frontal_camera(viewmats, verts, faces, face)
    assert torch.allclose(eyes[got], eyes[expected], atol=1e-5), (yaw, got, expected)
    shuffled = torch.roll(viewmats, 3, dims=0)
    assert torch.allclose(torch.linalg.inv(shuffled)[most_frontal_camera(shuffled, verts, faces, face), :3, 3],
                          eyes[expected], atol=1e-5)


def test_cameras_behind_the_head_do_not_see_the_face():
    verts, faces, face = _head(90.0)  # facing camera 2
    cos = facing_cosines(_ring(), verts, faces, face)
    assert torch.nonzero(cos > 0).flatten().tolist() == [1, 2, 3]
    assert cos[2] > 0.99 and cos[6] < -0.99


def test_forward_ignores_winding():
    verts, faces, face = _head(30.0)
    _, fwd = face_forward(verts, faces, face)
    _, fwd_flipped = face_forward(verts, faces.flip(1), face)
    assert torch.allclose(fwd, fwd_flipped, atol=1e-6)
    assert fwd[0] > 0.4 and fwd[2] > 0.7  # turned 30 degrees towards +x


def test_capture_camera_index_front_on_a_rig():
    from test_rig_gaussians import make_rig

    from emodifftalk.pipeline.animate import AnimateError, capture_camera_index

    rig = make_rig()  # its facial points are the cap around +z
    with pytest.raises(AnimateError, match="no capture cameras"):
        capture_camera_index(rig, "front")
    viewmats = torch.roll(_ring(), 2, dims=0)  # the camera in front of the face is now index 2
    rig.info["cameras"] = {"viewmats": viewmats.tolist()}
    assert capture_camera_index(rig, "front") == 2
    assert capture_camera_index(rig, "5") == 5
    with pytest.raises(AnimateError, match="0..7"):
        capture_camera_index(rig, "8")


def test_capture_cameras_render_at_the_output_size():
    from test_rig_gaussians import make_rig

    from emodifftalk.pipeline.animate import camera_path
    from emodifftalk.render.cameras import intrinsics

    rig = make_rig()
    k = intrinsics(30.0, 64, 48)
    rig.info["cameras"] = {"viewmats": _ring().tolist(), "Ks": [k.tolist()] * 8, "width": 64, "height": 48}
    (vm, got_k, w, h), = camera_path(rig, "front", 1, 512)
    assert (w, h) == (512, 384)  # long side = the output size, aspect kept
    assert torch.allclose(got_k[0, :2], k[:2] * 8) and torch.allclose(got_k[0, 2], k[2])
