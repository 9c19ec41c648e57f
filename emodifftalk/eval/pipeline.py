"""``emodifftalk eval pipeline``: audio → Speech-to-AU → motion → mesh, every motion method, on the
held-out identities (v2: each identity speaks with its own voice, so held-out voices too).

``--models RUNS`` is a folder of training runs (or their exports): the one of task ``s2au`` gives
the AU codes, every one of task ``motion`` is a method, named by what it trains (``motion.model``:
``diffusion``, ``regression``, ``faceformer``; the run folder's name when two train the same), and
``template`` (zero offsets) is always added. Per held-out clip (``--split``, default val + test):
its audio → Speech-to-AU codes (deterministic) → each method's offsets (``motion.methods``; the
diffusion model samples as ``animate`` does: ``diffusion.ddim_steps``, windows, and
``diffusion.animate_guidance_scale`` with ``diffusion.guidance_reference``) → template + offsets,
against the tracked meshes.

``results[method]``:

* ``lve_mm``, ``fdd_abs``, ``mod`` (+ the rest of ``eval.metrics.motion_metrics``) of the seed-0 sample;
* ``lip_closure_f1`` and its counts (``eval/lip_closure.py``; needs the clips' phone timelines);
* ``lve_mm_mean_of_samples``: LVE of the per-frame mean of the diversity samples (for a stochastic
  method, how much of its LVE is sampling spread: an L2 metric rewards the conditional mean);
* ``upper_face_diversity_mm``: per clip, ``DIVERSITY_SAMPLES`` samples with different seeds; per
  frame and upper-face vertex the RMS distance of the samples from their mean; mean over vertices,
  frames and clips (0 for a deterministic method, measured all the same);
* ``au_edit_response`` (AU-conditioned methods, synthetic identities): gain and cosine
  (``eval/au_response.py``) of **every** AU at the export's default guidance, mean over
  ``au_clips`` clips spread over the identities (``spread_over_identities``).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from emodifftalk.au import AU_NAMES, OPENFACE_MISSING_AUS
from emodifftalk.data.audio import SAMPLE_RATE, load_audio
from emodifftalk.data.shard_reader import check_shard_folder
from emodifftalk.data.synthetic import synthetic_au_fields
from emodifftalk.data.synthetic.writer import make_identity
from emodifftalk.diffusion.schedule import NoiseSchedule
from emodifftalk.eval.au_response import EDITABLE_AUS, au_edit_response
from emodifftalk.eval.lip_closure import add_counts, closure_counts, f1_of, frame_labels
from emodifftalk.eval.metrics import lip_gap, motion_metrics
from emodifftalk.eval.motion import load_eval_clips
from emodifftalk.s2au.inference import load_s2au, predict_aus
from emodifftalk.motion.data import ClipFeatures
from emodifftalk.motion.inference import load_motion
from emodifftalk.motion.methods import AU_CONDITIONED, method_of, predict_offsets
from emodifftalk.utils import write_report

log = logging.getLogger(__name__)

REPORT_JSON = "pipeline_eval.json"
REPORT_MD = "pipeline_eval.md"
DIVERSITY_SAMPLES = 5
AU_EDIT_DELTA = 0.5
TEMPLATE_MATCH_M = 1e-5  # a synthetic identity's regenerated template must equal the packed one


@dataclass
class Method:
    name: str
    kind: str  # motion.methods.METHODS
    model: torch.nn.Module | None
    cfg: object | None
    export: str | None
    schedule: NoiseSchedule | None = None  # the diffusion method's noise schedule


def _export_dir(path: Path) -> Path:
    return path / "export" if (path / "export" / "task.json").is_file() else path


def find_runs(runs: str | Path) -> tuple[Path, list[tuple[str, Path]]]:
    """(Speech-to-AU export, [(name, motion export)]) in ``runs``; cheap (reads task.json files)."""
    runs = Path(runs)
    if not runs.is_dir():
        raise FileNotFoundError(f"--models {runs}: not a folder of training runs")
    s2au, motion = [], []
    for d in sorted(p for p in runs.iterdir() if p.is_dir()):
        exp = _export_dir(d)
        task_file = exp / "task.json"
        if not task_file.is_file():
            continue
        task = json.loads(task_file.read_text()).get("task")
        if task == "s2au":
            s2au.append(exp)
        elif task == "motion":
            motion.append((d.name, exp))
    if len(s2au) != 1:
        raise ValueError(f"--models {runs}: need exactly one Speech-to-AU run (task s2au), found "
                         f"{[str(p) for p in s2au] or 'none'}")
    if not motion:
        raise ValueError(f"--models {runs}: no motion run (task motion) found")
    return s2au[0], motion


def load_methods(motion_exports: list[tuple[str, Path]], device, overrides: list[str] | tuple = ()) -> list[Method]:
    """Loaded motion methods in table order (diffusion, regression, faceformer, …) plus ``template``."""
    loaded = []
    for folder, exp in motion_exports:
        m = load_motion(exp, device, overrides)
        loaded.append((folder, method_of(m.cfg), m, str(exp)))
    kinds = [k for _, k, *_ in loaded]
    order = {"diffusion": 0, "regression": 1, "faceformer": 2}
    out = [Method(kind if kinds.count(kind) == 1 else folder, kind, m.model, m.cfg, exp, m.schedule)
           for folder, kind, m, exp in sorted(loaded, key=lambda r: (order.get(r[1], 9), r[0]))]
    return [*out, Method("template", "template", None, None, None)]


def _sample_kwargs(method: Method, speech: np.ndarray) -> dict:
    """How ``animate`` samples: inference steps, windows and guidance of the export's config."""
    if method.kind != "diffusion":
        return {}
    d = method.cfg.diffusion
    ref = torch.from_numpy(speech) if d.guidance_reference == "speech" else None
    return {"steps": d.ddim_steps, "guidance_scale": d.animate_guidance_scale, "reference_aus": ref,
            "window_frames": d.window_frames, "context_frames": d.context_frames}


