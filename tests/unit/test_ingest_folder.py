"""Folder ingestion from a data manifest (EmoTalk3D "Minimal fixture recipe"), mesh readers and
check-cameras on a wrong convention."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from emodifftalk.config import build_config
from emodifftalk.data.shards import iter_dataset, load_manifest, load_templates, validate_shards
from emodifftalk.ingest.cameras import project
from emodifftalk.ingest.check_cameras import check_cameras, format_check_report
from emodifftalk.ingest.clip import IngestOptions
from emodifftalk.ingest.folder import FolderClip, plan_folder, read_camera_file, read_mesh
from emodifftalk.ingest.ray_ingest import run_ingest

FPS = 25
N = 3
SIZE = 32
CAMS = {"A": (0.0, 0.0, 1.0), "B": (0.55, 0.1, 0.8), "C": (-0.55, -0.1, 0.8)}  # y-up world, face toward +z
TETRA = 0.25 * np.array([[0, 0.8, 0.3], [0.8, -0.5, 0.3], [-0.8, -0.5, 0.3], [0, 0, -0.7]])
TETRA_FACES = np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
K = np.array([[40.0, 0, SIZE / 2], [0, 40.0, SIZE / 2], [0, 0, 1]])


def w2c(centre) -> np.ndarray:
    c = np.asarray(centre, float)
    z = -c / np.linalg.norm(c)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])  # rows: camera axes in world
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, -r @ c
    return m


def _obj(path: Path, verts, faces=None) -> None:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in (faces if faces is not None else [])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _render(verts, cam: str) -> np.ndarray:
    """Grey background, the tetrahedron's silhouette in orange."""
    from PIL import Image, ImageDraw

    uv, _ = project(verts, w2c(CAMS[cam]), K)
    im = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    draw = ImageDraw.Draw(im)
    for f in TETRA_FACES:
        draw.polygon([tuple(uv[i]) for i in f], fill=(230, 120, 40))
    return np.asarray(im)


