"""Issue 17, items 1–8: each test reproduces what went wrong (threads, damaged safetensors, resume
integrity, damaged shards, bad --data, unwritable --out, stale temp folders, silent input problems)."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from s2au_data import write_tiny_shards
from safetensors.torch import save_file

from emodifftalk.cli import build_parser, main
from emodifftalk.config import build_config
from emodifftalk.safetensors_io import CorruptFileError, load_tensors
from emodifftalk.train.checkpoint import CheckpointError, list_checkpoints, resolve_resume, verify_checkpoint
from emodifftalk.train.loop import DataSkipError, run_training
from emodifftalk.train.toy import ToyTask

REPO = Path(__file__).resolve().parents[2]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ------------------------------------------------------------------------------------------------
# 1. thread budget
# ------------------------------------------------------------------------------------------------


def test_default_threads_is_one_on_small_or_busy_machines():
    from emodifftalk.threads import choose_threads, default_threads

    assert default_threads(cores=2, load=0.0) == 1
    assert default_threads(cores=1, load=0.0) == 1
    assert default_threads(cores=8, load=7.6) == 1  # busy: one idle core at most
    assert default_threads(cores=8, load=2.0) == 6
    assert default_threads(cores=64, load=0.0) == 8  # capped
    assert choose_threads(None, env={}, cores=2, load=0.0)[0] == 1
    assert choose_threads(None, env={"OMP_NUM_THREADS": "3"}, cores=2)[0] == 3  # the user decided
    assert choose_threads(4, env={"OMP_NUM_THREADS": "1"}, cores=2)[0] == 4  # --threads beats all
    with pytest.raises(ValueError, match="--threads"):
        choose_threads(0, env={})


CPU_HEAVY = (["synth", "--out", "x"], ["pack", "a", "b"], ["rig", "a", "b"], ["train", "s2au"],
             ["eval", "s2au", "--model", "m", "--data", "d"], ["eval", "motion", "--model", "m", "--data", "d"],
             ["text2au", "train", "--out", "x"], ["animate", "r", "w.wav", "--out", "o"], ["view", "r"],
             ["demo"], ["featurize", "d", "--out", "o"], ["preview", "d", "--out", "p.mp4"])


@pytest.mark.parametrize("argv", CPU_HEAVY, ids=lambda a: " ".join(a[:2]))
def test_every_cpu_heavy_verb_takes_threads(argv):
    args = build_parser().parse_args([*argv, "--threads", "2"])
    assert args.threads == 2


def test_main_applies_the_budget_before_the_verb_runs(monkeypatch, tmp_path):
    import emodifftalk.commands.synth as synth

    seen = {}

    def fake_run(args):
        seen["torch"], seen["omp"] = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
        return 0

    monkeypatch.setattr(synth, "run", fake_run)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("EMODIFFTALK_THREADS", raising=False)
    monkeypatch.setattr("emodifftalk.threads.usable_cores", lambda: 2)
    torch.set_num_threads(2)
    assert main(["synth", "--out", str(tmp_path / "s")]) == 0
    assert seen == {"torch": 1, "omp": "1"}  # 2 cores: one thread, also for worker processes
    assert main(["synth", "--out", str(tmp_path / "s"), "--threads", "2"]) == 0
    assert seen == {"torch": 2, "omp": "2"}


# ------------------------------------------------------------------------------------------------
# 2. damaged .safetensors name the file
# ------------------------------------------------------------------------------------------------


def test_truncated_safetensors_error_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(256, 64)}, str(path))
    truncate(path)
    with pytest.raises(CorruptFileError, match=str(path)):
        load_tensors(path)


def test_truncated_export_and_rig_errors_name_the_file(tmp_path):
    from emodifftalk.config import save_config
    from emodifftalk.rig.gaussians import RIG_FORMAT_VERSION, GaussianRig
    from emodifftalk.train.export import load_exported

    export = tmp_path / "export"
    export.mkdir()
    cfg = build_config("tiny")
    save_config(cfg, export)
    save_file(ToyTask(cfg).build_model().state_dict(), str(export / "model.safetensors"))
    truncate(export / "model.safetensors")
    with pytest.raises(CorruptFileError, match="export/model.safetensors.*truncated or damaged"):
        load_exported(export, task="toy")

    rig_dir = tmp_path / "rig"
    rig_dir.mkdir()
    (rig_dir / "rig.json").write_text(json.dumps({"format_version": RIG_FORMAT_VERSION}))
    save_file({"means": torch.zeros(10, 3)}, str(rig_dir / "rig.safetensors"))
    truncate(rig_dir / "rig.safetensors", 0.3)
    with pytest.raises(CorruptFileError, match="rig.safetensors"):
        GaussianRig.load(rig_dir)


# ------------------------------------------------------------------------------------------------
# 3. resume verifies checkpoints and falls back
# ------------------------------------------------------------------------------------------------


def toy_cfg(*extra):
    return build_config("tiny", ["train.log_every=1", "train.warmup_steps=1", "train.lr=3e-3",
                                 "data.batch_size=4", "train.val_every=0", "train.ckpt_every=2",
                                 "train.keep_last=3", *extra])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    run_training(ToyTask(toy_cfg("train.max_steps=4")), out)
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def flip_block(path: Path, offset: int = 4096, size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    offset = min(offset, max(0, len(data) - size))
    for i in range(offset, min(offset + size, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checkpoints_carry_checksums(toy_run):
    for _, ckpt in list_checkpoints(toy_run / "checkpoints"):
        sums = json.loads((ckpt / "checksums.json").read_text())["files"]
        assert "optimizer.safetensors" in sums and "trainer_state.json" in sums
        assert verify_checkpoint(ckpt) is None


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_resume_latest_falls_back_past_a_damaged_checkpoint(toy_run, tmp_path, caplog, damage):
    out = _copy_run(toy_run, tmp_path / "run")
    latest = out / "checkpoints" / "step_0000004"
    opt = latest / "optimizer.safetensors"
    flip_block(opt) if damage == "flip" else truncate(opt)
    assert "optimizer.safetensors" in verify_checkpoint(latest)
    with caplog.at_level(logging.WARNING):
        run_training(ToyTask(toy_cfg("train.max_steps=5")), out, resume="latest")
    assert "step_0000004 is damaged" in caplog.text and "falling back" in caplog.text
    entry = json.loads((out / "run.json").read_text())["runs"][-1]
    assert entry["resumed_from"].endswith("step_0000002") and entry["resume_requested"] == "latest"
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"resume"' in line][-1]["step"] == 2


def test_damaged_explicit_checkpoint_and_nothing_valid_are_errors(toy_run, tmp_path):
    out = _copy_run(toy_run, tmp_path / "run")
    for _, ckpt in list_checkpoints(out / "checkpoints"):
        truncate(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="step_0000002.*damaged"):
        resolve_resume(str(out / "checkpoints" / "step_0000002"), out / "checkpoints")
    with pytest.raises(CheckpointError, match="no checkpoint .* passes its integrity check"):
        resolve_resume("latest", out / "checkpoints")
    rc = main(["train", "toy", "--out", str(out), "--resume", "latest", "train.max_steps=5"])
    assert rc == 1


# ------------------------------------------------------------------------------------------------
# 4./5. shard folders are checked before any run folder exists
# ------------------------------------------------------------------------------------------------


def s2au_cfg(root, *extra):
    return build_config("tiny", [f"data.root={root}", "audio.n_mels=16", "s2au.d_model=16", "s2au.n_heads=2",
                                 "s2au.local_layers=1", "s2au.global_layers=1", "s2au.calib_dim=8",
                                 "data.batch_size=3", "data.window_frames=20", "data.shuffle_buffer=0",
                                 "train.max_steps=4", "train.val_every=0", "train.log_every=1",
                                 "train.ckpt_every=100", "train.warmup_steps=1", *extra])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny_shards(tmp_path_factory.mktemp("s2au") / "shards", clips_per_identity=2, seconds=1.2)


def _damaged_copy(shards: Path, dst: Path, strip_sha: bool) -> tuple[Path, str]:
    import shutil

    shutil.copytree(shards, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    train = [s for s in manifest["shards"] if s["kind"] == "seq" and s["split"] == "train"]
    truncate(dst / train[0]["name"])
    if strip_sha:
        for s in manifest["shards"]:
            s.pop("sha256")
        (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst, train[0]["name"]


def test_truncated_train_shard_fails_before_training(shards, tmp_path, capsys):
    root, bad = _damaged_copy(shards, tmp_path / "shards", strip_sha=False)
    out = tmp_path / "run"
    rc = main(["train", "s2au", "--data", str(root), "--out", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert bad in err and "checksum" in err
    assert not out.exists()


def test_unverifiable_shards_count_skips_report_and_fail_past_the_limit(shards, tmp_path, caplog):
    root, bad = _damaged_copy(shards, tmp_path / "shards", strip_sha=True)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(DataSkipError, match="max_skip_fraction"):
            run_training(get_s2au(s2au_cfg(root, "data.max_skip_fraction=0.01")), tmp_path / "strict")
    assert "cannot be verified" in caplog.text and bad in caplog.text
    entry = json.loads((tmp_path / "strict" / "run.json").read_text())["runs"][-1]
    assert entry["skipped"]["corrupt_samples"] >= 1
    # a generous limit trains, and still records what was skipped
    run_training(get_s2au(s2au_cfg(root, "data.max_skip_fraction=1")), tmp_path / "lenient")
    entry = json.loads((tmp_path / "lenient" / "run.json").read_text())["runs"][-1]
    assert entry["skipped"]["corrupt_samples"] >= 1 and entry["samples_read"] == 4 * 3


def get_s2au(cfg):
    from emodifftalk.train.task import get_task

    return get_task("s2au", cfg)


@pytest.mark.parametrize("layout", ["empty", "no_manifest", "missing"])
def test_train_data_without_manifest_is_one_clear_line(tmp_path, capsys, caplog, layout):
    data = tmp_path / "data"
    if layout != "missing":
        data.mkdir()
    if layout == "no_manifest":
        (data / "shard-000000.tar").write_bytes(b"x" * 1024)
    out = tmp_path / "runs" / "s2au"
    with caplog.at_level(logging.WARNING):
        rc = main(["train", "s2au", "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert str(data) in err[0] and ("manifest.json" in err[0] or "does not exist" in err[0])
    assert not out.exists()
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 1
    # inspect and rig reject it with the same checker
    from emodifftalk.data.shards import check_shard_folder

    with pytest.raises(FileNotFoundError, match=str(data)):
        check_shard_folder(data)
    assert main(["rig", str(data), str(tmp_path / "rigs")]) == 1


# ------------------------------------------------------------------------------------------------
# 6. full / read-only output: one line naming the path
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_unwritable_out_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys, code):
    import tempfile

    import emodifftalk.commands.synth as synth
    from emodifftalk.utils import ensure_writable

    def refuse(*a, **k):
        raise OSError(code, os.strerror(code), str(Path(k.get("dir", "?")) / ".write-test-x"))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(OSError, match=f"cannot write to {tmp_path}.*{os.strerror(code)}"):
        ensure_writable(tmp_path)
    monkeypatch.undo()

    def fails_midway(args):  # the error an OS gives mid-write, sometimes without a file name
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(synth, "run", fails_midway)
    out = tmp_path / "raw"
    assert main(["synth", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and os.strerror(code) in err[0], err


def test_animate_checks_out_before_loading_models(tmp_path, monkeypatch, capsys):
    from emodifftalk.pipeline import animate as pipeline

    monkeypatch.setattr(pipeline, "load_models", lambda *a, **k: pytest.fail("models loaded before checks"))
    rc = main(["animate", str(tmp_path / "nope"), str(REPO / "examples" / "speech.wav"), "--out",
               str(tmp_path / "anim"), "--model", str(tmp_path)])
    assert rc == 1 and "RIG_DIR" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# 7. a killed run's temp folder is removed by the next run
# ------------------------------------------------------------------------------------------------


def test_killed_run_temp_folder_is_cleaned_by_the_next(tmp_path):
    from emodifftalk.utils import atomic_dir

    final = tmp_path / "anim"
    code = ("import os, signal, sys\nfrom emodifftalk.utils import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'video.mp4').write_bytes(b'x' * 100000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(final)], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -9
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-anim-")]
    assert len(stale) == 1
    other_host = tmp_path / ".tmp-anim-otherhost-1-abc"
    other_host.mkdir()
    live = tmp_path / f".tmp-anim-{socket.gethostname()}-{os.getpid()}-abc"
    live.mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "ok").write_text("1")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert stale[0].name not in left
    assert other_host.name in left and live.name in left  # not provably dead: kept
    assert (final / "ok").is_file()


# ------------------------------------------------------------------------------------------------
# 8. input problems are said, naming the file
# ------------------------------------------------------------------------------------------------


def test_edits_past_the_end_of_the_audio_are_reported(tmp_path, caplog):
    from emodifftalk.edits import load_edits
    from emodifftalk.pipeline.animate import warn_edits_outside_audio

    path = tmp_path / "edits.json"
    path.write_text(json.dumps({"AU12": {"offset": 0.3, "start": 5.0, "end": 6.0},
                                "AU01": {"keyframes": [[1.0, 0.0], [2.0, 0.5]]}}))
    with caplog.at_level(logging.WARNING):
        warnings = warn_edits_outside_audio(load_edits(path), 3.2, str(path))
    assert len(warnings) == 1 and str(path) in warnings[0] and "AU12" in warnings[0]
    assert "after the audio ends" in caplog.text


def test_nan_audio_error_names_the_file(tmp_path):
    import soundfile as sf

    from emodifftalk.pipeline.animate import AnimateError, load_audio_16k

    path = tmp_path / "speech.wav"
    audio = np.sin(np.linspace(0, 200, 16000)).astype(np.float32)
    audio[100] = np.nan
    sf.write(str(path), audio, 16000, subtype="FLOAT")
    with pytest.raises(AnimateError, match=f"{path}.*NaN"):
        load_audio_16k(path)


def _openface(path: Path, rows: list[tuple[int, float, float]]) -> Path:
    """An OpenFace 2.x CSV; every AU intensity 0 except AU12_r."""
    from emodifftalk.data.openface import REQUIRED_COLUMNS

    aus = [c for c in REQUIRED_COLUMNS if c.endswith("_r")]
    lines = [", ".join(["frame", "face_id", "timestamp", "confidence", "success", *aus])]
    for f, t, v in rows:
        lines.append(", ".join([str(f), "0", f"{t:.3f}", "0.98", "1"] + [str(v) if a == "AU12_r" else "0" for a in aus]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_openface_out_of_range_warns_and_duplicate_frames_fail(tmp_path, caplog):
    from emodifftalk.data.openface import OpenFaceError, read_openface_csv

    path = _openface(tmp_path / "of.csv", [(1, 0.0, 1.0), (2, 0.04, 7.5), (3, 0.08, -0.5)])
    with caplog.at_level(logging.WARNING):
        aus = read_openface_csv(path)
    assert str(path) in caplog.text and "AU12_r: 2" in caplog.text and "clipped" in caplog.text
    assert aus.aus.max() == 1.0
    dup = _openface(tmp_path / "dup.csv", [(1, 0.0, 1.0), (2, 0.04, 2.0), (2, 0.08, 2.0)])
    with pytest.raises(OpenFaceError, match=f"{dup}.*frame number 2 appears 2 times"):
        read_openface_csv(dup)


def test_busy_viewer_port_is_an_error(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc = main(["view", str(tmp_path), "--port", str(port)])
    assert rc == 1
    assert f"--port {port}" in capsys.readouterr().err
