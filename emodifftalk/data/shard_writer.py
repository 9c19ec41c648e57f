"""Pack the raw folder layout into WebDataset shards + ``manifest.json`` (schema: ``schema.py``).

Determinism: members are written in a fixed order with mtime 0, uid/gid 0 and no user names, and
samples in sorted (identity, clip, frame) order, so the same input gives byte-identical shards.

Integrity: every sample's ``meta.json`` carries ``"checksums": {member: crc32}`` of its other
members and is written *last*; the reader rejects a sample whose members are missing, extra or
altered (a truncated shard therefore never yields a half sample). Each shard's sha256 and size
are in the manifest for ``emodifftalk inspect --validate``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from emodifftalk.au import NUM_AUS
from emodifftalk.data.raw import RawClip, RawDataset, RawLayoutError
from emodifftalk.data.audio import SAMPLE_RATE, AudioError, read_audio, resample, write_wav
from emodifftalk.data.schema import MODALITIES, SCHEMA_VERSION, SPLITS, frames_key, seq_key, template_key
from emodifftalk.data.splits import make_splits
from emodifftalk.utils import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CHECKSUMS = "checksums"  # meta.json field: {member extension: "crc32 hex"}
SHARD_PREFIX = {"seq": "seq", "frames": "frames", "template": "templates"}
# DataConfig fields that shape a shard set (recorded in the manifest; runtime fields are not).
PACK_FIELDS = ("shard_max_bytes", "shard_max_samples", "val_identity_fraction", "test_identity_fraction",
               "val_clip_fraction", "split_seed", "frames_stride")
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


# --------------------------------------------------------------------------------------------
# Member encoding
# --------------------------------------------------------------------------------------------


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable).encode("utf-8")


def crc32_hex(data: bytes) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def sample_members(members: dict[str, bytes], meta: dict) -> list[tuple[str, bytes]]:
    """Ordered ``(extension, bytes)`` of one sample: sorted members, then ``meta.json`` with checksums."""
    if "meta.json" in members or any("/" in ext or not ext for ext in members):
        raise ValueError(f"bad member names {sorted(members)}: meta.json is added here")
    ordered = sorted(members.items())
    meta = dict(meta, **{CHECKSUMS: {ext: crc32_hex(data) for ext, data in ordered}})
    return ordered + [("meta.json", encode_json(meta))]


# --------------------------------------------------------------------------------------------
# Tar writing with size limits
# --------------------------------------------------------------------------------------------


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _member_bytes(info: tarfile.TarInfo) -> int:
    """Bytes a member takes in a PAX tar: its header(s) + data padded to 512."""
    header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    return len(header) + -(-info.size // _BLOCK) * _BLOCK


def _archive_bytes(content: int) -> int:
    """File size of a tar whose members take ``content`` bytes (two end blocks, record padding)."""
    return -(-(content + 2 * _BLOCK) // _RECORD) * _RECORD


class _HashingFile:
    """Write-through file object that keeps the sha256 and byte count of what was written."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.n = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.n += len(data)
        return self.f.write(data)

    def close(self) -> None:
        self.f.close()