def make_emotalk_fixture(root: Path, *, missing_mesh: int | None = None, convention: str | None = None,
                         sequence: str = "angry_1") -> Path:
    """``root/0001/<sequence>/`` with cams.json, images, audio.wav, meshes; ``root/template.obj``;
    ``root/manifest.json``. ``missing_mesh``: a frame without a mesh (that variant has no masks)."""
    import soundfile as sf
    from PIL import Image

    seq = root / "0001" / sequence
    cams = {"convention": "opencv_w2c_m",
            "cameras": {c: {"K": K.tolist(), "w2c": w2c(p).tolist(), "width": SIZE, "height": SIZE}
                        for c, p in CAMS.items()}}
    seq.mkdir(parents=True)
    (seq / "cams.json").write_text(json.dumps(cams))
    for f in range(N):
        verts = TETRA + [0.0, 0.01 * f, 0.0]
        if f != missing_mesh:
            _obj(seq / "meshes" / f"{f:05d}.obj", verts)
        for c in CAMS:
            (seq / "images" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_render(verts, c)).save(seq / "images" / c / f"{f:05d}.png")
    t = np.arange(int(16000 * N / FPS)) / 16000
    sf.write(seq / "audio.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, subtype="PCM_16")
    from emodifftalk.data.openface import write_openface_csv

    write_openface_csv(seq / "openface.csv", np.random.default_rng(0).uniform(0, 1, (N, 17)), FPS)
    _obj(root / "template.obj", TETRA, TETRA_FACES)
    entry = {"frames": f"0001/{sequence}/images/{{camera}}/*.png", "cameras": f"0001/{sequence}/cams.json",
             "audio": f"0001/{sequence}/audio.wav", "meshes": f"0001/{sequence}/meshes/*.obj",
             "openface": f"0001/{sequence}/openface.csv", "emotion": "angry", "frontal_camera": "A"}
    if convention:
        entry["camera_convention"] = convention
    manifest = {"name": "emotalk3d-mini", "defaults": {"fps": FPS},
                "subjects": {"0001": {"template": "template.obj", "sequences": {sequence: entry}}}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root / "manifest.json"


def _ingest(manifest, out, **opt):
    cfg = build_config("tiny", ["data.frames_stride=1"])
    opts = IngestOptions.from_config(cfg, **{"size": 0, "fps": FPS, "image_format": "png", **opt})
    tasks, skipped, name = plan_folder(manifest)
    return run_ingest(tasks, out, cfg, opts, name=name, dataset="folder", discovery_skipped=skipped,
                      use_ray=False, progress=False)


def _samples(root, kind):
    return [s for sp in ("train", "val", "test") for s in iter_dataset(root, kind, sp)]


def test_recipe_vertices_project_in_frame(tmp_path):
    make_emotalk_fixture(tmp_path)
    cams, conv = read_camera_file(tmp_path / "0001" / "angry_1" / "cams.json")
    assert conv == "opencv_w2c_m" and sorted(cams) == ["A", "B", "C"]
    for c in cams.values():
        uv, z = project(TETRA, c["matrix"], c["K"])
        assert (z > 0).all() and ((uv >= 0) & (uv < SIZE)).all()


def test_folder_ingest_round_trip(tmp_path):
    manifest = make_emotalk_fixture(tmp_path / "src")
    s = _ingest(manifest, tmp_path / "out")
    assert (s["ok"], s["failed"]) == (1, 0)
    assert validate_shards(tmp_path / "out") == []
    m = load_manifest(tmp_path / "out")
    c = m["clips"]["0001__angry_1"]
    assert c["modalities"] == ["audio", "aus", "verts", "frames"] and c["emotion"] == "angry" and c["n_frames"] == N
    frames_shards = [s["name"] for s in m["shards"] if s["kind"] == "frames"]
    assert c["frames_shards"] == frames_shards and all((tmp_path / "out" / n).is_file() for n in frames_shards)
    (seq,) = _samples(tmp_path / "out", "seq")
    assert seq["verts"].shape == (N, 4, 3) and seq["audio"].shape == (int(16000 * N / FPS),)
    np.testing.assert_allclose(seq["verts"][2], TETRA + [0, 0.02, 0], atol=1e-6)
    frames = sorted(_samples(tmp_path / "out", "frames"), key=lambda x: x["meta"]["frame"])
    assert len(frames) == N and [cam["name"] for cam in frames[0]["cameras"]] == ["A", "B", "C"]
    cam = frames[1]["cameras"][1]
    np.testing.assert_allclose(cam["viewmat"], w2c(CAMS["B"]), atol=1e-6)
    np.testing.assert_array_equal(frames[1]["images"]["B"], _render(TETRA + [0, 0.01, 0], "B"))
    t = load_templates(tmp_path / "out")["0001"]
    assert t["faces"].shape == (4, 3) and t["meta"]["source"].startswith("template file")


def test_missing_mesh_frame_is_interpolated(tmp_path):
    manifest = make_emotalk_fixture(tmp_path / "src", missing_mesh=1)
    s = _ingest(manifest, tmp_path / "out")
    assert s["ok"] == 1 and validate_shards(tmp_path / "out") == []
    (seq,) = _samples(tmp_path / "out", "seq")
    np.testing.assert_allclose(seq["verts"][1], TETRA + [0, 0.01, 0], atol=1e-6)  # midway between 0 and 2
    frames = {x["meta"]["frame"]: x for x in _samples(tmp_path / "out", "frames")}
    assert frames[1]["verts"] is None and frames[0]["verts"] is not None  # frames samples keep real meshes only
    assert "interpolated" in " ".join(s["records"][0]["notes"])
    # too long a gap: verts leave the seq sample, the clip still goes in
    s = _ingest(manifest, tmp_path / "out2", max_mesh_gap=0)
    assert load_manifest(tmp_path / "out2")["clips"]["0001__angry_1"]["modalities"] == ["audio", "aus", "frames"]


def test_resize_rescales_intrinsics(tmp_path):
    manifest = make_emotalk_fixture(tmp_path / "src")
    _ingest(manifest, tmp_path / "out", size=16)
    f = _samples(tmp_path / "out", "frames")[0]
    cam = f["cameras"][0]
    np.testing.assert_allclose(cam["K"], np.diag([0.5, 0.5, 1]) @ K, atol=1e-6)
    assert f["images"]["A"].shape == (16, 16, 3)


def test_check_cameras_flags_a_wrong_convention(tmp_path):
    ok = make_emotalk_fixture(tmp_path / "good")
    (r,) = check_cameras(ok)
    assert r["flag"] is False and r["best"] == "opencv_w2c_m", format_check_report([r])
    assert r["stats"]["opencv_w2c_m"]["on_fg"] > 0.9
    bad = make_emotalk_fixture(tmp_path / "bad", convention="opengl_c2w_m")
    (r,) = check_cameras(bad)
    assert r["flag"] is True and r["declared"] == "opengl_c2w_m" and r["best"] == "opencv_w2c_m"
    assert r["stats"]["opengl_c2w_m"]["on_fg"] < 0.5
    assert "LIKELY WRONG" in format_check_report([r]) and "use opencv_w2c_m" in r["message"]
    # the conflict with the camera file's own convention is noted when ingesting
    tasks, _, _ = plan_folder(bad)
    assert any("camera_convention=opengl_c2w_m" in n for n in FolderClip.from_task(tasks[0]["source"]).notes)


def test_check_cameras_on_ingested_shards(tmp_path):
    manifest = make_emotalk_fixture(tmp_path / "src")
    _ingest(manifest, tmp_path / "out")
    results = check_cameras(tmp_path / "out")
    assert [r["clip"] for r in results] == ["0001/angry_1"] and results[0]["flag"] is False


def test_bad_manifest_entries_are_skipped_with_reasons(tmp_path):
    manifest = make_emotalk_fixture(tmp_path)
    data = json.loads(manifest.read_text())
    data["subjects"]["0001"]["sequences"]["bad.seq"] = {"frames": "x/*.png"}
    data["subjects"]["0001"]["sequences"]["nocams"] = {"frames": "x/{camera}/*.png"}
    data["subjects"]["0001"]["sequences"]["typo"] = {"audio": "a.wav", "emotoin": "sad"}
    manifest.write_text(json.dumps(data))
    tasks, skipped, name = plan_folder(manifest)
    assert name == "emotalk3d-mini" and [t["clip"] for t in tasks] == ["angry_1"]
    reasons = {s["clip"]: s["reason"] for s in skipped}
    assert "invalid clip name" in reasons["bad.seq"] and "without a 'cameras' file" in reasons["nocams"]
    assert "emotoin" in reasons["typo"]


def _ply_binary(path: Path, verts, faces) -> None:
    head = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(verts)}\nproperty float x\nproperty float y\n"
            f"property float z\nproperty uchar red\nelement face {len(faces)}\nproperty list uchar int vertex_indices\n"
            "end_header\n").encode()
    body = b"".join(struct.pack("<fffB", *v, 7) for v in verts)
    body += b"".join(struct.pack("<B3i", 3, *f) for f in faces)
    path.write_bytes(head + body)


