"""Figures the demo reports in ``results/metrics.json`` (and the README quotes), each computed here.

* ``edit_pixel_change``: how much the edited video differs from the speech-only one, over the face
  (and its upper / lower half), in the frames where the AU edit is at its plateau vs the frames it
  does not touch. The text prompt acts on every frame, the edit only inside its window, so
  inside − outside is what the edit itself adds to the picture.
* ``held_out_motion``: over **every** held-out clip with tracked meshes (not one clip, one sample),
  the speech-only animation's LVE next to the template-only baseline (no motion), and the motion
  model's AU-edit response (``eval/au_response.py``) with the guidance ``animate`` uses next to no
  guidance; each as mean, std, min and max over clips.
"""

from __future__ import annotations

import numpy as np

from emodifftalk.data.audio import SAMPLE_RATE, load_audio
from emodifftalk.eval.au_response import au_edit_response
from emodifftalk.eval.metrics import motion_metrics
from emodifftalk.pipeline.animate import guidance_reference, motion_offsets, speech_aus

PLATEAU_FRACTION = 0.9  # an edit is "at its plateau" where |curve| >= this x its peak


def mean_spread(values) -> dict:
    """{"mean", "std", "min", "max", "n"} of a list of numbers (population std)."""
    v = np.asarray(list(values), np.float64)
    if v.size == 0:
        raise ValueError("mean_spread of no values")
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "n": int(v.size)}


def edit_windows(curves, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(inside, outside) bool (T,) frame masks: every curve at its plateau / no curve defined or non-zero."""
    t = np.arange(n_frames) / fps
    inside = np.ones(n_frames, bool)
    touched = np.zeros(n_frames, bool)
    for c in curves:
        value, defined = c.evaluate(t)
        mag = np.where(defined, np.abs(value), 0.0)
        peak = float(np.abs(np.asarray(c.values)).max())
        inside &= defined & (mag >= PLATEAU_FRACTION * peak) if peak > 0 else defined
        touched |= defined & (mag > 0)
    return inside, ~touched


def edit_pixel_change(speech: np.ndarray, edited: np.ndarray, curves, fps: float,
                      box: tuple[int, int, int, int]) -> dict:
    """Mean |edited − speech-only| in 8-bit levels over the face ``box`` (x0, y0, x1, y1) and its
    upper / lower half, inside the edit plateau vs outside the edit. Videos (T, H, W, 3) uint8."""
    n = min(len(speech), len(edited))
    if n == 0:
        raise ValueError("edit_pixel_change: empty video")
    x0, y0, x1, y1 = box
    mid = (y0 + y1) // 2
    diff = np.abs(edited[:n].astype(np.int16) - speech[:n].astype(np.int16)).astype(np.float64)
    regions = {"face": diff[:, y0:y1, x0:x1], "upper_face": diff[:, y0:mid, x0:x1],
               "lower_face": diff[:, mid:y1, x0:x1]}
    per_frame = {k: v.mean(axis=(1, 2, 3)) for k, v in regions.items()}  # (T,)
    inside, outside = edit_windows(curves, n, fps)

    def over(mask):
        return {k: float(v[mask].mean()) if mask.any() else None for k, v in per_frame.items()}

    return {"inside_edit": over(inside), "outside_edit": over(outside),
            "frames": {"inside": int(inside.sum()), "outside": int(outside.sum()), "total": n},
            "units": "mean |Δ| in 8-bit levels (0-255)", "box": [int(x0), int(y0), int(x1), int(y1)]}


def held_out_motion(models, clips: list[dict], templates: dict, cfg, fields_of, probe: list[str],
                    delta: float = 0.5, edit_clips: int | None = None) -> dict:
    """Speech-only LVE vs the template-only baseline, and the AU-edit response with and without
    ``diffusion.animate_guidance_scale``, over ``clips`` (held-out ``seq`` samples with meshes and the motion
    model's audio ``feats``, as ``eval.motion.load_eval_clips`` gives them).
    ``fields_of(identity)`` → (17, V, 3) true AU fields, or None to skip the edit response;
    ``edit_clips``: the edit response on the first this many clips only (None: all)."""
    import torch

    lve, lve_template, keys = [], [], []
    guided = cfg.diffusion.animate_guidance_scale
    response = {g: {a: {"gain": [], "cosine": []} for a in probe} for g in ("guided", "unguided")}
    for i, clip in enumerate(clips):
        tpl = templates[clip["meta"]["identity"]]
        gt = clip["verts"]
        fps = float(clip["meta"]["fps"])
        audio = load_audio(clip["audio"], sample_rate=int(clip["sample_rate"]), target_sr=SAMPLE_RATE)
        speech = speech_aus(models, audio, fps)[: len(gt)]
        offsets = motion_offsets(models, torch.from_numpy(tpl.verts), speech, audio, cfg,
                                 reference_aus=guidance_reference(cfg, speech)).numpy()
        pred = tpl.verts[None] + offsets[: len(gt)]
        gt = gt[: len(pred)]
        args = ([tpl.verts], [tpl.lip_idx], [tpl.upper_idx])
        lve.append(motion_metrics([pred], [gt], *args)["lve_mm"])
        lve_template.append(motion_metrics([np.broadcast_to(tpl.verts, gt.shape)], [gt], *args)["lve_mm"])
        keys.append(clip["key"])
        fields = None if edit_clips is not None and i >= edit_clips else fields_of(clip["meta"]["identity"])
        if fields is None:
            continue
        aus = np.asarray(clip["aus"] * clip["au_mask"], np.float32)[: len(gt)]
        for name, scale in (("guided", guided), ("unguided", 1.0)):
            stats = au_edit_response(models.motion, models.schedule, tpl.verts, aus, clip["feats"], fields,
                                     models.motion_cfg, probe, delta=delta, guidance_scale=scale,
                                     reference_guidance=cfg.diffusion.guidance_reference == "speech")
            for a in probe:
                response[name][a]["gain"].append(stats[a]["gain"])
                response[name][a]["cosine"].append(stats[a]["cosine"])
    out = {"clips": keys, "lve_mm": mean_spread(lve), "lve_mm_template_only": mean_spread(lve_template),
           "pipeline": "audio -> Speech-to-AU -> DDIM (diffusion.* sampler knobs) -> offsets vs tracked meshes"}
    if response["guided"][probe[0]]["gain"]:
        out["au_edit_response"] = {
            "delta": delta, "guidance_reference": cfg.diffusion.guidance_reference,
            "guided": {"guidance_scale": guided, **{a: {k: mean_spread(v) for k, v in s.items()}
                                                    for a, s in response["guided"].items()}},
            "unguided": {"guidance_scale": 1.0, **{a: {k: mean_spread(v) for k, v in s.items()}
                                                   for a, s in response["unguided"].items()}}}
    return out