class ShardSetWriter:
    """Writes ``<prefix>-%06d.tar`` in ``out_dir``, starting a new shard before a sample would
    exceed ``max_bytes`` (file size) or ``max_samples``. A single sample larger than
    ``max_bytes`` gets a shard of its own (with a warning)."""

    def __init__(self, out_dir: Path, kind: str, split: str | None, max_bytes: int, max_samples: int):
        self.out_dir, self.kind, self.split = Path(out_dir), kind, split
        self.prefix = SHARD_PREFIX[kind] + (f"-{split}" if split else "")
        self.max_bytes, self.max_samples = int(max_bytes), int(max_samples)
        self.shards: list[dict] = []
        self._tar: tarfile.TarFile | None = None
        self._file: _HashingFile | None = None
        self._content = 0
        self._n = 0

    def write(self, key: str, members: dict[str, bytes], meta: dict) -> str:
        """Write one sample; returns the shard file name it went into."""
        if not key or any(c in key for c in "./\\ "):
            raise ValueError(f"sample key {key!r} must not contain '.', '/', '\\' or spaces")
        items = sample_members(members, meta)
        infos = [(_tarinfo(f"{key}.{ext}", len(data)), data) for ext, data in items]
        size = sum(_member_bytes(i) for i, _ in infos)
        if self._tar is not None and (self._n >= self.max_samples
                                      or _archive_bytes(self._content + size) > self.max_bytes):
            self._finish()
        if self._tar is None:
            self._open()
        if _archive_bytes(size) > self.max_bytes:
            log.warning("sample %s (%d bytes) exceeds data.shard_max_bytes=%d: it gets its own shard",
                        key, size, self.max_bytes)
        for info, data in infos:
            self._tar.addfile(info, io.BytesIO(data))
        self._content += size
        self._n += 1
        return self.shards[-1]["name"]

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._file = _HashingFile(self.out_dir / name)
        self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.PAX_FORMAT)
        self.shards.append({"name": name, "kind": self.kind, "split": self.split})
        self._content, self._n = 0, 0

    def _finish(self) -> None:
        self._tar.close()
        self._file.close()
        assert self._file.n == _archive_bytes(self._content), (self._file.n, self._content)
        self.shards[-1].update(n_samples=self._n, bytes=self._file.n, sha256=self._file.sha256.hexdigest())
        self._tar = self._file = None

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._finish()
        return self.shards


# --------------------------------------------------------------------------------------------
# Raw clip -> samples
# --------------------------------------------------------------------------------------------


def _audio_bytes(clip: RawClip) -> tuple[bytes, int]:
    """(16 kHz mono PCM16 WAV bytes, n samples): copied as-is when already conforming, else
    decoded, resampled and re-encoded."""
    import soundfile as sf

    path = clip.audio_path
    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - not a libsndfile format (m4a, mp4 ...): read_audio decodes it
        info = None
    if info is not None and info.samplerate == SAMPLE_RATE and info.channels == 1 \
            and info.subtype == "PCM_16" and info.format == "WAV" and info.frames > 0:
        return path.read_bytes(), int(info.frames)
    try:
        audio, sr = read_audio(path)
    except (AudioError, FileNotFoundError) as e:
        raise RawLayoutError(str(e)) from e
    log.info("%s is %d Hz, not 16 kHz mono PCM16 WAV: converting", path, sr)
    audio = resample(audio, sr, SAMPLE_RATE)
    with tempfile.TemporaryDirectory() as scratch:  # write_wav writes files only; never into RAW/
        tmp = write_wav(Path(scratch) / "audio.wav", audio, SAMPLE_RATE)
        return tmp.read_bytes(), int(audio.shape[0])


def seq_sample(clip: RawClip, split: str, n_vertices: int | None) -> tuple[dict[str, bytes], dict]:
    """Members + meta of the ``seq`` sample of ``clip`` (needs audio and AUs)."""
    members: dict[str, bytes] = {}
    wav, n_audio = _audio_bytes(clip)
    members["audio.wav"] = wav
    aus = clip.load_aus()
    if aus.aus.shape != (clip.n_frames, NUM_AUS):
        raise RawLayoutError(f"{clip.openface_path}: AUs came out {aus.aus.shape}, expected "
                             f"({clip.n_frames}, {NUM_AUS}) from meta.json")
    members["aus.npy"] = encode_npy(aus.aus.astype(np.float32))
    members["au_mask.npy"] = encode_npy(aus.mask.astype(np.uint8))
    modalities = ["audio", "aus"]
    if clip.verts_path.is_file():
        verts = clip.load_verts()
        if n_vertices is not None and verts.shape[1] != n_vertices:
            raise RawLayoutError(f"{clip.verts_path}: {verts.shape[1]} vertices but the template has "
                                 f"{n_vertices}")
        members["verts.npy"] = encode_npy(np.asarray(verts, dtype=np.float32))
        modalities.append("verts")
    for name, path, shape in (("aus_true.npy", clip.aus_true_path, (NUM_AUS,)),
                              ("head_pose.npy", clip.head_pose_path, (4, 4))):
        arr = clip.load_frame_array(path, shape)
        if arr is not None:
            members[name] = encode_npy(arr)
    seconds = n_audio / SAMPLE_RATE
    if abs(seconds - clip.n_frames / clip.fps) > 2.0 / clip.fps:
        log.warning("%s: audio lasts %.3f s but %d frames at %g fps last %.3f s", clip.path, seconds,
                    clip.n_frames, clip.fps, clip.n_frames / clip.fps)
    if clip.image_frames:
        modalities.append("frames")
    meta = {k: v for k, v in clip.meta.items() if k != CHECKSUMS}
    meta.update(identity=clip.identity, clip=clip.clip, fps=clip.fps, n_frames=clip.n_frames,
                sample_rate=SAMPLE_RATE, n_audio_samples=n_audio, split=split,
                template=clip.identity, modalities=modalities)
    return members, meta


