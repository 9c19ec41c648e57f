"""Ingest driver: one task per (identity, performance), on Ray or in this process.

``ingest_task`` is a plain function (tests and ``--no-ray`` call it directly); the Ray task is
the same function wrapped with ``ray.remote(num_cpus=..., max_retries=...)``. Ray's
``max_retries`` covers crashed workers (OOM, lost node); ``retries`` re-runs a task in place
after a transient I/O error (network file system, a failing upload pipe). Data errors (a corrupt
``.smc``, a malformed camera file) are not retried: they fail the clip, are reported with the
file and reason, and every other clip still finishes.

Idempotent and resumable: a clip is finished when ``OUT/clips/<identity>__<clip>/part.json``
exists with the same digest (options + source file sizes/mtimes + OpenFace CSV) and split; those
are skipped, so re-running the same command after a crash only does what is left (and a clip
whose OpenFace CSV appeared since is redone). The manifest is rebuilt from the parts at the end
of every run. Do not run two ingests into the same OUT at once (a lock file refuses it).

Memory per task is bounded by one frames sample (the encoded images of one frame) plus the
clip's audio and (T, V, 3) vertices; set ``--task-memory-gb`` so Ray packs tasks accordingly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from emodifftalk.data.schema import seq_key
from emodifftalk.data.shard_writer import MANIFEST
from emodifftalk.data.shards import load_manifest
from emodifftalk.data.splits import make_splits
from emodifftalk.distributed.ray_jobs import init_ray
from emodifftalk.ingest.clip import CLIPS_DIR, ClipDataError, IngestOptions, ingest_clip, is_done, task_digest
from emodifftalk.ingest.folder import FolderClip
from emodifftalk.ingest.manifest import build_manifest, collect_parts
from emodifftalk.ingest.renderme360 import SMCClip
from emodifftalk.utils import atomic_write_text

log = logging.getLogger(__name__)

SUMMARY_FILE = "ingest_summary.json"
LOCK_FILE = ".ingest.lock"


def open_source(task: dict):
    """The ``ClipSource`` of a task (opened in the worker: one h5py handle per task)."""
    src = task["source"]
    kind = src.get("kind")
    if kind == "renderme360":
        return SMCClip(src["raw"], src.get("anno"), actor=task["identity"], perf=task["clip"],
                       cameras=src.get("cameras"))
    if kind == "folder":
        return FolderClip.from_task(src)
    raise ValueError(f"unknown source kind {kind!r} in task {task.get('identity')}/{task.get('clip')}")


def _record(task: dict, status: str, split: str | None, **kw) -> dict[str, Any]:
    rec = {"identity": task["identity"], "clip": task["clip"], "key": seq_key(task["identity"], task["clip"]),
           "status": status, "split": split, "seconds": None, "n_frames": 0, "images": 0, "frames_samples": 0,
           "bytes": 0, "modalities": [], "notes": [], "error": None}
    rec.update(kw)
    return rec


def _ok_record(task: dict, part: dict, status: str, seconds: float) -> dict:
    entry = part["clip_entry"]
    return _record(task, status, part["split"], seconds=seconds, n_frames=entry["n_frames"],
                   images=part["counts"]["images"], frames_samples=part["counts"]["frames_samples"],
                   bytes=sum(s["bytes"] for s in part["shards"]), modalities=entry["modalities"],
                   notes=part.get("notes", []), trimmed_frames=part["counts"].get("trimmed_frames", 0),
                   trimmed_audio_samples=part["counts"].get("trimmed_audio_samples", 0))


def ingest_task(task: dict, out_root: str, opts_dict: dict, split: str, digest: str, overwrite: bool = False,
                retries: int = 1) -> dict[str, Any]:
    """Ingest one clip; returns a status record ("ok" | "done" (already finished) | "failed"),
    never raises for bad data."""
    t0 = time.perf_counter()
    opts = IngestOptions(**{**opts_dict, "background": tuple(opts_dict["background"])})
    if not overwrite:
        part = is_done(out_root, task["identity"], task["clip"], digest, split)
        if part is not None:
            return _ok_record(task, part, "done", 0.0)
    attempt = 0
    while True:
        source = None
        try:
            source = open_source(task)
            part = ingest_clip(source, out_root, split, opts, task.get("openface"), digest)
            return _ok_record(task, part, "ok", time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - reported in the record; the other clips go on
            transient = isinstance(e, OSError) and not isinstance(e, (ClipDataError, FileNotFoundError))
            if transient and attempt < retries:
                attempt += 1
                log.warning("%s/%s: %s: retrying (%d/%d)", task["identity"], task["clip"], e, attempt, retries)
                time.sleep(min(2.0 ** attempt, 30.0))
                continue
            msg = f"{type(e).__name__}: {e}"
            log.error("ingest %s/%s failed: %s", task["identity"], task["clip"], msg)
            return _record(task, "failed", split, seconds=time.perf_counter() - t0, error=msg,
                           traceback=traceback.format_exc(limit=8),
                           notes=list(getattr(source, "notes", []) or []))
        finally:
            if source is not None:
                source.close()


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


class _Lock:
    """``OUT/.ingest.lock`` holding the pid; a lock of a dead process on this host is taken over."""

    def __init__(self, root: Path):
        self.path = root / LOCK_FILE

    def __enter__(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return self
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                    os.kill(pid, 0)
                except (ValueError, ProcessLookupError, OSError):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise FileExistsError(f"another ingest (pid {pid}) is writing to {self.path.parent}; "
                                      f"wait for it or remove {self.path} if it is gone")
        raise FileExistsError(f"cannot take {self.path}")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _clean_stale_temp(out_root: Path) -> None:
    """Temp folders of clips whose task crashed in an earlier run (we hold the lock: none is live)."""
    clips = out_root / CLIPS_DIR
    if clips.is_dir():
        for d in clips.glob(".tmp-*"):
            shutil.rmtree(d, ignore_errors=True)


def _check_out(out_root: Path) -> None:
    """Refuse a folder that holds something else (e.g. ``emodifftalk pack`` output)."""
    m = out_root / MANIFEST
    if m.is_file():
        try:
            ok = "ingest" in json.loads(m.read_text())
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise FileExistsError(f"{out_root} holds a shard folder not written by `emodifftalk ingest` "
                                  f"({m}); choose another output folder")
    elif out_root.is_dir() and any(out_root.iterdir()) and not (out_root / CLIPS_DIR).is_dir():
        raise FileExistsError(f"{out_root} exists and is not an ingest output folder; choose another (or an empty) one")


def assign_splits(tasks: list[dict], data_cfg) -> tuple[dict[str, str], dict[str, str]]:
    """({clip key: split}, {identity: split}) by ``data.splits`` rules (a function of the names)."""
    clips: dict[str, list[str]] = {}
    for t in tasks:
        clips.setdefault(t["identity"], []).append(t["clip"])
    splits = make_splits(clips, data_cfg)
    return {seq_key(i, c): s for (i, c), s in splits.clips.items()}, dict(splits.identities)


def _run_tasks(todo: list[tuple[dict, str, str]], out_root: str, opts: IngestOptions, *, use_ray: bool,
               address, num_cpus, overwrite: bool, retries: int, task_memory_gb, progress: bool) -> dict[str, dict]:
    records: dict[str, dict] = {}
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="ingest", unit="clip")

    def done(rec: dict) -> None:
        records[rec["key"]] = rec
        if bar is not None:
            bar.update(1)
            bar.set_postfix(last=f"{rec['key']}:{rec['status']}")

    opts_dict = opts.to_dict()
    if not use_ray:
        for task, split, digest in todo:
            done(ingest_task(task, out_root, opts_dict, split, digest, overwrite, retries))
    elif todo:
        import ray

        started = init_ray(address, num_cpus)
        try:
            kw = {"num_cpus": 1, "max_retries": max(0, int(retries))}
            if task_memory_gb:
                kw["memory"] = int(task_memory_gb * 1024 ** 3)
            remote = ray.remote(**kw)(ingest_task)
            refs = {remote.remote(task, out_root, opts_dict, split, digest, overwrite, retries): task
                    for task, split, digest in todo}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                task = refs[ready[0]]
                try:
                    rec = ray.get(ready[0])
                except Exception as e:  # noqa: BLE001 - the worker died past its retries
                    rec = _record(task, "failed", None, error=f"{type(e).__name__}: {e}".splitlines()[0])
                done(rec)
        finally:
            if started:
                ray.shutdown()
    if bar is not None:
        bar.close()
    return records


def run_ingest(tasks: list[dict], out_root: str | Path, cfg, opts: IngestOptions, *, name: str, dataset: str,
               discovery_skipped: list[dict] | None = None, use_ray: bool = True, address: str | None = None,
               num_cpus: int | None = None, overwrite: bool = False, retries: int = 2,
               task_memory_gb: float | None = None, progress: bool = True, template_faces=None,
               template_vertex_sets=None, source_path: str | None = None) -> dict[str, Any]:
    """Ingest ``tasks`` into ``out_root`` and (re)build its manifest; returns the summary (also
    written to ``out_root/ingest_summary.json``). Raises ``ValueError`` when no clip made it."""
    t0 = time.perf_counter()
    opts.validate()
    cfg.data.validate()
    out_root = Path(out_root).resolve()
    _check_out(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    keys = [seq_key(t["identity"], t["clip"]) for t in tasks]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"clips listed twice: {', '.join(dup)}")
    with _Lock(out_root):
        _clean_stale_temp(out_root)
        clip_splits, identity_splits = assign_splits(tasks, cfg.data) if tasks else ({}, {})
        digests = {k: task_digest(t, opts) for k, t in zip(keys, tasks)}
        records: dict[str, dict] = {}
        todo = []
        for key, task in zip(keys, tasks):
            part = None if overwrite else is_done(out_root, task["identity"], task["clip"], digests[key],
                                                  clip_splits[key])
            if part is not None:
                records[key] = _ok_record(task, part, "done", 0.0)
            else:
                todo.append((task, clip_splits[key], digests[key]))
        records.update(_run_tasks(todo, str(out_root), opts, use_ray=use_ray, address=address, num_cpus=num_cpus,
                                  overwrite=overwrite, retries=retries, task_memory_gb=task_memory_gb,
                                  progress=progress))
        stray = sorted(set(collect_parts(out_root)) - set(keys))
        if stray:
            log.warning("%d finished clip(s) under %s are not among this run's inputs and are left out of the "
                        "manifest (e.g. %s); use one OUT per source", len(stray), out_root / CLIPS_DIR, stray[0])
        parts = {k: p for k, p in collect_parts(out_root, keys).items()
                 if p.get("digest") == digests[k] and p.get("split") == clip_splits[k]
                 and records.get(k, {}).get("status") in ("ok", "done")}
        skipped = list(discovery_skipped or [])
        skipped += [{"identity": r["identity"], "clip": r["clip"], "reason": r["error"]}
                    for k, r in sorted(records.items()) if r["status"] == "failed"]
        summary = summarize([records[k] for k in keys if k in records], skipped, time.perf_counter() - t0)
        summary.update(out=str(out_root), dataset=dataset, name=name)
        if parts:
            info = {"dataset": dataset, "source": source_path, "options": opts.to_dict(),
                    "summary": {k: summary[k] for k in ("n_clips", "ok", "done", "failed", "images", "bytes")}}
            build_manifest(out_root, parts, identity_splits, cfg.data, name=name, skipped=skipped, ingest_info=info,
                           template_faces=template_faces, template_vertex_sets=template_vertex_sets,
                           shard_url=opts.shard_url)
            m = load_manifest(out_root)
            summary["templates"] = m.get("templates", {})
            summary["bytes_total"] = m["totals"]["bytes"]
        atomic_write_text(out_root / SUMMARY_FILE, json.dumps(summary, indent=1, default=str))
    if not parts:
        raise ValueError(f"no clip was ingested into {out_root} ({len(summary['skipped'])} skipped; see "
                         f"{out_root / SUMMARY_FILE})")
    return summary


def summarize(records: list[dict], skipped: list[dict], seconds: float) -> dict[str, Any]:
    n = {s: sum(r["status"] == s for r in records) for s in ("ok", "done", "failed")}
    fresh = [r for r in records if r["status"] == "ok"]
    work_s = sum(r["seconds"] or 0.0 for r in fresh)
    images = sum(r["images"] for r in fresh)
    nbytes = sum(r["bytes"] for r in fresh)
    return {"n_clips": len(records), **n, "images": images, "bytes": nbytes,
            "frames": sum(r["n_frames"] for r in records if r["status"] in ("ok", "done")),
            "trimmed_frames": sum(r.get("trimmed_frames", 0) for r in records),
            "trimmed_audio_samples": sum(r.get("trimmed_audio_samples", 0) for r in records),
            "seconds": seconds, "task_seconds": work_s,
            "images_per_second": images / seconds if seconds > 0 else None,
            "mb_per_second": nbytes / 1e6 / seconds if seconds > 0 else None,
            "skipped": skipped, "records": records}


def format_summary(summary: dict[str, Any]) -> str:
    """Clips ok / resumed / failed, frames, images, bytes, and every skip with its reason."""
    lines = [f"ingest {summary.get('dataset', '')} -> {summary.get('out', '')}",
             f"  clips: {summary['n_clips']} ({summary['ok']} ingested, {summary['done']} already done, "
             f"{summary['failed']} failed)",
             f"  frames (clip timelines): {summary['frames']}, images written: {summary['images']}, "
             f"shard bytes written: {summary['bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f} s",
             f"  trimmed to the shorter of audio/video: {summary['trimmed_frames']} frame(s), "
             f"{summary['trimmed_audio_samples']} audio sample(s) at 16 kHz"]
    if summary.get("templates"):
        ph = [i for i, t in summary["templates"].items() if t.get("placeholder")]
        extra = f" ({len(ph)} placeholder: {', '.join(ph)})" if ph else ""
        lines.append(f"  templates: {len(summary['templates'])}{extra}")
    noted = [r for r in summary["records"] if r.get("notes")]
    if noted:
        lines.append(f"  clips with notes: {len(noted)}")
        for r in noted[:20]:
            lines += [f"    {r['key']}: {n}" for n in r["notes"][:5]]
    if summary["skipped"]:
        lines.append(f"  skipped: {len(summary['skipped'])}")
        lines += [f"    {s.get('identity')}/{s.get('clip')}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines)
