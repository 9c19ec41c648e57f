"""Camera helpers in the renderer's conventions (gsplat / OpenCV).

* ``viewmat`` (4, 4) is world-to-camera; camera axes are OpenCV's: x right, y down, z forward.
* ``c2w`` (4, 4) is its inverse, camera-to-world.
* ``K`` (3, 3) is in pixels with pixel centres at ``(x + 0.5, y + 0.5)``; ``intrinsics`` puts the
  principal point at the image centre ``(W / 2, H / 2)``.
* The world is "y up" by default (``up=(0, 1, 0)``), as for FLAME-style head meshes that face +z.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# OpenGL / Blender / NeRF cameras look down -z with y up; OpenCV looks down +z with y down.
_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def _vec3(v, dtype=None, device=None) -> Tensor:
    t = torch.as_tensor(v, dtype=dtype if dtype is not None else torch.float32, device=device)
    if t.shape != (3,):
        raise ValueError(f"expected a 3-vector, got shape {tuple(t.shape)}")
    return t


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> Tensor:
    """World-to-camera (4, 4) for a camera at ``eye`` looking at ``target``, OpenCV axes.

    Camera z points from eye to target, x = z cross up (image right), y = z cross x (image down,
    i.e. world ``up`` appears at the top of the image)."""
    dtype = eye.dtype if isinstance(eye, Tensor) and eye.is_floating_point() else torch.float32
    device = eye.device if isinstance(eye, Tensor) else None
    eye, target, up = (_vec3(v, dtype, device) for v in (eye, target, up))
    z = target - eye
    if z.norm() <= 1e-12:
        raise ValueError("look_at: eye and target coincide")
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    if x.norm() <= 1e-9 * up.norm():
        raise ValueError("look_at: viewing direction is parallel to `up`; pass a different up vector")
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=dtype, device=device)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w_to_viewmat(c2w)


def intrinsics(fov_deg: float, width: int, height: int, dtype=torch.float32) -> Tensor:
    """(3, 3) pinhole K with square pixels; ``fov_deg`` is the *vertical* field of view."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]], dtype=dtype)


def orbit_cameras(
    n: int,
    radius: float,
    cam_height: float,
    target: Sequence[float] | Tensor,
    fov_deg: float,
    width: int,
    height: int,
    *,
    up: Sequence[float] = (0.0, 1.0, 0.0),
    arc_deg: float = 360.0,
) -> tuple[Tensor, Tensor]:
    """``n`` cameras on a circle around ``target``: (viewmats (n, 4, 4), Ks (n, 3, 3)).

    The circle has ``radius`` in the plane normal to ``up`` and sits ``cam_height`` above the
    target along ``up``. The first camera looks at the front (+z side) of the target. With
    ``arc_deg=360`` the cameras are evenly spaced around the full circle (a turntable); a smaller
    arc spans ``[-arc/2, +arc/2]`` degrees, endpoints included."""
    if n < 1:
        raise ValueError(f"orbit_cameras needs n >= 1, got {n}")
    target_t = _vec3(target)
    up_t = _vec3(up)
    up_t = up_t / up_t.norm()
    # an in-plane basis (front, side): front is +z projected onto the plane normal to up
    front = torch.tensor([0.0, 0.0, 1.0]) - up_t * up_t[2]
    if front.norm() < 1e-6:
        front = torch.tensor([1.0, 0.0, 0.0]) - up_t * up_t[0]
    front = front / front.norm()
    side = torch.linalg.cross(up_t, front)
    if arc_deg >= 360.0:
        angles = [2 * math.pi * i / n for i in range(n)]
    else:
        angles = [0.0] if n == 1 else [math.radians(-arc_deg / 2 + arc_deg * i / (n - 1)) for i in range(n)]
    viewmats = []
    for a in angles:
        eye = target_t + radius * (math.cos(a) * front + math.sin(a) * side) + cam_height * up_t
        viewmats.append(look_at(eye, target_t, up_t))
    K = intrinsics(fov_deg, width, height)
    return torch.stack(viewmats), K[None].repeat(n, 1, 1)


