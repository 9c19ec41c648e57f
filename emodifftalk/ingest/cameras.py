"""Camera conventions: every source camera becomes the project's (OpenCV world→camera, metres).

The project convention (``emodifftalk/data/schema.py``): ``viewmat`` is the 4x4 **world-to-camera**
matrix in **OpenCV** axes (x right, y down, +z forward), translations in **metres**, ``K`` in pixels
of the stored image with pixel centres at integer + 0.5.

A source convention is spelled ``<axes>_<direction>_<units>``:

* axes: ``opencv`` (x right, y down, z forward) or ``opengl`` (x right, y up, z backward; NeRF/Blender)
* direction: ``w2c`` (the matrix maps world points into the camera) or ``c2w`` (the camera's pose)
* units: ``m``, ``cm`` or ``mm`` (of the translations; meshes declare their own units)

e.g. RenderMe-360's ``RT`` is ``opencv_c2w_m`` (so ``viewmat = inv(RT)``). ``check-cameras``
tries all 12 spellings when the declared one does not fit the images.

Pixel-centre convention of K: OpenCV calibrations put the centre of pixel (0, 0) at coordinate 0,
the project puts it at 0.5, so ``K`` from OpenCV gets ``cx, cy += 0.5`` (``pixel_center=0.0``).
Crops shift and resizes scale the continuous image plane exactly in the project's convention.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from emodifftalk.render.cameras import project_points

AXES = ("opencv", "opengl")
DIRECTIONS = ("w2c", "c2w")
UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}
# OpenGL camera axes -> OpenCV camera axes: flip y and z
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


class CameraError(ValueError):
    """A camera matrix or convention is unusable; the message names the camera and file."""


@dataclass(frozen=True)
class Convention:
    axes: str = "opencv"
    direction: str = "w2c"
    units: str = "m"

    @classmethod
    def parse(cls, spec: str | Convention) -> Convention:
        if isinstance(spec, Convention):
            return spec
        parts = str(spec).strip().lower().split("_")
        if len(parts) == 2:
            parts.append("m")
        if len(parts) != 3 or parts[0] not in AXES or parts[1] not in DIRECTIONS or parts[2] not in UNITS:
            raise CameraError(f"unknown camera convention {spec!r}: use <axes>_<direction>_<units> with axes in "
                              f"{AXES}, direction in {DIRECTIONS}, units in {tuple(UNITS)} (e.g. opencv_c2w_m)")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.axes}_{self.direction}_{self.units}"


def all_conventions() -> list[Convention]:
    """The 12 spellings ``check-cameras`` compares."""
    return [Convention(a, d, u) for a, d, u in itertools.product(AXES, DIRECTIONS, UNITS)]


def as_4x4(matrix, where: str = "camera") -> np.ndarray:
    """(4, 4) float64 from a (4, 4) or (3, 4) matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4):
        raise CameraError(f"{where}: extrinsic matrix must be (4, 4) or (3, 4), got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise CameraError(f"{where}: extrinsic matrix has NaN/Inf")
    return m


def check_rigid(matrix: np.ndarray, where: str = "camera", tol: float = 1e-3) -> np.ndarray:
    """Raise unless ``matrix`` is a rigid transform: last row [0, 0, 0, 1], R orthonormal, det(R) = +1."""
    m = as_4x4(matrix, where)
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise CameraError(f"{where}: last row of the extrinsic is {m[3].tolist()}, expected [0, 0, 0, 1]")
    r = m[:3, :3]
    if not np.allclose(r.T @ r, np.eye(3), atol=tol):
        raise CameraError(f"{where}: rotation part is not orthonormal (R^T R - I max "
                          f"{np.abs(r.T @ r - np.eye(3)).max():.2e}); scaled or sheared extrinsic?")
    det = float(np.linalg.det(r))
    if abs(det - 1.0) > tol:
        raise CameraError(f"{where}: det(R) = {det:.4f}, expected +1 (a reflection: wrong axes convention?)")
    return m


def rigid_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 (exact transpose of R, no general matrix inverse)."""
    out = np.eye(4)
    r = m[:3, :3]
    out[:3, :3] = r.T
    out[:3, 3] = -r.T @ m[:3, 3]
    return out


def to_viewmat(matrix, convention: str | Convention, where: str = "camera") -> np.ndarray:
    """Source extrinsic in ``convention`` -> project ``viewmat`` (4, 4) float64, OpenCV w2c, metres."""
    conv = Convention.parse(convention)
    m = check_rigid(matrix, where).copy()
    m[:3, 3] *= UNITS[conv.units]
    if conv.direction == "c2w":
        c2w = m @ _GL_TO_CV if conv.axes == "opengl" else m  # negate the y and z columns
        return rigid_inverse(c2w)
    return _GL_TO_CV @ m if conv.axes == "opengl" else m


def from_viewmat(viewmat, convention: str | Convention) -> np.ndarray:
    """Inverse of ``to_viewmat``: the matrix a source in ``convention`` would store."""
    conv = Convention.parse(convention)
    v = as_4x4(viewmat)
    if conv.direction == "c2w":
        c2w = rigid_inverse(v)
        m = c2w @ _GL_TO_CV if conv.axes == "opengl" else c2w
    else:
        m = _GL_TO_CV @ v if conv.axes == "opengl" else v.copy()
    m[:3, 3] /= UNITS[conv.units]
    return m


def camera_center(viewmat: np.ndarray) -> np.ndarray:
    """World position (3,) of the camera of a w2c ``viewmat``."""
    v = as_4x4(viewmat)
    return -v[:3, :3].T @ v[:3, 3]


def check_intrinsics(k, where: str = "camera") -> np.ndarray:
    k = np.asarray(k, dtype=np.float64)
    if k.shape != (3, 3) or not np.all(np.isfinite(k)):
        raise CameraError(f"{where}: K must be a finite (3, 3) matrix, got shape {k.shape}")
    if k[0, 0] <= 0 or k[1, 1] <= 0 or not np.allclose(k[2], [0, 0, 1]):
        raise CameraError(f"{where}: K needs fx, fy > 0 and last row [0, 0, 1], got {k.tolist()}")
    return k


def shift_pixel_center(k: np.ndarray, pixel_center: float) -> np.ndarray:
    """K whose pixel (0, 0) centre sits at ``pixel_center`` -> the project's (0.5)."""
    k = np.array(k, dtype=np.float64)
    k[0, 2] += 0.5 - pixel_center
    k[1, 2] += 0.5 - pixel_center
    return k


# --------------------------------------------------------------------------------------------
# Crop + resize of K
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropResize:
    """Square centre crop ``[x0, x0 + side) x [y0, y0 + side)`` of a ``width`` x ``height`` image,
    resized to ``size`` x ``size``; ``size == 0`` keeps the image as it is."""

    width: int
    height: int
    x0: int
    y0: int
    side_w: int
    side_h: int
    out_w: int
    out_h: int

    @classmethod
    def square(cls, width: int, height: int, size: int) -> CropResize:
        if size <= 0:
            return cls(width, height, 0, 0, width, height, width, height)
        side = min(width, height)
        return cls(width, height, (width - side) // 2, (height - side) // 2, side, side, size, size)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """PIL crop box (left, upper, right, lower) in source pixels."""
        return self.x0, self.y0, self.x0 + self.side_w, self.y0 + self.side_h

    @property
    def identity(self) -> bool:
        return (self.x0, self.y0, self.side_w, self.side_h) == (0, 0, self.width, self.height) and \
            (self.out_w, self.out_h) == (self.width, self.height)

    def apply_to_K(self, k: np.ndarray) -> np.ndarray:
        """K of the output image: ``u' = (u - x0) * out_w / side_w`` (pixel centres at +0.5)."""
        sx, sy = self.out_w / self.side_w, self.out_h / self.side_h
        a = np.array([[sx, 0.0, -self.x0 * sx], [0.0, sy, -self.y0 * sy], [0.0, 0.0, 1.0]])
        return a @ np.asarray(k, dtype=np.float64)

    def apply_to_points(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=np.float64)
        return (uv - [self.x0, self.y0]) * [self.out_w / self.side_w, self.out_h / self.side_h]


# --------------------------------------------------------------------------------------------
# Projection and distortion
# --------------------------------------------------------------------------------------------


def project(points, viewmat, k) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) -> (pixel coords (N, 2) in the project's convention, depth (N,)), float64
    numpy: ``render.cameras.project_points`` (the rasterizer's projection) on (3, 4) or (4, 4) viewmats."""
    p = torch.from_numpy(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    uv, z = project_points(p, torch.from_numpy(as_4x4(viewmat)), torch.from_numpy(np.asarray(k, dtype=np.float64)))
    return uv.numpy(), z.numpy()


def distort_normalized(xy: np.ndarray, d) -> np.ndarray:
    """OpenCV (k1, k2, p1, p2[, k3]) distortion of normalised coordinates (N, 2)."""
    d = np.zeros(0) if d is None else np.asarray(d, dtype=np.float64).ravel()
    k1, k2, p1, p2, k3 = np.concatenate([d, np.zeros(5)])[:5]
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 ** 3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


def has_distortion(d) -> bool:
    return d is not None and np.size(d) > 0 and bool(np.any(np.abs(np.asarray(d, dtype=np.float64)) > 1e-12))


def undistort_maps(k: np.ndarray, d, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Source sampling coordinates (row, col arrays, (H, W)) that undistort an image taken with
    ``k`` (project convention, at this resolution) and distortion ``d``: output pixel centre
    (u, v) is the ideal pinhole ray; we sample the distorted image where that ray landed."""
    k = np.asarray(k, dtype=np.float64)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    y = (v - k[1, 2]) / k[1, 1]
    x = (u - k[0, 2] - k[0, 1] * y) / k[0, 0]
    xd = distort_normalized(np.stack([x, y], axis=-1), d)
    ud = k[0, 0] * xd[..., 0] + k[0, 1] * xd[..., 1] + k[0, 2]
    vd = k[1, 1] * xd[..., 1] + k[1, 2]
    return vd - 0.5, ud - 0.5  # array index coordinates of pixel centres


def remap(image: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Bilinear sampling of ``image`` (H, W[, C]) at ``maps`` (edge values outside)."""
    from scipy.ndimage import map_coordinates

    rows, cols = maps
    img = np.asarray(image)
    if img.ndim == 2:
        out = map_coordinates(img.astype(np.float32), [rows, cols], order=1, mode="nearest")
    else:
        out = np.stack([map_coordinates(img[..., c].astype(np.float32), [rows, cols], order=1, mode="nearest")
                        for c in range(img.shape[2])], axis=-1)
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(img.dtype)


def camera_record(name: str, k: np.ndarray, viewmat: np.ndarray, width: int, height: int) -> dict:
    """The ``cameras.json`` entry of the shard schema."""
    return {"name": name, "K": np.asarray(k, dtype=np.float64).tolist(),
            "viewmat": np.asarray(viewmat, dtype=np.float64).tolist(), "width": int(width), "height": int(height)}
