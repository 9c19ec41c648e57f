"""The README's "pieces by hand" commands, run as written (plus the smallest-settings overrides)
in a fresh folder, one CLI process each, in order: synth → pack → inspect → preview → rig → train
s2au/motion → text2au train → eval s2au/motion → animate (examples/speech.wav + examples/edits.json)
→ view (started, answered, stopped). The fast suite's ``test_first_hour.py`` checks that the same
commands parse and that the files they name exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from emodifftalk.cli import build_parser, parse_args

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from test_first_hour import readme_commands  # noqa: E402

SMALLEST = [
    "synth.n_identities=3", "synth.clips_per_identity=1", "synth.clip_seconds=2", "synth.n_cameras=3",
    "synth.image_size=32", "synth.mesh_resolution=12", "synth.n_free_points=100", "rig.steps=5",
    "rig.n_free_points=50", "rig.holdout_camera=2", "feature_line.steps=3", "train.max_steps=4",
    "train.ckpt_every=4", "train.val_every=4", "train.log_every=2", "train.warmup_steps=1", "text2au.epochs=1",
    "text2au.encoder=hashing", "data.batch_size=4", "infer.image_size=32",
]
# smallest settings of the verbs whose work is not set by a config
EXTRA = {"eval motion": ["--max-clips", "1", "--methods", "ddim-10,template"], "eval rig": ["--max-frames", "1"],
         "rig": ["--num-cpus", "1"]}


def _pieces_by_hand() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("### The pieces by hand", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return readme_commands("```bash" + section + "```")


def _run(argv: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RAY_TMPDIR": "/tmp/ray_rw"}
    return subprocess.run([sys.executable, "-m", "emodifftalk.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_readme_pieces_by_hand_run_as_written(tmp_path):
    (tmp_path / "examples").symlink_to(REPO / "examples")  # a fresh clone has them next to README.md
    parser = build_parser()
    commands = _pieces_by_hand()
    assert [c[0] for c in commands][:3] == ["synth", "pack", "inspect"]
    for argv in commands:
        key = " ".join(argv[:2]) if argv[0] == "eval" else argv[0]
        argv = [*argv, *EXTRA.get(key, [])]
        if hasattr(parse_args(argv, parser), "overrides") and argv[0] != "eval":
            argv = [*argv, *SMALLEST]
        if argv[0] == "view":
            _check_view(argv, tmp_path)
            continue
        res = _run(argv, tmp_path)
        assert res.returncode == 0, f"emodifftalk {' '.join(argv)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    anim = json.loads((tmp_path / "anim" / "animation.json").read_text())
    assert anim["n_frames"] > 50 and anim["text"]["text"] == "a nervous smile" and not anim["warnings"]
    assert (tmp_path / "anim" / "video.mp4").stat().st_size > 0 and list((tmp_path / "anim" / "ply").glob("*.ply"))
    assert (tmp_path / "rigs" / "id000" / "rig.ply").is_file()
    assert (tmp_path / "results" / "eval-motion" / "motion_eval.json").is_file()


def _check_view(argv: list[str], cwd: Path) -> None:
    import socket

    with socket.socket() as s:  # a free port, so a viewer left running elsewhere cannot interfere
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "emodifftalk.cli", *argv, "--port", str(port)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        lines = []
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if "EmoDiffTalk viewer:" in line:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=30) as r:
                    assert r.status == 200
                return
        pytest.fail("viewer did not start:\n" + "".join(lines[-40:]))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