def c2w_to_viewmat(c2w: Tensor) -> Tensor:
    """Invert rigid camera-to-world matrices (..., 4, 4) into world-to-camera viewmats."""
    rot, t = c2w[..., :3, :3], c2w[..., :3, 3:]
    out = torch.zeros_like(c2w)
    out[..., :3, :3] = rot.transpose(-1, -2)
    out[..., :3, 3:] = -rot.transpose(-1, -2) @ t
    out[..., 3, 3] = 1.0
    return out


viewmat_to_c2w = c2w_to_viewmat  # the rigid inverse is its own inverse


def face_forward(verts: Tensor, faces: Tensor, face_vertices: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(centre (3,), unit forward (3,)) of a face mesh: the area-weighted normal of the triangles
    whose corners all lie in ``face_vertices`` (every triangle when None), oriented away from the
    whole mesh's centroid so the answer does not depend on the triangles' winding."""
    verts, faces = verts.float(), faces.long()
    if face_vertices is not None and face_vertices.numel():
        inside = torch.zeros(verts.shape[0], dtype=torch.bool, device=verts.device)
        inside[face_vertices.long()] = True
        faces = faces[inside[faces].all(1)] if inside[faces].all(1).any() else faces
    a, b, c = (verts[faces[:, i]] for i in range(3))
    normal = torch.linalg.cross(b - a, c - a).sum(0)  # |cross| = 2 x area: area-weighted
    centre = verts[faces.reshape(-1)].mean(0)
    if torch.dot(normal, centre - verts.mean(0)) < 0:
        normal = -normal
    return centre, normal / normal.norm().clamp_min(1e-12)


def facing_cosines(viewmats: Tensor, verts: Tensor, faces: Tensor, face_vertices: Tensor | None = None) -> Tensor:
    """(C,) cosine between the face's forward direction and the direction from the face to each
    camera (viewmats (C, 4, 4)): 1 looks squarely at the face, <= 0 sees none of it."""
    centre, forward = face_forward(verts, faces, face_vertices)
    eyes = viewmat_to_c2w(viewmats.float())[:, :3, 3]
    return torch.nn.functional.normalize(eyes - centre, dim=-1) @ forward


def most_frontal_camera(viewmats: Tensor, verts: Tensor, faces: Tensor, face_vertices: Tensor | None = None) -> int:
    """Index of the camera (viewmats (C, 4, 4)) that looks most squarely at the face."""
    return int(facing_cosines(viewmats, verts, faces, face_vertices).argmax())


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """Camera-to-world (..., 4, 4) with OpenGL camera axes (x right, y up, looking down -z)
    -> OpenCV camera axes (x right, y down, z forward). Applying it twice gives the input back."""
    return c2w @ _FLIP_YZ.to(dtype=c2w.dtype, device=c2w.device)


opencv_to_opengl = opengl_to_opencv


def project_points(points: Tensor, viewmat: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """World points (N, 3) -> (pixels (N, 2), depth (N,)), same convention as the rasterizer's
    ``means2d``: ``u = fx x / z + cx`` with pixel ``i`` covering ``[i, i + 1)``. Several cameras
    at once: ``viewmat`` (C, 4, 4) and ``K`` (C, 3, 3) give (C, N, 2) and (C, N). Depths near 0
    are clamped to 1e-6 in the division; callers mask ``depth > 0``."""
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {tuple(points.shape)}")
    cam = points @ viewmat[..., :3, :3].transpose(-1, -2) + viewmat[..., None, :3, 3]
    depth = cam[..., 2]
    uv = cam @ K[..., :2, :3].transpose(-1, -2) / depth.clamp_min(1e-6)[..., None]
    return uv, depth
