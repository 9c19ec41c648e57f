"""RenderMe-360 ``.smc`` (HDF5) reader and the task planner of ``emodifftalk ingest renderme360``.

Format notes: ``docs/formats/renderme360-smc.md`` (paths, conventions, pitfalls). In short:

* Files ``<actor>_<perf>_{raw,anno}.smc`` are paired by (actor, perf); Part 2 ships only
  ``_raw`` (accepted alone). Frames come from raw, masks / calibration / keypoints / FLAME from
  anno (falling back to raw), audio from raw (falling back to anno).
* ``Camera/<cid>/color/<fid>`` is an encoded image; it is decoded one (camera, frame) at a
  time with PIL (true RGB, see ``ingest.images``), never a whole camera.
* ``Calibration/<cid>/RT`` is camera-to-world with OpenCV axes in metres, so
  ``viewmat = inv(RT)`` (``cameras.to_viewmat(RT, "opencv_c2w_m")``); ``K`` is in full-resolution
  pixels with OpenCV's pixel-centre convention (shifted by +0.5 to the project's).
* Optional everything: a camera, a frame, ``mask``, ``audio``, ``Keypoints2d/3d``, ``FLAME``.
  An absent key or a zero-length array is "missing", never an error; they are noted in the
  clip's ``part.json``.
* Frame rate: 30 fps, except Part 2 ``s3`` (15 fps). ``--source-fps`` overrides; a clip whose
  audio implies another rate gets a note.

Identity = the actor id as in the file name (``0026``); clip = the performance (``s1_all``, ``e0``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodifftalk.data.schema import seq_key, validate_name
from emodifftalk.ingest.cameras import check_intrinsics, shift_pixel_center, to_viewmat
from emodifftalk.ingest.clip import ClipDataError, ClipSource, SourceCamera
from emodifftalk.ingest.images import image_size

log = logging.getLogger(__name__)

SMC_NAME = re.compile(r"^(?P<actor>\d+)_(?P<perf>.+?)(?:_(?P<kind>raw|anno))?\.smc$", re.IGNORECASE)
RT_CONVENTION = "opencv_c2w_m"
FRONTAL_CAMERA = "25"
DEFAULT_FPS = 30.0
PART2_S3_FPS = 15.0
AUDIO_CHUNK = 1 << 20  # samples read at a time when mixing down


@dataclass(frozen=True)
class SMCPair:
    """The files of one (actor, performance)."""

    actor: str
    perf: str
    raw: Path | None
    anno: Path | None

    @property
    def key(self) -> str:
        return seq_key(self.actor, self.perf)

    @property
    def part2(self) -> bool:
        return self.anno is None


def discover_smc(smc_dir: str | Path) -> tuple[list[SMCPair], list[dict]]:
    """Pair the ``.smc`` files under ``smc_dir`` (recursively) by (actor, perf).

    Returns (pairs sorted by key, skipped ``{"identity", "clip", "reason"}``): unparseable
    names, duplicates and ``_anno`` files without a ``_raw`` twin are skipped with a reason.
    """
    root = Path(smc_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"SMC folder not found: {root}")
    found: dict[tuple[str, str], dict[str, Path]] = {}
    skipped: list[dict] = []
    for path in sorted(root.rglob("*.smc")) + sorted(root.rglob("*.SMC")):
        m = SMC_NAME.match(path.name)
        if m is None:
            skipped.append({"identity": None, "clip": path.name,
                            "reason": f"{path}: name is not <actor>_<perf>[_raw|_anno].smc"})
            continue
        actor, perf, kind = m.group("actor"), m.group("perf"), (m.group("kind") or "raw").lower()
        try:
            validate_name(actor, "identity")
            validate_name(perf, "clip")
        except ValueError as e:
            skipped.append({"identity": actor, "clip": perf, "reason": f"{path}: {e}"})
            continue
        slot = found.setdefault((actor, perf), {})
        if kind in slot:
            skipped.append({"identity": actor, "clip": perf,
                            "reason": f"duplicate {kind} file {path} (using {slot[kind]})"})
            continue
        slot[kind] = path
    pairs = []
    for (actor, perf), files in sorted(found.items()):
        if "raw" not in files:
            skipped.append({"identity": actor, "clip": perf,
                            "reason": f"{files['anno']}: _anno without its _raw twin (no colour frames)"})
            continue
        pairs.append(SMCPair(actor, perf, files["raw"], files.get("anno")))
    return pairs, skipped


def openface_csv_path(openface_dir: str | Path | None, actor: str, perf: str) -> str | None:
    """``<openface_dir>/<actor>_<perf>.csv`` (the name OpenFace gives the export-frontal video's CSV)."""
    return None if openface_dir is None else str(Path(openface_dir) / f"{actor}_{perf}.csv")


def plan_renderme360(smc_dir: str | Path, openface_dir: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """(tasks, skipped) for ``ray_ingest.run_ingest``: one task per (actor, performance)."""
    pairs, skipped = discover_smc(smc_dir)
    tasks = []
    for p in pairs:
        files = {"raw": str(p.raw)}
        if p.anno is not None:
            files["anno"] = str(p.anno)
        tasks.append({"identity": p.actor, "clip": p.perf, "files": files,
                      "source": {"kind": "renderme360", "raw": str(p.raw), "anno": str(p.anno) if p.anno else None},
                      "openface": openface_csv_path(openface_dir, p.actor, p.perf)})
    return tasks, skipped


# --------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------


def _text(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.size == 1:
        return _text(v.ravel()[0])
    return str(v)


def _int_keys(group) -> list[int]:
    out = []
    for k in group.keys():
        try:
            out.append(int(k))
        except ValueError:
            continue
    return sorted(out)


class SMCFile:
    """A lazily read ``.smc``: datasets are read on request, one at a time."""

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        try:
            self.h5 = h5py.File(self.path, "r")
        except (OSError, ValueError) as e:
            raise ClipDataError(f"{self.path}: not a readable HDF5 .smc file ({e})") from e

    def close(self) -> None:
        try:
            self.h5.close()
        except Exception:  # noqa: BLE001 - closing a broken file must not mask the real error
            pass

    def get(self, path: str):
        """The object at ``path`` or None (absent)."""
        try:
            return self.h5.get(path)
        except (KeyError, OSError, ValueError) as e:
            raise ClipDataError(f"{self.path}: cannot read {path} ({e})") from e

    def array(self, path: str) -> np.ndarray | None:
        """Dataset at ``path`` as an array; None when absent or empty (missing, not an error)."""
        d = self.get(path)
        if d is None or not hasattr(d, "shape"):
            return None
        if d.shape is None or (len(d.shape) > 0 and 0 in d.shape):
            return None
        try:
            return np.asarray(d[()])
        except (OSError, ValueError) as e:
            raise ClipDataError(f"{self.path}: cannot read {path} ({e})") from e

    def attrs(self, path: str = "/") -> dict:
        obj = self.get(path)
        return {} if obj is None else dict(obj.attrs)

    def color_cameras(self) -> list[str]:
        cams = self.get("Camera")
        if cams is None:
            return []
        out = []
        for cid in sorted(cams.keys()):
            color = cams[cid].get("color") if hasattr(cams[cid], "get") else None
            if color is not None and len(color.keys()) > 0:
                out.append(cid)
        return out

    def frame_ids(self, cid: str, what: str = "color") -> list[int]:
        g = self.get(f"Camera/{cid}/{what}")
        return [] if g is None else _int_keys(g)


# --------------------------------------------------------------------------------------------
# One clip (raw + anno)
# --------------------------------------------------------------------------------------------


class SMCClip(ClipSource):
    """One RenderMe-360 (actor, performance): frames from ``raw``, labels from ``anno`` (or raw)."""

    dataset = "renderme360"

    def __init__(self, raw: str | Path, anno: str | Path | None = None, *, actor: str | None = None,
                 perf: str | None = None, frontal_camera: str = FRONTAL_CAMERA, cameras=None):
        super().__init__()
        self.only = None if not cameras else [str(c) for c in cameras]
        self.frames_file = SMCFile(raw)
        self.files = [self.frames_file]
        try:
            self.labels_file = SMCFile(anno) if anno else self.frames_file
            if anno:
                self.files.append(self.labels_file)
            m = SMC_NAME.match(Path(raw).name)
            self.identity = actor or (m.group("actor") if m else _text(self.frames_file.attrs().get("actor_id", "")))
            self.clip = perf or (m.group("perf") if m else _text(self.frames_file.attrs().get("performance_part", "")))
            self.part2 = anno is None
            self.frontal_camera = frontal_camera
            self.source_fps = PART2_S3_FPS if (self.part2 and self.clip.startswith("s3")) else DEFAULT_FPS
            declared = _text(self.frames_file.attrs().get("performance_part", self.clip))
            if declared and declared != self.clip and not self.clip.startswith(declared):
                self.note(f"{raw}: attribute performance_part={declared!r} differs from the file name's {self.clip!r}")
            self._calib: dict[str, SourceCamera | None] = {}
            self._missing_masks: dict[str, int] = {}
            self._cams = self._find_cameras()
        except Exception:
            self.close()
            raise

    # -- cameras --------------------------------------------------------------------------
    def _resolution(self) -> tuple[int, int] | None:
        for f in (self.frames_file, self.labels_file):
            res = f.attrs("Camera").get("resolution")
            if res is not None and np.size(res) == 2:
                h, w = (int(x) for x in np.ravel(res))
                return w, h
        return None

    def _find_cameras(self) -> list[str]:
        cams = []
        color = self.frames_file.color_cameras()
        if self.only is not None:
            absent = [c for c in self.only if c not in color]
            if absent:
                self.note(f"requested camera(s) {', '.join(absent)} have no colour frames in "
                          f"{self.frames_file.path.name}")
            color = [c for c in color if c in self.only]
        for cid in color:
            if self.camera_or_none(cid) is None:
                self.note(f"camera {cid} has frames but no usable calibration: left out")
                continue
            cams.append(cid)
        calib = set()
        for f in (self.labels_file, self.frames_file):
            g = f.get("Calibration")
            calib |= set(g.keys()) if g is not None else set()
        idle = sorted(calib - set(self.frames_file.color_cameras()))
        if idle:
            self.note(f"calibrated camera(s) without colour frames: {', '.join(idle)}")
        if not cams:
            self.note("no camera has both colour frames and a calibration")
        return cams

    def camera_or_none(self, cid: str) -> SourceCamera | None:
        if cid in self._calib:
            return self._calib[cid]
        cam = None
        for f in (self.labels_file, self.frames_file):
            k, rt = f.array(f"Calibration/{cid}/K"), f.array(f"Calibration/{cid}/RT")
            if k is None or rt is None:
                continue
            where = f"{f.path} Calibration/{cid}"
            k = shift_pixel_center(check_intrinsics(k, where), 0.0)
            viewmat = to_viewmat(rt, RT_CONVENTION, where)
            d = f.array(f"Calibration/{cid}/D")
            res = self._resolution()
            if res is None:  # no resolution attr: from the first image's header
                fids = self.frames_file.frame_ids(cid)
                res = image_size(self.image_data(cid, fids[0]), f"{self.frames_file.path} camera {cid}")
            dist = None if d is None else np.asarray(d, np.float64).ravel()
            cam = SourceCamera(cid, k, viewmat, res[0], res[1], dist)
            break
        self._calib[cid] = cam
        return cam

    def camera_names(self) -> list[str]:
        return list(self._cams)

    def camera(self, name: str) -> SourceCamera:
        cam = self.camera_or_none(name)
        if cam is None:
            raise ClipDataError(f"{self.labels_file.path}: no calibration for camera {name}")
        return cam

    def frame_ids(self, name: str) -> list[int]:
        return self.frames_file.frame_ids(name)

    def n_source_frames(self) -> int:
        declared = 0
        num = self.frames_file.attrs("Camera").get("num_frame")
        if num is not None and np.size(num) == 1:
            declared = int(np.ravel(num)[0])
        last = max((max(self.frame_ids(c), default=-1) for c in self._cams), default=-1)
        n = max(declared, last + 1)
        if n < 1:
            raise ClipDataError(f"{self.frames_file.path}: no frames (num_frame={declared}, no colour frames)")
        return n

    def image_data(self, name: str, fid: int) -> np.ndarray:
        data = self.frames_file.array(f"Camera/{name}/color/{fid}")
        if data is None:
            raise ClipDataError(f"{self.frames_file.path}: Camera/{name}/color/{fid} is missing or empty")
        return data

    def mask_data(self, name: str, fid: int):
        group = self.labels_file.get(f"Camera/{name}/mask")
        if group is None:
            if name not in self._missing_masks:
                self._missing_masks[name] = -1  # no mask group at all
            return None
        data = self.labels_file.array(f"Camera/{name}/mask/{fid}")
        if data is None:
            self._missing_masks[name] = max(self._missing_masks.get(name, 0), 0) + 1
        return data

    def flush_notes(self) -> None:
        whole = sorted(c for c, n in self._missing_masks.items() if n < 0)
        if whole:
            self.note(f"no masks for camera(s) {', '.join(whole)}: frames kept unmasked")
        for c, n in sorted(self._missing_masks.items()):
            if n > 0:
                self.note(f"camera {c}: {n} frame(s) without a mask: kept unmasked")
        self._missing_masks.clear()

    # -- audio ----------------------------------------------------------------------------
    def _audio_group(self):
        for f in (self.frames_file, self.labels_file):
            cams = f.get("Camera")
            if cams is None:
                continue
            for cid in (["00"] if "00" in cams else []) + sorted(cams.keys()):
                g = cams[cid].get("audio") if hasattr(cams[cid], "get") else None
                if g is not None and "audio" in g:
                    return f, g
        return None, None

    def has_audio(self) -> bool:
        _, g = self._audio_group()
        return g is not None and g["audio"].size > 0

    def audio(self) -> tuple[np.ndarray, int] | None:
        f, g = self._audio_group()
        if g is None or g["audio"].size == 0:
            return None
        where = f"{f.path} {g.name}"
        sr = None
        if "sample_rate" in g:
            sr = np.asarray(g["sample_rate"][()]).ravel()
        elif "sample_rate" in g.attrs:
            sr = np.asarray(g.attrs["sample_rate"]).ravel()
        if sr is None or sr.size < 1 or not np.isfinite(sr[0]) or sr[0] <= 0:
            raise ClipDataError(f"{where}: sample_rate missing or not positive ({sr})")
        return _read_mono(g["audio"], where), int(sr[0])

    # -- meshes / keypoints -----------------------------------------------------------------
    def verts_frame_ids(self) -> list[int]:
        g = self.labels_file.get("FLAME")
        if g is None:
            return []
        return [f for f in _int_keys(g) if "verts" in g[str(f)] and g[str(f)]["verts"].size > 0]

    def verts(self, fid: int) -> np.ndarray | None:
        v = self.labels_file.array(f"FLAME/{fid}/verts")
        if v is None:
            return None
        v = np.asarray(v, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ClipDataError(f"{self.labels_file.path}: FLAME/{fid}/verts has shape {v.shape}, expected (V, 3)")
        return v

    def template(self) -> dict | None:
        ids = self.verts_frame_ids()
        if not ids:
            return None
        m = re.fullmatch(r"e(\d+)", self.clip)
        priority = [0, int(m.group(1))] if m else [1, self.clip]
        return {"verts": self.verts(ids[0]), "faces": None, "vertex_sets": None, "priority": priority,
                "frame": ids[0], "source": f"FLAME verts of {self.clip} frame {ids[0]} ({self.labels_file.path.name})"}

    def keypoints3d(self, fid: int) -> np.ndarray | None:
        return self.labels_file.array(f"Keypoints3d/{fid}")

    def keypoints2d(self, cid: str, fid: int) -> np.ndarray | None:
        return self.labels_file.array(f"Keypoints2d/{cid}/{fid}")

    def close(self) -> None:
        for f in getattr(self, "files", []):
            f.close()


def _to_float(x: np.ndarray, where: str) -> np.ndarray:
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=False)
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    if x.dtype == np.int32:
        return x.astype(np.float32) / 2147483648.0
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - 128.0) / 128.0
    raise ClipDataError(f"{where}: unsupported audio dtype {x.dtype}")


def _read_mono(d, where: str) -> np.ndarray:
    """Mix an (N, C), (C, N) or (N,) audio dataset down to mono float32, a chunk at a time."""
    shape = d.shape
    if len(shape) == 1:
        return _to_float(np.asarray(d[()]), where)
    if len(shape) != 2:
        raise ClipDataError(f"{where}: audio has shape {shape}, expected (N,) or (N, C)")
    channels_first = shape[0] <= 8 < shape[1]
    n = shape[1] if channels_first else shape[0]
    out = np.empty(n, np.float32)
    for i in range(0, n, AUDIO_CHUNK):
        block = _to_float(np.asarray(d[:, i:i + AUDIO_CHUNK] if channels_first else d[i:i + AUDIO_CHUNK]), where)
        out[i:i + AUDIO_CHUNK] = block.mean(axis=0 if channels_first else 1)
    peak = float(np.abs(out).max()) if n else 0.0
    if peak > 1.5:  # int-scaled floats: the official reader multiplies by 2**15 to write MP3
        log.warning("%s: float audio peaks at %.1f; treating it as int16-scaled", where, peak)
        out /= 32768.0
    return out
