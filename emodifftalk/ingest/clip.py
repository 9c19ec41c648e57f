"""One clip -> its own shard files + ``part.json``: the per-(identity, performance) task.

``ingest_clip(source, out_root, split, opts)`` is a plain function (the Ray task in
``ray_ingest`` calls it). It streams: one (camera, frame) is decoded at a time and only the
encoded images of the frames sample being written are held, so memory stays bounded whatever
the clip length (audio and the (T, V, 3) vertex array of one clip are held: they are single
shard members).

Output, written atomically (temp folder renamed into place, ``part.json`` written last)::

    OUT/clips/<identity>__<clip>/
        seq-<split>-000000.tar       seq sample (audio + AUs [+ verts]) when audio and AUs exist
        frames-<split>-000000.tar    multi-view frames samples (``data.frames_stride``)
        template.npy                 candidate template (V, 3) (+ template_faces.npy, template_sets.json)
        part.json                    the clip's manifest part = the "done" marker

With ``opts.shard_url`` set, each finished tar is streamed to that URL (``wds.gopen(url, "wb")``,
so ``pipe:`` commands work) and removed locally; ``part.json`` stays local.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emodifftalk.au import NUM_AUS
from emodifftalk.data.audio import SAMPLE_RATE, resample, write_wav
from emodifftalk.data.openface import read_openface_csv
from emodifftalk.data.schema import MODALITIES, frames_key, seq_key, validate_name
from emodifftalk.data.shard_writer import ShardSetWriter, encode_json, encode_npy
from emodifftalk.ingest.cameras import CropResize, camera_record, has_distortion, remap, undistort_maps
from emodifftalk.ingest.images import ImageError, composite, decode_mask, decode_rgb, encode_image, image_size
from emodifftalk.utils import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)

PART_FILE = "part.json"
CLIPS_DIR = "clips"
PART_VERSION = 1


class ClipDataError(ValueError):
    """A clip's source data is unusable; the message names the file and what is wrong."""


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass
class IngestOptions:
    """What shapes the ingested shards (recorded in every ``part.json`` and in the manifest).

    size:            square centre crop resized to ``size`` x ``size``; 0 keeps the source frames.
    fps:             target frame rate of the clip timeline; 0 keeps the source rate.
    frames_stride:   0 = one frames sample per clip (first frame with images), k = every k-th
                     frame that has images (``DataConfig.frames_stride`` semantics).
    composite_masks: put the foreground over ``background`` where a matte exists (the rig
                     treats pixels that differ from the render background as foreground).
    max_mesh_gap:    missing per-frame meshes are linearly interpolated over gaps of at most
                     this many frames; longer gaps leave verts out of the seq sample.
    shard_url:       None = shards in the clip folder; else a pattern with ``{name}`` (the shard's
                     path relative to OUT) that ``webdataset.gopen`` can write, e.g.
                     ``pipe:aws s3 cp - s3://bucket/rm360/{name}``.
    """

    size: int = 512
    fps: float = 25.0
    source_fps: float | None = None
    image_format: str = "jpg"
    jpeg_quality: int = 95
    frames_stride: int = 0
    composite_masks: bool = True
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    max_mesh_gap: int = 2
    shard_max_bytes: int = 64 * 1024 * 1024
    shard_max_samples: int = 256
    shard_url: str | None = None

    def validate(self) -> IngestOptions:
        if self.size < 0 or self.fps < 0 or self.frames_stride < 0 or self.max_mesh_gap < 0:
            raise ValueError("size, fps, frames_stride and max_mesh_gap must be >= 0")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image format must be jpg or png, got {self.image_format!r}")
        if self.shard_url is not None and "{name}" not in self.shard_url:
            raise ValueError(f"--shard-url {self.shard_url!r} must contain '{{name}}' (the shard's relative path)")
        return self

    @classmethod
    def from_config(cls, cfg, **kw) -> IngestOptions:
        base = dict(frames_stride=cfg.data.frames_stride, background=tuple(cfg.render.background),
                    shard_max_bytes=cfg.data.shard_max_bytes, shard_max_samples=cfg.data.shard_max_samples)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base).validate()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["background"] = list(self.background)
        return d


