"""Validate a packed shard folder and describe it (``emodifftalk inspect``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emodifftalk.data.schema import MODALITIES, SAMPLE_KINDS, SPLITS
from emodifftalk.data.shard_reader import SkipStats, iter_dataset, load_manifest, stream_samples
from emodifftalk.data.synthetic_truth import format_truth_report, label_reliability, lip_unexplained_variance
from emodifftalk.utils import file_sha256


@dataclass(frozen=True)
class Problem:
    shard: str | None
    key: str | None
    reason: str

    def __str__(self) -> str:
        where = " ".join(x for x in (self.shard, self.key) if x)
        return f"{where or 'manifest'}: {self.reason}"


def _file_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256) of a shard file."""
    return path.stat().st_size, file_sha256(path)


def verify_shard_checksums(root: str | Path, kind: str, split: str | None = None) -> tuple[list[Problem], list[str]]:
    """Hash the ``kind``/``split`` shards and compare size and sha256 with the manifest.

    Returns ``(problems, unverifiable)``: shards that are missing or differ, and shards whose
    manifest entry has no sha256 (packed by an older version)."""
    root = Path(root)
    manifest = load_manifest(root)
    problems: list[Problem] = []
    unverifiable: list[str] = []
    for entry in manifest["shards"]:
        if entry["kind"] != kind or (kind != "template" and entry.get("split") != split):
            continue
        name, path = entry["name"], root / entry["name"]
        if not path.is_file():
            problems.append(Problem(name, None, "shard file is missing"))
            continue
        if not entry.get("sha256"):
            unverifiable.append(name)
            continue
        size, sha = _file_digest(path)
        if size != entry.get("bytes", size):
            problems.append(Problem(name, None, f"size {size} bytes, manifest says {entry['bytes']} (truncated?)"))
        elif sha != entry["sha256"]:
            problems.append(Problem(name, None, "sha256 differs from the manifest (corrupt or modified)"))
    return problems, unverifiable


def validate_shards(root: str | Path) -> list[Problem]:
    """Every problem of a packed folder: manifest vs files (presence, bytes, sha256, sample counts),
    every sample decoded (reasons per key), kinds/splits as listed, duplicate keys, missing templates."""
    root = Path(root)
    try:
        manifest = load_manifest(root)
    except (OSError, ValueError) as e:
        return [Problem(None, None, str(e))]
    problems: list[Problem] = []
    listed = {s["name"] for s in manifest["shards"]}
    problems += [Problem(p.name, None, "shard file is not listed in the manifest")
                 for p in sorted(root.glob("*.tar")) if p.name not in listed]
    seen: dict[str, str] = {}
    seq_templates: set[str] = set()
    templates: set[str] = set()
    for entry in manifest["shards"]:
        name = entry["name"]
        path = root / name
        if not path.is_file():
            problems.append(Problem(name, None, "shard file is missing"))
            continue
        size, sha = _file_digest(path)
        if size != entry["bytes"]:
            problems.append(Problem(name, None, f"size {size} bytes, manifest says {entry['bytes']}"))
        if sha != entry["sha256"]:
            problems.append(Problem(name, None, "sha256 differs from the manifest (corrupt or modified)"))
        stats = SkipStats(max_logged=0)
        n = 0
        for sample in stream_samples([str(path)], split_by_node=False, split_by_worker=False, stats=stats):
            n += 1
            key, meta = sample["key"], sample["meta"]
            if key in seen:
                problems.append(Problem(name, key, f"duplicate key (also in {seen[key]})"))
            seen[key] = name
            if sample["kind"] != entry["kind"]:
                problems.append(Problem(name, key, f"{sample['kind']} sample in a {entry['kind']} shard"))
            elif entry["kind"] != "template" and meta.get("split") != entry["split"]:
                problems.append(Problem(name, key, f"meta split {meta.get('split')!r} in a {entry['split']} shard"))
            if sample["kind"] == "template":
                templates.add(meta.get("identity"))
            elif sample["kind"] == "seq":
                seq_templates.add(meta.get("template"))
                if key not in manifest.get("clips", {}):
                    problems.append(Problem(name, key, "seq sample not listed under 'clips' in the manifest"))
        problems += [Problem(name, key, reason) for key, _, reason in stats.records]
        if n != entry["n_samples"]:
            problems.append(Problem(name, None, f"{n} readable sample(s), manifest says {entry['n_samples']}"))
    problems += [Problem(None, None, f"no template sample for identity {t!r} used by seq samples")
                 for t in sorted(seq_templates - templates)]
    return problems


