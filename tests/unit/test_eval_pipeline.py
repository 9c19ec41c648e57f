"""``eval pipeline`` end to end on a tiny packed set: s2au + diffusion + regression + faceformer runs
(a few steps each), every method through audio → Speech-to-AU → motion → mesh, the report's keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
from diffusion_fixtures import make_motion_raw, tiny_motion_config

from emodifftalk.au import AU_NAMES
from emodifftalk.eval.lip_closure import closure_counts, f1_of, frame_labels

PHONES = [["", 0.0, 0.1], ["m", 0.1, 0.3], ["a", 0.3, 0.7], ["p", 0.7, 0.8], ["i", 0.8, 1.1], ["", 1.1, 1.2]]


def test_lip_closure_labels_and_counts():
    speech, bilabial = frame_labels(PHONES, 30, 25.0)
    assert not speech[0] and speech[5] and not speech[-1]  # frame 0 is in the pause, 29 too
    assert bilabial[4] and bilabial[17] and not bilabial[12] and not bilabial[24]  # m, p vs a, i
    true_open = np.where(bilabial, 0.0, 0.004)
    perfect = closure_counts(true_open, true_open, speech, bilabial)
    assert f1_of(perfect) == 1.0 and perfect["bilabial_frames"] == bilabial.sum()
    never = closure_counts(np.full(30, 0.004), true_open, speech, bilabial)
    assert f1_of(never) == 0.0 and never["fn"] == bilabial.sum()
    always = closure_counts(np.zeros(30), true_open, speech, bilabial)
    assert 0 < f1_of(always) < 1 and always["fp"] == (speech & ~bilabial).sum()


@pytest.fixture(scope="module")
def runs_and_shards(tmp_path_factory):
    from emodifftalk.config import build_config
    from emodifftalk.data.shards import pack_dataset
    from emodifftalk.train.loop import run_training
    from emodifftalk.train.task import get_task

    tmp = tmp_path_factory.mktemp("pipeline")
    raw = make_motion_raw(tmp / "raw", regional=True)
    for meta in raw.glob("*/clip*/meta.json"):  # the v2 world writes phone timelines; so does this fixture
        m = json.loads(meta.read_text())
        meta.write_text(json.dumps(dict(m, phones=PHONES)))
    shards = pack_dataset(raw, tmp / "shards", build_config(
        "tiny", ["data.val_identity_fraction=0.2", "data.test_identity_fraction=0.2"]))
    steps = ["train.max_steps=2", "train.val_every=100", "train.ckpt_every=100", "train.log_every=1"]
    s2au = build_config("tiny", [f"data.root={shards}", "audio.n_mels=16", "s2au.d_model=16", "s2au.n_heads=2",
                                 "s2au.local_layers=1", "s2au.global_layers=1", "s2au.calib_dim=8",
                                 "data.batch_size=2", "data.window_frames=12", "train.warmup_steps=1", *steps])
    runs = tmp / "runs"
    run_training(get_task("s2au", s2au), runs / "s2au")
    for name, extra in (("diffusion", []), ("regression", ["motion.model=regression"]),
                        ("faceformer", ["motion.model=faceformer", "faceformer.d_model=32",
                                        "faceformer.vertex_embed_rank=8"])):
        run_training(get_task("motion", tiny_motion_config(shards, *steps, *extra)), runs / name)
    return runs, shards, raw


def test_pipeline_eval_every_method(runs_and_shards, tmp_path, capsys):
    from emodifftalk.cli import main

    runs, shards, _ = runs_and_shards
    out = tmp_path / "eval"
    assert main(["eval", "pipeline", "--models", str(runs), "--data", str(shards), "--out", str(out),
                 "--samples", "2", "--au-clips", "0"]) == 0
    assert f"wrote {out / 'pipeline_eval.json'}" in capsys.readouterr().out
    report = json.loads((out / "pipeline_eval.json").read_text())
    assert report["methods"] == ["diffusion", "regression", "faceformer", "template"]
    assert (out / "pipeline_eval.md").read_text().startswith("Full pipeline")
    for name, r in report["results"].items():
        for key in ("lve_mm", "fdd_abs", "mod", "lip_closure_f1", "upper_face_diversity_mm"):
            assert r[key] is not None and np.isfinite(r[key]), (name, key)
    res = report["results"]
    assert res["diffusion"]["upper_face_diversity_mm"] > 0  # different seeds, different samples
    for deterministic in ("regression", "faceformer", "template"):
        assert res[deterministic]["upper_face_diversity_mm"] == pytest.approx(0.0, abs=1e-9)
    assert report["lip_closure"]["tracked_meshes_f1"] in (None, 1.0)


def test_pipeline_au_edit_response_covers_every_au(runs_and_shards):
    from emodifftalk.eval.pipeline import run_pipeline_eval

    runs, shards, raw = runs_and_shards
    report = run_pipeline_eval(runs, shards, splits=("test",), max_clips=1, au_clips=1, diversity_samples=1,
                               progress=False, fields_of=lambda ident: np.load(raw / ident / "au_fields.npy"))
    for name in ("diffusion", "regression"):
        per_au = report["results"][name]["au_edit_response"]["per_au"]
        assert set(per_au) == set(AU_NAMES)
        assert all(np.isfinite(v["gain"]) and np.isfinite(v["cosine"]) for v in per_au.values())
    assert "au_edit_response" not in report["results"]["faceformer"]
    with pytest.raises(ValueError, match="Speech-to-AU"):
        run_pipeline_eval(runs / "diffusion", shards)


def test_au_edit_clips_are_spread_over_identities():
    from emodifftalk.eval.pipeline import spread_over_identities

    ids = ["a", "a", "a", "b", "b", "c"]
    assert spread_over_identities(ids, 3) == [0, 3, 5]  # one clip of each identity first
    assert spread_over_identities(ids, 4) == [0, 1, 3, 5]
    assert spread_over_identities(ids, 10) == list(range(6))
    assert spread_over_identities(ids, 0) == []
