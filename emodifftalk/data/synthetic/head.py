"""Procedural head: identity parameters, template mesh, named vertex sets and albedo.

The head is a deformed ellipsoid built on a latitude/longitude grid of ``resolution²`` vertices
whose spacing is concentrated on the face (+z) so lips and eyes get enough vertices. Every
feature (eyes, brows, nose, lips, chin) is placed in *direction space*: the unit vector ``d`` of
the undeformed sphere, with ``d = (x, y, z)``, y up and the face looking toward +z. Feature
positions are therefore the same for every identity while the metric shape varies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Face layout in direction space (x, y of the unit direction on the front hemisphere).
EYE_X, EYE_Y = 0.33, 0.10
EYE_RX, EYE_RY = 0.12, 0.06  # sclera half-axes
IRIS_R, PUPIL_R = 0.045, 0.02
BROW_Y = 0.28
NOSE_Y = -0.12
MOUTH_Y = -0.43  # the line between the lips
MOUTH_HALF_WIDTH = 0.25
UPPER_LIP_H, LOWER_LIP_H = 0.075, 0.085
CHIN_Y = -0.74


@dataclass
class Voice:
    """Identity-specific voice: base pitch (Hz), vocal-tract scale of the formants, speaking rate."""

    f0: float
    formant_scale: float
    rate: float
    breathiness: float


@dataclass
class IdentityParams:
    """Everything that makes one synthetic person: shape, colours, voice, rig variation seed."""

    index: int
    seed: int
    # shape (metres / relative)
    half_width: float
    half_height: float
    half_depth: float
    jaw_taper: float
    chin: float
    nose: float
    brow_ridge: float
    lips: float
    # colours (linear RGB in [0, 1])
    skin: np.ndarray
    lip_color: np.ndarray
    brow_color: np.ndarray
    iris_color: np.ndarray
    hair_color: np.ndarray
    clothing_color: np.ndarray
    hairline: float  # direction-space y where the hair starts on the forehead
    skin_texture: np.ndarray  # (4, 4) random low-frequency albedo modulation coefficients
    voice: Voice
    n_free_points: int = 1500

    def to_json(self) -> dict:
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, np.ndarray):
                out[k] = np.round(v, 5).tolist()
            elif isinstance(v, Voice):
                out[k] = {kk: round(float(vv), 5) for kk, vv in v.__dict__.items()}
            else:
                out[k] = v
        return out


def sample_identity(rng: np.random.Generator, index: int = 0, n_free_points: int = 1500) -> IdentityParams:
    """Draw one identity (shape, colours, voice) from ``rng``."""
    u = rng.uniform
    tone = u(0.0, 1.0)  # light .. dark skin, interpolated between two realistic albedos
    skin = (1 - tone) * np.array([0.93, 0.76, 0.65]) + tone * np.array([0.45, 0.30, 0.21])
    skin = np.clip(skin * u(0.95, 1.05, 3), 0, 1)
    lip = np.clip(skin * np.array([0.85, 0.55, 0.55]) + np.array([0.08, 0.0, 0.02]) * u(0.5, 1.5), 0, 1)
    hair_choices = np.array([[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.55, 0.40, 0.22],
                             [0.45, 0.20, 0.10], [0.60, 0.58, 0.55]])
    hair = hair_choices[rng.integers(len(hair_choices))] * u(0.85, 1.15)
    iris_choices = np.array([[0.25, 0.15, 0.08], [0.20, 0.35, 0.55], [0.30, 0.40, 0.25]])
    iris = iris_choices[rng.integers(len(iris_choices))]
    male = rng.uniform() < 0.5
    voice = Voice(
        f0=float(u(95, 140) if male else u(170, 235)),
        formant_scale=float(u(0.92, 1.0) if male else u(1.05, 1.15)),
        rate=float(u(0.85, 1.15)),
        breathiness=float(u(0.02, 0.08)),
    )
    return IdentityParams(
        index=index,
        seed=int(rng.integers(2**31 - 1)),
        half_width=float(u(0.072, 0.084)),
        half_height=float(u(0.098, 0.112)),
        half_depth=float(u(0.088, 0.100)),
        jaw_taper=float(u(0.10, 0.30)),
        chin=float(u(0.003, 0.009)),
        nose=float(u(0.016, 0.026)),
        brow_ridge=float(u(0.002, 0.005)),
        lips=float(u(0.004, 0.008)),
        skin=skin.astype(np.float32),
        lip_color=lip.astype(np.float32),
        brow_color=np.clip(hair * 0.55 + 0.03, 0, 1).astype(np.float32),
        iris_color=iris.astype(np.float32),
        hair_color=np.clip(hair, 0, 1).astype(np.float32),
        clothing_color=rng.uniform(0.1, 0.8, 3).astype(np.float32),
        hairline=float(u(0.50, 0.62)),
        skin_texture=rng.normal(0, 1, (4, 4)).astype(np.float32),
        voice=voice,
        n_free_points=int(n_free_points),
    )


# ------------------------------------------------------------------------------------------
# Shape
# ------------------------------------------------------------------------------------------


def smoothstep(e0: float, e1: float, x):
    t = np.clip((np.asarray(x, dtype=np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def bump(d: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    """Gaussian bump on the front hemisphere around direction-space (cx, cy); (N,) in [0, 1]."""
    front = smoothstep(0.15, 0.45, d[:, 2])
    return np.exp(-0.5 * (((d[:, 0] - cx) / sx) ** 2 + ((d[:, 1] - cy) / sy) ** 2)) * front


def sym_bump(d, cx, cy, sx, sy):
    return bump(d, cx, cy, sx, sy) + bump(d, -cx, cy, sx, sy)


def head_surface(d: np.ndarray, p: IdentityParams) -> np.ndarray:
    """Surface point (N, 3) in metres for unit directions ``d`` (N, 3) of identity ``p``."""
    d = np.asarray(d, dtype=np.float64)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    # lower face narrows toward the jaw/chin, back of the skull is slightly fuller
    sx = 1.0 - p.jaw_taper * smoothstep(-0.15, -0.95, y) * smoothstep(-0.6, 0.4, z)
    sz = 1.0 + 0.06 * smoothstep(0.0, -0.8, z) * smoothstep(-0.5, 0.5, y)
    pos = np.stack([p.half_width * x * sx, p.half_height * y, p.half_depth * z * sz], axis=1)
    # features push the surface along +z (outward on the face)
    dz = (p.nose * np.exp(-0.5 * ((x / 0.065) ** 2 + ((y - NOSE_Y + 0.02) / 0.10) ** 2))
          * smoothstep(-0.26, -0.05, y) * smoothstep(0.4, 0.7, z)
          + 0.35 * p.nose * bump(d, 0.0, 0.08, 0.05, 0.12)  # nose bridge
          + p.brow_ridge * sym_bump(d, 0.30, BROW_Y, 0.16, 0.05)
          - 0.006 * sym_bump(d, EYE_X, EYE_Y, 0.10, 0.06)  # eye sockets
          + 0.0045 * sym_bump(d, EYE_X, EYE_Y, 0.06, 0.035)  # eyeballs
          + p.lips * bump(d, 0.0, MOUTH_Y, 0.22, 0.09)
          + p.chin * bump(d, 0.0, CHIN_Y, 0.18, 0.10)
          + 0.003 * sym_bump(d, 0.42, -0.12, 0.12, 0.10))  # cheeks
    pos[:, 2] += dz
    return pos


def _warped(n: int, lo: float, hi: float, centre: float, width: float, boost: float, periodic: bool):
    """n grid coordinates in [lo, hi) whose density is ``1 + boost * gauss((x - centre) / width)``."""
    x = np.linspace(lo, hi, 4097)
    dens = 1.0 + boost * np.exp(-0.5 * ((x - centre) / width) ** 2)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(x))])
    cdf /= cdf[-1]
    q = np.arange(n) / n if periodic else (np.arange(n) + 0.5) / n
    return np.interp(q, cdf, x)


def grid_directions(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions (R*R, 3) of the lat/long grid and its faces (F, 3), face-dense spacing.

    Rows run top to bottom (the poles stay as small open holes, covered by hair / neck), columns
    around the head starting at the back; both are concentrated on the face so the lips and eyes
    get enough vertices.
    """
    r = int(resolution)
    theta = _warped(r, 0.0, np.pi, centre=np.pi / 2 + 0.2, width=0.5, boost=5.0, periodic=False)
    phi = _warped(r, -np.pi, np.pi, centre=0.0, width=0.55, boost=6.0, periodic=True)
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    dirs = np.stack([np.sin(th) * np.sin(ph), np.cos(th), np.sin(th) * np.cos(ph)], -1).reshape(-1, 3)
    idx = np.arange(r * r).reshape(r, r)
    a = idx[:-1, :]
    b = idx[:-1, np.r_[1:r, 0]]
    c = idx[1:, :]
    e = idx[1:, np.r_[1:r, 0]]
    # counter-clockwise seen from outside so normals point outward
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3),
                            np.stack([b, c, e], -1).reshape(-1, 3)]).astype(np.int32)
    return dirs, faces


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3)."""
    v = np.asarray(verts, dtype=np.float64)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def mean_edge_length(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-vertex mean length of the incident edges (V,)."""
    v = np.asarray(verts, dtype=np.float64)
    total = np.zeros(len(v))
    count = np.zeros(len(v))
    for i, j in ((0, 1), (1, 2), (2, 0)):
        ln = np.linalg.norm(v[faces[:, i]] - v[faces[:, j]], axis=1)
        np.add.at(total, faces[:, i], ln)
        np.add.at(total, faces[:, j], ln)
        np.add.at(count, faces[:, i], 1)
        np.add.at(count, faces[:, j], 1)
    return total / np.maximum(count, 1)


