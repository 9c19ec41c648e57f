"""Precompute audio features into shards: ``emodifftalk featurize SHARDS --out SHARDS_WITH_FEATS``.

Every ``seq`` sample gets ``feats.npy`` ((Ta, D) float16, the front end of ``cfg.audio`` run on the
whole clip exactly as inference runs it) and ``feats.json`` ``{"encoder_id", "rate", "dim",
"n_frames", "dtype"}``. ``seq`` shards are rewritten one-to-one under the same names (member
checksums recomputed); ``frames`` and ``template`` shards are linked or copied unchanged; the
manifest gets the new shard sizes/digests and a ``"features"`` entry. The output folder is written
atomically; the input is never modified. A sample that fails to decode is skipped, logged and
listed under ``"featurize_skipped"``.

Readers check ``feats.json["encoder_id"]`` against ``encoder_id(cfg.audio)``
(:func:`check_cached_features`): features made by another encoder are a clear error, never used.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from emodifftalk.config import Config
from emodifftalk.data.shard_reader import SampleError
from emodifftalk.data.shard_writer import encode_json, encode_npy
from emodifftalk.data.shards import MANIFEST, ShardSetWriter, decode_sample, load_manifest
from emodifftalk.models.audio_frontend import build_frontend, encoder_id
from emodifftalk.s2au.inference import extract_features
from emodifftalk.utils import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)

FEATS_DTYPE = np.float16


class FeatureCacheMismatch(ValueError):
    """Cached features were made by a different audio encoder than the configured one."""


def check_cached_features(feats_meta: dict | None, expected_id: str, key: str = "?") -> None:
    """Raise :class:`FeatureCacheMismatch` unless ``feats_meta`` was made by ``expected_id``."""
    got = (feats_meta or {}).get("encoder_id")
    if got != expected_id:
        raise FeatureCacheMismatch(
            f"sample {key}: cached audio features were made by {got!r} but the configured encoder is "
            f"{expected_id!r}; re-run `emodifftalk featurize` with this config, use the shards without "
            f"features, or set audio.* to match the cache")


class FeatureSource:
    """Audio features of a decoded seq sample: the checked cache or the front end on the whole clip."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.encoder_id = encoder_id(cfg.audio)
        self._frontend = None

    def __call__(self, sample: dict) -> np.ndarray:
        if sample.get("feats") is not None:
            check_cached_features(sample.get("feats_meta"), self.encoder_id, sample.get("key", "?"))
            return np.asarray(sample["feats"], dtype=np.float32)
        if self._frontend is None:
            self._frontend = build_frontend(self.cfg.audio).eval()
            if self.cfg.audio.frontend == "hubert":
                log.info("computing HuBERT features on the fly; `emodifftalk featurize` caches them")
        return extract_features(self._frontend, sample["audio"], self.cfg.s2au.window_seconds,
                                self.cfg.s2au.overlap_seconds).numpy()


def features_json(enc_id: str, rate: float, feats: np.ndarray) -> dict:
    return {"encoder_id": enc_id, "rate": float(rate), "dim": int(feats.shape[1]),
            "n_frames": int(feats.shape[0]), "dtype": np.dtype(FEATS_DTYPE).name}


def _tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {member ext: bytes})`` of consecutive members sharing a key, in file order."""
    key, members = None, {}
    with tarfile.open(path, mode="r|*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = info.name.rsplit("/", 1)[-1]
            k, _, ext = name.partition(".")
            if k != key and key is not None:
                yield key, members
                members = {}
            key = k
            members[ext] = tar.extractfile(info).read()
    if key is not None:
        yield key, members


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # shards are never modified in place, so sharing the inode is safe
    except OSError:
        shutil.copy2(src, dst)


def featurize_shards(src: str | Path, out: str | Path, cfg: Config, overwrite: bool = False,
                     device: str = "cpu") -> Path:
    """Write a copy of the packed folder ``src`` with audio features added to every seq sample."""
    import torch
    from tqdm.auto import tqdm

    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the input folder; featurize writes a new folder")
    manifest = load_manifest(src)
    frontend = build_frontend(cfg.audio).to(device).eval()
    enc_id = encoder_id(cfg.audio)
    new_manifest = copy.deepcopy(manifest)
    skipped: list[dict] = []
    n_done = 0
    seq_shards = [s for s in new_manifest["shards"] if s["kind"] == "seq"]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        bar = tqdm(total=sum(int(s.get("n_samples", 0)) for s in seq_shards), desc="featurize", unit="clip")
        for entry in new_manifest["shards"]:
            src_path = src / entry["name"]
            if not src_path.is_file():
                raise FileNotFoundError(f"shard {src_path} listed in {src / MANIFEST} is missing")
            if entry["kind"] != "seq":
                _link_or_copy(src_path, tmp / entry["name"])
                continue
            scratch = tmp / f".work-{entry['name']}"
            scratch.mkdir()
            writer = ShardSetWriter(scratch, "seq", entry["split"], max_bytes=1 << 62, max_samples=1 << 62)
            for key, members in _tar_samples(src_path):
                bar.update(1)
                try:
                    sample = decode_sample({"__key__": key, "__url__": str(src_path), **members})
                except SampleError as e:
                    log.warning("featurize: skipping sample %s (%s): %s", key, src_path.name, e.reason)
                    skipped.append({"key": key, "shard": entry["name"], "reason": e.reason})
                    continue
                with torch.no_grad():
                    feats = extract_features(frontend, sample["audio"], cfg.s2au.window_seconds,
                                             cfg.s2au.overlap_seconds, device).numpy()
                keep = {ext: data for ext, data in members.items()
                        if ext not in ("meta.json", "feats.npy", "feats.json")}
                keep["feats.npy"] = encode_npy(feats.astype(FEATS_DTYPE))
                keep["feats.json"] = encode_json(features_json(enc_id, frontend.rate, feats))
                meta = {k: v for k, v in sample["meta"].items() if k != "checksums"}
                writer.write(key, keep, meta)
                n_done += 1
            written = writer.close()
            if written:
                assert len(written) == 1, written
                os.replace(scratch / written[0]["name"], tmp / entry["name"])
                entry.update(n_samples=written[0]["n_samples"], bytes=written[0]["bytes"],
                             sha256=written[0]["sha256"])
            else:  # every sample of this shard was bad: an empty but valid tar keeps the listing true
                with tarfile.open(tmp / entry["name"], "w", format=tarfile.PAX_FORMAT):
                    pass
                data = (tmp / entry["name"]).read_bytes()
                entry.update(n_samples=0, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            shutil.rmtree(scratch)
        bar.close()
        counts: dict[str, dict[str, int]] = {}
        for s in new_manifest["shards"]:
            per = counts.setdefault(s["kind"], {})
            split = s["split"] or "all"
            per[split] = per.get(split, 0) + int(s["n_samples"])
        new_manifest["counts"] = counts
        new_manifest["totals"]["bytes"] = sum(int(s["bytes"]) for s in new_manifest["shards"])
        new_manifest["features"] = {"encoder_id": enc_id, "rate": frontend.rate, "dim": frontend.dim,
                                    "dtype": np.dtype(FEATS_DTYPE).name, "source": str(src)}
        new_manifest["featurize_skipped"] = skipped
        atomic_write_text(tmp / MANIFEST, json.dumps(new_manifest, indent=1, sort_keys=True))
    log.info("featurized %d seq sample(s) with %s into %s (%d skipped)", n_done, enc_id, out, len(skipped))
    return out
