"""Figures the demo reports in ``results/metrics.json`` (and the README quotes), each computed here.

* ``edit_pixel_change``: how much the edited video differs from the speech-only one, over the face
  (and its upper / lower half), in the frames where the AU edit is at its plateau vs the frames it
  does not touch. The text prompt acts on every frame, the edit only inside its window, so
  inside − outside is what the edit itself adds to the picture.
* ``edit_pixel_change_true_fields``: the same figure for a motion model that follows its AU codes
  exactly (synthetic data only): the speech-only offsets plus the AU change (edited − speech-only
  codes) moved by the world's own AU displacement fields, both videos rendered the same way. It
  is what the world's expressions can show at all, so a bar on ``edit_pixel_change`` can be read
  against it (a model above it moves more than the AUs do, not necessarily in their shape), and
  ``model_agreement`` says whether the model's picture change has the ideal change's shape.
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
from emodifftalk.pipeline.animate import camera_path, guidance_reference, motion_offsets, render_frames, speech_aus

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


def true_field_offsets(speech_offsets: np.ndarray, speech_aus: np.ndarray, edited_aus: np.ndarray,
                       fields: np.ndarray) -> np.ndarray:
    """(T, V, 3) offsets of an ideal AU follower: ``speech_offsets`` (T, V, 3) + Σ_k ΔE_{t,k} D_k,
    ΔE = ``edited_aus`` − ``speech_aus`` (T, 17), D = ``fields`` (17, V, 3) metres per unit AU."""
    n = min(len(speech_offsets), len(speech_aus), len(edited_aus))
    if fields.shape[0] != speech_aus.shape[1] or fields.shape[1:] != speech_offsets.shape[1:]:
        raise ValueError(f"fields {fields.shape} do not match AU codes {speech_aus.shape} and offsets "
                         f"{speech_offsets.shape}")
    change = (edited_aus[:n] - speech_aus[:n]).astype(np.float64)
    return (speech_offsets[:n] + np.einsum("tk,kvd->tvd", change, fields)).astype(np.float32)


def true_field_edit_change(rig, feature_line, speech_offsets: np.ndarray, speech_aus: np.ndarray,
                           edited_aus: np.ndarray, edited_offsets: np.ndarray, fields: np.ndarray, camera: str, cfg,
                           curves, fps: float, box: tuple[int, int, int, int]) -> dict:
    """``edit_pixel_change`` of the ideal AU follower (``true_field_offsets``) against the speech-only
    offsets, both rendered here on ``rig`` (with its feature line) from ``camera``, plus
    ``face_move_mm`` (``edit_face_move_mm``) and ``model_agreement``: ``change_agreement`` of the
    model's ``edited_offsets`` (rendered the same way) with the ideal follower."""
    import torch

    ideal = true_field_offsets(speech_offsets, speech_aus, edited_aus, fields)
    n = len(ideal)

    def video(offsets, aus):
        frames = render_frames(rig, feature_line, torch.from_numpy(np.ascontiguousarray(offsets[:n])),
                               np.ascontiguousarray(aus[:n], np.float32),
                               camera_path(rig, camera, n, cfg.infer.image_size), cfg, progress=False)
        return np.stack(list(frames))

    speech, perfect = video(speech_offsets, speech_aus), video(ideal, edited_aus)
    out = edit_pixel_change(speech, perfect, curves, fps, box)
    out["face_move_mm"] = edit_face_move_mm(speech_offsets, ideal, rig.facial_idx.cpu().numpy(), curves, fps)
    out["model_agreement"] = change_agreement(speech, video(edited_offsets, edited_aus), perfect, curves, fps, box)
    return out


def change_agreement(speech: np.ndarray, edited: np.ndarray, reference: np.ndarray, curves, fps: float,
                     box: tuple[int, int, int, int]) -> float | None:
    """Cosine between two signed picture changes, ``edited`` − ``speech`` and ``reference`` −
    ``speech`` (videos (T, H, W, 3)), over the face ``box`` in the frames where the edit is at its
    plateau: 1 = the picture changes where and as the reference's does, 0 = unrelated. None when
    either change is zero there."""
    n = min(len(speech), len(edited), len(reference))
    inside, _ = edit_windows(curves, n, fps)
    x0, y0, x1, y1 = box

    def change(video):
        return (video[:n][inside, y0:y1, x0:x1].astype(np.float64) - speech[:n][inside, y0:y1, x0:x1]).ravel()

    a, b = change(edited), change(reference)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else None


def edit_face_move_mm(speech_offsets: np.ndarray, edited_offsets: np.ndarray, face_idx: np.ndarray, curves,
                      fps: float) -> float | None:
    """Mean distance (mm) between the edited and speech-only positions of the ``face_idx`` vertices
    over the frames where the edit is at its plateau (None if it never is)."""
    n = min(len(speech_offsets), len(edited_offsets))
    inside, _ = edit_windows(curves, n, fps)
    if not inside.any():
        return None
    move = np.linalg.norm(edited_offsets[:n] - speech_offsets[:n], axis=-1)[:, face_idx]
    return float(1000 * move[inside].mean())


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
