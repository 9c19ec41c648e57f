"""Issue 17, friction list: what a new user meets in the first hour with the README as the manual."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emodifftalk.cli import build_parser, main, parse_args

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


# ------------------------------------------------------------------------------------------------
# the README's commands
# ------------------------------------------------------------------------------------------------


def readme_commands(text: str) -> list[list[str]]:
    """Every ``emodifftalk ...`` command in the README's bash blocks (continuations joined,
    comments dropped), as argv lists without the program name."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("emodifftalk "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_every_readme_command_parses_and_its_example_files_exist():
    commands = readme_commands(README.read_text())
    verbs = {c[0] for c in commands}
    assert {"synth", "pack", "inspect", "preview", "rig", "train", "text2au", "eval", "animate", "view"} <= verbs
    parser = build_parser()
    for argv in commands:
        args = parse_args(argv, parser)  # SystemExit (argparse's error) fails the test
        assert getattr(args, "func", None) is not None, argv
        for word in argv:
            if word.startswith("examples/"):
                assert (REPO / word).is_file(), f"{' '.join(argv)}: {word} is not in the repository"
    animate = next(c for c in commands if c[0] == "animate")
    assert "examples/speech.wav" in animate and "examples/edits.json" in animate


def test_example_inputs_are_usable():
    from emodifftalk.data.audio import read_audio
    from emodifftalk.edits import apply_edits, load_edits

    audio, sr = read_audio(REPO / "examples" / "speech.wav")
    assert sr == 16000 and 1.0 < audio.shape[0] / sr < 8.0
    assert float(np.sqrt(np.mean(audio ** 2))) > 0.01  # speech, not silence
    curves = load_edits(REPO / "examples" / "edits.json")
    edited = apply_edits(np.zeros((80, 17), np.float32), curves, fps=25.0)
    assert edited.max() > 0.2
    doc = (REPO / "examples" / "README.md").read_text()
    for field in ("keyframes", "offset", "start", "end", "mode", "interpolation"):
        assert f"`{field}`" in doc


# ------------------------------------------------------------------------------------------------
# eval: --out only, progress, --config, clean help
# ------------------------------------------------------------------------------------------------


def test_eval_help_has_no_developer_notes(capsys):
    for argv in (["eval", "--help"], ["eval", "motion", "--help"], ["eval", "s2au", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "_register_" not in text and "SUBCOMMANDS" not in text and "lazily" not in text


def test_eval_motion_writes_nothing_without_out(tmp_path, monkeypatch, capsys):
    import emodifftalk.eval.motion as motion_eval

    seen = {}

    def fake_run_eval(model, data, **kw):
        seen.update(kw)
        return {"table": "| method |"}

    monkeypatch.setattr(motion_eval, "run_eval", fake_run_eval)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "motion", "--model", "m", "--data", "d"]) == 0
    assert seen["out"] is None and not any(tmp_path.iterdir())
    assert main(["eval", "motion", "--model", "m", "--data", "d", "--out", "reports/motion"]) == 0
    assert seen["out"] == Path("reports/motion")
    assert "wrote reports/motion/motion_eval.json" in capsys.readouterr().out


def test_eval_config_says_what_to_do_instead(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "motion", "--model", "m", "--data", "d", "--config", "tiny"])
    assert e.value.code == 2
    assert "EXPORT/config.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# animate: inputs before models, lazy Text-to-AU
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_runs(tmp_path):
    """A rig folder and runs/{s2au,motion,text2au}/export that pass the cheap checks."""
    from emodifftalk.rig.gaussians import RIG_FORMAT_VERSION

    rig = tmp_path / "rigs" / "id000"
    rig.mkdir(parents=True)
    (rig / "rig.json").write_text(json.dumps({"format_version": RIG_FORMAT_VERSION}))
    (rig / "rig.safetensors").write_bytes(b"")
    for name in ("s2au", "motion", "text2au"):
        export = tmp_path / "runs" / name / "export"
        export.mkdir(parents=True)
        (export / "model.safetensors").write_bytes(b"")
    return tmp_path


class _Loaded(Exception):
    pass


def _capture_load_models(monkeypatch):
    from emodifftalk.pipeline import animate as pipeline

    seen = {}

    def fake(s2au, motion, t2a=None, **kw):
        seen.update(s2au=s2au, motion=motion, t2a=t2a)
        raise _Loaded

    monkeypatch.setattr(pipeline, "load_models", fake)
    return seen


@pytest.mark.parametrize("problem,needle", [
    ("wav", "WAV"), ("edits", "AU99"), ("out", "already exists"), ("camera", "--camera"), ("rig", "RIG_DIR")])
def test_animate_checks_inputs_before_loading_models(fake_runs, monkeypatch, capsys, problem, needle):
    _capture_load_models(monkeypatch)
    root = fake_runs
    wav = str(REPO / "examples" / "speech.wav")
    rig = str(root / "rigs" / "id000")
    argv = ["animate", rig, wav, "--model", str(root / "runs"), "--out", str(root / "anim")]
    if problem == "wav":
        argv[2] = str(root / "missing.wav")
    elif problem == "edits":
        (root / "edits.json").write_text(json.dumps({"AU99": 0.2}))
        argv += ["--edits", str(root / "edits.json")]
    elif problem == "out":
        (root / "anim").mkdir()
    elif problem == "camera":
        argv += ["--camera", "sideways"]
    elif problem == "rig":
        argv[1] = str(root / "rigs")  # the parent, a common slip
    assert main(argv) == 1
    assert needle in capsys.readouterr().err


