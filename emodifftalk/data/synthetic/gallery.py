"""``gallery.png`` of a v2 data set: identities x emotions (rows) by visemes (columns), frontal.

A quick visual check that the lips take each viseme's shape (closure, labiodental tuck,
rounding, spreading, open jaw) on top of each emotion, and that wrinkles/folds follow the
expression.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emodifftalk.au import AU_INDEX, NUM_AUS
from emodifftalk.config import SynthConfig

from .appearance import expression_tint
from .face import deform
from .gaussians import gaussian_head
from .speech import EMOTION_AUS
from .talk import speech_aus
from .visemes import REST, viseme_of

GALLERY_VISEMES: tuple[tuple[str, str], ...] = (
    ("rest", ""), ("a", "a"), ("i", "i"), ("u", "u"), ("o", "o"), ("p/b/m", "m"), ("f/v", "f"), ("w", "w"))
GALLERY_EMOTIONS: tuple[str, ...] = ("neutral", "happy", "surprised", "angry")
EMOTION_LEVEL = 0.8


def _pose(phone: str, emotion: str) -> tuple[np.ndarray, np.ndarray]:
    """(aus (1, 17), articulators (1, 5)) of one viseme held under one emotion."""
    vis = viseme_of(phone)[0] if phone else REST
    art = np.asarray(vis.target, dtype=np.float64)[None]
    emo = np.zeros((1, NUM_AUS))
    for name, w in EMOTION_AUS[emotion].items():
        emo[0, AU_INDEX[name]] = w * EMOTION_LEVEL
    return (1 - (1 - speech_aus(art)) * (1 - emo)).astype(np.float32), art.astype(np.float32)


def gallery_image(cfg: SynthConfig, n_identities: int = 3) -> np.ndarray:
    """(H, W, 3) uint8 grid rendered from the frontal camera."""
    from .writer import frontal_camera, make_identity, render_frames

    vm, K = frontal_camera(cfg)
    rows = []
    for i in range(min(n_identities, cfg.n_identities)):
        ident = make_identity(cfg, i)
        for emotion in GALLERY_EMOTIONS:
            tiles = []
            for _, phone in GALLERY_VISEMES:
                aus, art = _pose(phone, emotion)
                verts = deform(ident.face, aus, art)[0]
                gs = gaussian_head(ident.template, verts, ident.params, ident.free,
                                   tint=expression_tint(ident.masks, aus[0]))
                tiles.append(render_frames(gs, vm, K, cfg.image_size)[0])
            rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def write_gallery(cfg: SynthConfig, path: str | Path) -> Path:
    from PIL import Image, ImageDraw

    grid = gallery_image(cfg)
    s = cfg.image_size
    img = Image.fromarray(grid, mode="RGB")
    draw = ImageDraw.Draw(img)
    for k, (label, _) in enumerate(GALLERY_VISEMES):
        draw.text((k * s + 3, 2), label, fill=(0, 0, 0))
    for r in range(grid.shape[0] // s):
        draw.text((3, r * s + s - 12), f"id{r // len(GALLERY_EMOTIONS):03d} "
                  f"{GALLERY_EMOTIONS[r % len(GALLERY_EMOTIONS)]}", fill=(0, 0, 0))
    img.save(path, format="PNG")
    return Path(path)
