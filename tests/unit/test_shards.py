"""Shards: pack -> read round trip, determinism, limits, corrupt data, validation, streams, collation."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emodifftalk.config import build_config
from emodifftalk.data.audio import read_audio, write_wav
from emodifftalk.data.openface import read_openface_csv, write_openface_csv
from emodifftalk.data.shard_writer import encode_npy
from emodifftalk.data.shards import (
    ShardSetWriter,
    SkipStats,
    collate_sequences,
    crop_sequence,
    decode_sample,
    iter_dataset,
    load_manifest,
    load_templates,
    pack_dataset,
    shard_urls,
    stream_samples,
    validate_shards,
)

FPS = 25.0
N_FRAMES = 12
N_VERTS = 30
CAMERAS = ("cam0", "cam1")
IMAGE_FRAMES = (0, 5, 10)
W, H = 8, 6


# --------------------------------------------------------------------------------------------
# A hand-written raw-layout fixture (independent of emodifftalk.data.synthetic)
# --------------------------------------------------------------------------------------------


def _camera(i: int) -> dict:
    k = [[10.0 + i, 0.0, W / 2], [0.0, 10.0 + i, H / 2], [0.0, 0.0, 1.0]]
    view = np.eye(4)
    view[2, 3] = 0.5 + 0.1 * i
    return {"name": CAMERAS[i], "K": k, "viewmat": view.tolist(), "width": W, "height": H}


def make_raw(root: Path, n_identities: int = 4, n_clips: int = 2, sample_rate: int = 16000,
             seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ids = [f"id{i}" for i in range(n_identities)]
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(
        {"name": "fixture", "fps": FPS, "sample_rate": 16000, "schema_version": 1, "identities": ids}))
    for ident in ids:
        t = root / ident / "template"
        t.mkdir(parents=True)
        np.save(t / "verts.npy", rng.normal(size=(N_VERTS, 3)).astype(np.float32))
        np.save(t / "faces.npy", rng.integers(0, N_VERTS, size=(20, 3)).astype(np.int32))
        (t / "vertex_sets.json").write_text(json.dumps(
            {"lips": [0, 1, 2], "upper_face": [3, 4], "eyes": [5], "jaw": [6, 7], "face": list(range(N_VERTS))}))
        (root / ident / "cameras.json").write_text(json.dumps({"cameras": [_camera(i) for i in range(len(CAMERAS))]}))
        for c in range(n_clips):
            d = root / ident / f"clip{c}"
            d.mkdir()
            (d / "meta.json").write_text(json.dumps(
                {"identity": ident, "clip": f"clip{c}", "fps": FPS, "n_frames": N_FRAMES,
                 "sample_rate": sample_rate, "emotion": "happy" if c % 2 else "neutral",
                 "modalities": ["audio", "aus", "verts", "frames"]}))
            n_audio = int(round(N_FRAMES / FPS * sample_rate))
            write_wav(d / "audio.wav", 0.3 * rng.uniform(-1, 1, n_audio).astype(np.float32), sample_rate)
            success = np.ones(N_FRAMES, bool)
            success[3] = False  # a tracking failure: masked out
            write_openface_csv(d / "openface.csv", rng.uniform(0, 1, (N_FRAMES, 17)), FPS, success=success)
            np.save(d / "verts.npy", rng.normal(size=(N_FRAMES, N_VERTS, 3)).astype(np.float32))
            for cam in CAMERAS:
                (d / "images" / cam).mkdir(parents=True)
                for f in IMAGE_FRAMES:
                    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                    Image.fromarray(img).save(d / "images" / cam / f"{f:05d}.png")
    return root


# Pinned here so the tests do not depend on what the tiny preset chooses; later items win.
_BASE = ["data.frames_stride=0", "data.shard_max_bytes=67108864", "data.shard_max_samples=256",
         "data.val_identity_fraction=0.17", "data.test_identity_fraction=0.17", "data.val_clip_fraction=0",
         "data.split_seed=1234"]


def _cfg(*overrides: str):
    return build_config("tiny", _BASE + list(overrides))


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_raw(tmp_path_factory.mktemp("raw") / "raw")


@pytest.fixture(scope="module")
def packed(raw, tmp_path_factory) -> Path:
    return pack_dataset(raw, tmp_path_factory.mktemp("packed") / "shards",
                        _cfg("data.shard_max_samples=3", "data.frames_stride=0"))


def _all_seq(root: Path, stats=None) -> dict[str, dict]:
    out = {}
    for split in ("train", "val", "test"):
        for s in iter_dataset(root, "seq", split, stats=stats):
            out[s["key"]] = s
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.iterdir():  # copytree keeps the read-only bits of nothing here, but be explicit
        p.chmod(0o644)
    return dst


# --------------------------------------------------------------------------------------------
# Pack -> read
# --------------------------------------------------------------------------------------------


def test_round_trip_values_equal_raw_inputs(raw, packed):
    manifest = load_manifest(packed)
    seqs = _all_seq(packed)
    assert len(seqs) == 8
    for key, s in seqs.items():
        ident, clip = key.split("__")
        d = raw / ident / clip
        audio, sr = read_audio(d / "audio.wav")
        np.testing.assert_array_equal(s["audio"], audio)
        assert s["audio"].dtype == np.float32 and s["sample_rate"] == 16000 == sr
        ref = read_openface_csv(d / "openface.csv", fps=FPS, n_frames=N_FRAMES)
        np.testing.assert_array_equal(s["aus"], ref.aus)
        np.testing.assert_array_equal(s["au_mask"], ref.mask)
        assert s["au_mask"].dtype == bool and not s["au_mask"][3].any()
        np.testing.assert_array_equal(s["verts"], np.load(d / "verts.npy"))
        assert s["feats"] is None and s["feats_meta"] is None
        meta = s["meta"]
        assert meta["split"] == manifest["clips"][key]["split"]
        assert meta["template"] == ident and meta["n_frames"] == N_FRAMES
        assert meta["modalities"] == ["audio", "aus", "verts", "frames"]
        assert meta["emotion"] == json.loads((d / "meta.json").read_text())["emotion"]

    frames = [s for split in ("train", "val", "test") for s in iter_dataset(packed, "frames", split)]
    assert sorted(s["key"] for s in frames) == sorted(f"{k}__f00000" for k in seqs)  # stride 0: neutral only
    for s in frames:
        ident, clip, _ = s["key"].split("__")
        d = raw / ident / clip
        assert [c["name"] for c in s["cameras"]] == list(CAMERAS)
        for i, cam in enumerate(s["cameras"]):
            ref = _camera(i)
            np.testing.assert_array_equal(cam["K"], np.asarray(ref["K"], np.float32))
            np.testing.assert_array_equal(cam["viewmat"], np.asarray(ref["viewmat"], np.float32))
            img = s["images"][cam["name"]]
            assert img.dtype == np.uint8 and img.shape == (H, W, 3)
            np.testing.assert_array_equal(img, np.asarray(Image.open(d / "images" / cam["name"] / "00000.png")))
        np.testing.assert_array_equal(s["verts"], np.load(d / "verts.npy")[0])

    templates = load_templates(packed)
    assert sorted(templates) == [f"id{i}" for i in range(4)]
    for ident, t in templates.items():
        np.testing.assert_array_equal(t["verts"], np.load(raw / ident / "template" / "verts.npy"))
        np.testing.assert_array_equal(t["faces"], np.load(raw / ident / "template" / "faces.npy"))
        assert t["faces"].dtype == np.int32 and list(t["vertex_sets"]["lips"]) == [0, 1, 2]


def test_png_bytes_are_copied_as_is(raw, packed):
    url = shard_urls(packed, "frames", load_manifest(packed)["clips"]["id0__clip0"]["split"])[0]
    with tarfile.open(url) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith("id0__clip0__f00000.cam1"))
        assert tar.extractfile(member).read() == (raw / "id0/clip0/images/cam1/00000.png").read_bytes()
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar.getmembers())


def test_manifest_counts_splits_and_modalities(packed):
    m = load_manifest(packed)
    assert m["schema_version"] == 1
    assert m["counts"]["template"] == {"all": 4}
    assert sum(m["counts"]["seq"].values()) == 8 and sum(m["counts"]["frames"].values()) == 8
    ids = m["identities"]
    assert all(len(ids[s]) >= 1 for s in ("train", "val", "test"))  # 4 identities: one each held out
    assert set(ids["train"]) | set(ids["val"]) | set(ids["test"]) == {f"id{i}" for i in range(4)}
    for split in ("train", "val", "test"):
        assert m["counts"]["seq"].get(split, 0) == 2 * len([i for i, s in m["identity_splits"].items() if s == split])
    for shard in m["shards"]:
        data = (packed / shard["name"]).read_bytes()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert shard["n_samples"] <= 3
    assert m["clips"]["id1__clip1"]["modalities"] == ["audio", "aus", "verts", "frames"]
    assert m["totals"]["audio_hours"] == pytest.approx(8 * N_FRAMES / FPS / 3600)


def test_identity_shard_index_points_at_exactly_the_identitys_shards(packed, tmp_path):
    from emodifftalk.data.shards import identity_shard_urls, shard_urls
    from emodifftalk.distributed.ray_jobs import load_identity

    m = load_manifest(packed)
    for identity, split in m["identity_splits"].items():
        for kind in ("seq", "frames"):
            urls = identity_shard_urls(packed, identity, kind)
            holding = set()
            for url in shard_urls(packed, kind, split):
                keys = {s["key"] for s in iter_dataset(url, kind)}
                if any(k.startswith(f"{identity}__") for k in keys):
                    holding.add(url)
            assert set(urls) == holding and urls, (identity, kind)
        frames, _ = load_identity(packed, identity)
        assert len(frames) == 2 and {f["meta"]["identity"] for f in frames} == {identity}
    # a manifest packed before the index: None, and rig tasks fall back to scanning the splits
    old = _copy(packed, tmp_path / "old")
    m_old = json.loads((old / "manifest.json").read_text())
    for clip in m_old["clips"].values():
        clip.pop("frames_shards", None)
    (old / "manifest.json").write_text(json.dumps(m_old))
    assert identity_shard_urls(old, "id0", "frames") is None
    assert len(load_identity(old, "id0")[0]) == 2


def test_frames_stride_selects_rendered_frames(raw, tmp_path):
    out = pack_dataset(raw, tmp_path / "s2", _cfg("data.frames_stride=2"))
    frames = sorted(int(s["meta"]["frame"]) for split in ("train", "val", "test")
                    for s in iter_dataset(out, "frames", split) if s["key"].startswith("id2__clip0"))
    assert frames == [0, 10]  # rendered frames 0, 5, 10 -> every 2nd
    out = pack_dataset(raw, tmp_path / "s1", _cfg("data.frames_stride=1"))
    assert load_manifest(out)["clips"]["id2__clip0"]["frames"] == [0, 5, 10]


def test_same_input_gives_byte_identical_shards(raw, packed, tmp_path):
    again = pack_dataset(raw, tmp_path / "again", _cfg("data.shard_max_samples=3", "data.frames_stride=0"))
    names = sorted(p.name for p in packed.iterdir())
    assert names == sorted(p.name for p in again.iterdir()) and len(names) > 4
    for n in names:
        assert (packed / n).read_bytes() == (again / n).read_bytes(), n


def test_shard_size_limits_are_respected(raw, tmp_path):
    max_bytes = 40 * 1024
    out = pack_dataset(raw, tmp_path / "small", _cfg(f"data.shard_max_bytes={max_bytes}", "data.shard_max_samples=2"))
    m = load_manifest(out)
    n_samples = 0
    for s in m["shards"]:
        size = (out / s["name"]).stat().st_size
        assert size == s["bytes"]
        assert s["n_samples"] <= 2
        assert size <= max_bytes or s["n_samples"] == 1, (s, size)
        with tarfile.open(out / s["name"]) as tar:
            assert len({n.name.split(".")[0] for n in tar.getmembers()}) == s["n_samples"]
        n_samples += s["n_samples"]
    assert n_samples == 8 + 8 + 4
    assert any(s["n_samples"] == 1 for s in m["shards"] if s["kind"] == "seq")  # bytes limit bit


def test_refuses_to_overwrite_unless_asked(raw, packed, tmp_path):
    out = _copy(packed, tmp_path / "copy")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError):
        pack_dataset(raw, out, _cfg())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # no leftovers
    pack_dataset(raw, out, _cfg("data.shard_max_samples=100"), overwrite=True)
    assert len(load_manifest(out)["shards"]) < len(before) - 1


def test_bad_raw_data_is_skipped_whole_and_listed(raw, tmp_path):
    bad = tmp_path / "raw"
    shutil.copytree(raw, bad)
    np.save(bad / "id1/clip0/verts.npy", np.zeros((N_FRAMES + 2, N_VERTS, 3), np.float32))  # wrong T
    (bad / "id2/clip1/images/cam1/00000.png").write_bytes(b"not a png")  # found before writing
    (bad / "id3/template/faces.npy").write_bytes(b"garbage")  # the whole identity goes
    out = pack_dataset(bad, tmp_path / "out", _cfg())
    m = load_manifest(out)
    assert sorted((s["identity"], s["clip"]) for s in m["skipped"]) == [
        ("id1", "clip0"), ("id2", "clip1"), ("id3", None)]
    reasons = {s["clip"]: s["reason"] for s in m["skipped"]}
    assert "verts.npy" in reasons["clip0"] and "not a PNG" in reasons["clip1"] and "faces.npy" in reasons[None]
    seqs = _all_seq(out)
    assert sorted(seqs) == ["id0__clip0", "id0__clip1", "id1__clip1", "id2__clip0"]
    frames = {s["key"] for sp in ("train", "val", "test") for s in iter_dataset(out, "frames", sp)}
    assert not any(k.startswith(("id2__clip1", "id1__clip0", "id3")) for k in frames)  # all or nothing
    assert "id3" not in load_templates(out) and "id3" not in m["identity_splits"]
    assert validate_shards(out) == []


def test_non_16k_raw_audio_is_resampled(tmp_path):
    raw = make_raw(tmp_path / "raw", n_identities=3, n_clips=1, sample_rate=22050)
    out = pack_dataset(raw, tmp_path / "out", _cfg())
    s = _all_seq(out)["id0__clip0"]
    assert s["sample_rate"] == 16000
    assert s["audio"].shape == (int(round(N_FRAMES / FPS * 16000)),)


# --------------------------------------------------------------------------------------------
# Corrupt data: skipped, counted, never unpickled
# --------------------------------------------------------------------------------------------


def test_decode_wav_matches_libsndfile():
    import soundfile as sf

    from emodifftalk.data.shard_reader import decode_wav

    pcm = np.array([-32768, -32767, -1, 0, 1, 12345, 32767] * 50, np.int16)
    for subtype, data in (("PCM_16", pcm), ("FLOAT", pcm / 40000.0), ("PCM_24", pcm)):
        buf = io.BytesIO()
        sf.write(buf, data, 16000, format="WAV", subtype=subtype)
        ref, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")
        out = decode_wav(bytearray(buf.getvalue()))
        assert out.dtype == np.float32 and out.flags.writeable
        np.testing.assert_array_equal(out, ref)
    for sr, channels in ((22050, 1), (16000, 2)):
        buf = io.BytesIO()
        sf.write(buf, np.zeros((10, channels), np.int16), sr, format="WAV", subtype="PCM_16")
        with pytest.raises(ValueError, match="Hz|channels"):
            decode_wav(buf.getvalue())


def test_decode_npy_matches_np_load_and_refuses_objects():
    from emodifftalk.data.shard_reader import decode_npy

    for a in (np.arange(12.0).reshape(3, 4), np.asfortranarray(np.arange(12.0).reshape(3, 4)),
              np.zeros((0, 3), np.int32), np.ones((2, 2), bool), np.float16(2.5) * np.ones(3, np.float16)):
        for data in (encode_npy(a), bytearray(encode_npy(a))):
            b = decode_npy(data)
            assert b.dtype == a.dtype and b.shape == a.shape and b.flags.writeable
            np.testing.assert_array_equal(b, np.load(io.BytesIO(bytes(data))))
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        decode_npy(buf.getvalue())
    with pytest.raises(ValueError):
        decode_npy(encode_npy(np.ones(100))[:-10])


class _WritesMarker:
    """Unpickling this calls open(marker, "w"), i.e. creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _seq_members(n_frames: int = 5, sr: int = 16000) -> tuple[dict, dict]:
    buf = io.BytesIO()
    import soundfile as sf

    sf.write(buf, np.zeros(n_frames * 640, np.int16), sr, format="WAV", subtype="PCM_16")
    members = {"audio.wav": buf.getvalue(), "aus.npy": encode_npy(np.zeros((n_frames, 17), np.float32)),
               "au_mask.npy": encode_npy(np.ones((n_frames, 17), np.uint8))}
    meta = {"identity": "x", "clip": "y", "fps": FPS, "n_frames": n_frames, "sample_rate": 16000, "split": "train"}
    return members, meta


