"""benchmarks/gpu_check.py: its CPU dry run (same code paths as on a GPU, tiny sizes) and its
isolation of failing, crashing and hanging checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
# zero2 (a CPU DeepSpeed launch, ~30 s) runs in the slow test; the trainer's tests cover CPU ZeRO-2
FAST = "env,gsplat_build,train_s2au,train_motion,train_text2au,loader,render,rig,animate"


def run_check(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 300) -> tuple[int, dict, str]:
    out = tmp_path / "gpu_check.json"
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    assert out.is_file(), proc.stdout + proc.stderr
    return proc.returncode, json.loads(out.read_text()), proc.stdout


def assert_dry_run_passes(rc: int, report: dict, stdout: str, names: list[str]) -> None:
    checks = report["checks"]
    assert list(checks) == names
    not_ok = {n: c.get("error") or c.get("skipped") for n, c in checks.items() if c["status"] != "ok"}
    assert not_ok == {"gsplat_build": not_ok.get("gsplat_build")} and "CUDA" in not_ok["gsplat_build"], not_ok
    assert rc == 0 and report["dry_run"] and report["counts"]["ok"] == len(names) - 1
    for case in checks["render"]["cases"]:  # the tile renderer against the independent baseline design
        assert case["within_tolerance"] and case["coverage"] > 0.05, case
        assert case["torch_fps"] > 0 and case["baseline_fps"] > 0
    for task in ("s2au", "motion", "text2au"):
        r = checks[f"train_{task}"]
        assert r["fp32"]["finite"] and r["bf16"]["finite"] and r["fp32"]["steps"] == report["sizes"]["train_steps"]
        assert r["fp32"]["samples_per_s"] > 0 and 0 <= r["fp32"]["data_wait_fraction"] < 1
        assert r["first_window_loss_rel_diff"] == 0.0  # the loop trains in fp32 on CPU: same numbers
    assert {x["task"] for x in checks["loader"]["runs"]} == {"s2au", "motion"}
    assert all(0 <= x["gpu_idle_fraction"] < 1 for x in checks["loader"]["runs"])
    assert [x["preset"] for x in checks["rig"]["runs"]] == ["tiny", "paper"]
    assert all(x["steps_per_second"] > 0 for x in checks["rig"]["runs"])
    anim = checks["animate"]
    assert set(anim["rtf"]) == {"aus", "diffusion", "render", "encode"} and anim["frames"] == 25
    assert "render" in stdout and "RTF" in stdout  # the printed summary


def test_dry_run(tmp_path):
    rc, report, stdout = run_check(tmp_path, "--dry-run", "--only", FAST, "--work", str(tmp_path / "work"))
    assert_dry_run_passes(rc, report, stdout, FAST.split(","))


@pytest.mark.slow
def test_dry_run_everything(tmp_path):
    rc, report, stdout = run_check(tmp_path, "--dry-run")
    names = [p["name"] for p in report["plan"]]
    assert_dry_run_passes(rc, report, stdout, names)
    z = report["checks"]["zero2"]
    assert z["zero_stage"] == 2 and z["distributed_type"].endswith("DEEPSPEED")


def test_failing_crashing_and_hanging_checks_are_recorded_and_the_run_stops_in_budget(tmp_path):
    assets = tmp_path / "assets" / "shards"
    assets.mkdir(parents=True)
    (assets / "manifest.json").write_text("{}")  # the checks fail before they read it
    faults = {"EMODIFFTALK_GPU_CHECK_FAULT": "env=raise,train_s2au=crash,render=hang"}
    # budget scale 0.1: render (90 s on a GPU) is stopped after 9 s
    rc, report, _ = run_check(tmp_path, "--dry-run", "--assets", str(assets.parent), "--budget-scale", "0.1",
                              "--only", "env,train_s2au,render", env=faults)
    checks = report["checks"]
    assert {n: c["status"] for n, c in checks.items()} == {"env": "failed", "train_s2au": "crashed",
                                                           "render": "timeout"}
    assert "injected fault" in checks["env"]["error"] and 9 <= checks["render"]["seconds"] < 9 + 10
    assert rc == 1
    # a total budget smaller than any check: nothing runs, every check says why, and the run fails
    rc, report, _ = run_check(tmp_path, "--dry-run", "--assets", str(assets.parent), "--budget", "3",
                              "--only", "env,rig")
    assert [c["status"] for c in report["checks"].values()] == ["not_run", "not_run"] and rc == 1
