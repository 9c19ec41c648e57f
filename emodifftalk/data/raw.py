"""Read the raw folder layout (``emodifftalk/data/schema.py``): identities, clips, lazily loaded.

Nothing here is loaded until asked for: listing a large data set reads only ``dataset.json`` and
each clip's ``meta.json``. Every error names the file that is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from emodifftalk.data.audio import read_audio
from emodifftalk.data.openface import read_openface_csv
from emodifftalk.data.schema import MODALITIES, VERTEX_SETS, validate_name

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FRAME_FILE = re.compile(r"^(\d+)$")


class RawLayoutError(ValueError):
    """The raw folder does not follow the layout in ``schema.py``; the message names the file."""


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise RawLayoutError(f"cannot read JSON {path}: {e}") from e


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """``np.load`` without pickle; memory-mapped on request (large ``verts.npy``)."""
    if not path.is_file():
        raise FileNotFoundError(f"missing array file {path}")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as e:
        raise RawLayoutError(f"cannot read {path} (pickled or not an .npy file?): {e}") from e


def check_cameras(cameras: Any, where: str) -> list[dict]:
    """Validate ``[{"name", "K" 3x3, "viewmat" 4x4, "width", "height"}, ...]``; return float32 copies."""
    if not isinstance(cameras, list) or not cameras:
        raise RawLayoutError(f"{where}: 'cameras' must be a non-empty list")
    out, seen = [], set()
    for i, cam in enumerate(cameras):
        try:
            name = validate_name(str(cam["name"]), "camera")
            k = np.asarray(cam["K"], dtype=np.float32)
            viewmat = np.asarray(cam["viewmat"], dtype=np.float32)
            width, height = int(cam["width"]), int(cam["height"])
        except (KeyError, TypeError, ValueError) as e:
            raise RawLayoutError(f"{where}: camera #{i} is malformed ({e}); need name, K, viewmat, "
                                 f"width, height") from e
        if k.shape != (3, 3) or viewmat.shape != (4, 4) or width <= 0 or height <= 0:
            raise RawLayoutError(f"{where}: camera {name!r} needs K (3,3), viewmat (4,4) and a positive "
                                 f"size, got K {k.shape}, viewmat {viewmat.shape}, {width}x{height}")
        # Tar member names are matched case-insensitively by WebDataset: keep them unique that way.
        if name.lower() in seen:
            raise RawLayoutError(f"{where}: camera name {name!r} appears twice (names are case-insensitive)")
        seen.add(name.lower())
        out.append({"name": name, "K": k, "viewmat": viewmat, "width": width, "height": height})
    return out


def _frames_under(root: Path) -> dict[int, dict[str, Path]]:
    """``{frame: {camera: image path}}`` of ``root/<camera>/<frame>.<png|jpg>``, sorted."""
    frames: dict[int, dict[str, Path]] = {}
    if not root.is_dir():
        return frames
    for cam_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for img in cam_dir.iterdir():
            m = _FRAME_FILE.match(img.stem)
            if img.suffix.lower() in IMAGE_SUFFIXES and m:
                frames.setdefault(int(m.group(1)), {})[cam_dir.name] = img
    return {f: dict(sorted(frames[f].items())) for f in sorted(frames)}


@dataclass(frozen=True)
class RawClip:
    """One clip folder ``RAW/<identity>/<clip>/``."""

    identity: str
    clip: str
    path: Path
    meta: dict = field(repr=False)

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def n_frames(self) -> int:
        return int(self.meta["n_frames"])

    @property
    def audio_path(self) -> Path:
        return self.path / "audio.wav"

    @property
    def openface_path(self) -> Path:
        return self.path / "openface.csv"

    @property
    def verts_path(self) -> Path:
        return self.path / "verts.npy"

    @property
    def aus_true_path(self) -> Path:
        """Optional (T, 17) true AU activations (synthetic data: evaluation only, never a label)."""
        return self.path / "aus_true.npy"

    @property
    def head_pose_path(self) -> Path:
        """Optional (T, 4, 4) world-from-registered rigid head pose of each frame: the images show
        the posed head, ``verts.npy`` the registered one."""
        return self.path / "head_pose.npy"

    def load_frame_array(self, path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        """An optional per-frame array ``(n_frames, *shape)`` float32, or None if the file is absent."""
        if not path.is_file():
            return None
        arr = load_npy(path)
        if arr.shape != (self.n_frames, *shape):
            raise RawLayoutError(f"{path}: expected shape {(self.n_frames, *shape)} from meta.json, got {arr.shape}")
        return np.asarray(arr, dtype=np.float32)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities whose files are present (meta.json's list is checked against the files)."""
        present = {
            "audio": self.audio_path.is_file(),
            "aus": self.openface_path.is_file(),
            "verts": self.verts_path.is_file(),
            "frames": bool(self.image_frames),
        }
        return tuple(m for m in MODALITIES if present[m])

    def check_modalities(self) -> None:
        declared = self.meta.get("modalities")
        if declared is None:
            return
        missing = [m for m in declared if m in MODALITIES and m not in self.modalities]
        if missing:
            raise RawLayoutError(f"{self.path / 'meta.json'} lists modalities {missing} but their files "
                                 f"are missing in {self.path}")

    @cached_property
    def image_frames(self) -> dict[int, dict[str, Path]]:
        """``{frame: {camera: image path}}`` for the frames that have images, sorted by frame."""
        return _frames_under(self.path / "images")

    @cached_property
    def eval_image_frames(self) -> dict[int, dict[str, Path]]:
        """Like ``image_frames``, for the held-out ring (``eval_images/``; synthetic data, never packed)."""
        return _frames_under(self.path / "eval_images")

    def load_verts(self, mmap: bool = True) -> np.ndarray:
        """(T, V, 3) float32 tracked vertices (memory-mapped by default)."""
        verts = load_npy(self.verts_path, mmap=mmap)
        if verts.ndim != 3 or verts.shape[2] != 3 or verts.shape[0] != self.n_frames:
            raise RawLayoutError(f"{self.verts_path}: expected shape ({self.n_frames}, V, 3) from meta.json "
                                 f"n_frames, got {verts.shape}")
        return verts

    def load_aus(self):
        """OpenFace AUs resampled to this clip's frames: ``OpenFaceAUs`` with (T, 17) aus + mask."""
        return read_openface_csv(self.openface_path, fps=self.fps, n_frames=self.n_frames)

    def load_audio(self) -> tuple[np.ndarray, int]:
        return read_audio(self.audio_path)