def packed_frames(clip: RawClip, frames_stride: int) -> list[int]:
    """Frames that become ``frames`` samples: the first rendered (neutral) frame, plus every
    ``frames_stride``-th rendered frame when ``frames_stride > 0``."""
    rendered = list(clip.image_frames)
    if not rendered:
        return []
    if rendered[0] != 0:
        log.warning("%s: frame 0 has no images; using frame %d as the neutral frame", clip.path, rendered[0])
    return rendered[::frames_stride] if frames_stride > 0 else rendered[:1]


_IMAGE_MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".jpeg": b"\xff\xd8\xff"}


def frame_images(clip: RawClip, frame: int, cameras: list[dict]) -> list[tuple[dict, Path]]:
    """``[(camera, image path)]`` of ``frame`` in ``cameras.json`` order, checked: every camera
    folder is a known camera and every image starts like a PNG/JPEG (reads 8 bytes each)."""
    images = clip.image_frames[frame]
    by_name = {c["name"]: c for c in cameras}
    unknown = [c for c in images if c not in by_name]
    if unknown:
        raise RawLayoutError(f"{clip.path / 'images'}: camera folder(s) {unknown} are not in cameras.json")
    out = []
    for cam in cameras:
        path = images.get(cam["name"])
        if path is None:
            continue
        with open(path, "rb") as f:
            head = f.read(8)
        if not head.startswith(_IMAGE_MAGIC[path.suffix.lower()]):
            raise RawLayoutError(f"{path} is not a {path.suffix[1:].upper()} file")
        out.append((cam, path))
    return out


def frames_sample(clip: RawClip, frame: int, cameras: list[dict], split: str,
                  verts: np.ndarray | None, head_pose: np.ndarray | None = None) -> tuple[dict[str, bytes], dict]:
    """Members + meta of the ``frames`` sample of ``clip`` at ``frame`` (image bytes copied as-is).
    With ``head_pose`` (T, 4, 4) each camera's viewmat becomes ``viewmat @ pose[frame]``: the
    registered mesh seen through it projects where the posed head is in the image."""
    members: dict[str, bytes] = {}
    used = []
    for cam, path in frame_images(clip, frame, cameras):
        ext = ".jpg" if path.suffix.lower() == ".jpeg" else path.suffix.lower()
        members[cam["name"] + ext] = path.read_bytes()
        if head_pose is not None:
            cam = dict(cam, viewmat=np.asarray(cam["viewmat"], np.float64) @ head_pose[frame])
        used.append(cam)
    members["cameras.json"] = encode_json(used)
    if verts is not None:
        members["verts.npy"] = encode_npy(np.asarray(verts[frame], dtype=np.float32))
    meta = {"identity": clip.identity, "clip": clip.clip, "frame": int(frame), "split": split,
            "fps": clip.fps, "time": frame / clip.fps, "cameras": [c["name"] for c in used]}
    return members, meta


