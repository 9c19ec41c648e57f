"""``emodifftalk eval motion`` end to end on tiny exports (diffusion + regression baseline)."""

from __future__ import annotations

import json

import pytest
from diffusion_fixtures import make_motion_shards, tiny_motion_config

from emodifftalk.cli import main
from emodifftalk.train.loop import run_training
from emodifftalk.train.tasks.motion import MotionTask


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("motion_eval")
    shards = make_motion_shards(tmp)
    common = ("train.max_steps=2", "train.val_every=0", "train.ckpt_every=2", "train.log_every=1")
    diff = run_training(MotionTask(tiny_motion_config(shards, *common)), tmp / "diff")
    reg = run_training(MotionTask(tiny_motion_config(shards, *common, "diffusion.regression=true")), tmp / "reg")
    return shards, diff, reg, tmp


def test_eval_motion_cli_writes_table_and_json(exports, capsys):
    shards, diff, reg, tmp = exports
    out = tmp / "report"
    rc = main(["eval", "motion", "--model", str(diff), "--data", str(shards), "--baseline", str(reg),
               "--out", str(out), "--split", "test", "--max-clips", "2"])
    assert rc == 0
    report = json.loads((out / "motion_eval.json").read_text())
    methods = report["methods"]
    # num_train_steps=20 in the fixture: DDIM-25/50 are not possible
    assert methods == ["ddpm-full", "ddim-10", "regression", "template"]
    for r in report["results"].values():
        for k in ("lve_mm", "lve_sq", "fdd", "fdd_abs", "mod", "rtf"):
            assert r[k] == r[k]  # not NaN
    # zero offsets: the template row's FDD equals the GT's own upper-face dynamics (pred has none)
    assert report["results"]["template"]["fdd"] > 0
    assert report["n_clips"] == 2
    md = (out / "motion_eval.md").read_text()
    assert "| ddpm-full |" in md and "| template |" in md
    assert "LVE (mm)" in capsys.readouterr().out


def test_eval_motion_rejects_non_regression_baseline(exports):
    shards, diff, _, _ = exports
    from emodifftalk.eval.motion import run_eval

    with pytest.raises(ValueError, match="regression"):
        run_eval(diff, shards, baseline=diff, max_clips=1)
    report = run_eval(diff, shards, methods=["ddim-10", "template"], max_clips=1, seed=3)
    again = run_eval(diff, shards, methods=["ddim-10", "template"], max_clips=1, seed=3)
    assert report["results"]["ddim-10"]["lve_mm"] == again["results"]["ddim-10"]["lve_mm"]