def file_fingerprint(path: str | Path | None) -> list | None:
    """(size, mtime_ns) of a file, None when absent: part of a clip's digest."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def task_digest(task: dict, opts: IngestOptions) -> str:
    """Digest of everything that determines a clip's output: options, source files, OpenFace CSV."""
    files = {k: file_fingerprint(v) for k, v in sorted(task.get("files", {}).items())}
    blob = json.dumps({"v": PART_VERSION, "opts": opts.to_dict(), "source": task["source"], "files": files,
                       "openface": task.get("openface"), "openface_file": file_fingerprint(task.get("openface"))},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# The source interface both readers implement
# --------------------------------------------------------------------------------------------


@dataclass
class SourceCamera:
    """A camera already in the project convention, at the source image resolution."""

    name: str
    K: np.ndarray  # (3, 3) pixels, pixel centres at +0.5
    viewmat: np.ndarray  # (4, 4) OpenCV world->camera, metres
    width: int
    height: int
    dist: np.ndarray | None = None  # OpenCV (k1, k2, p1, p2, k3); None / zeros = none


class ClipSource:
    """What ``ingest_clip`` needs from a clip; ``renderme360.SMCClip`` and ``folder.FolderClip``
    implement it. Frame ids are source frame indices at ``source_fps``."""

    dataset: str = "unknown"
    identity: str
    clip: str
    emotion: str | None = None
    source_fps: float = 30.0
    frontal_camera: str | None = None
    channel_order: str = "rgb"

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, msg: str) -> None:
        """A non-fatal problem (missing camera, frame, mask, ...): logged and kept in part.json."""
        log.warning("%s/%s: %s", self.identity, self.clip, msg)
        self.notes.append(msg)

    # -- required ---------------------------------------------------------------------------
    def camera_names(self) -> list[str]:
        raise NotImplementedError

    def camera(self, name: str) -> SourceCamera:
        raise NotImplementedError

    def frame_ids(self, name: str) -> list[int]:
        raise NotImplementedError

    def n_source_frames(self) -> int:
        raise NotImplementedError

    def image_data(self, name: str, fid: int):
        """Encoded image (bytes, uint8 array or Path)."""
        raise NotImplementedError

    # -- optional ---------------------------------------------------------------------------
    def mask_data(self, name: str, fid: int):
        return None

    def audio(self) -> tuple[np.ndarray, int] | None:
        """(mono float32 (N,), sample rate) or None."""
        return None

    def verts_frame_ids(self) -> list[int]:
        return []

    def verts(self, fid: int) -> np.ndarray | None:
        """(V, 3) float32 metres, world coordinates."""
        return None

    def template(self) -> dict | None:
        """{"verts" (V,3), "faces" (F,3) | None, "vertex_sets" dict | None, "source" str, "priority" list}."""
        return None

    def raw_modalities(self, has_aus: bool) -> list[str]:
        present = {"audio": self.has_audio(), "aus": has_aus, "verts": bool(self.verts_frame_ids()),
                   "frames": bool(self.camera_names())}
        return [m for m in MODALITIES if present[m]]

    def has_audio(self) -> bool:
        return False

    def flush_notes(self) -> None:
        """Turn per-frame counters (e.g. missing masks) into notes; called before part.json."""

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Timeline (frame-rate conversion) and frame selection
# --------------------------------------------------------------------------------------------


@dataclass
class Timeline:
    """Target frames ``j`` at ``fps`` over the source's span; ``source_frame(j)`` is the nearest
    source frame (nearest-frame resampling: no blending of images or meshes)."""

    source_fps: float
    fps: float
    n_source: int
    n_frames: int = field(init=False)

    def __post_init__(self) -> None:
        if self.source_fps <= 0 or self.fps <= 0 or self.n_source < 1:
            raise ClipDataError(f"bad timeline: source_fps={self.source_fps}, fps={self.fps}, n_source={self.n_source}")
        self.n_frames = self.n_source if self.fps == self.source_fps else \
            max(1, int(math.floor(self.n_source / self.source_fps * self.fps + 1e-6)))

    def source_frame(self, j: int) -> int:
        return min(int(round(j * self.source_fps / self.fps)), self.n_source - 1)

    def target_frame(self, f: int) -> int:
        return int(round(f * self.fps / self.source_fps))


def select_frames(timeline: Timeline, available: set[int], stride: int) -> list[tuple[int, int]]:
    """``[(target frame, source frame)]`` to pack as frames samples: the target frames that have
    images (deduplicated, nearest source frame), then every ``stride``-th (0 = the first only)."""
    by_target: dict[int, int] = {}
    for f in sorted(available):
        j = timeline.target_frame(f)
        if j >= timeline.n_frames:
            continue
        best, t = by_target.get(j), j * timeline.source_fps / timeline.fps
        if best is None or abs(f - t) < abs(best - t):
            by_target[j] = f
    targets = sorted(by_target.items())
    return targets[::stride] if stride > 0 else targets[:1]