def _offsets(method: Method, tpl, speech: np.ndarray, feats, seed: int, device) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return predict_offsets(method.model, method.cfg, torch.from_numpy(tpl.verts), torch.from_numpy(speech),
                           None if feats is None else torch.from_numpy(feats), schedule=method.schedule,
                           generator=g, device=device, **_sample_kwargs(method, speech)).numpy()


def upper_face_spread(samples: list[np.ndarray], upper_idx: np.ndarray) -> float:
    """Samples [(T, V, 3)] m → mean over frames and upper-face vertices of the RMS distance of the
    samples from their mean, in mm."""
    x = np.stack(samples)[:, :, upper_idx].astype(np.float64)  # (S, T, Vu, 3)
    return float(np.sqrt(np.square(x - x.mean(0)).sum(-1).mean(0)).mean() * 1000.0)


def synthetic_fields_of(data: str | Path, synth_cfg, templates: dict):
    """identity → (17, V, 3) true AU fields, or None where the identity is not one this synthetic
    world (``synth_cfg``, identity count widened to the data's) regenerates exactly."""
    cfg = copy.deepcopy(synth_cfg)
    numbers = [int(m.group(1)) for i in templates if (m := re.fullmatch(r"id(\d{3,})", i))]
    cfg.n_identities = max([cfg.n_identities, *(n + 1 for n in numbers)])
    cache: dict[str, np.ndarray | None] = {}

    def fields_of(identity: str):
        if re.fullmatch(r"id(\d{3,})", identity) is None:
            return None
        if identity not in cache:
            try:
                ident = make_identity(cfg, int(identity[2:]))
                same = np.abs(ident.template.verts - templates[identity].verts).max() < TEMPLATE_MATCH_M
                cache[identity] = synthetic_au_fields(cfg, identity) if same else None
                if not same:
                    log.warning("%s: the synthetic world of this config does not regenerate its template "
                                "(pass the synth.* values the data was made with): no AU-edit response", identity)
            except (ValueError, IndexError):
                cache[identity] = None
        return cache[identity]

    return fields_of


def spread_over_identities(identities: list[str], n: int) -> list[int]:
    """Indices of ``n`` clips taking each identity's clips in turn (first clips of every identity,
    then second ones, …): an AU edit's gain depends on the identity's tracker, so the clips that
    measure it should cover as many identities as they can."""
    rank: dict[str, int] = {}
    order = []
    for i, ident in enumerate(identities):
        order.append((rank.get(ident, 0), i))
        rank[ident] = rank.get(ident, 0) + 1
    return sorted(i for _, i in sorted(order)[:max(n, 0)])


