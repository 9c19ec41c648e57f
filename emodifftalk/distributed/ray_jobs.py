"""Ray: one canonical-rig reconstruction task per identity.

``rig_identity_from_shards`` is a plain function (it runs in tests and scripts without Ray); a
Ray task is the same function decorated with the resources of ``cfg.rig``. Each task reads its
own identity's samples from the shards (nothing large goes through the driver), writes
``OUT/<identity>/`` atomically and returns a small status record, never raising for bad data:
one broken identity does not stop the others. Ray's ``max_retries`` covers crashed workers
(OOM, lost nodes), not data errors, which would fail again.

Layout of ``OUT``::

    OUT/<identity>/rig.safetensors, rig.json, preview.png, triplane.safetensors
    OUT/logs/<identity>/        TensorBoard events
    OUT/rig_summary.json        the status records of the last run
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emodifftalk.config import config_from_dict
from emodifftalk.data.schema import SPLITS, template_key
from emodifftalk.data.shards import (SampleError, SkipStats, decode_sample, identity_shard_urls, load_manifest,
                                     shard_urls)
from emodifftalk.rig.feature_line_fit import FEATURE_LINE_TENSORS, fit_feature_line, moving_frames, save_feature_line
from emodifftalk.rig.gaussians import GaussianRig, is_complete
from emodifftalk.rig.reconstruct import reconstruct_identity
from emodifftalk.utils import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_RAY_TMPDIR = "/tmp/ray_edt"  # short: Ray's unix socket paths must stay < 108 bytes
SUMMARY_FILE = "rig_summary.json"
LOG_SUBDIR = "logs"


# ---------------------------------------------------------------------------------------------
# Reading one identity from the shards
# ---------------------------------------------------------------------------------------------


def list_identities(shards_root: str | Path) -> list[str]:
    """Identities of a packed folder (all splits), from its manifest."""
    manifest = load_manifest(shards_root)
    ids = set(manifest.get("identity_splits", {}))
    for split_ids in manifest.get("identities", {}).values():
        ids.update(split_ids)
    return sorted(ids)


def _identity_splits(manifest: dict, identity: str) -> list[str]:
    splits = [s for s in SPLITS if identity in manifest.get("identities", {}).get(s, [])]
    return splits or list(SPLITS)  # unknown: look everywhere


def _samples_with_prefix(urls: list[str], prefix: str, stats) -> Iterator[dict]:
    """Decoded samples whose key starts with ``prefix``; others are never decoded."""
    import webdataset as wds

    if not urls:
        return

    def unreadable(exn: Exception) -> bool:  # webdataset handler: count the shard error, go on
        stats.skip("<shard>", None, f"{type(exn).__name__}: {exn}")
        return True

    raw_stream = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=unreadable))
    for raw in raw_stream:
        if not str(raw.get("__key__", "")).startswith(prefix):
            continue
        try:
            yield decode_sample(raw)
        except SampleError as e:
            stats.skip(e.key, e.url, e.reason)


def _identity_samples(shards_root: str | Path, identity: str, kind: str, stats) -> list[dict]:
    """The identity's samples of ``kind``: from its own shards (manifest index), or, for manifests
    without one, by scanning its splits (every task then reads the whole split: O(data set))."""
    urls = identity_shard_urls(shards_root, identity, kind)
    if urls is None:
        manifest = load_manifest(shards_root)
        urls = [u for split in _identity_splits(manifest, identity) for u in shard_urls(shards_root, kind, split)]
    return list(_samples_with_prefix(urls, f"{identity}__", stats))


def load_identity(shards_root: str | Path, identity: str, stats=None) -> tuple[list[dict], dict | None]:
    """(frames samples, template sample or None) of ``identity``, read straight from the shards."""
    stats = stats if stats is not None else SkipStats()
    frames = _identity_samples(shards_root, identity, "frames", stats)
    templates = [s for s in _samples_with_prefix(shard_urls(shards_root, "template"), template_key(identity), stats)
                 if s["key"] == template_key(identity)]
    return frames, (templates[0] if templates else None)


# ---------------------------------------------------------------------------------------------
# The task (plain function)
# ---------------------------------------------------------------------------------------------


def _record(identity: str, status: str, **kw: Any) -> dict[str, Any]:
    rec = {"identity": identity, "status": status, "psnr_holdout": None, "ssim_holdout": None,
           "psnr_train": None, "seconds": None, "steps_per_second": None, "rig_dir": None, "error": None}
    rec.update(kw)
    return rec


def fit_identity_feature_line(shards_root: str | Path, identity: str, rig_dir: Path, cfg, frames: list[dict],
                              stats) -> dict[str, Any] | None:
    """Fit the identity's feature line (AU codes → opacity) against its captured moving frames.

    Returns its metrics, or None when the data has no moving frames with AU codes (only the
    neutral frame was packed: repack with ``data.frames_stride`` > 0) or ``feature_line.steps`` is 0.
    """
    if cfg.feature_line.steps <= 0:
        return None
    seqs = {s["meta"]["clip"]: s for s in _identity_samples(shards_root, identity, "seq", stats)}
    moving = moving_frames(frames, seqs)
    if len(moving) < 2:
        log.warning("%s: no moving frames with AU codes; the rig keeps static opacity (repack with "
                    "data.frames_stride > 0 to fit its feature line)", identity)
        return None
    rig = GaussianRig.load(rig_dir)
    model, metrics = fit_feature_line(rig, moving, cfg, seed=cfg.train.seed)
    save_feature_line(model, rig_dir, metrics, cfg)
    return metrics


def rig_identity_from_shards(shards_root: str, identity: str, out_root: str, cfg_dict: dict,
                             overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Reconstruct ``identity``'s rig from the shards into ``out_root/<identity>``.

    Returns a status record {"identity", "status": "ok" | "skipped" | "failed", metrics,
    "seconds", "error", ...}; errors are reported in the record, not raised.
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    rig_dir = Path(out_root) / identity
    try:
        if is_complete(rig_dir) and not overwrite:
            if not (rig_dir / FEATURE_LINE_TENSORS).is_file():  # killed between rig and feature line
                cfg = config_from_dict(cfg_dict).validate()
                stats = SkipStats()
                fit_identity_feature_line(shards_root, identity, rig_dir, cfg,
                                          load_identity(shards_root, identity, stats)[0], stats)
            metrics = GaussianRig.load(rig_dir).info.get("metrics", {})
            return _record(identity, "skipped", rig_dir=str(rig_dir), seconds=0.0,
                           psnr_holdout=metrics.get("psnr_holdout"), ssim_holdout=metrics.get("ssim_holdout"),
                           psnr_train=metrics.get("psnr_train"))
        if rig_dir.exists() and not is_complete(rig_dir) and not overwrite:
            # rigs are written atomically, so this folder is not a half-written rig of ours
            raise FileExistsError(f"{rig_dir} exists but is not a complete rig; move it away or pass --overwrite")
        cfg = config_from_dict(cfg_dict).validate()
        stats = SkipStats()
        frames, template = load_identity(shards_root, identity, stats)
        skipped = f"; {stats.report()}" if stats.n_skipped else ""
        if template is None:
            raise ValueError(f"no template sample for identity {identity!r} in {shards_root}{skipped}")
        if not frames:
            raise ValueError(f"no usable frames samples for identity {identity!r} in {shards_root}{skipped}")
        try:
            result = reconstruct_identity(frames, template, cfg, rig_dir,
                                          log_dir=Path(out_root) / LOG_SUBDIR / identity,
                                          overwrite=overwrite, progress=progress,
                                          cameras_per_step=cfg.rig.cameras_per_step or None)
        except ValueError as e:  # bad data: say which samples the reader had to skip, they may be why
            raise type(e)(f"{e}{skipped}") from e
        fl = fit_identity_feature_line(shards_root, identity, rig_dir, cfg, frames, stats)
        return _record(identity, "ok", rig_dir=str(rig_dir), seconds=time.perf_counter() - t0,
                       feature_line_psnr=(fl or {}).get("holdout_psnr_with_feature_line"),
                       psnr_holdout=result.metrics["psnr_holdout"], ssim_holdout=result.metrics["ssim_holdout"],
                       psnr_train=result.metrics["psnr_train"], steps_per_second=result.steps_per_second,
                       cpu_seconds=time.process_time() - cpu0, skipped_samples=stats.n_skipped)
    except Exception as e:  # noqa: BLE001 - the record carries it; other identities go on
        msg = f"{type(e).__name__}: {e}"
        log.error("rig %s failed: %s", identity, msg)
        return _record(identity, "failed", seconds=time.perf_counter() - t0, error=msg,
                       traceback=traceback.format_exc(limit=6))


def _ray_task(shards_root: str, identity: str, out_root: str, cfg_dict: dict, overwrite: bool) -> dict:
    """What a Ray worker runs: torch threads = the task's CPUs, then the plain function."""
    import torch

    cpus = float(cfg_dict.get("rig", {}).get("num_cpus_per_task", 1.0))
    torch.set_num_threads(max(1, int(cpus)))  # this worker process only
    return rig_identity_from_shards(shards_root, identity, out_root, cfg_dict, overwrite, progress=False)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (or $RAY_ADDRESS, as under ``ray job submit``) or start a local
    Ray without dashboard. Returns True when this call initialised Ray (so we shut it down)."""
    import ray

    from emodifftalk.interrupt import keep_sigterm_handler

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    with keep_sigterm_handler():  # ray.init's own SIGTERM handler would skip the CLI's clean-up
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            tmp = os.environ.setdefault("RAY_TMPDIR", DEFAULT_RAY_TMPDIR)
            Path(tmp).mkdir(parents=True, exist_ok=True)
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, _temp_dir=tmp,
                     log_to_driver=True)
    return True


def _check_resources(cfg) -> None:
    import ray

    res = ray.cluster_resources()
    if cfg.rig.num_gpus_per_task > res.get("GPU", 0):
        raise ValueError(f"rig.num_gpus_per_task={cfg.rig.num_gpus_per_task} but the Ray cluster has "
                         f"{res.get('GPU', 0)} GPU(s); set rig.num_gpus_per_task=0")
    if cfg.rig.num_cpus_per_task > res.get("CPU", 0):
        raise ValueError(f"rig.num_cpus_per_task={cfg.rig.num_cpus_per_task} but the Ray cluster has "
                         f"{res.get('CPU', 0)} CPU(s)")


def run_rig_jobs(shards_root: str | Path, out_root: str | Path, cfg, *, identities: list[str] | None = None,
                 address: str | None = None, overwrite: bool = False, num_cpus: int | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Reconstruct the rigs of ``identities`` (default: all in the manifest), one Ray task each.

    Complete rigs are skipped unless ``overwrite``. Returns the status records in identity
    order and writes them to ``out_root/rig_summary.json``.
    """
    import ray

    shards_root, out_root = str(Path(shards_root).resolve()), Path(out_root).resolve()
    known = list_identities(shards_root)
    wanted = identities or known
    records: dict[str, dict] = {}
    todo = []
    for ident in wanted:
        rig_dir = out_root / ident
        if ident not in known:
            records[ident] = _record(ident, "failed", error=f"identity {ident!r} is not in {shards_root} "
                                                            f"(known: {', '.join(known)})")
        elif is_complete(rig_dir) and not overwrite:
            m = GaussianRig.load(rig_dir).info.get("metrics", {})
            records[ident] = _record(ident, "skipped", rig_dir=str(rig_dir), seconds=0.0,
                                     psnr_holdout=m.get("psnr_holdout"), ssim_holdout=m.get("ssim_holdout"),
                                     psnr_train=m.get("psnr_train"))
        else:
            todo.append(ident)
    if todo:
        out_root.mkdir(parents=True, exist_ok=True)
        started = init_ray(address, num_cpus)
        try:
            _check_resources(cfg)
            task = ray.remote(num_cpus=cfg.rig.num_cpus_per_task, num_gpus=cfg.rig.num_gpus_per_task,
                              max_retries=cfg.rig.max_retries)(_ray_task)
            cfg_dict = cfg.to_dict()
            refs = {task.remote(shards_root, ident, str(out_root), cfg_dict, overwrite): ident for ident in todo}
            pending = list(refs)
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(pending), desc="rigs", unit="identity")
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ident = refs[done[0]]
                try:
                    records[ident] = ray.get(done[0])
                except Exception as e:  # noqa: BLE001 - worker crashed past its retries
                    records[ident] = _record(ident, "failed", error=f"{type(e).__name__}: {e}".splitlines()[0])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(last=f"{ident}:{records[ident]['status']}")
            if bar is not None:
                bar.close()
        finally:
            if started:
                ray.shutdown()
    result = [records[i] for i in wanted]
    if todo:
        atomic_write_text(out_root / SUMMARY_FILE, json.dumps(result, indent=2, default=str))
    return result


def format_summary(records: list[dict[str, Any]]) -> str:
    """A fixed-width table: identity, status, held-out PSNR/SSIM, train PSNR, seconds, error."""
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    rows = [("identity", "status", "psnr_ho", "ssim_ho", "psnr_tr", "seconds", "error")]
    for r in records:
        err = (r.get("error") or "")
        rows.append((r["identity"], r["status"], f(r.get("psnr_holdout"), ".2f"), f(r.get("ssim_holdout"), ".3f"),
                     f(r.get("psnr_train"), ".2f"), f(r.get("seconds"), ".1f"),
                     err if len(err) <= 100 else err[:97] + "..."))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows)