def test_mesh_readers(tmp_path):
    _obj(tmp_path / "t.obj", TETRA, TETRA_FACES)
    v, f = read_mesh(tmp_path / "t.obj")
    np.testing.assert_allclose(v, TETRA, atol=1e-6)
    np.testing.assert_array_equal(f, TETRA_FACES)
    _ply_binary(tmp_path / "t.ply", TETRA, TETRA_FACES)
    v, f = read_mesh(tmp_path / "t.ply")
    np.testing.assert_allclose(v, TETRA, atol=1e-6)
    np.testing.assert_array_equal(f, TETRA_FACES)
    (tmp_path / "a.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                    "property float z\nelement face 1\nproperty list uchar int vertex_indices\n"
                                    "end_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    v, f = read_mesh(tmp_path / "a.ply")
    assert v.shape == (3, 3) and f.tolist() == [[0, 1, 2]]
    (tmp_path / "quad.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1/1 2/2 3/3 4/4\n")
    assert read_mesh(tmp_path / "quad.obj")[1].tolist() == [[0, 1, 2], [0, 2, 3]]
    np.save(tmp_path / "bad.npy", np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"expected \(V, 3\)"):
        read_mesh(tmp_path / "bad.npy")


def test_yaml_manifest_and_template_from_first_mesh(tmp_path):
    import yaml

    manifest = make_emotalk_fixture(tmp_path)
    data = json.loads(manifest.read_text())
    del data["subjects"]["0001"]["template"]  # no template file: the first mesh of the sequence is used
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(data))
    s = _ingest(tmp_path / "manifest.yaml", tmp_path / "out")
    assert s["ok"] == 1 and validate_shards(tmp_path / "out") == []
    t = load_templates(tmp_path / "out")["0001"]
    np.testing.assert_allclose(t["verts"], TETRA, atol=1e-6)
    assert t["faces"].shape == (0, 3) and "first mesh" in t["meta"]["source"]
