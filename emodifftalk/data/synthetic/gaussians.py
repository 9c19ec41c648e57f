"""Ground-truth Gaussian head used to render the synthetic multi-view frames.

One Gaussian per mesh vertex (a flat disk on the surface, coloured by the identity's albedo with a
fixed world light, so expressions also change shading) plus ``n_free_points`` free Gaussians that
follow the head rigidly and never move with speech: hair on the scalp, the mouth interior and upper
teeth (hidden until the lips part), neck and shoulders. This mirrors the EmoTalk3D set-up the
paper builds on: facial points bound to the template, a fixed budget of non-facial points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .head import (
    MOUTH_HALF_WIDTH,
    MOUTH_Y,
    IdentityParams,
    Template,
    hair_weight,
    head_surface,
    mean_edge_length,
    vertex_normals,
)

LIGHT_DIR = np.array([0.35, 0.55, 0.76]) / np.linalg.norm([0.35, 0.55, 0.76])
AMBIENT = 0.6

# Shares of the free-point budget.
_HAIR, _MOUTH, _TEETH, _NECK = 0.55, 0.07, 0.03, 0.13  # the rest: shoulders


@dataclass
class GaussianSet:
    """N Gaussians: means (N,3) m, quats (N,4) wxyz, scales (N,3) linear m, opacities (N,),
    colors (N,3) in [0,1]. All float32."""

    means: np.ndarray
    quats: np.ndarray
    scales: np.ndarray
    opacities: np.ndarray
    colors: np.ndarray

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        assert self.means.shape == (n, 3) and self.quats.shape == (n, 4), (self.means.shape, self.quats.shape)
        assert self.scales.shape == (n, 3) and self.opacities.shape == (n,) and self.colors.shape == (n, 3)

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @staticmethod
    def concat(parts: list[GaussianSet]) -> GaussianSet:
        return GaussianSet(*[np.concatenate([getattr(p, f) for p in parts]).astype(np.float32)
                             for f in ("means", "quats", "scales", "opacities", "colors")])

    def to_torch(self, device="cpu"):
        import torch

        return {f: torch.from_numpy(np.ascontiguousarray(getattr(self, f))).to(device)
                for f in ("means", "quats", "scales", "opacities", "colors")}


def quats_from_normals(normals: np.ndarray) -> np.ndarray:
    """wxyz quaternions (N, 4) rotating +z onto each unit normal (N, 3)."""
    n = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    q = np.stack([1.0 + n[:, 2], -n[:, 1], n[:, 0], np.zeros(len(n))], axis=1)
    flip = q[:, 0] < 1e-6  # normal == -z: rotate 180° about x
    q[flip] = [0.0, 1.0, 0.0, 0.0]
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _shade(normals: np.ndarray) -> np.ndarray:
    return AMBIENT + (1 - AMBIENT) * np.clip(normals @ LIGHT_DIR, 0, 1)


def _ellipsoid_normals(pos: np.ndarray, p: IdentityParams) -> np.ndarray:
    axes = np.array([p.half_width, p.half_height, p.half_depth])
    n = pos / axes**2
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _unit_dirs(rng, n):
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_free_gaussians(template: Template, params: IdentityParams, n: int | None = None) -> GaussianSet:
    """The ``n`` (default ``params.n_free_points``) non-facial Gaussians, deterministic per identity."""
    n = params.n_free_points if n is None else int(n)
    rng = np.random.default_rng([params.seed, 77])
    counts = [int(round(n * s)) for s in (_HAIR, _MOUTH, _TEETH, _NECK)]
    counts.append(n - sum(counts))
    n_hair, n_mouth, n_teeth, n_neck, n_shoulder = counts
    parts = []
    mm = 1e-3

    # hair: on and just above the scalp
    dirs = np.zeros((0, 3))
    while len(dirs) < n_hair:
        cand = _unit_dirs(rng, 4 * max(n_hair, 8))
        cand = cand[(hair_weight(cand, params) > 0.6) & (cand[:, 1] > -0.8)]
        dirs = np.concatenate([dirs, cand])
    dirs = dirs[:n_hair]
    base = head_surface(dirs, params)
    normal = _ellipsoid_normals(base, params)
    means = base + normal * rng.uniform(1.0, 10.0, (n_hair, 1)) * mm
    shade = _shade(normal)[:, None]
    parts.append(GaussianSet(
        means=means, quats=rng.standard_normal((n_hair, 4)),  # random strand orientations
        scales=np.stack([rng.uniform(4, 8, n_hair), rng.uniform(2, 3.5, n_hair),
                         rng.uniform(1.5, 2.5, n_hair)], 1) * mm,
        opacities=rng.uniform(0.85, 1.0, n_hair),
        colors=np.clip(params.hair_color[None] * rng.uniform(0.8, 1.2, (n_hair, 1)) * shade, 0, 1)))

    # mouth interior and upper teeth, a little behind the lips
    d = template.dirs
    near = (np.abs(d[:, 1] - MOUTH_Y) < 0.05) & (np.abs(d[:, 0]) < 0.1) & (d[:, 2] > 0.5)
    mouth = template.verts[near].mean(axis=0) if near.any() else np.array([0, -0.045, 0.09])
    half_w = MOUTH_HALF_WIDTH * params.half_width * 0.9
    x = rng.uniform(-half_w, half_w, n_mouth)
    parts.append(GaussianSet(
        means=np.stack([x, mouth[1] + rng.uniform(-0.016, 0.006, n_mouth),
                        mouth[2] - 0.012 - 0.008 * (x / half_w) ** 2], 1),
        quats=np.tile([1.0, 0, 0, 0], (n_mouth, 1)),
        scales=np.full((n_mouth, 3), 2.5 * mm),
        opacities=np.ones(n_mouth),
        colors=np.array([0.32, 0.08, 0.08])[None] * rng.uniform(0.6, 1.1, (n_mouth, 1))))
    x = rng.uniform(-0.8 * half_w, 0.8 * half_w, n_teeth)
    parts.append(GaussianSet(
        means=np.stack([x, mouth[1] + rng.uniform(0.0015, 0.005, n_teeth),
                        mouth[2] - 0.005 - 0.008 * (x / half_w) ** 2], 1),
        quats=np.tile([1.0, 0, 0, 0], (n_teeth, 1)),
        scales=np.tile(np.array([1.6, 1.4, 0.6]) * mm, (n_teeth, 1)),
        opacities=np.ones(n_teeth),
        colors=np.tile([0.93, 0.91, 0.86], (n_teeth, 1)) * rng.uniform(0.9, 1.0, (n_teeth, 1))))

    # neck: a cylinder under the head, on a jittered grid so it has no holes
    r_neck = 0.6 * params.half_width
    y_top, y_bot = -0.6 * params.half_height, -0.21
    cols = max(1, int(round(np.sqrt(n_neck * 2 * np.pi * r_neck / (y_top - y_bot)))))
    k = np.arange(n_neck)
    ang = 2 * np.pi * (k % cols + 0.5 * (k // cols % 2)) / cols + rng.normal(0, 0.05, n_neck)
    y = y_top + (y_bot - y_top) * (k // cols + 0.5) / max(1, int(np.ceil(n_neck / cols)))
    spacing = 2 * np.pi * r_neck / cols
    normal = np.stack([np.sin(ang), np.zeros(n_neck), np.cos(ang)], 1)
    parts.append(GaussianSet(
        means=np.stack([r_neck * np.sin(ang), y, -0.012 + r_neck * np.cos(ang)], 1),
        quats=quats_from_normals(normal),
        scales=np.tile(np.array([0.7, 0.7, 0.15]) * spacing, (n_neck, 1)),
        opacities=np.ones(n_neck),
        colors=np.clip(params.skin[None] * 0.92 * _shade(normal)[:, None], 0, 1)))

    # shoulders: the top cap (y > 0.2) of a wide ellipsoid, Fibonacci lattice for even cover
    radii = np.array([0.21, 0.09, 0.12])
    centre = np.array([0.0, -0.28, -0.02])
    cap = 0.2
    m = np.arange(n_shoulder) + 0.5
    yy = 1.0 - (1.0 - cap) * m / max(n_shoulder, 1)  # uniform in y on the unit sphere = uniform area
    ang = m * np.pi * (3.0 - np.sqrt(5.0))
    rr = np.sqrt(1 - yy**2)
    dirs = np.stack([rr * np.sin(ang), yy, rr * np.cos(ang)], 1)
    pos = centre + dirs * radii
    normal = dirs / radii
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    area = 2 * np.pi * (1 - cap) * np.mean(radii) ** 2
    spacing = np.sqrt(area / max(n_shoulder, 1))
    parts.append(GaussianSet(
        means=pos, quats=quats_from_normals(normal),
        scales=np.tile(np.array([0.7, 0.7, 0.15]) * spacing, (n_shoulder, 1)),
        opacities=np.ones(n_shoulder),
        colors=np.clip(params.clothing_color[None] * rng.uniform(0.9, 1.05, (n_shoulder, 1))
                       * _shade(normal)[:, None], 0, 1)))
    out = GaussianSet.concat(parts)
    out.quats /= np.linalg.norm(out.quats, axis=1, keepdims=True)
    return out


def face_gaussians(template: Template, verts: np.ndarray, tint: np.ndarray | None = None) -> GaussianSet:
    """One surface Gaussian per vertex of ``verts`` (V, 3): albedo × fixed light from current
    normals, times an optional per-vertex ``tint`` (V, 3) (expression-dependent appearance)."""
    assert verts.shape == template.verts.shape, (verts.shape, template.verts.shape)
    normals = vertex_normals(verts, template.faces)
    edge = mean_edge_length(template.verts, template.faces)
    s = 0.6 * edge
    v = len(verts)
    return GaussianSet(
        means=np.asarray(verts, np.float32), quats=quats_from_normals(normals),
        scales=np.stack([s, s, 0.2 * s], 1).astype(np.float32),
        opacities=np.full(v, 0.98, np.float32),
        colors=np.clip(template.albedo * (1.0 if tint is None else tint) * _shade(normals)[:, None],
                       0, 1).astype(np.float32))


def gaussian_head(template: Template, verts: np.ndarray, identity_params: IdentityParams | None = None,
                  free: GaussianSet | None = None, tint: np.ndarray | None = None) -> GaussianSet:
    """All Gaussians of one frame: per-vertex face Gaussians for ``verts`` (V, 3) + the free ones.

    ``free`` (from ``make_free_gaussians``) can be passed to avoid rebuilding it every frame.
    """
    params = identity_params or template.params
    if free is None:
        free = make_free_gaussians(template, params)
    return GaussianSet.concat([face_gaussians(template, verts, tint), free])