def test_pickle_member_is_never_unpickled(tmp_path):
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(_WritesMarker(marker))
    probe = tmp_path / "probe"  # the payload really does write a file when unpickled
    pickle.loads(pickle.dumps(_WritesMarker(probe))).close()
    assert probe.exists()

    w = ShardSetWriter(tmp_path, "seq", "train", 1 << 20, 100)
    members, meta = _seq_members()
    w.write("a__good", members, meta)
    w.write("a__evil", dict(members, **{"payload.pyd": payload}), meta)
    w.write("a__evil2", dict(members, **{"x.pickle": payload, "y.pth": payload}), meta)
    w.write("a__after", members, meta)
    w.close()
    stats = SkipStats()
    keys = [s["key"] for s in stream_samples([str(tmp_path / "seq-train-000000.tar")], stats=stats)]
    assert keys == ["a__good", "a__after"]
    assert stats.n_skipped == 2 and not marker.exists()
    assert any("payload.pyd" in r for r in stats.reasons.values())
    with pytest.raises(ValueError, match="no safe decoder"):
        decode_sample({"__key__": "a__b", "payload.pyd": payload, "meta.json": b"{}"})
    assert not marker.exists()


def test_wrong_sample_rate_wav_is_rejected(tmp_path):
    members, meta = _seq_members(sr=8000)
    w = ShardSetWriter(tmp_path, "seq", "train", 1 << 20, 100)
    w.write("a__8k", members, meta)
    w.write("a__16k", *_seq_members())
    w.close()
    stats = SkipStats()
    keys = [s["key"] for s in stream_samples(str(tmp_path / "seq-train-000000.tar"), stats=stats)]
    assert keys == ["a__16k"] and stats.n_skipped == 1
    assert "8000 Hz" in next(iter(stats.reasons.values()))