def template_sample(raw: RawDataset, identity: str) -> tuple[dict[str, bytes], dict]:
    t = raw.template(identity)
    members = {"verts.npy": encode_npy(t["verts"]), "faces.npy": encode_npy(t["faces"]),
               "vertex_sets.json": encode_json(t["vertex_sets"])}
    meta = {"identity": identity, "n_vertices": int(t["verts"].shape[0]), "n_faces": int(t["faces"].shape[0])}
    return members, meta


# --------------------------------------------------------------------------------------------
# pack_dataset
# --------------------------------------------------------------------------------------------


class _Writers:
    """One ``ShardSetWriter`` per (kind, split), created on first use."""

    def __init__(self, out_dir: Path, data_cfg):
        self.out_dir, self.cfg = out_dir, data_cfg
        self.sets: dict[tuple[str, str | None], ShardSetWriter] = {}

    def write(self, kind: str, split: str | None, key: str, members: dict, meta: dict) -> str:
        w = self.sets.get((kind, split))
        if w is None:
            w = self.sets[(kind, split)] = ShardSetWriter(
                self.out_dir, kind, split, self.cfg.shard_max_bytes, self.cfg.shard_max_samples)
        return w.write(key, members, meta)

    def close(self) -> list[dict]:
        return [s for k in sorted(self.sets, key=lambda k: (k[0], k[1] or "")) for s in self.sets[k].close()]


# Errors that mean "this identity's / clip's raw files are unusable" (RawLayoutError,
# OpenFaceError and AudioError are ValueErrors), as opposed to bugs.
_DATA_ERRORS = (ValueError, OSError, KeyError)


def pack_dataset(raw_dir: str | Path, out_dir: str | Path, cfg, overwrite: bool = False) -> Path:
    """Pack ``raw_dir`` (raw layout) into shards + ``manifest.json`` in ``out_dir``.

    Written in a temp folder renamed into place at the end; an existing ``out_dir`` is an error
    unless ``overwrite``. An identity or clip whose files are unusable is skipped, logged and
    listed under ``"skipped"`` in the manifest (the rest is still packed); a clip is checked
    completely before any of its samples is written, so it is either fully in or fully out.
    """
    from tqdm.auto import tqdm

    data_cfg = cfg.data
    data_cfg.validate()
    raw = RawDataset(raw_dir)
    out_dir = Path(out_dir)
    if out_dir.resolve() == raw.root.resolve():
        raise ValueError(f"output folder {out_dir} is the raw folder; choose another")
    skipped: list[dict] = []

    def skip(identity: str, clip: str | None, reason: str) -> None:
        log.error("skipping %s%s: %s", identity, f"/{clip}" if clip else " (whole identity)", reason)
        skipped.append({"identity": identity, "clip": clip, "reason": reason})

    listing_errors: list = []
    clips = {i: raw.clips(i, listing_errors) for i in raw.identities}
    for identity, clip, reason in listing_errors:
        skip(identity, clip, reason)
    splits = make_splits({i: [c.clip for c in cs] for i, cs in clips.items()}, data_cfg)

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        writers = _Writers(tmp, data_cfg)
        identities: dict[str, dict] = {}  # packed identity -> {"n_vertices", "cameras"}
        for identity in raw.identities:
            try:
                members, meta = template_sample(raw, identity)
                identities[identity] = {"n_vertices": meta["n_vertices"], "cameras": raw.cameras(identity)}
            except _DATA_ERRORS as e:
                skip(identity, None, str(e))
                continue
            writers.write("template", None, template_key(identity), members, meta)

        clip_index: dict[str, dict] = {}
        todo = [c for i in identities for c in clips[i]]
        for clip in tqdm(todo, desc="pack", unit="clip"):
            split = splits.clips[(clip.identity, clip.clip)]
            try:
                plan = _plan_clip(clip, split, identities[clip.identity], data_cfg)
            except _DATA_ERRORS as e:
                skip(clip.identity, clip.clip, str(e))
                continue
            clip_index[seq_key(clip.identity, clip.clip)] = _write_clip(plan, writers)
        shards = writers.close()
        manifest = build_manifest(raw, splits, sorted(identities), shards, clip_index, skipped, data_cfg)
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    if skipped:
        log.warning("%d identit(ies)/clip(s) were skipped (listed under 'skipped' in %s)", len(skipped),
                    out_dir / MANIFEST)
    return out_dir


