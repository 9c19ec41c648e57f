"""The README's demo, end to end at the smallest settings, plus animate's bad-input handling on its outputs."""

import json
import subprocess
import sys

import numpy as np
import pytest

from emodifftalk.config import build_config
from emodifftalk.pipeline.animate import AnimateError, animate, load_audio_16k, load_models

SMALLEST = [
    "synth.n_identities=3", "synth.clips_per_identity=1", "synth.clip_seconds=2", "synth.n_cameras=3",
    "synth.image_size=32", "synth.mesh_resolution=12", "synth.n_free_points=100", "rig.steps=5",
    "rig.n_free_points=50", "rig.holdout_camera=2", "feature_line.steps=3", "train.max_steps=4",
    "train.ckpt_every=4", "train.val_every=4", "train.log_every=2", "text2au.epochs=1", "text2au.encoder=hashing",
    "data.batch_size=4", "infer.image_size=32",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from emodifftalk.pipeline.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    cfg = build_config("tiny", SMALLEST)
    summary = run_demo(out, cfg)
    return out, summary


def test_demo_writes_the_results_folder(demo):
    out, summary = demo
    results = out / "results"
    assert summary["results"] == str(results)
    for name in ("video.mp4", "video_speech.mp4", "aus.png", "frame_grid.png", "metrics.json", "aus.csv"):
        assert (results / name).is_file() and (results / name).stat().st_size > 0, name
    assert list((results / "tensorboard").rglob("events.out.tfevents*")), "no TensorBoard logs"
    metrics = json.loads((results / "metrics.json").read_text())
    for key in ("lve_mm", "fdd", "mod"):
        assert np.isfinite(metrics["motion_speech_pipeline"][key])
    held = metrics["held_out_motion"]  # every held-out clip, with the template-only baseline
    assert held["lve_mm"]["n"] == len(held["clips"]) >= 1
    assert held["lve_mm_template_only"]["n"] == held["lve_mm"]["n"]
    for group in ("guided", "unguided"):
        assert set(held["au_edit_response"][group]) >= {"AU01", "AU12", "guidance_scale"}
        assert np.isfinite(held["au_edit_response"][group]["AU01"]["gain"]["mean"])
    pixels = metrics["edit_pixel_change"]  # the brow edit (0.8-3 s) is inside the 2 s clip
    assert pixels["frames"]["inside"] > 0 and pixels["frames"]["outside"] > 0
    assert pixels["inside_edit"]["upper_face"] >= 0 and pixels["face_move_mm"] > 0
    ideal = metrics["edit_pixel_change_true_fields"]  # the same AU change moved by the world's own AU fields
    assert ideal["face_move_mm"] > 0 and ideal["frames"] == pixels["frames"]
    anim = json.loads((results / "animation.json").read_text())
    assert anim["n_frames"] == 50 and anim["text"]["text"] and anim["feature_line"]
    assert metrics["held_out_clip"].split("__")[0] == anim["identity"]


def test_edit_changes_the_au_codes_and_keeps_lip_sync(demo):
    out, _ = demo
    speech = np.loadtxt(out / "work" / "anim_edited" / "aus_speech.csv", delimiter=",", skiprows=1)[:, 2:]
    edited = np.loadtxt(out / "work" / "anim_edited" / "aus.csv", delimiter=",", skiprows=1)[:, 2:]
    assert np.abs(edited[:, 0] - speech[:, 0]).max() > 0.3  # AU01 edit from 0.8 s
    np.testing.assert_allclose(edited[:, 15], speech[:, 15], atol=1e-4)  # AU26 (jaw) locked


def test_animate_bad_inputs_leave_no_outputs(demo, tmp_path):
    out, _ = demo
    runs, rigs = out / "work" / "runs", out / "work" / "rigs"
    models = load_models(runs / "s2au" / "export", runs / "motion" / "export")
    rig = next(p for p in rigs.iterdir() if (p / "rig.json").is_file())
    cfg = build_config("tiny", SMALLEST)
    wav = out / "results" / "input.wav"

    silent = tmp_path / "silent.wav"
    from emodifftalk.data.audio import write_wav

    write_wav(silent, np.zeros(16000, np.float32), 16000)
    with pytest.raises(AnimateError, match="silent"):
        animate(rig, silent, models, tmp_path / "a", cfg)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav file")
    with pytest.raises(AnimateError, match="cannot read"):
        load_audio_16k(bad)
    edits = tmp_path / "edits.json"
    edits.write_text(json.dumps({"AU99": {"offset": 0.2}}))
    with pytest.raises(ValueError, match="unknown Action Unit 'AU99'"):
        animate(rig, wav, models, tmp_path / "b", cfg, edits_path=edits)
    with pytest.raises(AnimateError, match="not a complete rig"):
        animate(tmp_path, wav, models, tmp_path / "c", cfg)
    with pytest.raises(AnimateError, match="camera"):
        animate(rig, wav, models, tmp_path / "d", cfg, camera="99")
    assert not any((tmp_path / x).exists() for x in "abcd")
    rc = subprocess.run([sys.executable, "-m", "emodifftalk.cli", "animate", str(rig), str(wav), "--out",
                         str(tmp_path / "e"), "--s2au", str(tmp_path / "missing"), "--motion", str(tmp_path)],
                        capture_output=True, text=True)
    assert rc.returncode != 0 and "missing" in rc.stderr and not (tmp_path / "e").exists()