def test_unknown_safe_members_are_decoded_into_extras(tmp_path):
    from safetensors.numpy import save

    members, meta = _seq_members()
    members["landmarks.safetensors"] = save({"lmk": np.ones((5, 68, 2), np.float32)})
    w = ShardSetWriter(tmp_path, "seq", "train", 1 << 20, 100)
    w.write("a__x", members, meta)
    w.close()
    (s,) = list(stream_samples(str(tmp_path / "seq-train-000000.tar")))
    np.testing.assert_array_equal(s["extras"]["landmarks.safetensors"]["lmk"], np.ones((5, 68, 2), np.float32))
    assert s["feats"] is None and s["verts"] is None


def test_shape_mismatch_is_rejected(tmp_path):
    members, meta = _seq_members(n_frames=5)
    members["verts.npy"] = encode_npy(np.zeros((6, 4, 3), np.float32))  # T=6 vs n_frames=5
    w = ShardSetWriter(tmp_path, "seq", "train", 1 << 20, 100)
    w.write("a__bad", members, meta)
    w.write("a__badmeta", *_seq_members(n_frames=5)[:1], dict(meta, n_frames=7))
    w.close()
    stats = SkipStats()
    assert list(stream_samples(str(tmp_path / "seq-train-000000.tar"), stats=stats)) == []
    assert stats.n_skipped == 2


