"""The demo's side-by-side training stages: failures name the stage and show its log; skips need output."""

import time

import pytest

from emodifftalk.config import build_config
from emodifftalk.pipeline.stage_pool import default_jobs, run_training_stages


def test_a_failing_stage_names_itself_and_shows_its_log(tmp_path):
    cfg = build_config("tiny", [f"data.root={tmp_path / 'no_shards'}"])
    with pytest.raises(RuntimeError, match=r"demo stage s2au failed") as err:
        run_training_stages({"s2au": tmp_path / "runs" / "s2au" / "export"}, cfg, tmp_path / "runs", jobs=1)
    assert "last lines of" in str(err.value) and str(tmp_path / "runs" / "s2au.log") in str(err.value)
    assert (tmp_path / "runs" / "s2au.log").read_text().strip(), "the stage's output goes to its log"


def _fail_fast_or_sleep(name, cfg, out):
    """A stand-in stage: ``s2au`` fails at once, the others would run for a minute."""
    out.mkdir(parents=True)
    if name == "s2au":
        raise RuntimeError("broken on purpose")
    (out / "started").touch()
    time.sleep(60)
    (out / "finished").touch()


def test_a_failing_stage_stops_the_stages_beside_it(tmp_path):
    runs = tmp_path / "runs"
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"demo stage s2au failed"):
        run_training_stages({"motion": runs / "m", "s2au": runs / "s"}, build_config("tiny"), runs, jobs=2,
                            train_stage=_fail_fast_or_sleep)
    assert time.perf_counter() - t0 < 45, "the failure must not wait for the sleeping sibling"
    assert "broken on purpose" in (runs / "s2au.log").read_text()
    time.sleep(1)
    assert not (runs / "motion" / "finished").exists()


def _quick(name, cfg, out):
    out.mkdir(parents=True)
    time.sleep(0.5)


def test_finished_stages_are_timed_and_reported_once(tmp_path, capsys):
    runs = tmp_path / "runs"
    timings = run_training_stages({"motion": runs / "m", "s2au": runs / "s"}, build_config("tiny"), runs, jobs=2,
                                  train_stage=_quick)
    assert set(timings) == {"motion", "s2au", "train_wall"} and all(t >= 0.5 for t in timings.values())
    out = capsys.readouterr().out
    assert out.count("done in") == 2
    assert ": running" not in out, "status lines come once per quiet STATUS_EVERY_S, not while a stage exits"


def test_skipped_stages_need_their_earlier_export(tmp_path):
    cfg = build_config("tiny")
    with pytest.raises(FileNotFoundError, match="--skip-motion"):
        run_training_stages({"motion": tmp_path / "export"}, cfg, tmp_path, skip={"motion"})
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.safetensors").write_bytes(b"x")
    assert run_training_stages({"motion": tmp_path / "export"}, cfg, tmp_path, skip={"motion"}) == {}


def test_jobs_are_checked_and_capped():
    with pytest.raises(ValueError, match="--jobs"):
        run_training_stages({"s2au": None}, build_config("tiny"), None, jobs=0)
    assert default_jobs(3) == 3 and default_jobs(1) == 1 and default_jobs(5) == 3
