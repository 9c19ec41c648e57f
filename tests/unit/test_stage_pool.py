"""The demo's side-by-side training stages: failures name the stage and show its log; skips need output."""

import pytest

from emodifftalk.config import build_config
from emodifftalk.pipeline.stage_pool import default_jobs, run_training_stages


def test_a_failing_stage_names_itself_and_shows_its_log(tmp_path):
    cfg = build_config("tiny", [f"data.root={tmp_path / 'no_shards'}"])
    with pytest.raises(RuntimeError, match=r"demo stage s2au failed") as err:
        run_training_stages({"s2au": tmp_path / "runs" / "s2au" / "export"}, cfg, tmp_path / "runs", jobs=1)
    assert "last lines of" in str(err.value) and str(tmp_path / "runs" / "s2au.log") in str(err.value)
    assert (tmp_path / "runs" / "s2au.log").read_text().strip(), "the stage's output goes to its log"


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
