"""``emodifftalk demo``: the whole system end to end on synthetic data, on one CPU machine.

Stages (each reusable with ``--skip-<stage>``, which takes the stage's earlier output from
``OUT/work``):

    synth → pack (+ validate) → rig (local Ray, one task per identity; + feature line)
    → train s2au, motion, text2au (the shared trainer; TensorBoard logs) → evaluate
    → animate a held-out clip twice (speech only; text prompt + AU edit) → results/

``OUT/results`` ends up with ``video.mp4`` (edited), ``video_speech.mp4``, ``aus.png``,
``frame_grid.png`` (face close-ups; rows: captured ground truth, speech-only, edited, and the
edited − speech-only difference ×4), ``metrics.json`` and a ``tensorboard`` folder holding every
run's event files. ``metrics.json``: LVE/FDD/MOD of the animated clip; over all held-out clips the
speech-only LVE next to the template-only baseline and the AU-edit response with and without
guidance (mean/std/min/max, ``pipeline/demo_metrics.py``); the edited-vs-speech-only pixel change
inside vs outside the edit; Speech-to-AU next to its baselines; Text-to-AU; rig PSNRs; timings.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from emodifftalk.config import Config, save_config
from emodifftalk.eval.au_response import EDITABLE_AUS

# Each stage imports what it runs inside its function: `emodifftalk --help` imports this module
# (commands/demo.py reads STAGES and DEFAULT_TEXT), and must not load the whole package.

log = logging.getLogger(__name__)

STAGES = ("synth", "pack", "rig", "s2au", "motion", "text2au")
DEFAULT_TEXT = "a happy person with a broad smile"
DEFAULT_EDITS = {"AU01": {"keyframes": [[0.8, 0.0], [1.2, 0.7], [2.6, 0.7], [3.0, 0.0]]},
                 "AU02": {"keyframes": [[0.8, 0.0], [1.2, 0.6], [2.6, 0.6], [3.0, 0.0]]}}


def reuse_earlier_output(name: str, done_marker: Path) -> None:
    """``--skip-<name>``: the stage's earlier output must be there (``FileNotFoundError`` if not)."""
    if not done_marker.exists():
        raise FileNotFoundError(f"--skip-{name}: no earlier output at {done_marker}; run without --skip-{name}")
    log.info("demo: %s skipped (reusing %s)", name, done_marker)