def fill_mesh_gaps(frames: list[np.ndarray | None], max_gap: int) -> tuple[np.ndarray | None, int, str | None]:
    """(T, V, 3) from per-frame meshes with ``None`` holes: interior gaps of <= ``max_gap`` frames
    are interpolated linearly, edge gaps of <= ``max_gap`` copy the nearest mesh. Returns
    (array or None, n filled, reason when None)."""
    have = [i for i, v in enumerate(frames) if v is not None]
    if not have:
        return None, 0, "no frame has a mesh"
    shapes = {frames[i].shape for i in have}
    if len(shapes) > 1:
        return None, 0, f"per-frame meshes differ in shape {sorted(shapes)}"
    t = len(frames)
    runs, i = [], 0
    while i < t:
        if frames[i] is None:
            j = i
            while j < t and frames[j] is None:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    longest = max((b - a for a, b in runs), default=0)
    if longest > max_gap:
        return None, 0, (f"{sum(b - a for a, b in runs)} of {t} frames lack a mesh (longest gap {longest} > "
                         f"max_mesh_gap={max_gap})")
    out = np.empty((t,) + frames[have[0]].shape, dtype=np.float32)
    for k in have:
        out[k] = frames[k]
    for a, b in runs:
        left, right = a - 1, b
        for k in range(a, b):
            if left < 0:
                out[k] = out[right]
            elif right >= t:
                out[k] = out[left]
            else:
                w = (k - left) / (right - left)
                out[k] = (1 - w) * out[left] + w * out[right]
    return out, sum(b - a for a, b in runs), None


# --------------------------------------------------------------------------------------------
# Per-camera image pipeline
# --------------------------------------------------------------------------------------------


class _CameraPipeline:
    """Decode -> (composite) -> crop/resize -> undistort -> encode, for one camera; the output
    camera record (K rescaled for the crop/resize) is fixed by the camera's first image."""

    def __init__(self, cam: SourceCamera, first_image, opts: IngestOptions, source: ClipSource):
        w, h = image_size(first_image, f"{source.identity}/{source.clip} camera {cam.name}")
        k = np.array(cam.K, dtype=np.float64)
        if (w, h) != (cam.width, cam.height):
            source.note(f"camera {cam.name}: images are {w}x{h} but the calibration says {cam.width}x{cam.height}; "
                        f"K rescaled")
            k = np.diag([w / cam.width, h / cam.height, 1.0]) @ k
        self.crop = CropResize.square(w, h, opts.size)
        self.k = self.crop.apply_to_K(k)
        self.maps = None
        if has_distortion(cam.dist):
            self.maps = undistort_maps(self.k, cam.dist, self.crop.out_w, self.crop.out_h)
        self.record = camera_record(cam.name, self.k, cam.viewmat, self.crop.out_w, self.crop.out_h)
        self.opts = opts
        self.source = source
        self.name = cam.name

    def render(self, fid: int, encoded) -> tuple[str, bytes, bool]:
        """(extension, encoded bytes, masked?) of frame ``fid`` (``encoded``: its source image)."""
        src = self.source
        what = f"{src.identity}/{src.clip} camera {self.name} frame {fid}"
        rgb = decode_rgb(encoded, self.crop, channel_order=src.channel_order, what=what)
        masked = False
        if self.opts.composite_masks:
            mdata = src.mask_data(self.name, fid)
            if mdata is not None:
                rgb = composite(rgb, decode_mask(mdata, self.crop, what=what + " mask"), self.opts.background)
                masked = True
        if self.maps is not None:
            rgb = remap(rgb, self.maps)
        ext, data = encode_image(rgb, self.opts.image_format, self.opts.jpeg_quality)
        return ext, data, masked


# --------------------------------------------------------------------------------------------
# Audio + AUs
# --------------------------------------------------------------------------------------------


def _wav_bytes(audio16k: np.ndarray, scratch: Path) -> bytes:
    path = write_wav(scratch / ".audio.wav", audio16k, SAMPLE_RATE)
    try:
        return path.read_bytes()
    finally:
        path.unlink()