def _plan_clip(clip: RawClip, split: str, identity: dict, data_cfg) -> dict:
    """Everything of one clip that can fail on bad raw data, done before anything is written:
    the seq sample (in memory) and the checked list of frames to pack."""
    clip.check_modalities()
    seq = None
    if clip.audio_path.is_file() and clip.openface_path.is_file():
        seq = seq_sample(clip, split, identity["n_vertices"])
    else:
        log.info("%s has no audio.wav + openface.csv: no seq sample", clip.path)
    frames = packed_frames(clip, data_cfg.frames_stride)
    verts = None
    if frames:
        if not identity["cameras"]:
            raise RawLayoutError(f"{clip.path} has images but {clip.path.parent / 'cameras.json'} is missing")
        for f in frames:
            frame_images(clip, f, identity["cameras"])
        verts = clip.load_verts() if clip.verts_path.is_file() else None
    return {"clip": clip, "split": split, "seq": seq, "frames": frames, "verts": verts,
            "head_pose": clip.load_frame_array(clip.head_pose_path, (4, 4)) if frames else None,
            "cameras": identity["cameras"]}


def _write_clip(plan: dict, writers: _Writers) -> dict:
    """Write a planned clip's samples; returns its manifest entry."""
    clip, split = plan["clip"], plan["split"]
    entry: dict[str, Any] = {"identity": clip.identity, "clip": clip.clip, "split": split, "fps": clip.fps,
                             "n_frames": clip.n_frames, "emotion": clip.meta.get("emotion"),
                             "raw_modalities": list(clip.modalities), "n_audio_samples": 0,
                             "frames": plan["frames"]}
    packed: list[str] = []
    if plan["seq"] is not None:
        members, meta = plan["seq"]
        entry["seq_shard"] = writers.write("seq", split, seq_key(clip.identity, clip.clip), members, meta)
        entry["n_audio_samples"] = meta["n_audio_samples"]
        packed += meta["modalities"]
    frames_shards = set()
    for f in plan["frames"]:
        members, meta = frames_sample(clip, f, plan["cameras"], split, plan["verts"], plan["head_pose"])
        frames_shards.add(writers.write("frames", split, frames_key(clip.identity, clip.clip, f), members, meta))
    if plan["frames"]:
        packed.append("frames")
        entry["frames_shards"] = sorted(frames_shards)  # readers of one identity open only these
    entry["modalities"] = [m for m in MODALITIES if m in packed]
    return entry


def build_manifest(raw: RawDataset, splits, identities: list[str], shards: list[dict],
                   clips: dict[str, dict], skipped: list[dict], data_cfg) -> dict:
    """``manifest.json``; ``identities`` are the packed ones (skipped identities are left out)."""
    counts: dict[str, dict[str, int]] = {}
    for s in shards:
        per = counts.setdefault(s["kind"], {})
        split = s["split"] or "all"
        per[split] = per.get(split, 0) + s["n_samples"]
    audio_seconds = sum(c["n_audio_samples"] for c in clips.values()) / SAMPLE_RATE
    return {
        "schema_version": SCHEMA_VERSION,
        "name": raw.info.get("name", raw.root.name),
        "sample_rate": SAMPLE_RATE,
        "pack_config": {k: getattr(data_cfg, k) for k in PACK_FIELDS},
        "counts": counts,
        "identities": {s: [i for i in splits.identities_in(s) if i in identities] for s in SPLITS},
        "identity_splits": {i: splits.identities[i] for i in identities},
        "shards": shards,
        "clips": dict(sorted(clips.items())),
        "skipped": skipped,
        "totals": {"audio_hours": audio_seconds / 3600.0, "bytes": sum(s["bytes"] for s in shards),
                   "n_frames": sum(c["n_frames"] for c in clips.values() if "seq_shard" in c),
                   "n_clips": len(clips), "n_identities": len(identities)},
    }
