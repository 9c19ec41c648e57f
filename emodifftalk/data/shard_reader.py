"""Stream shards back: explicit safe decoders, skip-and-count, multi-node/multi-worker streams.

Why not ``WebDataset(...).decode(...)``: webdataset's ``Decoder`` appends its default handlers,
which unpickle ``.pyd``/``.pickle`` members. Here each member is decoded by an explicit function
chosen by its extension, and any other extension makes the whole sample an error (skipped,
counted, logged) — nothing is ever unpickled.

Why a ``wds.DataPipeline`` rather than ``wds.WebDataset``: the latter seeds its resampled shard
stream from the clock; we need streams that are reproducible from ``(seed, epoch)`` and differ
per rank and worker, and an epoch that DataLoader workers see (``ShardStream.set_epoch``).
The stages are webdataset's own (``split_by_node``, ``split_by_worker``, ``tarfile_to_samples``,
its shuffle buffer) with our handler.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import os
import random
import re
import struct
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from emodifftalk.au import NUM_AUS
from emodifftalk.data.audio import SAMPLE_RATE
from emodifftalk.data.schema import (
    FRAMES_REQUIRED,
    SAMPLE_KINDS,
    SCHEMA_VERSION,
    SEQ_OPTIONAL,
    SEQ_REQUIRED,
    SPLITS,
    TEMPLATE_REQUIRED,
)
from emodifftalk.data.shard_writer import CHECKSUMS, MANIFEST, crc32_hex

log = logging.getLogger(__name__)


class SampleError(ValueError):
    """A sample that cannot be used; ``key`` and ``url`` say which."""

    def __init__(self, reason: str, key: str | None = None, url: str | None = None):
        super().__init__(reason)
        self.reason, self.key, self.url = reason, key, url


# --------------------------------------------------------------------------------------------
# Skip accounting (open_clip's log_and_continue, plus counts)
# --------------------------------------------------------------------------------------------


class SkipStats:
    """Thread-safe counts of skipped samples / shard errors, with the reason per key.

    ``n_skipped`` is shared with DataLoader worker processes (fork or spawn): each process
    counts in its own slot of a shared array, so no cross-process lock is needed and the main
    process sees the total. ``records``/``reasons`` hold what *this* process skipped — workers
    log every skip, so nothing goes unreported.
    """

    _SLOTS = 257  # slot 0: the main process; 1 + worker id for DataLoader workers

    def __init__(self, max_logged: int = 100):
        self._counts = mp.RawArray("q", self._SLOTS)
        self._lock = threading.Lock()
        self.records: list[tuple[str | None, str | None, str]] = []  # (key, shard url, reason)
        self.max_logged = max_logged

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def n_skipped(self) -> int:
        return int(sum(self._counts))

    @property
    def reasons(self) -> dict[str, str]:
        """``{"<key> (<shard>)": reason}`` of what this process skipped."""
        with self._lock:
            return {f"{k or '?'} ({Path(u).name if u else '?'})": r for k, u, r in self.records}

    def skip(self, key: str | None, url: str | None, reason: str) -> None:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % (self._SLOTS - 1)
        with self._lock:
            self._counts[slot] += 1
            self.records.append((key, url, reason))
        n = self.n_skipped
        level = logging.WARNING if n <= self.max_logged else logging.DEBUG
        log.log(level, "skipped sample %s (%s): %s [%d skipped so far]", key or "?", url or "?", reason, n)

    def report(self) -> str:
        lines = [f"{self.n_skipped} sample(s)/shard error(s) skipped"]
        lines += [f"  {k}: {r}" for k, r in sorted(self.reasons.items())]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Explicit decoders
# --------------------------------------------------------------------------------------------


_NPY_HEADER_MAX = 16384  # numpy refuses headers over 10000 bytes by default
# The header np.save writes for plain arrays; anything else goes through numpy's own parser.
_NPY_SIMPLE_HEADER = re.compile(
    rb"\{'descr': '([<>|=][a-zA-Z][0-9]*)', 'fortran_order': (True|False), 'shape': \(([0-9, ]*)\), \} *\n")


def _npy_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, payload offset)`` of .npy bytes (versions 1.0 and 2.0)."""
    if bytes(data[:6]) != b"\x93NUMPY" or len(data) < 12:
        raise ValueError("not an .npy file (bad magic)")
    major = data[6]
    if major == 1:
        start, length = 10, int.from_bytes(data[8:10], "little")
    elif major == 2:
        start, length = 12, int.from_bytes(data[8:12], "little")
    else:
        raise ValueError(f".npy version {major} is not supported here")
    header = bytes(data[start:start + length])
    m = _NPY_SIMPLE_HEADER.fullmatch(header)
    if m is not None:  # fast path: ast.literal_eval in numpy's parser is ~0.1 ms per member
        shape = tuple(int(x) for x in m.group(3).split(b",") if x.strip())
        return shape, m.group(2) == b"True", np.dtype(m.group(1).decode()), start + length
    f = io.BytesIO(bytes(data[:min(start + length, _NPY_HEADER_MAX)]))
    np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(f)
    return shape, fortran_order, dtype, f.tell()