def run_pipeline_eval(runs: str | Path, data: str | Path, *, out: str | Path | None = None,
                      splits: tuple[str, ...] = ("val", "test"), device: str = "cpu", seed: int = 0,
                      max_clips: int | None = None, au_clips: int = 4, diversity_samples: int = DIVERSITY_SAMPLES,
                      overrides: list[str] | tuple = (), progress: bool = True, fields_of=None) -> dict:
    """Evaluate every motion method of ``runs`` through the full pipeline on ``splits`` of ``data``;
    writes ``pipeline_eval.json`` / ``.md`` into ``out`` when given. Returns the report.
    ``fields_of(identity)`` → true (17, V, 3) AU fields or None (default: the synthetic world's)."""
    s2au_dir, motion_dirs = find_runs(runs)  # cheap checks first
    check_shard_folder(data, [("template", None), *(("seq", s) for s in splits)])
    device = torch.device(device)
    s2au = load_s2au(s2au_dir, device=device)
    methods = load_methods(motion_dirs, device, overrides)
    ref_cfg = next(m.cfg for m in methods if m.cfg is not None)
    clips, templates = [], None
    for split in splits:
        got, info = load_eval_clips(data, split, ref_cfg, max_clips)
        clips += got
        templates = info["templates"]
    features = {m.name: ClipFeatures(m.cfg.audio) for m in methods if m.cfg is not None}
    fields_of = fields_of or synthetic_fields_of(data, ref_cfg.synth, templates)
    fps = float(ref_cfg.diffusion.fps)

    preds = {m.name: [] for m in methods}
    means = {m.name: [] for m in methods}
    spread = {m.name: [] for m in methods}
    counts = {m.name: {} for m in methods}
    counts["tracked meshes"] = {}
    response = {m.name: {a: {"gain": [], "cosine": []} for a in AU_NAMES} for m in methods
                if m.kind in AU_CONDITIONED}
    phones_missing = 0
    au_picks = set(spread_over_identities([c["meta"]["identity"] for c in clips], au_clips))
    n_au = len(au_picks)
    total = len(clips) * len(methods) + n_au * len(response)
    bar = tqdm(total=total, desc="eval pipeline", unit="clip", disable=not progress)
    for i, clip in enumerate(clips):
        tpl = templates[clip["meta"]["identity"]]
        gt = clip["verts"]
        audio = load_audio(clip["audio"], sample_rate=int(clip["sample_rate"]), target_sr=SAMPLE_RATE)
        speech = np.asarray(predict_aus(audio, sample_rate=SAMPLE_RATE, fps=fps, model=s2au, device=device), np.float32)
        n = min(len(gt), len(speech))
        speech, gt = np.ascontiguousarray(speech[:n]), gt[:n]
        phones = clip["meta"].get("phones")
        labels = frame_labels(phones, n, fps) if phones else None
        phones_missing += labels is None
        true_open = lip_gap(gt, tpl.verts, tpl.lip_idx)
        if labels is not None:
            counts["tracked meshes"] = add_counts(counts["tracked meshes"], closure_counts(true_open, true_open, *labels))
        for m in methods:
            bar.set_postfix_str(m.name)
            feats = None if m.cfg is None else features[m.name](clip)
            samples = [tpl.verts[None] + _offsets(m, tpl, speech, feats,
                                                  seed * 100003 + i * 101 + s, device)[:n]
                       for s in range(diversity_samples)]
            preds[m.name].append(samples[0])
            means[m.name].append(np.mean(samples, axis=0))
            spread[m.name].append(upper_face_spread(samples, tpl.upper_idx))
            if labels is not None:
                c = closure_counts(lip_gap(samples[0], tpl.verts, tpl.lip_idx), true_open, *labels)
                counts[m.name] = add_counts(counts[m.name], c)
            bar.update(1)
        if i in au_picks and (fields := fields_of(clip["meta"]["identity"])) is not None:
            aus = np.asarray(clip["aus"] * clip["au_mask"], np.float32)[:n]  # the true codes: edit what the data has
            for m in methods:
                if m.name not in response:
                    continue
                bar.set_postfix_str(f"{m.name} AU edits")
                stats = au_edit_response(
                    m.model, m.schedule, tpl.verts, aus, features[m.name](clip), fields, m.cfg,
                    list(AU_NAMES), delta=AU_EDIT_DELTA, seed=seed + i,
                    guidance_scale=m.cfg.diffusion.animate_guidance_scale if m.kind == "diffusion" else None,
                    reference_guidance=m.kind == "diffusion" and m.cfg.diffusion.guidance_reference == "speech")
                for a in AU_NAMES:
                    response[m.name][a]["gain"].append(stats[a]["gain"])
                    response[m.name][a]["cosine"].append(stats[a]["cosine"])
                bar.update(1)
    bar.close()

    gts = [c["verts"][: len(p)] for c, p in zip(clips, preds[methods[0].name])]
    tpls = [templates[c["meta"]["identity"]] for c in clips]
    args = ([t.verts for t in tpls], [t.lip_idx for t in tpls], [t.upper_idx for t in tpls])
    results = {}
    for m in methods:
        r = motion_metrics(preds[m.name], gts, *args)
        r.update(kind=m.kind, export=m.export, upper_face_diversity_mm=float(np.mean(spread[m.name])),
                 lve_mm_mean_of_samples=motion_metrics(means[m.name], gts, *args)["lve_mm"],
                 lip_closure_f1=f1_of(counts[m.name]) if counts[m.name] else None,
                 lip_closure_counts=counts[m.name] or None)
        if m.name in response and response[m.name]["AU01"]["gain"]:
            r["au_edit_response"] = _response_summary(m, response[m.name])
        results[m.name] = r
    report = {
        "models": str(runs), "s2au": str(s2au_dir), "data": str(data), "splits": list(splits), "seed": seed,
        "device": str(device), "n_clips": len(clips), "seconds_of_audio": sum(len(g) for g in gts) / fps,
        "identities": sorted({c["meta"]["identity"] for c in clips}),
        "pipeline": "clip audio -> Speech-to-AU -> motion method -> template + offsets, vs tracked meshes",
        "diversity_samples": diversity_samples, "au_edit_clips": n_au, "au_edit_delta": AU_EDIT_DELTA,
        "lip_closure": {"tracked_meshes_f1": f1_of(counts["tracked meshes"]) if counts["tracked meshes"] else None,
                        "clips_without_phones": phones_missing},
        "units": {"lve_mm": "mm", "mod": "mm", "fdd": "m^2", "fdd_abs": "m^2", "upper_face_diversity_mm": "mm"},
        "methods": [m.name for m in methods], "results": results,
    }
    report["table"] = markdown_table(report)
    if out is not None:
        write_report(out, report, REPORT_JSON, REPORT_MD)
    return report


