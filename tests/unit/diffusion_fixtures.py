"""A tiny packed data set for the motion task tests: AU-driven meshes on a small grid face.

Meshes are template + Σ_k AU_k · D_k with smooth random displacement fields D_k (a few mm), so
the AU → motion mapping is learnable in a handful of steps; audio is noise. By default every identity
has its own random fields. With ``regional=True`` the fields are shared by all identities (as a
FACS action moves every face alike, so held-out identities are predictable) and each is confined
to its AU's half of the grid (speech AUs: the lower, lip half; the others: the upper half), so an
AU edit has a region it should move and a region it should leave alone.
The true fields are saved as ``<identity>/au_fields.npy`` (17, V, 3) beside the raw data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emodifftalk.au import SPEECH_AU_MASK
from emodifftalk.config import build_config
from emodifftalk.data.audio import write_wav
from emodifftalk.data.openface import write_openface_csv

FPS = 25.0
GRID = (6, 8)  # rows x cols -> V = 48


def grid_template(rng, rows=GRID[0], cols=GRID[1]):
    y, x = np.meshgrid(np.linspace(-0.08, 0.08, rows), np.linspace(-0.06, 0.06, cols), indexing="ij")
    z = 0.05 * np.cos(x / 0.06) + rng.normal(0, 0.001, x.shape)
    verts = np.stack([x, y, z], -1).reshape(-1, 3).astype(np.float32)
    faces = []
    for r in range(rows - 1):
        for c in range(cols - 1):
            i = r * cols + c
            faces += [[i, i + 1, i + cols], [i + 1, i + cols + 1, i + cols]]
    lips = [r * cols + c for r in (0, 1) for c in range(2, cols - 2)]
    upper = [r * cols + c for r in (rows - 2, rows - 1) for c in range(cols)]
    sets = {"lips": lips, "upper_face": upper, "eyes": upper[:2], "jaw": lips[:2],
            "face": list(range(rows * cols))}
    return verts, np.asarray(faces, np.int32), sets


def upper_half(verts: np.ndarray) -> np.ndarray:
    """(V,) bool: the grid's upper (brow/eye) half; the lips are in the lower half."""
    return verts[:, 1] > 0


def make_motion_raw(root: Path, n_identities: int = 5, n_clips: int = 3, n_frames: int = 30,
                    seed: int = 0, regional: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    shared_dirs = np.random.default_rng(seed + 1).normal(0, 0.004, (17, 1, 3))
    ids = [f"id{i}" for i in range(n_identities)]
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(
        {"name": "motion-fixture", "fps": FPS, "sample_rate": 16000, "schema_version": 1, "identities": ids}))
    for ident in ids:
        verts, faces, sets = grid_template(rng)
        t = root / ident / "template"
        t.mkdir(parents=True)
        np.save(t / "verts.npy", verts)
        np.save(t / "faces.npy", faces)
        (t / "vertex_sets.json").write_text(json.dumps(sets))
        cams = [{"name": f"cam{i}", "K": [[10.0, 0, 4], [0, 10.0, 3], [0, 0, 1]],
                 "viewmat": np.eye(4).tolist(), "width": 8, "height": 6} for i in range(2)]
        (root / ident / "cameras.json").write_text(json.dumps({"cameras": cams}))
        # smooth displacement fields: a few mm, varying with position
        basis = np.stack([np.sin(verts[:, 0] * 30 + k) * np.cos(verts[:, 1] * 20 - k) for k in range(17)])
        dirs = rng.normal(0, 0.004, (17, 1, 3))
        fields = basis[:, :, None] * dirs
        if regional:  # every vertex of the AU's half moves (1 ± 0.5 of the shared direction)
            upper = upper_half(verts)
            fields = (1.0 + 0.5 * basis[:, :, None]) * shared_dirs
            fields *= np.where(np.asarray(SPEECH_AU_MASK)[:, None], ~upper, upper)[:, :, None]
        np.save(root / ident / "au_fields.npy", fields.astype(np.float32))
        for c in range(n_clips):
            d = root / ident / f"clip{c}"
            d.mkdir()
            (d / "meta.json").write_text(json.dumps(
                {"identity": ident, "clip": f"clip{c}", "fps": FPS, "n_frames": n_frames, "sample_rate": 16000,
                 "emotion": "neutral", "modalities": ["audio", "aus", "verts"]}))
            tt = np.arange(n_frames)[:, None] / FPS
            aus = 0.5 + 0.5 * np.sin(2 * np.pi * (0.5 + rng.uniform(0, 2, 17)) * tt + rng.uniform(0, 6, 17))
            write_wav(d / "audio.wav", 0.2 * rng.uniform(-1, 1, int(n_frames / FPS * 16000)).astype(np.float32), 16000)
            write_openface_csv(d / "openface.csv", aus, FPS)
            aus_q = np.round(aus * 5, 2) / 5  # what the CSV round trip gives back
            seq = verts[None] + np.einsum("tk,kvc->tvc", aus_q, fields)
            np.save(d / "verts.npy", seq.astype(np.float32))
    return root


def make_motion_shards(tmp: Path, **kw) -> Path:
    from emodifftalk.data.shards import pack_dataset

    raw = make_motion_raw(tmp / "raw", **kw)
    cfg = build_config("tiny", ["data.val_identity_fraction=0.2", "data.test_identity_fraction=0.2"])
    return pack_dataset(raw, tmp / "shards", cfg)


def tiny_motion_config(root: Path, *extra: str):
    return build_config("tiny", [
        f"data.root={root}", "data.batch_size=2", "data.window_frames=12", "data.shuffle_buffer=4",
        "diffusion.num_train_steps=20", "diffusion.ddim_steps=4", "diffusion.d_model=32", "diffusion.n_heads=4",
        "diffusion.n_layers=1", "diffusion.vertex_embed_rank=8", "diffusion.window_frames=16",
        "diffusion.context_frames=4", "diffusion.audio_window=1", "audio.n_mels=16", *extra])