class RawDataset:
    """``RAW/`` as written by ``emodifftalk synth`` (or an ingest adapter)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"raw data folder not found: {self.root}")
        info_path = self.root / "dataset.json"
        self.info: dict = read_json(info_path) if info_path.is_file() else {}
        if "identities" in self.info:
            names = list(self.info["identities"])
        else:  # no dataset.json: every folder with a template/ is an identity
            names = sorted(p.name for p in self.root.iterdir() if (p / "template").is_dir())
        if not names:
            raise RawLayoutError(f"{self.root} holds no identities (no dataset.json list and no "
                                 f"<identity>/template/ folders)")
        for n in names:
            validate_name(n, "identity")
            if not (self.root / n).is_dir():
                raise RawLayoutError(f"{info_path} lists identity {n!r} but {self.root / n} is missing")
        self._identities = tuple(sorted(names))

    @property
    def identities(self) -> tuple[str, ...]:
        return self._identities

    @property
    def fps(self) -> float | None:
        return float(self.info["fps"]) if "fps" in self.info else None

    def clips(self, identity: str, errors: list | None = None) -> list[RawClip]:
        """Clip folders of ``identity`` (those holding a ``meta.json``), sorted by name.

        A clip with an unusable ``meta.json`` or name raises, or, when ``errors`` is a list, is
        left out and ``(identity, clip, reason)`` appended to it.
        """
        out = []
        for d in sorted(p for p in (self.root / identity).iterdir() if p.is_dir() and (p / "meta.json").is_file()):
            try:
                out.append(self._clip(identity, d))
            except ValueError as e:
                if errors is None:
                    raise
                errors.append((identity, d.name, str(e)))
        return out

    @staticmethod
    def _clip(identity: str, d: Path) -> RawClip:
        meta = read_json(d / "meta.json")
        if not isinstance(meta, dict):
            raise RawLayoutError(f"{d / 'meta.json'} is not a JSON object")
        for key in ("fps", "n_frames"):
            if key not in meta:
                raise RawLayoutError(f"{d / 'meta.json'} lacks {key!r}")
        if float(meta["fps"]) <= 0 or int(meta["n_frames"]) < 1:
            raise RawLayoutError(f"{d / 'meta.json'}: fps must be > 0 and n_frames >= 1")
        if meta.get("identity", identity) != identity or meta.get("clip", d.name) != d.name:
            raise RawLayoutError(f"{d / 'meta.json'} names identity/clip {meta.get('identity')}/"
                                 f"{meta.get('clip')} but lives in {identity}/{d.name}")
        return RawClip(identity, validate_name(d.name, "clip"), d, meta)

    def all_clips(self) -> list[RawClip]:
        return [c for ident in self.identities for c in self.clips(ident)]

    def cameras(self, identity: str, file: str = "cameras.json") -> list[dict]:
        """The identity's capture cameras (``eval_cameras.json``: the synthetic held-out ring)."""
        path = self.root / identity / file
        if not path.is_file():
            return []
        data = read_json(path)
        return check_cameras(data.get("cameras") if isinstance(data, dict) else data, str(path))

    def template(self, identity: str) -> dict:
        """``{"verts" (V,3) f32, "faces" (F,3) int32, "vertex_sets" {name: int list}}``."""
        base = self.root / identity / "template"
        verts = load_npy(base / "verts.npy")
        faces = load_npy(base / "faces.npy")
        if verts.ndim != 2 or verts.shape[1] != 3:
            raise RawLayoutError(f"{base / 'verts.npy'}: expected (V, 3), got {verts.shape}")
        if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
            raise RawLayoutError(f"{base / 'faces.npy'}: expected integer (F, 3), got {faces.dtype} {faces.shape}")
        if faces.size and (faces.min() < 0 or faces.max() >= verts.shape[0]):
            raise RawLayoutError(f"{base / 'faces.npy'}: indices outside [0, {verts.shape[0]})")
        sets = read_json(base / "vertex_sets.json")
        missing = [s for s in VERTEX_SETS if s not in sets]
        if missing:
            raise RawLayoutError(f"{base / 'vertex_sets.json'} lacks vertex set(s) {missing}")
        return {"verts": verts.astype(np.float32), "faces": faces.astype(np.int32),
                "vertex_sets": {k: [int(i) for i in v] for k, v in sets.items()}}
