"""The motion model's data: identity templates and the audio features of ``seq`` clips.

Shared by training (``train/tasks/motion.py``), ``eval motion``, ``eval speech`` and the demo, so
none of them needs the training task to read templates or decide whether a clip is usable.
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from emodifftalk.data.shards import load_templates
from emodifftalk.losses.geometry import laplacian_matrix, mesh_edges
from emodifftalk.models.audio_frontend import build_frontend, encoder_id

log = logging.getLogger(__name__)

FEATURE_CACHE_CLIPS = 2048  # computed audio features kept per process (use `featurize` for big sets)


@dataclass
class TemplateInfo:
    identity: str
    verts: np.ndarray  # (V, 3) float32
    lip_idx: np.ndarray  # int64
    upper_idx: np.ndarray  # int64
    face_idx: np.ndarray  # int64 (all vertices if the set is missing)
    edges: Tensor  # (E, 2) long
    topology: str  # key shared by templates with identical faces
    laplacian: Tensor | None = None  # sparse (V, V), see losses.geometry.laplacian_matrix

    @property
    def num_vertices(self) -> int:
        return self.verts.shape[0]


def load_template_infos(root: str | Path) -> dict[str, TemplateInfo]:
    """{identity: TemplateInfo} from the template shards of ``root``."""
    out = {}
    for identity, s in load_templates(root).items():
        verts = np.asarray(s["verts"], dtype=np.float32)
        sets = s["vertex_sets"]
        if len(sets.get("lips", ())) == 0:
            raise ValueError(f"template of {identity} in {root} has no 'lips' vertex set")
        faces = np.asarray(s["faces"], dtype=np.int64)
        v = verts.shape[0]
        face_idx = np.asarray(sets.get("face", np.arange(v)), dtype=np.int64)
        out[identity] = TemplateInfo(
            identity=identity, verts=verts, lip_idx=np.asarray(sets["lips"], dtype=np.int64),
            upper_idx=np.asarray(sets.get("upper_face", face_idx), dtype=np.int64),
            face_idx=face_idx if face_idx.size else np.arange(v),
            edges=mesh_edges(torch.from_numpy(faces)),
            topology=f"{v}:{zlib.crc32(faces.tobytes()):08x}")
        out[identity].laplacian = laplacian_matrix(out[identity].edges, v)
    if not out:
        raise ValueError(f"no template samples in {root}")
    return out


def _feats_encoder(meta) -> str | None:
    if isinstance(meta, dict):
        for key in ("encoder_id", "encoder", "id"):
            if isinstance(meta.get(key), str):
                return meta[key]
    return meta if isinstance(meta, str) else None


class ClipFeatures:
    """Audio features for a decoded seq sample: the cached ones if they match the encoder, else
    computed from the whole clip with the configured front end (built lazily per process)."""

    def __init__(self, audio_cfg, cache_size: int = FEATURE_CACHE_CLIPS):
        self.audio_cfg = audio_cfg
        self._frontend = None
        self._enc_id = None
        self._warned = False
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # key -> computed features (LRU)
        self.cache_size = int(cache_size)

    def __call__(self, sample: dict) -> np.ndarray:
        if self._enc_id is None:
            self._enc_id = encoder_id(self.audio_cfg)
        feats = sample.get("feats")
        if feats is not None and _feats_encoder(sample.get("feats_meta")) == self._enc_id \
                and feats.shape[1] == self.audio_cfg.feature_dim:
            return feats
        if feats is not None and not self._warned:
            log.warning("cached features of %s were made by %r, not %r: recomputing from audio",
                        sample.get("key"), _feats_encoder(sample.get("feats_meta")), self._enc_id)
            self._warned = True
        key = None if sample.get("augmented") else sample.get("key")  # augmented audio: never cached
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self._frontend is None:
            self._frontend = build_frontend(self.audio_cfg).eval()
        with torch.no_grad():
            audio = torch.from_numpy(np.ascontiguousarray(sample["audio"], dtype=np.float32))[None]
            out = self._frontend(audio)[0].numpy()
        if key is not None and self.cache_size > 0:
            self._cache[key] = out
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out


def usable_reason(sample: dict, templates: dict[str, TemplateInfo], fps: float) -> str | None:
    """Why a decoded seq sample cannot train the motion model (None if it can)."""
    identity = sample["meta"].get("identity")
    if sample.get("verts") is None:
        return "no tracked meshes (verts.npy)"
    if identity not in templates:
        return f"no template for identity {identity!r}"
    if sample["verts"].shape[1] != templates[identity].num_vertices:
        return (f"verts have {sample['verts'].shape[1]} vertices, template of {identity} has "
                f"{templates[identity].num_vertices}")
    if abs(float(sample["meta"].get("fps", fps)) - fps) > 1e-3:
        return f"clip fps {sample['meta'].get('fps')} != model fps {fps} (diffusion.fps)"
    return None