def _seq_shard_with_most_samples(root: Path) -> tuple[Path, dict]:
    m = load_manifest(root)
    s = max((s for s in m["shards"] if s["kind"] == "seq"), key=lambda s: (s["n_samples"], s["name"]))
    return root / s["name"], s


def test_flipped_bytes_in_a_member_skip_only_that_sample(packed, tmp_path):
    root = _copy(packed, tmp_path / "flip")
    path, entry = _seq_shard_with_most_samples(root)
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        m = next(m for m in tar.getmembers() if m.name.endswith(".aus.npy"))
    victim = m.name.split(".")[0]
    data[m.offset_data + 200] ^= 0xFF  # inside the float payload, past the npy header
    path.write_bytes(bytes(data))
    stats = SkipStats()
    keys = [s["key"] for s in stream_samples([str(path)], stats=stats)]
    assert victim not in keys and len(keys) == entry["n_samples"] - 1
    assert stats.n_skipped == 1 and "corrupt" in stats.records[0][2] and stats.records[0][0] == victim


def test_truncated_shard_yields_the_samples_before_the_cut(packed, tmp_path):
    root = _copy(packed, tmp_path / "trunc")
    path, entry = _seq_shard_with_most_samples(root)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    first_key = members[0].name.split(".")[0]
    second = next(m for m in members if not m.name.startswith(first_key))
    cut = second.offset_data + 100  # in the middle of the second sample's first member
    path.write_bytes(path.read_bytes()[:cut])
    stats = SkipStats()
    # listed twice in a row (as a resampled stream may draw it): nothing leaks across the boundary
    keys = [s["key"] for s in stream_samples([str(path), str(path)], stats=stats)]
    assert keys == [first_key, first_key]
    assert stats.n_skipped == 2 and all("unreadable" in r for _, _, r in stats.records)

    # the same through webdataset's stream reader (pipe: URLs are not seekable)
    stats = SkipStats()
    assert [s["key"] for s in stream_samples(f"pipe:cat {path}", stats=stats)] == [first_key]
    assert stats.n_skipped == 1

    # cut inside the first sample's last member (meta.json): that sample is incomplete -> rejected
    meta = next(m for m in members if m.name == f"{first_key}.meta.json")
    path.write_bytes(path.read_bytes()[:meta.offset_data + 10])
    stats = SkipStats()
    assert [s["key"] for s in stream_samples([str(path)], stats=stats)] == []
    assert stats.n_skipped == 2 and any(k == first_key and "missing meta.json" in r for k, _, r in stats.records)