# ------------------------------------------------------------------------------------------
# Regions and albedo
# ------------------------------------------------------------------------------------------


def _ellipse(d, cx, cy, rx, ry):
    return ((d[:, 0] - cx) / rx) ** 2 + ((d[:, 1] - cy) / ry) ** 2


def lip_weights(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft membership (V,) of the upper and lower lip."""
    front = smoothstep(0.3, 0.6, d[:, 2])
    xs = np.clip(1 - (d[:, 0] / MOUTH_HALF_WIDTH) ** 2, 0, 1)
    bow = 0.012 * np.exp(-0.5 * (d[:, 0] / 0.05) ** 2)  # cupid's bow
    up_top = MOUTH_Y + UPPER_LIP_H * np.sqrt(xs) + bow
    lo_bot = MOUTH_Y - LOWER_LIP_H * np.sqrt(xs)
    y = d[:, 1]
    upper = smoothstep(up_top + 0.012, up_top - 0.012, y) * smoothstep(MOUTH_Y - 0.004, MOUTH_Y + 0.004, y)
    lower = smoothstep(lo_bot - 0.012, lo_bot + 0.012, y) * smoothstep(MOUTH_Y + 0.004, MOUTH_Y - 0.004, y)
    return upper * front * (xs > 0), lower * front * (xs > 0)


def hair_weight(d: np.ndarray, p: IdentityParams) -> np.ndarray:
    """(V,) 1 on the scalp (top and back), 0 on the face."""
    front = smoothstep(-0.2, 0.45, d[:, 2])
    boundary = p.hairline * front + (-0.35) * (1 - front)
    side = smoothstep(0.55, 0.85, np.abs(d[:, 0])) * smoothstep(-0.1, 0.1, d[:, 1])  # temples
    return np.clip(smoothstep(boundary - 0.04, boundary + 0.04, d[:, 1]) + side * 0.8, 0, 1)


def make_vertex_sets(d: np.ndarray) -> dict[str, list[int]]:
    """Named vertex index sets (``schema.VERTEX_SETS``) chosen by direction-space position."""
    y, z = d[:, 1], d[:, 2]
    face = (z > 0.35) & (y > -0.95) & (y < 0.58)
    up, lo = lip_weights(d)
    lips = (up + lo) > 0.3
    lips |= (_ellipse(d, 0.0, MOUTH_Y, MOUTH_HALF_WIDTH + 0.02, 0.10) < 1.0) & (z > 0.5)
    eyes = ((_ellipse(d, EYE_X, EYE_Y, EYE_RX + 0.03, EYE_RY + 0.05) < 1.0)
            | (_ellipse(d, -EYE_X, EYE_Y, EYE_RX + 0.03, EYE_RY + 0.05) < 1.0)) & (z > 0.3)
    upper_face = face & (y > 0.0)
    jaw = (y < MOUTH_Y + 0.01) & (z > 0.0) & (y > -0.97)
    sets = {"lips": lips, "upper_face": upper_face, "eyes": eyes, "jaw": jaw, "face": face | lips | eyes}
    return {k: np.flatnonzero(v).astype(int).tolist() for k, v in sets.items()}


def albedo(d: np.ndarray, p: IdentityParams) -> np.ndarray:
    """Per-vertex colour (V, 3) in [0, 1]: skin with texture, hair, brows, eyes, lips, blush."""
    x, y = d[:, 0], d[:, 1]
    # low-frequency skin texture: a few random sinusoids
    tex = np.zeros(len(d))
    for i in range(4):
        for j in range(4):
            tex += p.skin_texture[i, j] * np.sin((i + 1) * 2.1 * x + j * 1.7) * np.cos((j + 1) * 1.9 * y + i)
    col = np.tile(p.skin, (len(d), 1)).astype(np.float64) * (1.0 + 0.025 * tex)[:, None]

    def blend(w, c):  # paint colour c over the current col with weight w (V,)
        return (1 - w)[:, None] * col + w[:, None] * np.asarray(c)[None]

    col = blend(0.35 * sym_bump(d, 0.42, -0.15, 0.10, 0.08), p.skin * np.array([1.05, 0.80, 0.80]))
    col = blend(0.25 * bump(d, 0.0, NOSE_Y, 0.06, 0.08), p.skin * np.array([1.0, 0.85, 0.85]))
    # brows: arcs above the eyes
    for s in (1, -1):
        arc = BROW_Y - 0.10 * ((x - s * 0.33) / 0.25) ** 2
        w = (np.exp(-0.5 * ((y - arc) / 0.028) ** 2) * smoothstep(0.28, 0.12, np.abs(x - s * 0.33))
             * smoothstep(0.3, 0.5, d[:, 2]))
        col = blend(np.clip(1.4 * w, 0, 1), p.brow_color)
    # eyes: sclera, iris, pupil
    for s in (1, -1):
        sclera = smoothstep(1.15, 0.85, _ellipse(d, s * EYE_X, EYE_Y, EYE_RX, EYE_RY)) * smoothstep(0.3, 0.5, d[:, 2])
        col = blend(sclera, np.array([0.92, 0.90, 0.88]))
        r = np.sqrt(_ellipse(d, s * EYE_X, EYE_Y, 1.0, 1.0))
        col = blend(sclera * smoothstep(IRIS_R + 0.01, IRIS_R - 0.01, r), p.iris_color)
        col = blend(sclera * smoothstep(PUPIL_R + 0.008, PUPIL_R - 0.008, r), np.array([0.03, 0.03, 0.03]))
    up, lo = lip_weights(d)
    col = blend(np.clip(up + lo, 0, 1), p.lip_color)
    mouth_line = (np.exp(-0.5 * ((y - MOUTH_Y) / 0.01) ** 2)
                  * smoothstep(MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH - 0.04, np.abs(x)) * smoothstep(0.3, 0.6, d[:, 2]))
    col = blend(0.8 * mouth_line, np.array([0.25, 0.06, 0.06]))
    col = blend(hair_weight(d, p), p.hair_color)
    return np.clip(col, 0, 1).astype(np.float32)


@dataclass
class Template:
    """Neutral head of one identity.

    verts: (V, 3) float32 metres; faces: (F, 3) int32; vertex_sets: name -> vertex indices;
    dirs: (V, 3) direction-space coordinates (where each vertex sits on the face layout);
    albedo: (V, 3) per-vertex colour; params: the identity.
    """

    verts: np.ndarray
    faces: np.ndarray
    vertex_sets: dict[str, list[int]]
    dirs: np.ndarray = field(repr=False, default=None)
    albedo: np.ndarray = field(repr=False, default=None)
    params: IdentityParams | None = field(repr=False, default=None)

    @property
    def n_verts(self) -> int:
        return int(self.verts.shape[0])


def make_template(resolution: int, rng: np.random.Generator | None = None,
                  params: IdentityParams | None = None) -> Template:
    """Template mesh of ``resolution²`` vertices for ``params`` (or an identity drawn from ``rng``)."""
    if params is None:
        if rng is None:
            raise ValueError("make_template needs rng or params")
        params = sample_identity(rng)
    if resolution < 8:
        raise ValueError(f"mesh resolution must be >= 8, got {resolution}")
    dirs, faces = grid_directions(resolution)
    verts = head_surface(dirs, params).astype(np.float32)
    return Template(verts=verts, faces=faces, vertex_sets=make_vertex_sets(dirs),
                    dirs=dirs.astype(np.float32), albedo=albedo(dirs, params), params=params)
