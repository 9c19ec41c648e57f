"""``emodifftalk eval motion``: the diffusion motion model vs. baselines on held-out clips.

Methods compared (every one through the same long-sequence path, ``diffusion.windowed.sample_motion``):

* ``ddpm-full``: ancestral sampling through all ``diffusion.num_train_steps`` steps;
* ``ddim-10`` / ``ddim-25`` / ``ddim-50``: DDIM (η = 0) with that many steps (≤ N);
* ``regression``: the deterministic baseline with the same backbone (``diffusion.regression=true``
  export, given with ``--baseline``; or the evaluated model itself if it is one);
* ``template``: zero offsets (the neutral template in every frame).

Conditions are the clip's ground-truth AUs (OpenFace-masked entries 0) and its audio features:
this measures the motion model alone, not Speech-to-AU. One sample per clip and method, seeded by
(``--seed``, clip index) so reruns match. Metrics follow DESIGN.md (``eval/metrics.py``); ``rtf`` is
sampling seconds / clip seconds on the evaluation device.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from emodifftalk.data.shards import SkipStats, iter_dataset, shard_urls
from emodifftalk.diffusion.windowed import sample_motion
from emodifftalk.eval.metrics import motion_metrics
from emodifftalk.motion.data import ClipFeatures, load_template_infos, usable_reason
from emodifftalk.motion.inference import load_motion
from emodifftalk.motion.methods import method_of
from emodifftalk.utils import write_report

log = logging.getLogger(__name__)

DDIM_STEPS = (10, 25, 50)
REPORT_JSON = "motion_eval.json"
REPORT_MD = "motion_eval.md"


def load_eval_clips(data: str | Path, split: str, cfg, max_clips: int | None = None) -> tuple[list[dict], dict]:
    """Usable clips of ``split`` (meshes + template + matching fps) with features, and the templates."""
    if not shard_urls(data, "seq", split):
        raise ValueError(f"no {split} seq shards in {data}")
    templates = load_template_infos(data)
    feats = ClipFeatures(cfg.audio)
    stats = SkipStats()
    clips, unusable = [], {}
    for s in iter_dataset(data, "seq", split, stats=stats):
        reason = usable_reason(s, templates, cfg.diffusion.fps)
        if reason is not None:
            unusable[s["key"]] = reason
            continue
        clips.append(dict(s, feats=feats(s)))
        if max_clips and len(clips) >= max_clips:
            break
    if unusable:
        log.warning("%d %s clip(s) not usable for motion eval: %s", len(unusable), split,
                    "; ".join(f"{k}: {r}" for k, r in list(unusable.items())[:5]))
    if not clips:
        raise ValueError(f"no usable {split} clips in {data} (need meshes and a template)")
    return clips, {"templates": templates, "unusable": unusable, "corrupt": stats.n_skipped}


def _methods(model, cfg, baseline) -> list[tuple[str, object, dict]]:
    """[(name, model or None, sample_motion kwargs)] in table order."""
    d = cfg.diffusion
    out = []
    if d.regression:
        out.append(("regression", model, {"sampler": "regression"}))
    else:
        out.append(("ddpm-full", model, {"sampler": "ddpm"}))
        out += [(f"ddim-{k}", model, {"sampler": "ddim", "steps": k}) for k in DDIM_STEPS if k <= d.num_train_steps]
    if baseline is not None:
        out.append(("regression", baseline, {"sampler": "regression"}))
    out.append(("template", None, {}))
    return out


def run_eval(model_dir: str | Path, data: str | Path, *, split: str = "test", out: str | Path | None = None,
             baseline: str | Path | None = None, device: str = "cpu", seed: int = 0,
             max_clips: int | None = None, methods: list[str] | None = None,
             overrides: list[str] | tuple = (), progress: bool = True) -> dict:
    """Evaluate a ``train motion`` export (and optionally a regression export) on ``split``.

    Writes ``motion_eval.json`` and ``motion_eval.md`` into ``out`` (a directory) when given.
    ``methods`` restricts the rows (e.g. ``["ddim-10", "template"]``). Returns the report dict.
    """
    device = torch.device(device)
    loaded = load_motion(model_dir, device, overrides)
    model, cfg, schedule = loaded.model, loaded.cfg, loaded.schedule
    if method_of(cfg) == "faceformer":
        raise ValueError(f"{model_dir}: a FaceFormer export has no sampler to compare; evaluate it with "
                         "`emodifftalk eval pipeline`")
    base = None
    if baseline is not None:
        base_loaded = load_motion(baseline, device, overrides)
        base, base_cfg = base_loaded.model, base_loaded.cfg
        if not base_cfg.diffusion.regression:
            raise ValueError(f"--baseline {baseline} is not a regression export (diffusion.regression=false)")
    clips, info = load_eval_clips(data, split, cfg, max_clips)
    templates = info["templates"]
    rows = _methods(model, cfg, base)
    if methods:
        unknown = set(methods) - {r[0] for r in rows}
        if unknown:
            raise ValueError(f"unknown/unavailable methods {sorted(unknown)}; available: {[r[0] for r in rows]}")
        rows = [r for r in rows if r[0] in methods]

    gts = [c["verts"] for c in clips]
    tpls = [templates[c["meta"]["identity"]] for c in clips]
    seconds_of_audio = sum(c["aus"].shape[0] for c in clips) / cfg.diffusion.fps
    results = {}
    # DDPM-full over a whole split takes minutes on a CPU: one bar over every (method, clip)
    bar = tqdm(total=len(rows) * len(clips), desc="eval motion", unit="clip", disable=not progress)
    for name, m, kwargs in rows:
        preds, t0 = [], time.perf_counter()
        bar.set_postfix_str(name)
        for i, (c, tpl) in enumerate(zip(clips, tpls)):
            bar.update(1)
            if m is None:
                preds.append(np.broadcast_to(tpl.verts, c["verts"].shape).copy())
                continue
            mcfg = base_cfg if m is base else cfg
            g = torch.Generator().manual_seed(seed * 100003 + i)
            aus = torch.from_numpy(c["aus"] * c["au_mask"]).float()
            offsets = sample_motion(m, schedule if kwargs["sampler"] != "regression" else None,
                                    torch.from_numpy(tpl.verts), aus, torch.from_numpy(c["feats"]), mcfg,
                                    generator=g, device=device, **kwargs)
            preds.append(tpl.verts[None] + offsets.numpy())
        elapsed = time.perf_counter() - t0
        metrics = motion_metrics(preds, gts, [t.verts for t in tpls], [t.lip_idx for t in tpls],
                                 [t.upper_idx for t in tpls])
        metrics.update(seconds=elapsed, rtf=elapsed / max(seconds_of_audio, 1e-9),
                       network_evals_per_window=_nfe(name, cfg))
        results[name] = metrics
        log.info("%s: lve_mm=%.3f mod=%.3f fdd=%.3g rtf=%.3f", name, metrics["lve_mm"], metrics["mod"],
                 metrics["fdd"], metrics["rtf"])

    bar.close()
    report = {
        "model": str(model_dir), "baseline": str(baseline) if baseline else None, "data": str(data),
        "split": split, "seed": seed, "device": str(device),
        "n_clips": len(clips), "identities": sorted({c["meta"]["identity"] for c in clips}),
        "seconds_of_audio": seconds_of_audio, "unusable_clips": info["unusable"],
        "conditions": "ground-truth AUs (OpenFace-masked = 0) + audio features",
        "guidance_scale": cfg.diffusion.guidance_scale,
        "units": {"lve_sq": "m^2", "lve_mm": "mm", "fdd": "m^2", "fdd_abs": "m^2",
                  "fdd_abs_per_sequence": "m^2", "mod": "mm", "rtf": "sampling s / audio s"},
        "methods": list(results),  # table order (the JSON object itself is key-sorted)
        "results": results,
    }
    report["table"] = markdown_table(report)
    if out is not None:
        write_report(out, report, REPORT_JSON, REPORT_MD)
    return report


def _nfe(name: str, cfg) -> int:
    g = 2 if cfg.diffusion.guidance_scale != 1.0 else 1
    if name == "ddpm-full":
        return cfg.diffusion.num_train_steps * g
    if name.startswith("ddim-"):
        return int(name.split("-")[1]) * g
    return 1 if name == "regression" else 0


def markdown_table(report: dict) -> str:
    """Results as a markdown table (squared quantities shown in mm²)."""
    title = (f"Motion eval on `{report['split']}`: {report['n_clips']} clips, "
             f"{report['seconds_of_audio']:.1f} s, identities {', '.join(report['identities'])} "
             f"(device {report['device']}, seed {report['seed']})")
    lines = [title, "",
             "| method | LVE (mm) ↓ | LVE² (mm²) ↓ | FDD (mm²) | abs FDD (mm²) ↓ | MOD (mm) ↓ | net evals / window | RTF |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in report.get("methods", list(report["results"])):
        r = report["results"][name]
        lines.append(f"| {name} | {r['lve_mm']:.3f} | {r['lve_sq'] * 1e6:.3f} | {r['fdd'] * 1e6:.4f} | "
                     f"{r['fdd_abs'] * 1e6:.4f} | {r['mod']:.3f} | {r['network_evals_per_window']} | {r['rtf']:.3f} |")
    return "\n".join(lines)