def test_text2au_model_loads_only_with_a_prompt(fake_runs, monkeypatch):
    seen = _capture_load_models(monkeypatch)
    argv = ["animate", str(fake_runs / "rigs" / "id000"), str(REPO / "examples" / "speech.wav"),
            "--model", str(fake_runs / "runs"), "--out", str(fake_runs / "anim")]
    with pytest.raises(_Loaded):
        main(argv)
    assert seen["t2a"] is None and seen["motion"] is not None
    with pytest.raises(_Loaded):
        main([*argv, "--text", "a nervous smile"])
    assert seen["t2a"] == fake_runs / "runs" / "text2au" / "export"


# ------------------------------------------------------------------------------------------------
# outputs honour the umask
# ------------------------------------------------------------------------------------------------


def test_outputs_honour_the_umask(tmp_path):
    from emodifftalk.render.video import write_video
    from emodifftalk.utils import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            atomic_write_text(tmp / "manifest.json", "{}")
            write_video(tmp / "video.mp4", np.zeros((2, 16, 16, 3), np.uint8), fps=25)
        assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
        for name in ("manifest.json", "video.mp4"):
            assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o644, name
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------------
# rig.ply, y-up option
# ------------------------------------------------------------------------------------------------


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def test_y_up_ply_is_the_same_scene_turned_about_x(tmp_path):
    from emodifftalk.rig.ply import encode_ply, ply_to_params, read_ply

    rng = np.random.default_rng(0)
    n = 5
    params = dict(means=rng.normal(size=(n, 3)), log_scales=rng.normal(size=(n, 3)) - 3,
                  quats=rng.normal(size=(n, 4)), opacity_logits=rng.normal(size=n), colors=rng.random((n, 3)))
    down, up = tmp_path / "down.ply", tmp_path / "up.ply"
    down.write_bytes(encode_ply(**params))
    up.write_bytes(encode_ply(**params, y_up=True))
    a, b = ply_to_params(read_ply(down)), ply_to_params(read_ply(up))
    flip = np.diag([1.0, -1.0, -1.0])
    np.testing.assert_allclose(b["means"], a["means"] @ flip.T, atol=1e-6)
    for i in range(n):  # each covariance turned with the scene: R' S = F R S
        s = np.diag(np.exp(a["log_scales"][i]))
        ra, rb = _quat_to_matrix(a["quats"][i]), _quat_to_matrix(b["quats"][i])
        np.testing.assert_allclose(rb @ s @ s @ rb.T, flip @ ra @ s @ s @ ra.T @ flip.T, atol=1e-8)
    np.testing.assert_allclose(b["colors"], a["colors"], atol=1e-6)


def test_rig_writes_rig_ply(tmp_path):
    from emodifftalk.config import build_config
    from emodifftalk.rig.gaussians import GaussianRig
    from emodifftalk.rig.ply import RIG_PLY, ply_to_params, read_ply
    from emodifftalk.rig.reconstruct import reconstruct_identity
    from emodifftalk.rig.toy import make_toy_identity

    with torch.no_grad():
        samples, template = make_toy_identity("toy", n_lat=6, n_lon=8, n_hair=20, n_cameras=3, image_size=16,
                                              n_clips=1)[:2]
    cfg = build_config("tiny", ["rig.n_free_points=20", "rig.triplane_resolution=8", "rig.steps=1",
                                "rig.holdout_camera=2", "feature_line.steps=1"])
    reconstruct_identity(samples, template, cfg, tmp_path / "toy", progress=False)
    params = ply_to_params(read_ply(tmp_path / "toy" / RIG_PLY))
    rig = GaussianRig.load(tmp_path / "toy")
    np.testing.assert_allclose(params["means"], rig.means.numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# view, warm-up, progress
# ------------------------------------------------------------------------------------------------


def test_view_without_a_motion_model_says_so(tmp_path, monkeypatch, capsys):
    import emodifftalk.viewer.app as app

    class FakeApp:
        url, n_gaussians, out_dir = "http://127.0.0.1:1", 1, tmp_path

        def stop(self):
            pass

    monkeypatch.setattr(app, "start_viewer", lambda *a, **k: FakeApp())
    monkeypatch.setattr(time, "sleep", lambda s: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["view", str(tmp_path), "--port", "0"]) == 0
    assert "no motion model" in capsys.readouterr().err


def test_short_runs_warn_about_warmup_and_say_they_export(tmp_path, caplog):
    from emodifftalk.config import build_config
    from emodifftalk.train.loop import run_training
    from emodifftalk.train.toy import ToyTask

    cfg = build_config("tiny", ["train.max_steps=2", "train.warmup_steps=5", "train.val_every=0",
                                "train.ckpt_every=2", "data.batch_size=4"])
    with caplog.at_level(logging.INFO):
        run_training(ToyTask(cfg), tmp_path / "run")
    assert "still warming up" in caplog.text
    assert "exporting the model" in caplog.text


def test_text_encoding_shows_progress(capsys):
    from emodifftalk.text2au.encoders import PROGRESS_MIN_BATCHES, HashingEncoder

    enc = HashingEncoder(batch_size=8)
    enc.encode([f"a happy person number {i}" for i in range(8 * PROGRESS_MIN_BATCHES)])
    assert "encode texts" in capsys.readouterr().err
    enc.encode(["one prompt"])
    assert "encode texts" not in capsys.readouterr().err