def _response_summary(method: Method, resp: dict) -> dict:
    out = {"guidance_scale": method.cfg.diffusion.animate_guidance_scale if method.kind == "diffusion" else 1.0,
           "per_au": {}, "unlabelled_aus": list(OPENFACE_MISSING_AUS)}
    for a, v in resp.items():
        out["per_au"][a] = {"gain": float(np.mean(v["gain"])), "cosine": float(np.mean(v["cosine"])),
                            "gain_min": float(np.min(v["gain"])), "cosine_min": float(np.min(v["cosine"]))}
    out["editable_aus_in_band"] = sum(0.7 <= out["per_au"][a]["gain"] <= 1.3 and out["per_au"][a]["cosine"] >= 0.8
                                      for a in EDITABLE_AUS)  # the bar
    out["editable_aus"] = len(EDITABLE_AUS)
    return out


def _fmt(x, nd=3, scale=1.0):
    return "–" if x is None else f"{x * scale:.{nd}f}"


def markdown_table(report: dict) -> str:
    """The report's methods as markdown tables (FDD in mm²; AU-edit gain/cosine per AU)."""
    lines = [f"Full pipeline (audio → Speech-to-AU → motion → mesh) on {', '.join(report['splits'])}: "
             f"{report['n_clips']} clips, {report['seconds_of_audio']:.0f} s, identities "
             f"{', '.join(report['identities'])} (seed {report['seed']}, {report['diversity_samples']} samples "
             f"for diversity; tracked meshes' lip-closure F1 {_fmt(report['lip_closure']['tracked_meshes_f1'], 2)})",
             "", "| method | LVE (mm) ↓ | abs FDD (mm²) ↓ | MOD (mm) ↓ | lip-closure F1 ↑ | upper-face diversity (mm) "
             "| LVE of the samples' mean (mm) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in report["methods"]:
        r = report["results"][name]
        lines.append(f"| {name} | {r['lve_mm']:.3f} | {_fmt(r['fdd_abs'], 4, 1e6)} | {r['mod']:.3f} | "
                     f"{_fmt(r['lip_closure_f1'])} | {r['upper_face_diversity_mm']:.3f} | {r['lve_mm_mean_of_samples']:.3f} |")
    edits = {n: r["au_edit_response"] for n, r in report["results"].items() if "au_edit_response" in r}
    if edits:
        lines += ["", f"AU-edit response (+{report['au_edit_delta']} on one code, {report['au_edit_clips']} clips; "
                  "gain / cosine, bar 0.7–1.3 / ≥ 0.8):", "",
                  "| AU | " + " | ".join(edits) + " |", "|---|" + "---:|" * len(edits)]
        for a in AU_NAMES:
            cells = [f"{e['per_au'][a]['gain']:.2f} / {e['per_au'][a]['cosine']:.2f}" for e in edits.values()]
            lines.append(f"| {a}{' (unlabelled)' if a in OPENFACE_MISSING_AUS else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