def decode_npy(data: bytes) -> np.ndarray:
    """.npy bytes -> array, never unpickling (object dtypes are an error).

    Parses the header (numpy's parser for anything but the plain header ``np.save`` writes) and
    wraps the payload with ``frombuffer``, copying only when ``data`` is immutable ``bytes``:
    ~3x faster than ``np.load(BytesIO)``. The result is always a writable array.
    """
    shape, fortran_order, dtype, offset = _npy_header(data)
    if dtype.hasobject:
        raise ValueError("object arrays need pickle: refused")
    flat = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=offset)
    array = flat.reshape(shape[::-1]).transpose() if fortran_order else flat.reshape(shape)
    return array if array.flags.writeable else array.copy()  # bytearray members: no second copy


def decode_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def _pcm16_wav(data: bytes) -> tuple[np.ndarray, int, int] | None:
    """``(int16 samples (N, C), sample rate, channels)`` of a plain PCM16 RIFF/WAVE file, else None.

    What the packer writes; ~20x faster than libsndfile for short clips (no file-object layer).
    """
    if len(data) < 12 or bytes(data[:4]) != b"RIFF" or bytes(data[8:12]) != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = bytes(data[pos:pos + 4]), int.from_bytes(data[pos + 4:pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt " and size >= 16:
            tag, channels, rate = struct.unpack_from("<HHI", data, body)
            (bits,) = struct.unpack_from("<H", data, body + 14)
            fmt = (tag, channels, rate, bits)
        elif chunk == b"data" and fmt is not None:
            tag, channels, rate, bits = fmt
            if tag != 1 or bits != 16 or channels < 1 or body + size > len(data):
                return None
            n = size // (2 * channels)
            samples = np.frombuffer(data, dtype="<i2", count=n * channels, offset=body)
            return samples.reshape(n, channels), rate, channels
        pos = body + size + (size & 1)  # chunks are word-aligned
    return None


def decode_wav(data: bytes) -> np.ndarray:
    """16 kHz mono WAV -> (N,) float32 in [-1, 1); any other rate or channel count is an error.

    PCM16 is converted as libsndfile does (``x / 32768``); other encodings go through soundfile.
    """
    pcm = _pcm16_wav(data)
    if pcm is not None:
        samples, sr, channels = pcm
        if sr != SAMPLE_RATE:
            raise ValueError(f"audio is {sr} Hz, shards must hold {SAMPLE_RATE} Hz")
        if channels != 1:
            raise ValueError(f"audio has {channels} channels, shards must hold mono")
        audio = samples[:, 0].astype(np.float32)
        audio *= np.float32(1.0 / 32768.0)
        return audio
    import soundfile as sf

    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise ValueError(f"audio is {sr} Hz, shards must hold {SAMPLE_RATE} Hz")
    if audio.shape[1] != 1:
        raise ValueError(f"audio has {audio.shape[1]} channels, shards must hold mono")
    return np.ascontiguousarray(audio[:, 0])


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG -> (H, W, 3) uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_safetensors(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(bytes(data))


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "npy": decode_npy, "json": decode_json, "wav": decode_wav, "png": decode_image,
    "jpg": decode_image, "jpeg": decode_image, "safetensors": decode_safetensors,
}


def _ext(member: str) -> str:
    return member.rsplit(".", 1)[-1].lower()


_FRAMES_KEY = re.compile(r"__f\d{5}$")


def sample_kind(key: str) -> str:
    if key.endswith("__template"):
        return "template"
    return "frames" if _FRAMES_KEY.search(key) else "seq"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _array(x: Any, name: str, ndim: int, dtype=None) -> np.ndarray:
    _check(isinstance(x, np.ndarray) and x.ndim == ndim,
           f"{name} must be a {ndim}-d array, got {getattr(x, 'shape', type(x).__name__)}")
    return x if dtype is None else x.astype(dtype, copy=False)


def decode_sample(raw: dict[str, Any]) -> dict:
    """Decode one raw WebDataset sample ``{"__key__", "<member ext>": bytes, ...}`` into the
    documented dict for its kind (see ``emodifftalk/data/shards.py``). Raises ``SampleError``."""
    key, url = raw.get("__key__"), raw.get("__url__")
    try:
        return _decode(key, {k: v for k, v in raw.items() if not k.startswith("__")})
    except SampleError:
        raise
    except Exception as e:  # any decode/check failure is this sample's problem
        raise SampleError(f"{type(e).__name__}: {e}", key, url) from e


def _decode(key: str | None, members: dict[str, bytes]) -> dict:
    _check(key is not None, "sample has no __key__")
    bad = sorted(m for m in members if _ext(m) not in DECODERS)
    _check(not bad, f"member(s) {bad} have no safe decoder (allowed: {', '.join(sorted(DECODERS))}); "
                    f"pickle-based members are never decoded")
    _check("meta.json" in members, f"missing meta.json (members: {sorted(members)})")
    meta = decode_json(members["meta.json"])
    _check(isinstance(meta, dict), "meta.json is not an object")
    sums = meta.get(CHECKSUMS)
    _check(isinstance(sums, dict), "meta.json has no member checksums")
    others = set(members) - {"meta.json"}
    _check(set(sums) == others, f"members {sorted(others)} differ from those written {sorted(sums)} "
                                f"(truncated or altered sample)")
    for m in sorted(others):
        _check(crc32_hex(members[m]) == sums[m], f"member {m} is corrupt (crc32 mismatch)")
    kind = sample_kind(key)
    decode = {"seq": _decode_seq, "frames": _decode_frames, "template": _decode_template}[kind]
    return decode(key, members, meta)


def _need(members: dict, names: Iterable[str]) -> None:
    missing = [n for n in names if n not in members]
    _check(not missing, f"missing member(s) {missing}")


def _with_extras(sample: dict, members: dict, known: set[str]) -> dict:
    """Members with a safe extension that the schema does not name: decoded into ``"extras"``."""
    extras = {m: DECODERS[_ext(m)](members[m]) for m in sorted(set(members) - known)}
    if extras:
        sample["extras"] = extras
    return sample


def _decode_seq(key: str, members: dict, meta: dict) -> dict:
    _need(members, SEQ_REQUIRED)
    audio = decode_wav(members["audio.wav"])
    aus = _array(decode_npy(members["aus.npy"]), "aus", 2, np.float32)
    au_mask = _array(decode_npy(members["au_mask.npy"]), "au_mask", 2).astype(bool)
    t = int(meta["n_frames"])
    _check(aus.shape == (t, NUM_AUS), f"aus is {aus.shape}, meta n_frames={t} needs ({t}, {NUM_AUS})")
    _check(au_mask.shape == aus.shape, f"au_mask is {au_mask.shape}, aus is {aus.shape}")
    _check(bool(np.isfinite(aus).all()), "aus has NaN/Inf")
    verts = None
    if "verts.npy" in members:
        verts = _array(decode_npy(members["verts.npy"]), "verts", 3, np.float32)
        _check(verts.shape[0] == t and verts.shape[2] == 3, f"verts is {verts.shape}, expected ({t}, V, 3)")
    feats = feats_meta = None
    if "feats.npy" in members or "feats.json" in members:
        _need(members, ("feats.npy", "feats.json"))
        feats = _array(decode_npy(members["feats.npy"]), "feats", 2, np.float32)
        feats_meta = decode_json(members["feats.json"])
    optional = {}
    if "aus_true.npy" in members:  # synthetic ground truth, for evaluation only
        optional["aus_true"] = _array(decode_npy(members["aus_true.npy"]), "aus_true", 2, np.float32)
        _check(optional["aus_true"].shape == aus.shape, f"aus_true is {optional['aus_true'].shape}, aus is {aus.shape}")
    if "head_pose.npy" in members:
        optional["head_pose"] = _array(decode_npy(members["head_pose.npy"]), "head_pose", 3, np.float32)
        _check(optional["head_pose"].shape == (t, 4, 4), f"head_pose is {optional['head_pose'].shape}, "
                                                         f"expected ({t}, 4, 4)")
    _check(int(meta.get("sample_rate", SAMPLE_RATE)) == SAMPLE_RATE,
           f"meta sample_rate {meta.get('sample_rate')} != {SAMPLE_RATE}")
    return _with_extras({"key": key, "kind": "seq", "audio": audio, "sample_rate": SAMPLE_RATE, "aus": aus,
                         "au_mask": au_mask, "verts": verts, "feats": feats, "feats_meta": feats_meta,
                         "meta": meta, **optional}, members, set(SEQ_REQUIRED) | set(SEQ_OPTIONAL))


def _decode_cameras(value: Any) -> list[dict]:
    _check(isinstance(value, list) and len(value) > 0, "cameras.json must be a non-empty list")
    cams = []
    for c in value:
        k = np.asarray(c["K"], dtype=np.float32)
        viewmat = np.asarray(c["viewmat"], dtype=np.float32)
        _check(k.shape == (3, 3) and viewmat.shape == (4, 4),
               f"camera {c.get('name')!r}: K {k.shape} / viewmat {viewmat.shape}, expected (3,3) / (4,4)")
        cams.append({"name": str(c["name"]), "K": k, "viewmat": viewmat, "width": int(c["width"]),
                     "height": int(c["height"])})
    return cams


def _decode_frames(key: str, members: dict, meta: dict) -> dict:
    _need(members, FRAMES_REQUIRED)
    cameras = _decode_cameras(decode_json(members["cameras.json"]))
    # webdataset lower-cases member extensions: match camera images case-insensitively
    image_members = {m.rsplit(".", 1)[0].lower(): m for m in members if _ext(m) in ("png", "jpg", "jpeg")}
    known = set(FRAMES_REQUIRED) | {"verts.npy"} | set(image_members.values())
    images = {}
    for cam in cameras:
        m = image_members.pop(cam["name"].lower(), None)
        _check(m is not None, f"no image for camera {cam['name']!r}")
        img = decode_image(members[m])
        _check(img.shape[:2] == (cam["height"], cam["width"]),
               f"image {m} is {img.shape[1]}x{img.shape[0]}, camera says {cam['width']}x{cam['height']}")
        images[cam["name"]] = img
    _check(not image_members, f"image(s) {sorted(image_members.values())} have no camera in cameras.json")
    verts = None
    if "verts.npy" in members:
        verts = _array(decode_npy(members["verts.npy"]), "verts", 2, np.float32)
        _check(verts.shape[1] == 3, f"verts is {verts.shape}, expected (V, 3)")
    return _with_extras({"key": key, "kind": "frames", "images": images, "cameras": cameras, "verts": verts,
                         "meta": meta}, members, known)


def _decode_template(key: str, members: dict, meta: dict) -> dict:
    _need(members, TEMPLATE_REQUIRED)
    verts = _array(decode_npy(members["verts.npy"]), "verts", 2, np.float32)
    faces = _array(decode_npy(members["faces.npy"]), "faces", 2)
    _check(verts.shape[1] == 3 and faces.shape[1] == 3, f"verts {verts.shape} / faces {faces.shape}: need (., 3)")
    _check(np.issubdtype(faces.dtype, np.integer), f"faces dtype {faces.dtype} is not integer")
    _check(faces.size == 0 or (faces.min() >= 0 and faces.max() < verts.shape[0]), "face indices out of range")
    sets = decode_json(members["vertex_sets.json"])
    _check(isinstance(sets, dict), "vertex_sets.json is not an object")
    return _with_extras({"key": key, "kind": "template", "verts": verts, "faces": faces.astype(np.int32),
                         "vertex_sets": {k: np.asarray(v, dtype=np.int64) for k, v in sets.items()},
                         "meta": meta}, members, set(TEMPLATE_REQUIRED))


# --------------------------------------------------------------------------------------------
# Manifest and URLs
# --------------------------------------------------------------------------------------------


def _manifest_path(root_or_manifest: str | Path) -> Path | None:
    p = Path(root_or_manifest)
    if p.is_dir() and (p / MANIFEST).is_file():
        return p / MANIFEST
    if p.is_file() and p.suffix == ".json":
        return p
    return None


def load_manifest(root_or_manifest: str | Path) -> dict:
    path = _manifest_path(root_or_manifest)
    if path is None:
        if not Path(root_or_manifest).exists():
            raise FileNotFoundError(f"shard folder {root_or_manifest} does not exist "
                                    "(make one with `emodifftalk pack`)")
        raise FileNotFoundError(f"no {MANIFEST} in {root_or_manifest} (is it a packed shard folder? "
                                "make one with `emodifftalk pack`)")
    manifest = json.loads(path.read_text())
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path} has schema_version {version}; this code reads {SCHEMA_VERSION} (re-pack)")
    return manifest


def check_shard_folder(root: str | Path, need: Iterable[tuple[str, str | None]] = ()) -> dict:
    """The manifest of a packed folder that has shards of every ``(kind, split)`` in ``need``, else
    a ``FileNotFoundError``/``ValueError`` that says what is wrong. Cheap (reads only the manifest):
    every command that takes a shard folder calls it before loading models or creating outputs."""
    manifest = load_manifest(root)
    for kind, split in need:
        if not shard_urls(root, kind, split):
            what = f"{kind} shards" + (f" in split {split!r}" if split else "")
            raise ValueError(f"{root}: the manifest lists no {what} (check it with `emodifftalk inspect {root}`)")
    return manifest


def shard_urls(root_or_manifest: str | Path, kind: str, split: str | None = None) -> list[str]:
    """Shard URLs of ``kind`` (+ ``split`` for seq/frames) from a packed folder or its manifest.

    Anything else is taken as a webdataset URL spec and expanded as webdataset does (brace
    patterns, ``::`` lists, ``pipe:`` commands); then ``kind``/``split`` are not checked.
    """
    path = _manifest_path(root_or_manifest)
    if path is None:
        return wds.shardlists.expand_urls(str(root_or_manifest))
    if kind not in SAMPLE_KINDS:
        raise ValueError(f"unknown sample kind {kind!r}; choose one of {', '.join(SAMPLE_KINDS)}")
    if kind != "template" and split not in SPLITS:
        raise ValueError(f"{kind} shards need split in {SPLITS}, got {split!r}")
    manifest = load_manifest(path)
    return [str(path.parent / s["name"]) for s in manifest["shards"]
            if s["kind"] == kind and (kind == "template" or s["split"] == split)]


def identity_shard_urls(root_or_manifest: str | Path, identity: str, kind: str) -> list[str] | None:
    """URLs of the ``seq`` or ``frames`` shards that hold ``identity``'s samples, from the
    manifest's per-clip index (``seq_shard``, ``frames_shards``), so that a reader of one identity
    opens a few shards instead of a whole split; None when the manifest has no index for ``kind``
    (packed before it existed: scan the identity's splits instead)."""
    if kind not in ("seq", "frames"):
        raise ValueError(f"identity_shard_urls: kind must be seq or frames, got {kind!r}")
    path = _manifest_path(root_or_manifest)
    if path is None:
        return None
    names: set[str] = set()
    for clip in load_manifest(path).get("clips", {}).values():
        if clip.get("identity") != identity:
            continue
        if kind == "seq" and "seq_shard" in clip:
            names.add(clip["seq_shard"])
        elif kind == "frames" and clip.get("frames"):
            if "frames_shards" not in clip:
                return None
            names.update(clip["frames_shards"])
    return [str(path.parent / n) for n in sorted(names)]


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


def _local_path(url: str) -> str | None:
    path = url[len("file:"):] if url.startswith("file:") else url
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", path):  # pipe:, http:, s3:, ...
        return None
    return path if os.path.isfile(path) else None


def _tar_members(url: str) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of the regular files of a shard, in order.

    Local files: headers via tarfile's random-access mode, each member ``readinto`` a fresh
    ``bytearray`` (one copy from the page cache, and the decoders can wrap it as a writable
    array without copying again); ~10x faster than stream mode, which reassembles members from
    10 KB records. Everything else (``pipe:``, remote URLs) goes through webdataset's ``gopen``
    and stream mode (members are ``bytes`` then).
    """
    path = _local_path(url)
    if path is not None:
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for info in tar:  # TarFile.next() seeks to its own offset, so reading below is safe
                if info.isreg() and not info.name.startswith("__"):
                    data = bytearray(info.size)
                    f.seek(info.offset_data)
                    if f.readinto(data) != info.size:
                        raise tarfile.ReadError(f"unexpected end of data in member {info.name}")
                    yield info.name, data
        return
    stream = wds.gopen(url)
    try:
        for f in wds.tariterators.tar_file_iterator(stream, handler=wds.reraise_exception):
            yield f["fname"], f["data"]
    finally:
        stream.close()


def _seed(*parts: int) -> int:
    return wds.utils.make_seed(*[int(p) for p in parts])


class ShardStream(wds.DataPipeline):
    """Decoded samples from shards (an ``IterableDataset``); see ``stream_samples``."""

    def __init__(self, urls: list[str], *, shuffle_buffer: int, resampled: bool, seed: int,
                 split_by_node: bool, split_by_worker: bool, stats: SkipStats, epoch: int):
        self.urls = list(urls)
        self.shuffle_buffer, self.resampled, self.seed = int(shuffle_buffer), bool(resampled), int(seed)
        self.stats = stats
        self._epoch = mp.RawValue("i", int(epoch))  # written by the main process, read by workers
        self._draws_since_good = 0
        stages: list[Any] = [self._resampled_urls if self.resampled else self._epoch_urls]
        if not self.resampled:  # resampled streams differ per rank/worker by seed instead
            if split_by_node:
                stages.append(wds.split_by_node)
            if split_by_worker:
                stages.append(wds.split_by_worker)
        stages.append(self._tar_samples)
        if self.shuffle_buffer > 0:
            stages.append(self._shuffle)
        stages.append(self._decode)
        super().__init__(*stages)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch: reshuffles shards/samples (and resamples) reproducibly."""
        self._epoch.value = int(epoch)

    def _epoch_urls(self) -> Iterator[dict]:
        """Every shard once. Order shuffled by (seed, epoch) when shuffling — the same order on
        every rank, so ``split_by_node`` hands out disjoint shards."""
        urls = list(self.urls)
        if self.shuffle_buffer > 0:
            random.Random(_seed(self.seed, self.epoch)).shuffle(urls)
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if len(urls) < world * workers:
            log.warning("%d shard(s) for %d rank(s) x %d worker(s): some get no data (use resampled=True "
                        "for training, or more shards)", len(urls), world, workers)
        for url in urls:
            yield {"url": url}

    def _resampled_urls(self) -> Iterator[dict]:
        """Endless shard draws with replacement, seeded by (seed, epoch, rank, worker): every rank
        and worker sees a different stream and none runs dry."""
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(_seed(self.seed, self.epoch, rank, worker))
        self._draws_since_good = 0
        while True:
            # all-bad data would otherwise spin forever: fail loudly instead
            if self._draws_since_good > 10 * len(self.urls) + 100:
                raise RuntimeError(f"resampled stream: {self._draws_since_good} shard draws in a row gave no "
                                   f"usable sample; see the skip log ({self.stats.n_skipped} skipped)")
            self._draws_since_good += 1
            yield {"url": self.urls[rng.randrange(len(self.urls))]}

    def _tar_samples(self, src: Iterator[dict]) -> Iterator[dict]:
        """Raw samples ``{"__key__", "__url__", ext: bytes}`` of each shard in turn.

        Like ``wds.tarfile_to_samples`` but strict about shard boundaries: an unreadable or
        truncated shard ends there (counted once), its last sample goes to the decoder, whose
        checksum check rejects it if it is incomplete, and nothing of it is carried into the
        next shard (webdataset's grouper merges it into the next shard's first sample when that
        has the same key, e.g. a resampled shard drawn twice).
        """
        for item in src:
            url = item["url"]
            current: dict | None = None
            try:
                for fname, data in _tar_members(url):
                    key, ext = wds.tariterators.base_plus_ext(fname)
                    if key is None:
                        continue
                    if current is None or key != current["__key__"]:
                        if current is not None and not current.get("__bad__"):
                            yield current
                        current = {"__key__": key, "__url__": url}
                    if ext in current and not current.get("__bad__"):
                        current["__bad__"] = True
                        self.stats.skip(key, url, f"member {ext} appears twice")
                    current[ext] = data
                if current is not None and not current.get("__bad__"):
                    yield current
            except Exception as e:  # unreadable/truncated shard: count it once, go on with the next
                self.stats.skip("<shard>", url, f"shard unreadable from here on ({type(e).__name__}: {e})")
                if current is not None and not current.get("__bad__"):
                    yield current

    def _shuffle(self, src: Iterator[dict]) -> Iterator[dict]:
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        seed = _seed(self.seed, self.epoch, rank, worker, 1)
        return wds.filters._shuffle(src, self.shuffle_buffer, min(self.shuffle_buffer, 16), seed=seed)

    def _decode(self, src: Iterator[dict]) -> Iterator[dict]:
        for raw in src:
            try:
                sample = decode_sample(raw)
            except SampleError as e:
                self.stats.skip(e.key, e.url, e.reason)
                continue
            self._draws_since_good = 0
            yield sample


def stream_samples(urls, *, shuffle_buffer: int = 0, resampled: bool = False, seed: int = 0,
                   split_by_node: bool = True, split_by_worker: bool = True,
                   stats: SkipStats | None = None, epoch: int = 0) -> ShardStream:
    """An ``IterableDataset`` of decoded samples from ``urls`` (a list or a webdataset URL spec).

    * ``resampled=False``: each shard once per epoch, split across ranks (``RANK``/``WORLD_SIZE``
      or torch.distributed) and DataLoader workers; shard order shuffled by ``(seed, epoch)``
      when ``shuffle_buffer > 0``. Ranks may get different sample counts: for DDP training use
      ``resampled=True`` and a fixed number of steps.
    * ``resampled=True``: an endless stream per rank and worker (different seeds).
    * ``shuffle_buffer``: sample shuffle buffer per worker (0 = in order).
    Bad samples and unreadable shards are skipped, counted in ``stats`` and logged.
    """
    url_list = wds.shardlists.expand_urls(urls) if isinstance(urls, str) else list(urls)
    if not url_list:
        raise ValueError("no shard URLs given (empty split? check the manifest with `emodifftalk inspect`)")
    return ShardStream(url_list, shuffle_buffer=shuffle_buffer, resampled=resampled, seed=seed,
                       split_by_node=split_by_node, split_by_worker=split_by_worker,
                       stats=stats if stats is not None else SkipStats(), epoch=epoch)


def iter_dataset(root: str | Path, kind: str, split: str | None = None,
                 stats: SkipStats | None = None) -> Iterator[dict]:
    """Every sample of ``kind``/``split`` in manifest order, in this process (eval and tools)."""
    urls = shard_urls(root, kind, split)
    if not urls:
        return iter(())
    return iter(stream_samples(urls, split_by_node=False, split_by_worker=False, stats=stats))


def load_templates(root: str | Path, stats: SkipStats | None = None) -> dict[str, dict]:
    """``{identity: decoded template sample}`` of a packed folder."""
    return {s["meta"]["identity"]: s for s in iter_dataset(root, "template", stats=stats)}