def _load_audio_16k(source: ClipSource) -> np.ndarray | None:
    got = source.audio()
    if got is None:
        return None
    audio, sr = got
    if int(sr) <= 0:
        raise ClipDataError(f"{source.identity}/{source.clip}: audio sample_rate is {sr}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise ClipDataError(f"{source.identity}/{source.clip}: audio must be non-empty mono, got {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise ClipDataError(f"{source.identity}/{source.clip}: audio has NaN/Inf samples")
    return resample(audio, int(sr), SAMPLE_RATE)


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


def clip_dir(out_root: str | Path, identity: str, clip: str) -> Path:
    return Path(out_root) / CLIPS_DIR / seq_key(identity, clip)


def read_part(path: Path) -> dict | None:
    try:
        part = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return part if isinstance(part, dict) and part.get("status") == "ok" else None


def is_done(out_root: str | Path, identity: str, clip: str, digest: str, split: str) -> dict | None:
    """The clip's ``part.json`` when it was finished with the same inputs/options and split."""
    part = read_part(clip_dir(out_root, identity, clip) / PART_FILE)
    if part is not None and part.get("digest") == digest and part.get("split") == split:
        return part
    return None


def _upload(local: Path, url: str) -> None:
    """Stream a finished tar to a ``webdataset.gopen`` URL (``pipe:`` command, file path)."""
    import webdataset as wds

    with open(local, "rb") as f:
        out = wds.gopen(url, "wb")
        try:
            shutil.copyfileobj(f, out, 1 << 22)
        finally:
            out.close()  # a pipe's non-zero exit raises here


def ingest_clip(source: ClipSource, out_root: str | Path, split: str, opts: IngestOptions,
                openface_csv: str | Path | None = None, digest: str = "") -> dict[str, Any]:
    """Write one clip's shards + ``part.json`` into ``OUT/clips/<identity>__<clip>/`` (atomic).

    Raises on unusable data (the caller turns it into a "failed" record); non-fatal problems
    (a missing camera, mask or mesh frame, an audio/frame length mismatch) are in ``notes``.
    """
    t0 = time.perf_counter()
    opts.validate()
    identity, clip = validate_name(source.identity, "identity"), validate_name(source.clip, "clip")
    key = seq_key(identity, clip)
    final = clip_dir(out_root, identity, clip)
    src_fps = float(opts.source_fps or source.source_fps)
    fps = float(opts.fps or src_fps)
    timeline = Timeline(src_fps, fps, source.n_source_frames())
    cameras = source.camera_names()
    counts = {"images": 0, "frames_samples": 0, "trimmed_frames": 0, "trimmed_audio_samples": 0,
              "mesh_frames_filled": 0, "bad_images": 0}

    # --- audio, AUs: decide the clip length before anything is written ----------------------
    audio16 = _load_audio_16k(source)
    aus = None
    if audio16 is not None:
        implied = timeline.n_source / (audio16.shape[0] / SAMPLE_RATE)
        if abs(implied - src_fps) > 0.2 * src_fps:
            source.note(f"{timeline.n_source} source frames over {audio16.shape[0] / SAMPLE_RATE:.2f} s of audio "
                        f"imply {implied:.1f} fps, not the assumed {src_fps:g} (set --source-fps?)")
        t_audio = int(math.floor(audio16.shape[0] / SAMPLE_RATE * fps + 1e-6))
        if t_audio < 1:
            raise ClipDataError(f"{key}: audio is shorter than one frame ({audio16.shape[0]} samples)")
        if t_audio != timeline.n_frames:
            counts["trimmed_frames"] = max(0, timeline.n_frames - t_audio)
            source.note(f"audio lasts {audio16.shape[0] / SAMPLE_RATE:.3f} s = {t_audio} frames, video has "
                        f"{timeline.n_frames} frames at {fps:g} fps: trimmed to {min(t_audio, timeline.n_frames)}")
            timeline.n_frames = min(t_audio, timeline.n_frames)
        n_keep = int(round(timeline.n_frames * SAMPLE_RATE / fps))
        counts["trimmed_audio_samples"] = max(0, audio16.shape[0] - n_keep)
        if counts["trimmed_audio_samples"]:
            log.info("%s: trimmed %d audio samples (16 kHz) to match %d frames", key,
                     counts["trimmed_audio_samples"], timeline.n_frames)
        audio16 = audio16[:n_keep]
        if openface_csv is not None and Path(openface_csv).is_file():
            aus = read_openface_csv(openface_csv, fps=fps, n_frames=timeline.n_frames)
            if aus.aus.shape != (timeline.n_frames, NUM_AUS):
                raise ClipDataError(f"{openface_csv}: AUs came out {aus.aus.shape}, "
                                    f"expected ({timeline.n_frames}, {NUM_AUS})")
            if not aus.frame_valid.any():
                source.note(f"{openface_csv}: no frame was tracked successfully (all AUs masked)")
        else:
            source.note(f"audio but no OpenFace CSV ({openface_csv or 'none given'}): no seq sample "
                        f"(run `emodifftalk export-frontal` + OpenFace, then ingest with --openface-dir)")
    elif openface_csv is not None and Path(openface_csv).is_file():
        source.note(f"OpenFace CSV {openface_csv} but no audio: no seq sample")

    # --- per-frame meshes for the seq sample ------------------------------------------------
    verts_seq = None
    mesh_ids = set(source.verts_frame_ids())
    if aus is not None and mesh_ids:
        per_frame = [source.verts(timeline.source_frame(j)) if timeline.source_frame(j) in mesh_ids else None
                     for j in range(timeline.n_frames)]
        verts_seq, filled, why = fill_mesh_gaps(per_frame, opts.max_mesh_gap)
        counts["mesh_frames_filled"] = filled
        if filled:
            source.note(f"{filled} frame(s) without a mesh were interpolated from their neighbours")
        if verts_seq is None:
            source.note(f"verts left out of the seq sample: {why}")

    # --- frames to pack ---------------------------------------------------------------------
    available: dict[int, list[str]] = {}
    for cam in cameras:
        for f in source.frame_ids(cam):
            available.setdefault(f, []).append(cam)
    picked = select_frames(timeline, set(available), opts.frames_stride)

    shards: list[dict] = []
    modalities: list[str] = []
    frames_written: list[int] = []
    seq_shard = None
    frames_shards: list[dict] = []
    with atomic_dir(final, overwrite=True) as tmp:
        if aus is not None:
            w = ShardSetWriter(tmp, "seq", split, opts.shard_max_bytes, opts.shard_max_samples)
            members = {"audio.wav": _wav_bytes(audio16, tmp), "aus.npy": encode_npy(aus.aus.astype(np.float32)),
                       "au_mask.npy": encode_npy(aus.mask.astype(np.uint8))}
            seq_mods = ["audio", "aus"]
            if verts_seq is not None:
                members["verts.npy"] = encode_npy(verts_seq)
                seq_mods.append("verts")
            meta = {"identity": identity, "clip": clip, "fps": fps, "n_frames": timeline.n_frames,
                    "sample_rate": SAMPLE_RATE, "n_audio_samples": int(audio16.shape[0]), "split": split,
                    "template": identity, "modalities": seq_mods, "emotion": source.emotion,
                    "dataset": source.dataset, "source_fps": src_fps}
            seq_shard = w.write(key, members, meta)
            shards += w.close()
            modalities += seq_mods
        if picked:
            pipes: dict[str, _CameraPipeline] = {}
            w = ShardSetWriter(tmp, "frames", split, opts.shard_max_bytes, opts.shard_max_samples)
            for j, f in picked:
                members, used, masked = {}, [], []
                for cam in available[f]:
                    try:
                        encoded = source.image_data(cam, f)
                        if cam not in pipes:
                            pipes[cam] = _CameraPipeline(source.camera(cam), encoded, opts, source)
                        ext, data, was_masked = pipes[cam].render(f, encoded)
                    except ImageError as e:  # one undecodable frame must not cost the whole clip
                        counts["bad_images"] += 1
                        if counts["bad_images"] <= 5:
                            source.note(f"skipped an image: {e}")
                        continue
                    members[f"{cam}.{ext}"] = data
                    used.append(pipes[cam].record)
                    masked += [cam] if was_masked else []
                    counts["images"] += 1
                if not used:
                    source.note(f"frame {f}: no decodable image: no frames sample")
                    continue
                members["cameras.json"] = encode_json(used)
                v = source.verts(f) if f in mesh_ids else None
                if v is not None:
                    members["verts.npy"] = encode_npy(np.asarray(v, dtype=np.float32))
                meta = {"identity": identity, "clip": clip, "frame": int(j), "split": split, "fps": fps,
                        "time": j / fps, "cameras": [c["name"] for c in used], "source_frame": int(f),
                        "masked": masked, "dataset": source.dataset}
                w.write(frames_key(identity, clip, j), members, meta)
                counts["frames_samples"] += 1
                frames_written.append(int(j))
            frames_shards = w.close()
            shards += frames_shards
            if counts["bad_images"] > 5:
                source.note(f"{counts['bad_images']} undecodable image(s) skipped in total")
            if counts["frames_samples"]:
                modalities.append("frames")
        elif cameras:
            source.note("no frame with images falls inside the clip timeline: no frames samples")

        template = _save_template(source, tmp)
        source.flush_notes()
        if opts.shard_url:
            for s in shards:
                rel = f"{CLIPS_DIR}/{key}/{s['name']}"
                _upload(tmp / s["name"], opts.shard_url.format(name=rel))
                (tmp / s["name"]).unlink()
        entry = {"identity": identity, "clip": clip, "split": split, "fps": fps, "n_frames": timeline.n_frames,
                 "emotion": source.emotion, "raw_modalities": source.raw_modalities(aus is not None),
                 "n_audio_samples": int(audio16.shape[0]) if aus is not None else 0,
                 "frames": frames_written, "modalities": [m for m in MODALITIES if m in modalities],
                 "dataset": source.dataset, "source_fps": src_fps, "cameras": cameras}
        if seq_shard is not None:
            entry["seq_shard"] = f"{CLIPS_DIR}/{key}/{seq_shard}"
        if frames_shards:
            entry["frames_shards"] = [f"{CLIPS_DIR}/{key}/{s['name']}" for s in frames_shards]
        part = {"version": PART_VERSION, "status": "ok", "key": key, "identity": identity, "clip": clip,
                "split": split, "digest": digest, "options": opts.to_dict(), "clip_entry": entry,
                "shards": [dict(s, name=f"{CLIPS_DIR}/{key}/{s['name']}") for s in shards],
                "template": template, "counts": counts, "notes": list(source.notes),
                "seconds": time.perf_counter() - t0}
        atomic_write_text(tmp / PART_FILE, json.dumps(part, indent=1, sort_keys=True, default=_json_default))
    return part


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def _save_template(source: ClipSource, tmp: Path) -> dict | None:
    """The clip's candidate template (the manifest step picks one per identity)."""
    t = source.template()
    if t is None:
        return None
    verts = np.asarray(t["verts"], dtype=np.float32)
    if verts.ndim != 2 or verts.shape[1] != 3 or verts.shape[0] < 1:
        source.note(f"template candidate ignored: verts shape {verts.shape}")
        return None
    np.save(tmp / "template.npy", verts, allow_pickle=False)
    rec = {"verts": "template.npy", "n_vertices": int(verts.shape[0]), "source": t.get("source", ""),
           "priority": t.get("priority", [9]), "faces": None, "vertex_sets": None,
           "frame": t.get("frame")}
    if t.get("faces") is not None and np.size(t["faces"]):
        faces = np.asarray(t["faces"], dtype=np.int32)
        np.save(tmp / "template_faces.npy", faces, allow_pickle=False)
        rec["faces"] = "template_faces.npy"
    if t.get("vertex_sets"):
        atomic_write_text(tmp / "template_sets.json", json.dumps(t["vertex_sets"], default=_json_default))
        rec["vertex_sets"] = "template_sets.json"
    # head axes for the generic vertex-set fallback: towards the frontal camera, and its "up"
    axes = _head_axes(source, verts)
    if axes is not None:
        rec["forward"], rec["up"] = axes
    return rec


def _head_axes(source: ClipSource, verts: np.ndarray) -> tuple[list, list] | None:
    names = source.camera_names()
    if not names:
        return None
    name = source.frontal_camera if source.frontal_camera in names else names[0]
    try:
        cam = source.camera(name)
    except Exception:  # noqa: BLE001 - only a hint for the fallback vertex sets
        return None
    v = np.asarray(cam.viewmat, dtype=np.float64)
    centre = -v[:3, :3].T @ v[:3, 3]
    forward = centre - verts.mean(axis=0)
    forward /= np.linalg.norm(forward) + 1e-12
    up = -v[1, :3]  # camera y points down in the image: world "up" is its negation
    up = up - forward * (up @ forward)
    up /= np.linalg.norm(up) + 1e-12
    return forward.tolist(), up.tolist()