def test_inspect_validate_exit_codes(packed, tmp_path, capsys):
    from emodifftalk.cli import main

    assert validate_shards(packed) == []
    assert main(["inspect", str(packed), "--validate"]) == 0
    out = capsys.readouterr().out
    assert "all shards OK" in out and "seq" in out and "audio" in out

    root = _copy(packed, tmp_path / "bad")
    path, _ = _seq_shard_with_most_samples(root)
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        m = next(m for m in tar.getmembers() if m.name.endswith(".verts.npy"))
    data[m.offset_data + 300] ^= 0x55
    path.write_bytes(bytes(data))
    (root / "stray.tar").write_bytes(b"")
    problems = validate_shards(root)
    victim = m.name.split(".")[0]
    reasons = [str(p) for p in problems]
    assert any(p.key == victim and "verts.npy is corrupt" in p.reason for p in problems), reasons
    assert any(p.shard == path.name and "sha256" in p.reason for p in problems), reasons
    assert any(p.shard == "stray.tar" for p in problems), reasons
    assert main(["inspect", str(root), "--validate"]) == 1
    out = capsys.readouterr().out
    assert victim in out and "sha256" in out
    assert main(["inspect", str(root), "--validate", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert len(report["problems"]) == len(problems) and report["counts"]["template"] == {"all": 4}


def test_pack_cli_and_script_wrappers(raw, tmp_path, capsys):
    import subprocess
    import sys

    from emodifftalk.cli import main

    out = tmp_path / "cli"
    assert main(["pack", str(raw), str(out), "data.shard_max_samples=2"]) == 0
    assert "template  all=4" in capsys.readouterr().out
    assert load_manifest(out)["pack_config"]["shard_max_samples"] == 2
    assert main(["pack", str(raw), str(out)]) == 1  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["pack", str(raw), str(out), "--overwrite"]) == 0
    repo = Path(__file__).resolve().parents[2]
    # shards/inspect.py shares its name with the stdlib module `inspect`: it must still run
    r = subprocess.run([sys.executable, str(repo / "shards" / "inspect.py"), str(out), "--validate"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "all shards OK" in r.stdout


# --------------------------------------------------------------------------------------------
# Streams: workers, ranks, resampling, epochs, URL specs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_shards(raw, tmp_path_factory) -> Path:
    """Every seq sample in its own shard, all identities in train (4 train shards x 2 clips)."""
    return pack_dataset(raw, tmp_path_factory.mktemp("many") / "shards",
                        _cfg("data.shard_max_samples=1", "data.val_identity_fraction=0",
                             "data.test_identity_fraction=0"))


def test_two_worker_dataloader_sees_disjoint_shards(many_shards):
    urls = shard_urls(many_shards, "seq", "train")
    assert len(urls) == 8
    ds = stream_samples(urls, split_by_node=False)
    loader = torch.utils.data.DataLoader(ds, num_workers=2, batch_size=None, collate_fn=lambda s: s)
    keys = [s["key"] for s in loader]
    assert len(keys) == 8 and len(set(keys)) == 8  # without the worker split, each key would come twice


def test_skips_in_dataloader_workers_reach_the_main_process(many_shards, tmp_path):
    root = _copy(many_shards, tmp_path / "w")
    urls = shard_urls(root, "seq", "train")
    Path(urls[3]).write_bytes(Path(urls[3]).read_bytes()[:700])  # cut inside the first member
    stats = SkipStats()
    ds = stream_samples(urls, split_by_node=False, stats=stats)
    keys = [s["key"] for s in torch.utils.data.DataLoader(ds, num_workers=2, batch_size=None)]
    assert len(keys) == 7 and stats.n_skipped == 1


def test_two_ranks_see_disjoint_shards(many_shards, monkeypatch):
    urls = shard_urls(many_shards, "seq", "train")
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append([s["key"] for s in stream_samples(urls, shuffle_buffer=4, seed=3, epoch=1)])
    assert len(seen[0]) == len(seen[1]) == 4
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 8


def test_resampled_stream_never_runs_dry_and_differs_per_rank(many_shards, monkeypatch):
    urls = shard_urls(many_shards, "seq", "train")
    runs = {}
    for rank in (0, 1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = stream_samples(urls, resampled=True, seed=7)
        runs.setdefault(rank, []).append([s["key"] for s in itertools.islice(ds, 40)])
    assert all(len(r) == 40 for rs in runs.values() for r in rs)  # 5x the data set, still going
    assert runs[0][0] == runs[0][1]  # reproducible per (seed, epoch, rank)
    assert runs[0][0] != runs[1][0]  # ranks draw different streams
    assert len(set(runs[0][0])) > 4


def test_resampled_stream_over_only_bad_shards_fails_loudly(tmp_path):
    (tmp_path / "bad.tar").write_bytes(b"x" * 100)
    stats = SkipStats(max_logged=0)
    with pytest.raises(RuntimeError, match="no usable sample"):
        next(iter(stream_samples(str(tmp_path / "bad.tar"), resampled=True, stats=stats)))
    assert stats.n_skipped > 100


def test_epoch_changes_the_order_reproducibly(many_shards):
    urls = shard_urls(many_shards, "seq", "train")
    ds = stream_samples(urls, shuffle_buffer=8, seed=1)
    orders = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        orders.append([s["key"] for s in ds])
    assert orders[0] == orders[2] and orders[0] != orders[1]
    assert sorted(orders[0]) == sorted(orders[1])


def test_url_specs_brace_and_pipe(many_shards):
    urls = shard_urls(many_shards, "seq", "train")
    pattern = str(many_shards / "seq-train-{000000..000002}.tar")
    assert shard_urls(pattern, "seq", "train") == urls[:3]
    keys = [s["key"] for s in stream_samples(f"pipe:cat {urls[0]}", split_by_node=False)]
    assert keys == [s["key"] for s in stream_samples(urls[:1])]
    assert len(keys) == 1
    assert shard_urls(many_shards / "manifest.json", "template") == shard_urls(many_shards, "template")
    with pytest.raises(ValueError, match="split"):
        shard_urls(many_shards, "seq", "bogus")


# --------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------


def test_crop_is_time_aligned(packed):
    s = next(iter(_all_seq(packed).values()))
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(10):
        c = crop_sequence(s, 5, rng)
        a = c["meta"]["crop_start"]
        starts.add(a)
        np.testing.assert_array_equal(c["aus"], s["aus"][a:a + 5])
        np.testing.assert_array_equal(c["verts"], s["verts"][a:a + 5])
        assert c["audio"].shape == (3200,)
        np.testing.assert_array_equal(c["audio"], s["audio"][a * 640:a * 640 + 3200])
    assert len(starts) > 1
    whole = crop_sequence(s, 50, rng)
    assert whole["aus"].shape[0] == N_FRAMES and whole["meta"]["crop_start"] == 0


def test_collate_pads_and_masks(packed):
    seqs = list(_all_seq(packed).values())[:3]
    rng = np.random.default_rng(1)
    feats = np.arange(24 * 4, dtype=np.float32).reshape(24, 4)
    crops = [crop_sequence(dict(s, feats=feats), w, rng) for s, w in zip(seqs, (4, 12, 7), strict=True)]
    b = collate_sequences(crops)
    assert b["aus"].shape == (3, 12, 17) and b["au_mask"].shape == (3, 12, 17)
    assert b["frame_mask"].sum(1).tolist() == [4, 12, 7]
    assert b["verts"].shape == (3, 12, N_VERTS, 3)
    assert b["audio"].shape == (3, 7680) and b["audio_mask"].sum(1).tolist() == [2560, 7680, 4480]
    assert b["feats"].shape == (3, 24, 4) and b["feats_mask"].sum(1).tolist() == [8, 24, 14]
    assert not b["au_mask"][0, 4:].any() and float(b["aus"][0, 4:].abs().sum()) == 0.0
    torch.testing.assert_close(b["aus"][0, :4], torch.from_numpy(crops[0]["aus"]))
    assert b["keys"] == [c["key"] for c in crops] and "template" not in b
    no_verts = collate_sequences([dict(crops[0], verts=None), crops[1]])
    assert "verts" not in no_verts and "feats" in no_verts
