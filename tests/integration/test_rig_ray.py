"""Rig reconstruction from shards: the plain task, local Ray with a broken identity, and a
``ray job submit`` to a separately started Ray head (slow)."""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emodifftalk.config import build_config
from emodifftalk.rig.gaussians import GaussianRig, is_complete

RIG_OVERRIDES = ["rig.steps=4", "rig.n_free_points=40", "rig.triplane_resolution=8", "rig.log_images_every=0"]
BROKEN = "id001"


def _cfg():
    return build_config("tiny", RIG_OVERRIDES)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Tiny synthetic shards of 3 identities; id001's neutral image of cam00 has the wrong size."""
    from PIL import Image

    from emodifftalk.data.shards import pack_dataset
    from emodifftalk.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("rigdata")
    cfg = build_config("tiny", ["synth.n_identities=3", "synth.clips_per_identity=1", "synth.clip_seconds=0.4",
                                "synth.image_size=32", "synth.mesh_resolution=10", "synth.n_free_points=60",
                                "synth.n_cameras=3"])
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        raw = generate_dataset(cfg.synth, root / "raw", progress=False)
    finally:
        torch.set_num_threads(n)
    bad = min((raw / BROKEN).glob("*/images/*/00000.png"))
    Image.fromarray(np.zeros((20, 32, 3), np.uint8)).save(bad)
    return pack_dataset(raw, root / "shards", cfg)


def test_plain_task_without_ray(shards, tmp_path):
    from emodifftalk.distributed.ray_jobs import list_identities, load_identity, rig_identity_from_shards

    assert list_identities(shards) == ["id000", "id001", "id002"]
    frames, template = load_identity(shards, "id000")
    assert frames and all(s["key"].startswith("id000__") for s in frames) and template["key"] == "id000__template"
    cfg_dict = _cfg().to_dict()
    rec = rig_identity_from_shards(str(shards), "id000", str(tmp_path), cfg_dict)
    assert rec["status"] == "ok", rec
    assert is_complete(tmp_path / "id000") and rec["psnr_holdout"] > 5
    assert GaussianRig.load(tmp_path / "id000").n_free <= 40
    again = rig_identity_from_shards(str(shards), "id000", str(tmp_path), cfg_dict)
    assert again["status"] == "skipped" and again["psnr_holdout"] == pytest.approx(rec["psnr_holdout"])
    bad = rig_identity_from_shards(str(shards), BROKEN, str(tmp_path), cfg_dict)
    assert bad["status"] == "failed" and "no neutral frame" in bad["error"]
    assert "camera says 32x32" in bad["error"]  # the skipped sample's reason is in the message
    assert not (tmp_path / BROKEN).exists()
    (tmp_path / "id002").mkdir()  # something that is not a rig: never replaced without --overwrite
    (tmp_path / "id002" / "notes.txt").write_text("mine")
    other = rig_identity_from_shards(str(shards), "id002", str(tmp_path), cfg_dict)
    assert other["status"] == "failed" and "not a complete rig" in other["error"]
    assert (tmp_path / "id002" / "notes.txt").read_text() == "mine"


def test_local_ray_one_identity_broken(shards, tmp_path, capsys):
    import ray

    from emodifftalk.cli import main

    out = tmp_path / "rigs"
    rc = main(["rig", str(shards), str(out), "--identities", f"id000,{BROKEN}", "--num-cpus", "2",
               "--no-progress", *RIG_OVERRIDES])
    printed = capsys.readouterr().out
    assert rc == 1
    assert not ray.is_initialized()  # the local Ray we started is shut down
    summary = {r["identity"]: r for r in json.loads((out / "rig_summary.json").read_text())}
    assert summary["id000"]["status"] == "ok" and is_complete(out / "id000")
    assert summary[BROKEN]["status"] == "failed" and "no neutral frame" in summary[BROKEN]["error"]
    assert re.search(rf"^{BROKEN}\s+failed\s.*no neutral frame", printed, re.MULTILINE), printed
    assert re.search(r"^id000\s+ok\s", printed, re.MULTILINE) and "1 identity failed: id001" in printed
    assert (out / "logs" / "id000").is_dir()
    # idempotent: the finished identity is skipped, an unknown one fails clearly, no Ray needed
    from emodifftalk.distributed.ray_jobs import run_rig_jobs

    recs = run_rig_jobs(shards, out, _cfg(), identities=["id000", "nobody"], progress=False)
    assert [r["status"] for r in recs] == ["skipped", "failed"]
    assert "not in" in recs[1]["error"] and not ray.is_initialized()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_dashboard(url: str, head: subprocess.Popen, timeout: float = 180.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=5):
                return
        except urllib.error.HTTPError:  # e.g. 401 without a token: the server is up
            return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"Ray dashboard at {url} did not come up in {timeout} s")


@pytest.mark.slow
def test_ray_job_submit_to_a_started_head(shards, tmp_path):
    """``ray start --head --block`` in its own process group (so the finally stops exactly this
    cluster, not other Ray instances on the machine), then ``ray job submit`` the rig command."""
    bindir = Path(sys.executable).parent
    ray_cli = str(bindir / "ray")
    port, dash_port = _free_port(), _free_port()
    tmp = f"/tmp/ray_t{port}"  # short: Ray's socket paths must stay < 108 bytes
    env = dict(os.environ, RAY_TMPDIR=tmp, PATH=f"{bindir}:{os.environ['PATH']}")
    # Ray 2.5x+: a new cluster uses token auth when ~/.ray/auth_token exists (any earlier local
    # ray.init() writes it) and `ray job submit` must then send it. Asking for token mode makes
    # head and CLI agree either way (the head creates the token file if it is missing).
    env["RAY_AUTH_MODE"] = "token"
    Path(tmp).mkdir(parents=True, exist_ok=True)
    out = tmp_path / "rigs"
    dashboard = f"http://127.0.0.1:{dash_port}"
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--disable-usage-stats",
         "--include-dashboard=true", f"--dashboard-port={dash_port}", "--dashboard-host=127.0.0.1",
         f"--temp-dir={tmp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_dashboard(dashboard, head)
        job = subprocess.run(
            [ray_cli, "job", "submit", f"--address={dashboard}", "--",
             str(bindir / "emodifftalk"), "rig", str(shards), str(out), "--identities", "id000,id002",
             "--no-progress", *RIG_OVERRIDES],
            env=env, capture_output=True, text=True, timeout=600, check=False)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert is_complete(out / "id000") and is_complete(out / "id002")
        assert "succeeded" in (job.stdout + job.stderr).lower()
    finally:
        _stop_group(head)
        shutil.rmtree(tmp, ignore_errors=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the Ray head we started: SIGTERM to ``ray start --block`` makes it shut down its own
    processes (raylet, GCS, workers); SIGKILL to its process group only if that hangs."""
    import signal

    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
