"""s2au task through the shared trainer: batches, loss, export, predict_aus(model_dir), eval s2au."""

import json

import numpy as np
import pytest
import torch
from s2au_data import write_tiny_shards

from emodifftalk.au import AU_INDEX
from emodifftalk.config import build_config
from emodifftalk.train.task import get_task


def tiny_cfg(root, *extra):
    return build_config("tiny", [f"data.root={root}", "audio.n_mels=16", "s2au.d_model=16", "s2au.n_heads=2",
                                 "s2au.local_layers=1", "s2au.global_layers=1", "s2au.calib_dim=8",
                                 "data.batch_size=3", "data.window_frames=20", "data.shuffle_buffer=4",
                                 "train.max_steps=3", "train.val_every=3", "train.log_every=1",
                                 "train.ckpt_every=100", "train.warmup_steps=1", *extra])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny_shards(tmp_path_factory.mktemp("s2au") / "shards", clips_per_identity=1, seconds=1.2)


def test_batches_and_loss(shards):
    cfg = tiny_cfg(shards)
    task = get_task("s2au", cfg)
    it = task.train_batches(rank=0, world_size=1, seed=0, start_step=0)
    b = next(it)
    assert b["feats"].shape[0] == 3 and b["feats"].shape[2] == 16 + 2  # n_mels + level channels
    assert b["aus"].shape == (3, 20, 17) and b["frame_mask"].all()
    assert b["feats"].shape[1] == 40  # 20 frames at 25 fps = 40 feature frames at 50 Hz
    assert torch.all(b["fps"] == 25.0) and torch.all(b["n_frames"] == 20)
    # deterministic in (seed, rank), different across ranks
    again = next(task.train_batches(0, 1, 0, 0))
    other = next(task.train_batches(1, 2, 0, 0))
    assert torch.equal(again["feats"], b["feats"])
    assert not torch.equal(other["feats"], b["feats"])
    model = task.build_model()
    terms = task.loss(model, b, step=0)
    assert set(terms) == {"loss", "reg", "temp"} and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_missing_data_root_is_a_clear_error():
    task = get_task("s2au", build_config("tiny"))
    with pytest.raises(ValueError, match="--data"):
        next(task.train_batches(0, 1, 0, 0))


def test_train_export_predict_eval(shards, tmp_path, capsys):
    from emodifftalk.cli import main
    from emodifftalk.s2au.inference import load_s2au, predict_aus
    from emodifftalk.train.loop import run_training

    cfg = tiny_cfg(shards)
    export = run_training(get_task("s2au", cfg), tmp_path / "run")
    meta = json.loads((export / "s2au.json").read_text())
    assert meta["in_dim"] == 16 + 2 and meta["encoder_id"].startswith("mel")
    assert meta["unlabelled_aus"] == ["AU24"], "the OpenFace-style shards never label AU24"
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/au_mae" in m for m in metrics)
    bundle = load_s2au(export)
    audio = 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    out = predict_aus(audio, sample_rate=16000, fps=30.0, model_dir=export)
    assert out.shape == (30, 17)
    # an untrained head gives arbitrary values; the pipeline gets 0, what the motion model trains on
    assert np.all(out[:, AU_INDEX["AU24"]] == 0) and np.any(out[:, AU_INDEX["AU25"]] > 0)
    np.testing.assert_allclose(predict_aus(audio, sample_rate=16000, fps=30.0, model=bundle), out, atol=1e-6)

    report_path = tmp_path / "metrics.json"
    rc = main(["eval", "s2au", "--model", str(export), "--data", str(shards), "--out", str(report_path)])
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert set(report["results"]) == {"val", "test", "overall"}
    assert set(report["results"]["overall"]) == {"s2au", "train_mean", "train_median", "ridge"}
    assert set(report["beats_baselines"]) == {"train_mean", "train_median", "ridge"}
    assert set(report["beats_baselines"]["ridge"]) == {"mean", "mean_speech"}
    # labels of the tiny data: AU25/26 are on/off envelopes, AU12 a per-identity constant 0.1..0.3
    assert report["train_median"][13] == 0.0  # AU24: no labels
    assert 0.05 < report["train_mean"][8] < 0.35
    assert report["excluded_aus"] == ["AU24"]
    assert report["results"]["test"]["s2au"]["per_au"]["AU24"]["mae"] is None
    assert report["n_clips"] == {"val": 1, "test": 1} and report["n_train_clips"] == 3
    rc = main(["eval", "s2au", "--model", str(export), "--data", str(shards), "--split", "test"])
    assert rc == 0
    # a different audio encoder than the export's is refused
    capsys.readouterr()
    assert main(["eval", "s2au", "--model", str(export), "--data", str(shards), "audio.n_mels=20"]) == 1
    assert "trained on features from" in capsys.readouterr().err
