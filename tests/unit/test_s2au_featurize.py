"""featurize: feats.npy/feats.json added to every seq sample, manifest updated, cache checked."""

import hashlib
import json

import numpy as np
import pytest
import torch
from s2au_data import write_tiny_shards

from emodifftalk.config import Config
from emodifftalk.data.shards import iter_dataset
from emodifftalk.featurize import FeatureCacheMismatch, FeatureSource, featurize_shards
from emodifftalk.models.audio_frontend import build_frontend, encoder_id


def test_featurize_roundtrip(tmp_path):
    src = write_tiny_shards(tmp_path / "shards", clips_per_identity=1, seconds=1.0)
    cfg = Config()
    cfg.audio.n_mels = 24
    out = featurize_shards(src, tmp_path / "feats", cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["features"]["encoder_id"] == encoder_id(cfg.audio)
    assert manifest["features"]["dim"] == 24 + 2 and manifest["featurize_skipped"] == []  # + 2 level channels
    for shard in manifest["shards"]:  # sizes and digests describe the rewritten files
        data = (out / shard["name"]).read_bytes()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]
    before = {s["key"]: s for split in ("train", "val", "test") for s in iter_dataset(src, "seq", split)}
    after = {s["key"]: s for split in ("train", "val", "test") for s in iter_dataset(out, "seq", split)}
    assert before.keys() == after.keys() and len(after) == 5
    fe = build_frontend(cfg.audio)  # 24 mels + 2 level channels
    for key, s in after.items():
        assert s["feats"].shape == (50, 24 + 2)
        assert s["feats_meta"]["encoder_id"] == encoder_id(cfg.audio)
        np.testing.assert_array_equal(s["aus"], before[key]["aus"])
        ref = fe(torch.from_numpy(s["audio"])[None])[0].numpy()
        np.testing.assert_allclose(s["feats"], ref, atol=0.02)  # float16 storage
    with pytest.raises(FileExistsError):
        featurize_shards(src, tmp_path / "feats", cfg)
    with pytest.raises(ValueError, match="input folder"):
        featurize_shards(src, src, cfg, overwrite=True)


def test_feature_source_checks_the_encoder(tmp_path):
    src = write_tiny_shards(tmp_path / "shards", identities={"train": ["a"]}, clips_per_identity=1, seconds=1.0)
    cfg = Config()
    cfg.audio.n_mels = 24
    out = featurize_shards(src, tmp_path / "feats", cfg)
    sample = next(iter_dataset(out, "seq", "train"))
    assert FeatureSource(cfg)(sample).shape == (50, 24 + 2)
    other = Config()  # n_mels=80: a different encoder id
    with pytest.raises(FeatureCacheMismatch, match="featurize"):
        FeatureSource(other)(sample)
    raw = next(iter_dataset(src, "seq", "train"))  # no cache: computed on the fly
    np.testing.assert_allclose(FeatureSource(cfg)(raw), sample["feats"], atol=0.02)