def _stage(name: str, skip: set[str], done_marker: Path, fn):
    if name in skip:
        reuse_earlier_output(name, done_marker)
        return None
    t0 = time.perf_counter()
    print(f"[demo] {name} ...", flush=True)
    result = fn()
    print(f"[demo] {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return result


def _held_out_clip(shards: Path) -> dict:
    from emodifftalk.data.shards import iter_dataset

    for split in ("test", "val"):
        for sample in iter_dataset(shards, "seq", split):
            if sample["verts"] is not None:
                return sample
    raise ValueError(f"{shards}: no held-out clip with meshes")


def _face_box(verts: np.ndarray, viewmat: np.ndarray, K: np.ndarray, width: int, height: int,
              margin: float = 0.15) -> tuple[int, int, int, int]:
    """Square pixel box (x0, y0, x1, y1) around the projected ``verts`` (N, 3), inside the image."""
    cam = verts @ viewmat[:3, :3].T + viewmat[:3, 3]
    uv = (cam @ K.T)[:, :2] / cam[:, 2:3]
    lo, hi = uv.min(0), uv.max(0)
    half = 0.5 * float((hi - lo).max()) * (1 + 2 * margin)
    size = int(min(max(2 * half, 8), width, height))
    cx, cy = (lo + hi) / 2
    x0 = int(np.clip(round(cx - size / 2), 0, width - size))
    y0 = int(np.clip(round(cy - size / 2), 0, height - size))
    return x0, y0, x0 + size, y0 + size


def _scaled_box(box: tuple[int, int, int, int], scale: float) -> tuple[int, int, int, int]:
    """``box`` (x0, y0, x1, y1) in an image ``scale`` times larger (capture pixels -> video pixels)."""
    return tuple(int(round(v * scale)) for v in box)


def _frame_grid(results: Path, gt_frames: list[dict], camera: str, capture_box: tuple[int, int, int, int],
                video_box: tuple[int, int, int, int], zoom: int = 2) -> Path:
    """Face close-ups at the packed moments. Rows: captured frames, speech-only animation, edited
    animation, and |edited − speech-only| ×4 (where the edit changed the picture). The captured
    frames are cropped with ``capture_box``, the videos (``infer.image_size``) with ``video_box``;
    every tile is shown at the video crop's size × ``zoom``."""
    import imageio.v3 as iio
    from PIL import Image

    from emodifftalk.render.video import frame_grid, save_png

    speech = iio.imread(results / "video_speech.mp4", index=None)
    edited = iio.imread(results / "video.mp4", index=None)
    picks = [f for f in gt_frames if int(f["meta"]["frame"]) < min(len(speech), len(edited))]
    picks = picks[:: max(1, len(picks) // 6)][:6]
    size = (video_box[2] - video_box[0]) * zoom, (video_box[3] - video_box[1]) * zoom

    def crop(img, box) -> np.ndarray:
        x0, y0, x1, y1 = box
        tile = Image.fromarray(np.ascontiguousarray(np.asarray(img, np.uint8)[y0:y1, x0:x1]))
        return np.asarray(tile.resize(size, Image.NEAREST if tile.size[0] * zoom == size[0] else Image.BILINEAR))

    rows: dict[str, list[np.ndarray]] = {"gt": [], "speech": [], "edited": [], "diff": []}
    for f in picks:
        t = int(f["meta"]["frame"])
        rows["gt"].append(crop(f["images"][camera], capture_box))
        rows["speech"].append(crop(speech[t], video_box))
        rows["edited"].append(crop(edited[t], video_box))
        diff = np.abs(edited[t].astype(np.int16) - speech[t].astype(np.int16)).max(-1, keepdims=True)
        rows["diff"].append(crop(np.clip(diff * 4, 0, 255).astype(np.uint8).repeat(3, -1), video_box))
    tiles = [tile for row in rows.values() for tile in row]
    return save_png(results / "frame_grid.png", frame_grid(tiles, cols=len(picks)))


PROBE_AUS = list(EDITABLE_AUS)  # every AU the labels teach (issue 19; was the five the demo's edit touches)
EDIT_CLIPS = 4  # held-out clips the AU-edit response is measured on (16 AUs x 2 guidances each)


def _held_out_clips(shards: Path, cfg: Config) -> tuple[list[dict], dict]:
    """Every usable val + test clip (meshes + template) and the templates."""
    from emodifftalk.eval.motion import load_eval_clips
    from emodifftalk.motion.data import load_template_infos

    clips = []
    for split in ("val", "test"):
        try:
            clips += load_eval_clips(shards, split, cfg)[0]
        except ValueError:  # a split without usable clips
            continue
    return clips, load_template_infos(shards)


def _true_fields(cfg: Config):
    """identity → its true AU fields (synthetic data only: eval/au_response.py needs them)."""
    from emodifftalk.data.synthetic import synthetic_au_fields

    def fields_of(identity: str):
        try:
            return synthetic_au_fields(cfg.synth, identity)
        except ValueError:  # not a synthetic identity
            return None

    return fields_of


def _ideal_edit_change(rig, rig_dir: Path, speech_dir: Path, edited_dir: Path, camera: str, cfg: Config, curves,
                       fps: float, box) -> dict | None:
    """``edit_pixel_change_true_fields`` of the demo's edit (None if the identity is not synthetic)."""
    from emodifftalk.pipeline.demo_metrics import true_field_edit_change
    from emodifftalk.rig.feature_line_fit import load_feature_line

    fields = _true_fields(cfg)(rig.identity)
    if fields is None:
        return None

    def codes(path: Path) -> np.ndarray:
        return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)[:, 2:].astype(np.float32)

    return true_field_edit_change(rig, load_feature_line(rig_dir, rig), np.load(speech_dir / "offsets.npy"),
                                  codes(edited_dir / "aus_speech.csv"), codes(edited_dir / "aus.csv"),
                                  np.load(edited_dir / "offsets.npy"), np.asarray(fields, np.float32), camera, cfg,
                                  curves, fps, box)


def run_demo(out: str | Path, cfg: Config, skip: set[str] = frozenset(), text: str = DEFAULT_TEXT,
             edits: dict | None = None, jobs: int | None = None) -> dict:
    """The whole demo into ``out``. ``jobs``: training stages run at once (default: all three,
    ``pipeline/stage_pool.py``)."""
    from emodifftalk.data.audio import write_wav
    from emodifftalk.data.shards import (
        format_report,
        inspect_report,
        pack_dataset,
        validate_shards,
    )
    from emodifftalk.data.synthetic import generate_dataset
    from emodifftalk.distributed.ray_jobs import format_summary, run_rig_jobs
    from emodifftalk.eval.metrics import motion_metrics
    from emodifftalk.eval.s2au import run_eval as eval_s2au
    from emodifftalk.pipeline.animate import animate, capture_camera_index, load_models
    from emodifftalk.rig.gaussians import GaussianRig
    from emodifftalk.pipeline.preview import clip_frames
    from emodifftalk.pipeline.stage_pool import run_training_stages
    from emodifftalk.threads import usable_cores
    from emodifftalk.text2au.evaluate import evaluate_model

    t_start = time.perf_counter()
    out = Path(out)
    work, results = out / "work", out / "results"
    raw, shards, rigs, runs = work / "raw", work / "shards", work / "rigs", work / "runs"
    work.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    cfg.data.root = str(shards)
    timings: dict[str, float] = {}

    def timed(name, marker, fn):
        t0 = time.perf_counter()
        r = _stage(name, skip, marker, fn)
        timings[name] = round(time.perf_counter() - t0, 1)
        return r

    timed("synth", raw / "dataset.json",
          lambda: generate_dataset(cfg.synth, raw, overwrite=True, workers=usable_cores()))
    timed("pack", shards / "manifest.json", lambda: pack_dataset(raw, shards, cfg, overwrite=True))
    problems = validate_shards(shards)
    if problems:
        raise RuntimeError(f"packed shards failed validation: {problems[:5]}")
    print(format_report(inspect_report(shards)))

    def rig_stage():
        records = run_rig_jobs(shards, rigs, cfg, overwrite=True)
        print(format_summary(records))
        failed = [r for r in records if r.get("status") not in ("ok", "skipped")]
        if failed:
            raise RuntimeError(f"rig failed for {[r['identity'] for r in failed]}")
        return records

    timed("rig", rigs / "rig_summary.json", rig_stage)
    s2au_dir = runs / "s2au" / "export"
    motion_dir = runs / "motion" / "export"
    t2a_dir = runs / "text2au" / "export"
    # independent of each other: run side by side (stage_pool), the longest first
    exports = {"motion": motion_dir, "text2au": t2a_dir, "s2au": s2au_dir}
    timings.update(run_training_stages(exports, cfg, runs, skip=skip, jobs=jobs))

    # ---- evaluation + animation of a held-out clip ---------------------------------------------
    if results.exists():
        shutil.rmtree(results)
    results.mkdir(parents=True)
    clip = _held_out_clip(shards)
    meta = clip["meta"]
    identity = meta["identity"]
    wav = results / "input.wav"
    write_wav(wav, clip["audio"], int(clip["sample_rate"]))
    edits_path = results / "edits.json"
    edits_path.write_text(json.dumps(edits if edits is not None else DEFAULT_EDITS, indent=2))
    models = load_models(s2au_dir, motion_dir, t2a_dir)
    t0 = time.perf_counter()
    rig = GaussianRig.load(rigs / identity)
    cam = capture_camera_index(rig, cfg.infer.camera)  # "front" by default
    plain = animate(rigs / identity, wav, models, work / "anim_speech", cfg, camera=str(cam), overwrite=True)
    edited = animate(rigs / identity, wav, models, work / "anim_edited", cfg, text=text, edits_path=edits_path,
                     camera=str(cam), overwrite=True)
    timings["animate"] = round(time.perf_counter() - t0, 1)
    shutil.copy(plain.out_dir / "video.mp4", results / "video_speech.mp4")
    for name in ("video.mp4", "aus.png", "aus.csv", "animation.json"):
        shutil.copy(edited.out_dir / name, results / name)

    from emodifftalk.motion.data import load_template_infos

    tmpl = load_template_infos(shards)[identity]
    cams = json.loads((rigs / identity / "rig.json").read_text())["cameras"]
    capture_box = _face_box(tmpl.verts[tmpl.face_idx], np.asarray(cams["viewmats"][cam]),
                            np.asarray(cams["Ks"][cam]), int(cams["width"]), int(cams["height"]))
    # the videos are rendered at infer.image_size on the long side (animate.camera_path)
    box = _scaled_box(capture_box, cfg.infer.image_size / max(int(cams["width"]), int(cams["height"])))
    grid = _frame_grid(results, clip_frames(shards, identity, meta["clip"], meta["split"]), cams["names"][cam],
                       capture_box, box)
    pred = tmpl.verts[None] + np.load(plain.out_dir / "offsets.npy")
    gt = clip["verts"][: pred.shape[0]]
    motion = motion_metrics([pred[: gt.shape[0]]], [gt], [tmpl.verts], [tmpl.lip_idx], [tmpl.upper_idx])
    import imageio.v3 as iio

    from emodifftalk.edits import parse_edits
    from emodifftalk.pipeline.demo_metrics import edit_face_move_mm, edit_pixel_change, held_out_motion

    curves, fps = parse_edits(json.loads(edits_path.read_text())), models.frame_rate(cfg)
    pixels = edit_pixel_change(iio.imread(results / "video_speech.mp4", index=None),
                               iio.imread(results / "video.mp4", index=None), curves, fps, box)
    pixels["face_move_mm"] = edit_face_move_mm(np.load(plain.out_dir / "offsets.npy"),
                                               np.load(edited.out_dir / "offsets.npy"), rig.facial_idx.numpy(),
                                               curves, fps)
    pixels_ideal = _ideal_edit_change(rig, rigs / identity, plain.out_dir, edited.out_dir, str(cam), cfg, curves,
                                      fps, box)
    clips, templates = _held_out_clips(shards, models.motion_cfg)
    held_out = held_out_motion(models, clips, templates, cfg, _true_fields(cfg), PROBE_AUS,
                               edit_clips=EDIT_CLIPS)
    s2au_report = eval_s2au(s2au_dir, shards)
    t2a_report = evaluate_model(t2a_dir)
    rig_summary = json.loads((rigs / "rig_summary.json").read_text()) if (rigs / "rig_summary.json").exists() else []

    tb = results / "tensorboard"
    for name in ("s2au", "motion", "text2au"):
        src = runs / name
        for ev in src.rglob("events.out.tfevents*"):
            dst = tb / name / ev.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ev, dst)
    metrics = {
        "held_out_clip": clip["key"],
        "motion_speech_pipeline": motion,  # audio → predicted AUs → DDIM → offsets vs tracked meshes
        "held_out_motion": held_out,  # all val + test clips: mean/std/min/max, with baselines
        "edit_pixel_change": pixels,  # edited vs speech-only video, inside vs outside the edit
        "edit_pixel_change_true_fields": pixels_ideal,  # the same edit moved by the world's AU fields
        "s2au": s2au_report.get("summary", s2au_report),
        "text2au_test": t2a_report.get("summary", t2a_report),
        "rigs": rig_summary,
        "timings_seconds": {**timings, "total": round(time.perf_counter() - t_start, 1)},
    }
    (results / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    print(f"\n[demo] results in {results}:")
    for p in ("video.mp4", "video_speech.mp4", "aus.png", "frame_grid.png", "metrics.json", "tensorboard"):
        print(f"  {results / p}")
    print(f"[demo] finished in {metrics['timings_seconds']['total']:.0f} s")
    return {"results": str(results), "grid": str(grid), **metrics}
