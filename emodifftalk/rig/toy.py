"""A tiny procedural identity for rig tests and benchmarks (seconds on CPU, no data set needed).

A UV sphere "head" (the template, with a front "face" vertex set), coloured by a smooth
pattern, plus a cap of "hair" Gaussians above it; rendered by the project's rasterizer into a
few cameras on a circle. Output is in the decoded shard formats (``frames`` samples and a
``template`` dict), so it exercises the same code path as real shards.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from emodifftalk.render import rasterize
from emodifftalk.render.cameras import look_at


def uv_sphere(n_lat: int, n_lon: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed UV sphere: verts (2 + (n_lat−1)·n_lon, 3), faces (F, 3) int32, outward winding."""
    verts = [(0.0, radius, 0.0)]
    for i in range(1, n_lat):
        theta = math.pi * i / n_lat
        for j in range(n_lon):
            phi = 2 * math.pi * j / n_lon
            verts.append((radius * math.sin(theta) * math.sin(phi), radius * math.cos(theta),
                          radius * math.sin(theta) * math.cos(phi)))
    verts.append((0.0, -radius, 0.0))
    faces = []
    ring = lambda i, j: 1 + (i - 1) * n_lon + (j % n_lon)
    bottom = len(verts) - 1
    for j in range(n_lon):
        faces.append((0, ring(1, j + 1), ring(1, j)))
        faces.append((bottom, ring(n_lat - 1, j), ring(n_lat - 1, j + 1)))
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
            faces += [(a, b, d), (a, d, c)]
    return np.asarray(verts, dtype=np.float32), np.asarray(faces, dtype=np.int32)


def _pattern(p: np.ndarray, radius: float) -> np.ndarray:
    u = p / radius
    return np.clip(np.stack([0.55 + 0.35 * np.sin(5 * u[:, 0]) * np.cos(3 * u[:, 1]),
                             0.45 + 0.3 * np.cos(4 * u[:, 2] + u[:, 1]),
                             0.5 + 0.4 * u[:, 1] * u[:, 2]], 1), 0.02, 0.98).astype(np.float32)


def make_toy_identity(identity: str = "toy", *, n_lat: int = 12, n_lon: int = 18, n_hair: int = 150,
                      n_cameras: int = 4, image_size: int = 48, n_clips: int = 1, seed: int = 0,
                      background=(1.0, 1.0, 1.0)) -> tuple[list[dict], dict]:
    """(frames samples, template) of one toy identity; neutral frame 0 of every clip."""
    rng = np.random.default_rng(seed)
    radius = 0.09
    verts, faces = uv_sphere(n_lat, n_lon, radius)
    face_set = np.nonzero(verts[:, 2] > 0.35 * radius)[0].tolist()
    lips = [i for i in face_set if verts[i, 1] < -0.3 * radius]
    template = {"verts": verts, "faces": faces,
                "vertex_sets": {"face": np.asarray(face_set), "lips": np.asarray(lips)}}
    # ground truth Gaussians: one per vertex + a hair cap
    dirs = rng.normal(size=(n_hair, 3))
    dirs[:, 1] = np.abs(dirs[:, 1]) + 0.6
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    hair = dirs * radius * rng.uniform(1.05, 1.25, (n_hair, 1))
    edge = 2 * math.pi * radius / n_lon
    means = np.concatenate([verts, hair]).astype(np.float32)
    colors = np.concatenate([_pattern(verts, radius), np.tile([[0.25, 0.15, 0.08]], (n_hair, 1))]).astype(np.float32)
    scales = np.full((len(means), 3), 0.6 * edge, np.float32)
    scales[len(verts):] = 0.5 * edge
    quats = np.tile(np.float32([1, 0, 0, 0]), (len(means), 1))
    opac = np.full(len(means), 0.95, np.float32)
    f = image_size * 1.6
    K = np.float32([[f, 0, image_size / 2], [0, f, image_size / 2], [0, 0, 1]])
    cams = []
    for k in range(n_cameras):
        ang = math.radians(-50 + 100 * k / max(n_cameras - 1, 1))
        eye = (0.42 * math.sin(ang), 0.05, 0.42 * math.cos(ang))
        viewmat = look_at(torch.tensor(eye, dtype=torch.float64), (0.0, 0.0, 0.0)).float().numpy()
        cams.append({"name": f"cam{k}", "K": K, "viewmat": viewmat, "width": image_size, "height": image_size})
    with torch.no_grad():
        out = rasterize(torch.from_numpy(means), torch.from_numpy(quats), torch.from_numpy(scales),
                        torch.from_numpy(opac), torch.from_numpy(colors),
                        torch.from_numpy(np.stack([c["viewmat"] for c in cams])),
                        torch.from_numpy(np.stack([c["K"] for c in cams])), image_size, image_size,
                        backend="torch", background=torch.tensor(background, dtype=torch.float32))
    images = (out.rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    samples = []
    for c in range(n_clips):
        clip = f"clip{c:02d}"
        samples.append({
            "key": f"{identity}__{clip}__f00000", "kind": "frames",
            "images": {cam["name"]: images[i] for i, cam in enumerate(cams)},
            "cameras": cams, "verts": verts.copy(),
            "meta": {"identity": identity, "clip": clip, "frame": 0, "split": "train",
                     "cameras": [cam["name"] for cam in cams]},
        })
    return samples, template
