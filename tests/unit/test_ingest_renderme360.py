"""RenderMe-360 ingestion on generated .smc fixtures (plain function calls, no Ray)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import smc_fixtures as fx

from emodifftalk.config import build_config
from emodifftalk.data.shards import iter_dataset, load_manifest, load_templates, validate_shards
from emodifftalk.ingest import clips_with, format_modality_report, modality_report
from emodifftalk.ingest.cameras import project
from emodifftalk.ingest.clip import IngestOptions, Timeline, fill_mesh_gaps, ingest_clip, select_frames
from emodifftalk.ingest.ray_ingest import format_summary, run_ingest
from emodifftalk.ingest.renderme360 import SMCClip, discover_smc, plan_renderme360


def _ingest(smc, out, openface=None, **opt):
    cfg = build_config("tiny", ["data.frames_stride=1"])
    opts = IngestOptions.from_config(cfg, **{"size": 16, "fps": 30, **opt})
    tasks, skipped = plan_renderme360(smc, openface)
    return run_ingest(tasks, out, cfg, opts, name="rm", dataset="renderme360", discovery_skipped=skipped,
                      use_ray=False, progress=False)


def _all(root, kind):
    splits = (None,) if kind == "template" else ("train", "val", "test")
    return [s for sp in splits for s in iter_dataset(root, kind, sp)]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm360")
    d = fx.make_dataset(root)
    summary = _ingest(d["smc"], root / "out", d["openface"])
    return {"root": root, "out": root / "out", "summary": summary, **d}


def test_pairing_accepts_part2_and_reports_orphans(tmp_path):
    fx.write_pair(tmp_path, "0001", "s1_all")
    fx.write_smc(tmp_path / "0002_h1_2bk_raw.smc", actor="0002", perf="h1_2bk", kind="all")
    fx.write_smc(tmp_path / "0003_e1_anno.smc", actor="0003", perf="e1", kind="anno")
    (tmp_path / "notes.smc").write_bytes(b"x")
    pairs, skipped = discover_smc(tmp_path)
    assert [(p.actor, p.perf, p.part2) for p in pairs] == [("0001", "s1_all", False), ("0002", "h1_2bk", True)]
    assert pairs[0].anno.name == "0001_s1_all_anno.smc"
    reasons = " | ".join(s["reason"] for s in skipped)
    assert "without its _raw twin" in reasons and "notes.smc" in reasons


def test_ingest_output_validates_and_corrupt_file_is_skipped(ingested):
    s, out = ingested["summary"], ingested["out"]
    assert validate_shards(out) == []
    assert (s["n_clips"], s["ok"], s["failed"]) == (5, 4, 1)
    failed = [r for r in s["records"] if r["status"] == "failed"]
    assert failed[0]["key"] == "0003__s1_all" and "0003_s1_all_raw.smc" in failed[0]["error"]
    m = load_manifest(out)
    assert sorted(m["clips"]) == ["0001__e0", "0001__s1_all", "0002__s2_all", "0004__s1_all"]
    assert [x["clip"] for x in m["skipped"]] == ["s1_all"] and "0003" in m["skipped"][0]["identity"]
    assert "0003/s1_all" in format_summary(s)
    summary_file = json.loads((out / "ingest_summary.json").read_text())
    assert summary_file["failed"] == 1


def test_modalities_and_clip_selection(ingested):
    m = load_manifest(ingested["out"])
    assert m["clips"]["0001__s1_all"]["modalities"] == ["audio", "aus", "frames"]
    assert m["clips"]["0001__e0"]["modalities"] == ["frames"]
    assert m["clips"]["0001__e0"]["raw_modalities"] == ["verts", "frames"]
    assert m["clips"]["0004__s1_all"]["raw_modalities"] == ["audio", "frames"]  # no OpenFace CSV
    assert clips_with(m, {"audio", "aus"}) == ["0001__s1_all", "0002__s2_all"]
    assert clips_with(ingested["out"], {"frames"}) == sorted(m["clips"])
    assert clips_with(m, {"audio", "aus", "verts"}) == []
    rep = modality_report(m, {"audio", "aus"})
    why = {x["key"]: x["reason"] for x in rep["skipped"]}
    assert "audio exists in the source but was not packed" in why["0004__s1_all"]
    assert "no aus in the source" in why["0004__s1_all"] and "no audio in the source" in why["0001__e0"]
    assert "0003/s1_all" in format_modality_report(rep)
    with pytest.raises(ValueError, match="unknown modalit"):
        clips_with(m, {"video"})


def test_seq_sample_audio_is_16k_mono_and_aus_attached(ingested):
    seq = {s["key"]: s for s in _all(ingested["out"], "seq")}
    assert sorted(seq) == ["0001__s1_all", "0002__s2_all"]
    s = seq["0001__s1_all"]
    assert s["audio"].shape == (1600,) and s["aus"].shape == (3, 17) and s["verts"] is None
    # 48 kHz stereo (0.5 and 0.3 amplitude sines) -> 16 kHz mono: amplitude 0.4 at 440 Hz
    t = np.arange(1600) / 16000
    ref = 0.4 * np.sin(2 * np.pi * 440 * t)
    assert np.abs(s["audio"][100:-100] - ref[100:-100]).max() < 0.01
    from emodifftalk.data.openface import read_openface_csv

    want = read_openface_csv(ingested["openface"] / "0001_s1_all.csv", fps=30, n_frames=3)
    np.testing.assert_allclose(s["aus"], want.aus, atol=1e-6)


def test_frames_colours_masks_and_missing_parts(ingested):
    frames = {s["key"]: s for s in _all(ingested["out"], "frames")}
    assert len(frames) == 12
    f = frames["0002__s2_all__f00001"]  # camera 00 has no frames; the mask of (25, 1) is missing
    assert [c["name"] for c in f["cameras"]] == ["25"] and f["meta"]["masked"] == []
    assert frames["0002__s2_all__f00000"]["meta"]["masked"] == ["25"]
    corner = f["images"]["25"][-1, -1].astype(int)  # unmasked: the raw background, in RGB order
    assert np.abs(corner - fx.BG_RGB).max() < 12
    masked_corner = frames["0002__s2_all__f00000"]["images"]["25"][-1, -1].astype(int)
    assert np.abs(masked_corner - 255).max() < 12  # composited over the white render background
    assert frames["0001__e0__f00002"]["verts"].shape == (60, 3)
    np.testing.assert_allclose(frames["0001__e0__f00002"]["verts"], fx.flame_verts(60, 2), atol=1e-6)
    notes = {r["key"]: " ".join(r["notes"]) for r in ingested["summary"]["records"]}
    assert "calibrated camera(s) without colour frames: 00" in notes["0002__s2_all"]
    assert "1 frame(s) without a mask" in notes["0002__s2_all"]
    assert "no OpenFace CSV" in notes["0004__s1_all"]


def test_template_from_flame_has_no_faces(ingested):
    t = load_templates(ingested["out"])
    assert sorted(t) == ["0001", "0002"]
    np.testing.assert_allclose(t["0001"]["verts"], fx.flame_verts(60, 0), atol=1e-6)
    assert t["0001"]["faces"].shape == (0, 3) and t["0001"]["meta"]["placeholder"] is False
    assert len(t["0001"]["vertex_sets"]["face"]) > 0
    assert t["0002"]["meta"]["placeholder"] is True and t["0002"]["verts"].shape == (0, 3)


def test_camera_round_trip_after_resize(tmp_path):
    """A known 3D point projects, through the ingested K/viewmat, onto the FG block drawn at its
    projection in the (cropped + resized) image, for a frontal and a side camera."""
    fx.write_pair(tmp_path / "smc", "0001", "e0", audio=False, height=40, width=48)
    _ingest(tmp_path / "smc", tmp_path / "out", size=20, image_format="png", composite_masks=False)
    (s,) = _all(tmp_path / "out", "frames")[:1]
    for cam in s["cameras"]:
        img = s["images"][cam["name"]]
        assert img.shape == (20, 20, 3) and (cam["width"], cam["height"]) == (20, 20)
        uv, _ = project(fx.MARK, cam["viewmat"], cam["K"])
        # exact: the fixture's OpenCV projection, +0.5 (pixel centres), minus the crop, times the scale
        ref = (fx.project_opencv(fx.MARK, fx.intrinsics(48, 40), fx.look_at_c2w(fx.CAMERA_CENTRES[cam["name"]]))[0]
               + 0.5 - [4, 0]) * 0.5
        np.testing.assert_allclose(uv[0], ref, atol=1e-6)
        # in the pixels: the block's intensity-weighted centroid (it was placed by rounding: <= 0.25 px)
        redness = np.clip(img[..., 0].astype(float) - img[..., 2], 0, None)
        w = redness / redness.sum()
        yy, xx = np.mgrid[0:20, 0:20] + 0.5
        np.testing.assert_allclose([(w * xx).sum(), (w * yy).sum()], uv[0], atol=0.5)


def test_audio_frame_mismatch_is_trimmed(tmp_path):
    fx.write_pair(tmp_path / "long", "0001", "s1_all", audio_seconds=0.2)
    fx.write_openface_for(tmp_path / "of" / "0001_s1_all.csv", 3)
    s = _ingest(tmp_path / "long", tmp_path / "o1", tmp_path / "of")
    assert s["trimmed_audio_samples"] == 1600 and s["trimmed_frames"] == 0
    fx.write_pair(tmp_path / "short", "0001", "s1_all", audio_seconds=2 / 30)
    s = _ingest(tmp_path / "short", tmp_path / "o2", tmp_path / "of")
    assert s["trimmed_frames"] == 1
    (seq,) = _all(tmp_path / "o2", "seq")
    assert seq["meta"]["n_frames"] == 2 and seq["audio"].shape == (1067,) and seq["aus"].shape == (2, 17)
    assert validate_shards(tmp_path / "o2") == []


def test_fps_resampling_picks_nearest_source_frames(tmp_path):
    fx.write_pair(tmp_path / "smc", "0001", "e0", audio=False, flame=True, n_frames=6)
    _ingest(tmp_path / "smc", tmp_path / "out", fps=15)
    m = load_manifest(tmp_path / "out")
    assert m["clips"]["0001__e0"]["n_frames"] == 3 and m["clips"]["0001__e0"]["frames"] == [0, 1, 2]
    frames = sorted(_all(tmp_path / "out", "frames"), key=lambda s: s["meta"]["frame"])
    assert [s["meta"]["source_frame"] for s in frames] == [0, 2, 4]
    np.testing.assert_allclose(frames[1]["verts"], fx.flame_verts(60, 2), atol=1e-6)
    tl = Timeline(30, 25, 60)
    assert tl.n_frames == 50 and tl.source_frame(49) == 59 and tl.source_frame(5) == 6
    assert select_frames(tl, {0, 30, 59}, 0) == [(0, 0)]
    assert select_frames(Timeline(30, 30, 10), {1, 3, 5, 7}, 2) == [(1, 1), (5, 5)]


def test_mesh_gaps_are_interpolated_up_to_the_limit():
    a, b = np.zeros((2, 3)), np.ones((2, 3))
    out, n, why = fill_mesh_gaps([a, None, b], 2)
    assert n == 1 and why is None and np.allclose(out[1], 0.5)
    out, n, why = fill_mesh_gaps([None, a, b], 2)
    assert np.allclose(out[0], 0)
    out, n, why = fill_mesh_gaps([a, None, None, None, b], 2)
    assert out is None and "longest gap 3" in why


def test_rerun_resumes_and_redoes_only_changed_clips(ingested, tmp_path):
    import shutil

    smc = tmp_path / "smc"
    shutil.copytree(ingested["smc"], smc)
    (smc / "0003_s1_all_raw.smc").unlink()
    of = tmp_path / "of"
    shutil.copytree(ingested["openface"], of)
    first = _ingest(smc, tmp_path / "out", of)
    assert first["ok"] == 4
    part = tmp_path / "out" / "clips" / "0004__s1_all" / "part.json"
    stamp = os.stat(part).st_mtime_ns
    again = _ingest(smc, tmp_path / "out", of)
    assert (again["ok"], again["done"]) == (0, 4) and os.stat(part).st_mtime_ns == stamp
    fx.write_openface_for(of / "0004_s1_all.csv", 3)  # OpenFace ran for this clip since
    third = _ingest(smc, tmp_path / "out", of)
    assert [r["key"] for r in third["records"] if r["status"] == "ok"] == ["0004__s1_all"]
    assert clips_with(tmp_path / "out", {"audio", "aus"}) == ["0001__s1_all", "0002__s2_all", "0004__s1_all"]
    assert validate_shards(tmp_path / "out") == []


def test_plain_clip_function_and_reader_directly(tmp_path):
    raw, anno = fx.write_pair(tmp_path, "0001", "e0", audio=False, flame=True, drop_mask=("25", 0),
                              empty_keypoints=("25", 1))
    clip = SMCClip(raw, anno)
    try:
        assert clip.camera_names() == ["00", "25"] and clip.frame_ids("25") == [0, 1, 2]
        assert clip.mask_data("25", 0) is None and clip.mask_data("25", 1) is not None
        assert clip.keypoints2d("25", 1) is None and clip.keypoints3d(1) is None  # empty arrays = missing
        assert clip.keypoints3d(0).shape == (73, 3) and clip.audio() is None
        assert clip.template()["priority"] == [0, 0]
        part = ingest_clip(clip, tmp_path / "out", "train", IngestOptions(size=0, fps=0), digest="x")
    finally:
        clip.close()
    assert part["status"] == "ok" and part["clip_entry"]["n_frames"] == 3 and part["counts"]["images"] == 2
    assert (tmp_path / "out" / "clips" / "0001__e0" / "part.json").is_file()


def test_check_cameras_on_smc_confirms_the_rt_convention(tmp_path):
    from emodifftalk.ingest.check_cameras import check_smc, format_check_report

    fx.write_pair(tmp_path, "0001", "e0", audio=False, flame=True, height=48, width=64, focal=120)
    (r,) = check_smc(tmp_path)
    assert r["flag"] is False and r["best"] == "opencv_c2w_m", format_check_report([r])
    assert r["stats"]["opencv_c2w_m"]["reproj_px"] < 1e-6
    assert r["stats"]["opencv_c2w_m"]["on_fg"] > 0.95 and r["stats"]["opencv_w2c_m"]["in_front"] < 0.5


def test_export_frontal_writes_videos_and_openface_script(tmp_path):
    import imageio.v3 as iio

    from emodifftalk.ingest.export_frontal import export_frontal

    fx.write_pair(tmp_path / "smc", "0001", "s1_all", height=32, width=48)
    fx.write_smc(tmp_path / "smc" / "0002_s1_all_raw.smc", actor="0002", perf="s1_all", cameras=("00",),
                 height=32, width=48)
    recs = {r["clip"]: r for r in export_frontal(tmp_path / "smc", tmp_path / "vid")}
    assert recs["0001_s1_all"]["status"] == "ok" and recs["0001_s1_all"]["n_frames"] == 3
    assert recs["0002_s1_all"]["status"] == "skipped" and "camera 25" in recs["0002_s1_all"]["reason"]
    frames = iio.imread(tmp_path / "vid" / "0001_s1_all.mp4")
    assert frames.shape[0] == 3 and frames.shape[1:3] == (32, 48)
    script = (tmp_path / "vid" / "run_openface.sh").read_text()
    assert "0001_s1_all.mp4" in script and "-aus" in script and "0002_s1_all" not in script
    again = {r["clip"]: r for r in export_frontal(tmp_path / "smc", tmp_path / "vid")}
    assert again["0001_s1_all"]["status"] == "exists"


def test_cli_verbs(tmp_path, capsys):
    import argparse

    from emodifftalk.cli import main
    from emodifftalk.commands import check_cameras as cc_cmd
    from emodifftalk.commands import export_frontal as ef_cmd

    d = fx.make_dataset(tmp_path)
    out = tmp_path / "out"
    argv = ["ingest", "renderme360", str(d["smc"]), str(out), "--no-ray", "--no-progress", "--size", "16",
            "--fps", "30", "--openface-dir", str(d["openface"]), "--cameras", "25", "data.frames_stride=0"]
    assert main(argv) == 1  # the corrupt file failed; the others are in
    text = capsys.readouterr().out
    assert "4 ingested" in text and "0003/s1_all" in text
    m = load_manifest(out)
    assert all(c["cameras"] == ["25"] and c["frames"] == [0] for c in m["clips"].values())
    assert main(["inspect", str(out), "--validate"]) == 0
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="verb")
    ef_cmd.register(sub)
    cc_cmd.register(sub)
    args = parser.parse_args(["export-frontal", str(d["smc"]), str(tmp_path / "vid"), "--no-audio"])
    assert args.func(args) == 1  # the corrupt file again
    assert (tmp_path / "vid" / "0001_s1_all.mp4").is_file()
    args = parser.parse_args(["check-cameras", str(out), "--json", str(tmp_path / "cc.json")])
    args.func(args)
    report = json.loads((tmp_path / "cc.json").read_text())
    assert {r["clip"] for r in report} >= {"0001/e0"}


def test_shards_stream_to_a_pipe_url(tmp_path):
    """--shard-url: tars go through a `pipe:` command; the local OUT keeps only manifest + parts."""
    import shutil

    from emodifftalk.data.shards import stream_samples
    from emodifftalk.ingest import remote_shard_urls

    fx.write_pair(tmp_path / "smc", "0001", "s1_all")
    fx.write_pair(tmp_path / "smc", "0001", "e0", audio=False, flame=True)
    fx.write_openface_for(tmp_path / "of" / "0001_s1_all.csv", 3)
    remote = tmp_path / "bucket"
    url = f"pipe:mkdir -p \"$(dirname '{remote}/{{name}}')\" && cat > '{remote}/{{name}}'"
    _ingest(tmp_path / "smc", tmp_path / "out", tmp_path / "of", shard_url=url)
    assert not list((tmp_path / "out").rglob("*.tar"))
    m = load_manifest(tmp_path / "out")
    assert m["shard_url"] == url and all((remote / s["name"]).is_file() for s in m["shards"])
    shutil.copy(tmp_path / "out" / "manifest.json", remote / "manifest.json")
    assert validate_shards(remote) == []
    urls = remote_shard_urls(tmp_path / "out", "seq", pattern=f"pipe:cat '{remote}/{{name}}'")
    assert [s["key"] for s in stream_samples(urls, split_by_node=False, split_by_worker=False)] == ["0001__s1_all"]


def test_template_overrides_for_flame_faces_and_sets(tmp_path):
    fx.write_pair(tmp_path / "smc", "0001", "e0", audio=False, flame=True)
    faces = np.array([[0, 1, 2], [2, 3, 4]], np.int64)
    np.save(tmp_path / "faces.npy", faces)
    sets = {"lips": [1, 2], "upper_face": [3], "eyes": [4], "jaw": [5], "face": [1, 2, 3, 4, 5]}
    (tmp_path / "sets.json").write_text(json.dumps(sets))
    cfg = build_config("tiny")
    opts = IngestOptions.from_config(cfg, size=16, fps=30)
    tasks, _ = plan_renderme360(tmp_path / "smc")
    run_ingest(tasks, tmp_path / "out", cfg, opts, name="rm", dataset="renderme360", use_ray=False, progress=False,
               template_faces=tmp_path / "faces.npy", template_vertex_sets=tmp_path / "sets.json")
    t = load_templates(tmp_path / "out")["0001"]
    np.testing.assert_array_equal(t["faces"], faces)
    assert t["vertex_sets"]["lips"].tolist() == [1, 2] and t["meta"]["faces_note"] == "from --template-faces"


def test_refuses_an_output_folder_of_something_else(tmp_path):
    fx.write_pair(tmp_path / "smc", "0001", "e0", audio=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(FileExistsError, match="not written by `emodifftalk ingest`"):
        _ingest(tmp_path / "smc", tmp_path / "out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an ingest output folder"):
        _ingest(tmp_path / "smc", tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
