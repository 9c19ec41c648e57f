"""The only local-Ray test of ingestion: same shards as the plain run, corrupt file reported."""

from __future__ import annotations

import json

import pytest
import smc_fixtures as fx

from emodifftalk.config import build_config
from emodifftalk.data.shards import load_manifest, validate_shards
from emodifftalk.ingest.clip import IngestOptions
from emodifftalk.ingest.ray_ingest import run_ingest
from emodifftalk.ingest.renderme360 import plan_renderme360


def test_ray_ingest_matches_the_plain_run(tmp_path):
    pytest.importorskip("ray")
    d = fx.make_dataset(tmp_path)
    cfg = build_config("tiny", ["data.frames_stride=1"])
    opts = IngestOptions.from_config(cfg, size=16, fps=30)
    tasks, skipped = plan_renderme360(d["smc"], d["openface"])
    kw = dict(name="rm", dataset="renderme360", discovery_skipped=skipped, progress=False)
    plain = run_ingest(tasks, tmp_path / "plain", cfg, opts, use_ray=False, **kw)
    ray_run = run_ingest(tasks, tmp_path / "ray", cfg, opts, use_ray=True, num_cpus=2, **kw)
    assert (ray_run["ok"], ray_run["failed"]) == (plain["ok"], plain["failed"]) == (4, 1)
    assert validate_shards(tmp_path / "ray") == []
    a, b = load_manifest(tmp_path / "plain"), load_manifest(tmp_path / "ray")
    assert a["clips"] == b["clips"] and a["skipped"] == b["skipped"]
    # deterministic writer: byte-identical shards whichever process wrote them
    assert [(s["name"], s["sha256"]) for s in a["shards"]] == [(s["name"], s["sha256"]) for s in b["shards"]]
    summary = json.loads((tmp_path / "ray" / "ingest_summary.json").read_text())
    assert [r["key"] for r in summary["records"] if r["status"] == "failed"] == ["0003__s1_all"]
