"""Real-data ingestion: RenderMe-360 ``.smc`` files and manifest-described folders (EmoTalk3D or any
multi-view capture) straight into the project's WebDataset shards.

Modules: ``renderme360`` (SMC reader + planner), ``folder`` (manifest reader + planner),
``cameras`` (conventions, crop/resize of K, projection), ``images`` (decode/resize/encode, the
one place where colour order is decided), ``clip`` (the per-clip task), ``manifest`` (templates +
``manifest.json`` from the per-clip parts), ``ray_ingest`` (the driver), ``export_frontal``
(frontal videos for OpenFace), ``check_cameras`` (is the declared camera convention right?).

Output folder (``OUT``)::

    OUT/manifest.json                 same schema as ``emodifftalk pack`` (validate/inspect/read work)
    OUT/templates-000000.tar          one template sample per identity
    OUT/clips/<identity>__<clip>/     one folder per clip, written atomically:
        seq-<split>-000000.tar, frames-<split>-000000.tar, part.json (the "done" marker), template.npy
    OUT/ingest_summary.json           what the last run did (ok / resumed / failed with reasons)

Remote shards (S3, GCS, any ``webdataset.gopen`` writable URL): ``--shard-url`` takes a pattern
with ``{name}`` (the shard's path relative to OUT); each finished tar is streamed to it and the
manifest + part files stay in the local OUT::

    emodifftalk ingest renderme360 SMC/ OUT/ --shard-url 'pipe:aws s3 cp - s3://bucket/rm360/{name}'
    emodifftalk ingest renderme360 SMC/ OUT/ --shard-url 'pipe:gsutil cp - gs://bucket/rm360/{name}'

Readers then use the same names with a reading pipe: ``remote_shard_urls(OUT, "seq", "train",
"pipe:aws s3 cp s3://bucket/rm360/{name} -")`` gives the URLs to pass to ``stream_samples``;
``webdataset.ShardWriter``-style ``%06d`` patterns are not used because shard names carry the
clip, kind and split (``clips/0026__s1_all/seq-train-000000.tar``).

Selecting clips by modality (what each training task needs) works on any manifest, packed or
ingested: ``clips_with(manifest, {"audio", "aus"})`` (Speech-to-AU), ``{"audio", "aus", "verts"}``
(diffusion), ``{"frames"}`` (rig); ``modality_report`` says which clips were used or skipped and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emodifftalk.data.schema import MODALITIES

__all__ = ["clips_with", "format_modality_report", "modality_report", "remote_shard_urls"]


def _manifest(manifest: dict | str | Path) -> dict:
    if isinstance(manifest, dict):
        return manifest
    from emodifftalk.data.shards import load_manifest

    return load_manifest(manifest)


def _check_required(required: Iterable[str]) -> set[str]:
    req = set(required)
    unknown = sorted(req - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalit(ies) {unknown}; choose from {', '.join(MODALITIES)}")
    return req


def clips_with(manifest: dict | str | Path, required: Iterable[str], split: str | None = None) -> list[str]:
    """Keys (``<identity>__<clip>``) of the clips whose packed modalities include all of
    ``required`` (and in ``split`` when given), sorted. ``manifest``: dict, folder or file."""
    m = _manifest(manifest)
    req = _check_required(required)
    return sorted(k for k, c in m.get("clips", {}).items()
                  if req <= set(c.get("modalities", [])) and (split is None or c.get("split") == split))


def modality_report(manifest: dict | str | Path, required: Iterable[str], split: str | None = None) -> dict[str, Any]:
    """``{"required", "split", "used": [keys], "skipped": [{"key", "missing", "reason"}],
    "skipped_at_ingest": manifest "skipped"}``: which clips a task with these needs uses, and why
    the others are left out (missing modalities, with what the source had)."""
    m = _manifest(manifest)
    req = _check_required(required)
    used, skipped = [], []
    for key, c in sorted(m.get("clips", {}).items()):
        if split is not None and c.get("split") != split:
            continue
        have = set(c.get("modalities", []))
        missing = sorted(req - have, key=MODALITIES.index)
        if not missing:
            used.append(key)
            continue
        raw = set(c.get("raw_modalities", []))
        why = []
        for mod in missing:
            if mod in raw:
                why.append(f"{mod} exists in the source but was not packed (a seq sample needs audio and AUs)")
            else:
                why.append(f"no {mod} in the source")
        skipped.append({"key": key, "missing": missing, "reason": "; ".join(why)})
    return {"required": sorted(req, key=MODALITIES.index), "split": split, "used": used, "skipped": skipped,
            "skipped_at_ingest": list(m.get("skipped", []))}


def format_modality_report(report: dict[str, Any]) -> str:
    n_used, n_skip = len(report["used"]), len(report["skipped"])
    lines = [f"clips with {'+'.join(report['required'])}" + (f" in {report['split']}" if report["split"] else "")
             + f": {n_used} used, {n_skip} skipped"]
    lines += [f"  skipped {s['key']}: {s['reason']}" for s in report["skipped"]]
    if report["skipped_at_ingest"]:
        lines.append(f"  not ingested: {len(report['skipped_at_ingest'])}")
        lines += [f"    {s.get('identity')}/{s.get('clip')}: {s.get('reason')}" for s in report["skipped_at_ingest"]]
    return "\n".join(lines)


def remote_shard_urls(manifest: dict | str | Path, kind: str, split: str | None = None,
                      pattern: str = "{name}") -> list[str]:
    """URLs of the ``kind`` (+ ``split``) shards of a manifest, each ``pattern.format(name=...)``;
    e.g. ``"pipe:aws s3 cp s3://bucket/rm360/{name} -"`` or ``"pipe:gsutil cat gs://bucket/rm360/{name}"``."""
    from emodifftalk.data.schema import SAMPLE_KINDS

    if kind not in SAMPLE_KINDS:
        raise ValueError(f"unknown sample kind {kind!r}; choose one of {', '.join(SAMPLE_KINDS)}")
    if "{name}" not in pattern:
        raise ValueError(f"pattern {pattern!r} must contain '{{name}}'")
    m = _manifest(manifest)
    return [pattern.format(name=s["name"]) for s in m["shards"]
            if s["kind"] == kind and (kind == "template" or split is None or s["split"] == split)]