def _shapes(sample: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in sample.items():
        if isinstance(v, np.ndarray):
            out[k] = [list(v.shape), str(v.dtype)]
        elif k == "images":
            out[k] = {c: [list(im.shape), str(im.dtype)] for c, im in v.items()}
        elif k == "cameras":
            out[k] = [c["name"] for c in v]
        elif k == "vertex_sets":
            out[k] = {name: len(idx) for name, idx in v.items()}
    return out


def inspect_report(root: str | Path) -> dict[str, Any]:
    """Summary of a packed folder from its manifest, plus the shapes of one sample per kind."""
    root = Path(root)
    manifest = load_manifest(root)
    clips = manifest.get("clips", {})
    coverage = {m: sum(m in c["modalities"] for c in clips.values()) for m in MODALITIES}
    clips_per_split = {s: sum(c["split"] == s for c in clips.values()) for s in SPLITS}
    shapes = {}
    for kind in SAMPLE_KINDS:
        for split in (None,) if kind == "template" else SPLITS:
            sample = next(iter_dataset(root, kind, split, stats=SkipStats(max_logged=0)), None)
            if sample is not None:
                shapes[kind] = _shapes(sample)
                break
    report = {
        "root": str(root),
        "name": manifest.get("name"),
        "schema_version": manifest["schema_version"],
        "n_shards": len(manifest["shards"]),
        "bytes": sum(s["bytes"] for s in manifest["shards"]),
        "counts": manifest["counts"],
        "identities": manifest["identities"],
        "n_clips": len(clips),
        "clips_per_split": clips_per_split,
        "n_frames": manifest["totals"]["n_frames"],
        "audio_hours": manifest["totals"]["audio_hours"],
        "modality_coverage": coverage,
        "skipped_at_pack": manifest.get("skipped", []),
        "shapes": shapes,
    }
    truth = synthetic_truth_report(root)
    if truth is not None:
        report["synthetic_truth"] = truth
    return report


def synthetic_truth_report(root: str | Path, max_clips: int = 256) -> dict[str, Any] | None:
    """Label reliability per AU and AU-unexplained lip variance, from the seq samples that carry
    ``aus_true`` (synthetic v2 data); None when none do. Reads up to ``max_clips`` seq samples
    (all of them for the tiny and small presets)."""
    templates = {s["meta"]["identity"]: s for s in iter_dataset(root, "template", None, stats=SkipStats(max_logged=0))}
    labels, masks, truths = [], [], []
    per_identity: dict[str, tuple[list, list]] = {}
    for split in SPLITS:
        for s in iter_dataset(root, "seq", split, stats=SkipStats(max_logged=0)):
            if len(truths) >= max_clips:
                break
            if s.get("aus_true") is None:
                continue
            labels.append(s["aus"])
            masks.append(s["au_mask"])
            truths.append(s["aus_true"])
            if s["verts"] is not None and s["meta"]["template"] in templates:
                v, t = per_identity.setdefault(s["meta"]["template"], ([], []))
                v.append(s["verts"])
                t.append(s["aus_true"])
    if not truths:
        return None
    unexplained = {ident: lip_unexplained_variance(v, t, templates[ident]["verts"],
                                                   templates[ident]["vertex_sets"]["lips"])
                   for ident, (v, t) in sorted(per_identity.items())}
    return {"n_clips": len(truths), "label_reliability": label_reliability(labels, masks, truths),
            "lip_unexplained": {"mean": float(np.mean(list(unexplained.values()))) if unexplained else None,
                                "per_identity": unexplained}}


def format_report(r: dict[str, Any]) -> str:
    def mb(n: int) -> str:
        return f"{n / 1e6:.1f} MB"

    lines = [f"{r['root']}  ({r['name']}, schema v{r['schema_version']})",
             f"  shards: {r['n_shards']}, {mb(r['bytes'])}",
             "  samples:"]
    for kind, per in sorted(r["counts"].items()):
        lines.append(f"    {kind:9s} " + ", ".join(f"{s}={n}" for s, n in sorted(per.items())))
    lines.append("  identities:")
    for s in SPLITS:
        ids = r["identities"].get(s, [])
        lines.append(f"    {s:5s} {len(ids):4d}  {' '.join(ids[:12])}{' ...' if len(ids) > 12 else ''}")
    lines.append(f"  clips: {r['n_clips']} (" + ", ".join(f"{s}={n}" for s, n in r["clips_per_split"].items())
                 + f"), {r['n_frames']} frames, {r['audio_hours'] * 60:.2f} min of audio "
                   f"({r['audio_hours']:.4f} h)")
    n = max(r["n_clips"], 1)
    lines.append("  modality coverage: " + ", ".join(
        f"{m} {c}/{r['n_clips']} ({100 * c / n:.0f}%)" for m, c in r["modality_coverage"].items()))
    if r["skipped_at_pack"]:
        lines.append(f"  clips skipped when packing: {len(r['skipped_at_pack'])}")
        lines += [f"    {s['identity']}/{s['clip']}: {s['reason']}" for s in r["skipped_at_pack"]]
    if r.get("synthetic_truth"):
        lines += format_truth_report(r["synthetic_truth"])
    lines.append("  sample shapes:")
    for kind, shapes in r["shapes"].items():
        lines.append(f"    {kind}:")
        for k, v in shapes.items():
            lines.append(f"      {k}: {v}")
    return "\n".join(lines)
