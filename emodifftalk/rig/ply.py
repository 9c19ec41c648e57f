"""Standard 3DGS PLY files (the layout of the reference implementation, readable by common viewers).

One binary-little-endian ``vertex`` element with float32 properties, in this order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 … f_rest_44 opacity scale_0 scale_1 scale_2
    rot_0 rot_1 rot_2 rot_3

``opacity`` is a logit, ``scale_*`` are log-scales, ``rot_*`` a wxyz quaternion, normals are 0.
Baked RGB goes to the SH DC term: ``f_dc = (c − 0.5) / C0`` (the degree-0 SH basis constant);
``f_rest`` (degrees 1–3) are zero because our colours are view-independent.

Axes: positions are in the project's world frame, OpenCV-style (x right, y down, z forward, the
cameras' convention), so most 3DGS viewers show the head upside down. ``y_up=True`` (config
``render.ply_y_up``) turns everything 180° about x — positions ``(x, -y, -z)``, each rotation
pre-multiplied by that turn — giving y-up, z-back (OpenGL/Blender-style) files.

numpy only: no plyfile dependency. ``read_ply`` parses any binary PLY with a ``vertex``
element of scalar properties (little or big endian) and returns its columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from emodifftalk.utils import atomic_write_bytes

RIG_PLY = "rig.ply"  # the canonical rig as a standard 3DGS PLY, written by `emodifftalk rig`
SH_C0 = 0.28209479177387814  # 1 / (2·sqrt(pi)), degree-0 real spherical harmonic
N_REST = 45  # SH degrees 1..3, 15 coefficients × 3 colours

PROPERTIES: tuple[str, ...] = (
    ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    + tuple(f"f_rest_{i}" for i in range(N_REST))
    + ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
)

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def rgb_to_sh_dc(rgb):
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc):
    return dc * SH_C0 + 0.5


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def flip_to_y_up(means: np.ndarray, quats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate positions and wxyz orientations 180° about x (OpenCV y-down -> y-up, z-back).

    The turn's quaternion is (0, 1, 0, 0); (0,1,0,0) ⊗ (w,x,y,z) = (-x, w, -z, y)."""
    means = means * np.array([1.0, -1.0, -1.0], dtype=means.dtype)
    w, x, y, z = quats[:, 0], quats[:, 1], quats[:, 2], quats[:, 3]
    return means, np.stack([-x, w, -z, y], axis=1).astype(quats.dtype)


def encode_ply(means, log_scales, quats, opacity_logits, colors, y_up: bool = False) -> bytes:
    """Raw (N,3) μ, (N,3) log-scales, (N,4) wxyz, (N,) opacity logits, (N,3) RGB -> PLY bytes."""
    means, log_scales, quats = _np(means), _np(log_scales), _np(quats)
    opacity_logits, colors = _np(opacity_logits).reshape(-1), _np(colors)
    n = means.shape[0]
    for name, arr, shape in (("means", means, (n, 3)), ("log_scales", log_scales, (n, 3)),
                             ("quats", quats, (n, 4)), ("opacity_logits", opacity_logits, (n,)),
                             ("colors", colors, (n, 3))):
        if arr.shape != shape:
            raise ValueError(f"encode_ply: {name} has shape {arr.shape}, expected {shape}")
    if y_up:
        means, quats = flip_to_y_up(means, quats)
    data = np.zeros((n, len(PROPERTIES)), dtype="<f4")
    data[:, 0:3] = means
    data[:, 6:9] = rgb_to_sh_dc(colors)
    o = 9 + N_REST
    data[:, o] = opacity_logits
    data[:, o + 1: o + 4] = log_scales
    data[:, o + 4: o + 8] = quats
    header = "ply\nformat binary_little_endian 1.0\n" f"element vertex {n}\n"
    header += "".join(f"property float {p}\n" for p in PROPERTIES) + "end_header\n"
    return header.encode("ascii") + data.tobytes()


def write_ply(path: str | Path, means, log_scales, quats, opacity_logits, colors, y_up: bool = False) -> Path:
    """Write raw (log-scale, logit) Gaussian parameters as a 3DGS PLY, atomically."""
    atomic_write_bytes(path, encode_ply(means, log_scales, quats, opacity_logits, colors, y_up=y_up))
    return Path(path)


def write_gaussians_ply(path: str | Path, gaussians, y_up: bool = False) -> Path:
    """Write activated ``Gaussians`` of one moment (linear scales, opacities in [0, 1])."""
    g = gaussians
    if g.num_frames is not None:
        raise ValueError("write_gaussians_ply: pass one frame (gaussians.frame(t))")
    op = _np(g.opacities).clip(1e-6, 1 - 1e-6)
    return write_ply(path, g.means, np.log(np.maximum(_np(g.scales), 1e-12)), g.quats,
                     np.log(op / (1 - op)), g.colors, y_up=y_up)


def rig_ply_bytes(rig, y_up: bool = False) -> bytes:
    """The canonical rig G0 as PLY bytes (``rig.ply`` next to ``rig.safetensors``)."""
    return encode_ply(rig.means, rig.log_scales, rig.quats, rig.opacity_logits, rig.colors, y_up=y_up)


def rig_to_ply(rig, path: str | Path, y_up: bool = False) -> Path:
    """Export the canonical rig G0."""
    return write_ply(path, rig.means, rig.log_scales, rig.quats, rig.opacity_logits, rig.colors, y_up=y_up)


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of the ``vertex`` element of a binary PLY: {property name: (N,) array}."""
    path = Path(path)
    raw = path.read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header')")
    lines = raw[:end].decode("ascii").splitlines()
    body = raw[end + len(b"end_header\n"):]
    fmt, elements, current = None, [], None
    for line in lines[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            current = {"name": parts[1], "count": int(parts[2]), "props": []}
            elements.append(current)
        elif parts[0] == "property":
            if current is None or parts[1] == "list":
                raise ValueError(f"{path}: unsupported PLY property line {line!r}")
            if parts[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unknown PLY type {parts[1]!r}")
            current["props"].append((parts[2], _PLY_TYPES[parts[1]]))
    if fmt not in ("binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: only binary PLY is supported, got format {fmt!r}")
    order = "<" if fmt == "binary_little_endian" else ">"
    offset = 0
    for el in elements:
        dtype = np.dtype([(name, order + t) for name, t in el["props"]])
        size = dtype.itemsize * el["count"]
        if len(body) < offset + size:
            raise ValueError(f"{path}: truncated (element {el['name']!r} needs {size} bytes)")
        if el["name"] == "vertex":
            arr = np.frombuffer(body, dtype=dtype, count=el["count"], offset=offset)
            return {name: np.array(arr[name]) for name, _ in el["props"]}
        offset += size
    raise ValueError(f"{path}: no 'vertex' element")


def ply_to_params(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """3DGS PLY columns -> means (N,3), log_scales (N,3), quats (N,4), opacity_logits (N,), colors (N,3)."""
    def stack(names):
        missing = [n for n in names if n not in columns]
        if missing:
            raise ValueError(f"PLY lacks 3DGS properties {missing}")
        return np.stack([columns[n] for n in names], axis=1).astype(np.float32)

    return {
        "means": stack(["x", "y", "z"]),
        "log_scales": stack(["scale_0", "scale_1", "scale_2"]),
        "quats": stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacity_logits": stack(["opacity"])[:, 0],
        "colors": sh_dc_to_rgb(stack(["f_dc_0", "f_dc_1", "f_dc_2"])),
    }
