"""Is the declared camera convention right? Project meshes/keypoints into the images and see.

For each sampled (clip, frame) with both 3D points (a mesh, FLAME ``verts`` or ``Keypoints3d``)
and images, the points are projected into every camera under the declared convention and under
all 12 alternatives (``ingest.cameras.all_conventions``). Per convention we report, averaged
over cameras:

* ``in_front``: fraction of points with positive depth;
* ``in_frame``: fraction projected inside the image;
* ``on_fg``: fraction landing on the foreground (the matte when there is one, else pixels that
  differ from the image's border colour);
* ``reproj_px``: median pixel distance to 2D keypoints when the source has them (RenderMe-360
  ``Keypoints2d`` minus its 33 contour points vs ``Keypoints3d``).

The score is ``on_fg`` (``in_frame`` without images); the declared convention is flagged as
*likely wrong* when another one scores clearly higher (by ``margin``) or it scores below
``min_score``; the best one is suggested. Inputs: a folder data manifest (YAML/JSON), a shard
folder (its stored ``viewmat``s are then "opencv_w2c_m" and alternatives show an upstream
mistake such as a missing inversion), or a folder of RenderMe-360 ``.smc`` files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from emodifftalk.data.schema import SPLITS
from emodifftalk.data.shards import SkipStats, iter_dataset, load_templates
from emodifftalk.ingest.cameras import Convention, all_conventions, project, to_viewmat
from emodifftalk.ingest.folder import FolderClip, plan_folder, read_camera_file
from emodifftalk.ingest.images import decode_mask, decode_rgb
from emodifftalk.ingest.renderme360 import RT_CONVENTION, SMCClip, discover_smc

log = logging.getLogger(__name__)

MARGIN = 0.15
MIN_SCORE = 0.5
FG_THRESHOLD = 30  # |pixel - border colour| (0..255) that counts as foreground


def foreground(image: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: the matte > 0.5, else pixels differing from the median border colour."""
    if alpha is not None:
        return np.asarray(alpha) > 0.5
    img = np.asarray(image, dtype=np.int16)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = np.median(border, axis=0)
    return np.abs(img - bg).max(axis=2) > FG_THRESHOLD


def point_stats(points: np.ndarray, k: np.ndarray, viewmat: np.ndarray, width: int, height: int,
                fg: np.ndarray | None = None, kp2d: np.ndarray | None = None,
                kp3d: np.ndarray | None = None) -> dict[str, float]:
    uv, z = project(points, viewmat, k)
    front = z > 1e-6
    finite = np.all(np.isfinite(uv), axis=1)
    inside = front & finite & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    out = {"in_front": float(front.mean()), "in_frame": float(inside.mean())}
    if fg is not None:
        sy, sx = fg.shape[0] / height, fg.shape[1] / width
        cols = np.clip((uv[inside, 0] * sx).astype(int), 0, fg.shape[1] - 1)
        rows = np.clip((uv[inside, 1] * sy).astype(int), 0, fg.shape[0] - 1)
        out["on_fg"] = float(fg[rows, cols].sum() / len(points)) if len(points) else 0.0
    if kp2d is not None and kp3d is not None and len(kp2d) and len(kp3d):
        uv3, z3 = project(kp3d, viewmat, k)
        n = min(len(uv3), len(kp2d))
        d = np.linalg.norm(uv3[:n] - kp2d[:n], axis=1)
        d = d[np.isfinite(d) & (z3[:n] > 0)]
        out["reproj_px"] = float(np.median(d)) if d.size else float("inf")
    return out


def _mean(stats: list[dict]) -> dict[str, float]:
    keys = sorted({k for s in stats for k in s})
    return {k: float(np.mean([s[k] for s in stats if k in s])) for k in keys}


def _score(s: dict) -> float:
    return s.get("on_fg", s.get("in_frame", 0.0))


def rank_conventions(views: list[dict], declared: str) -> dict[str, Any]:
    """``views``: [{"raw": source matrix, "K", "width", "height", "points", "fg"?, "kp2d"?, "kp3d"?}].
    Returns {"declared", "stats": {convention: mean stats}, "best", "flag", "message"}."""
    declared = str(Convention.parse(declared))
    per: dict[str, dict] = {}
    for conv in all_conventions():
        stats = []
        for v in views:
            try:
                viewmat = to_viewmat(v["raw"], conv)
            except ValueError:
                continue
            stats.append(point_stats(v["points"], v["K"], viewmat, v["width"], v["height"], v.get("fg"),
                                     v.get("kp2d"), v.get("kp3d")))
        if stats:
            per[str(conv)] = _mean(stats)
    if not per:
        return {"declared": declared, "stats": {}, "best": None, "flag": True, "message": "no usable view"}
    best = max(per, key=lambda c: (_score(per[c]), -per[c].get("reproj_px", 0.0), c == declared))
    dec = per.get(declared, {})
    d_score, b_score = _score(dec), _score(per[best])
    flag = best != declared and (b_score - d_score > MARGIN or d_score < MIN_SCORE)
    if flag:
        msg = (f"declared {declared} looks wrong: {100 * d_score:.0f}% of points land on the subject, "
               f"{best} gives {100 * b_score:.0f}%; use {best}")
    elif d_score < MIN_SCORE:
        flag = True
        msg = (f"no convention fits well (best {best}: {100 * b_score:.0f}%): check units, the mesh's world frame "
               f"or image/camera pairing")
    else:
        msg = f"declared {declared} fits: {100 * d_score:.0f}% of points land on the subject"
    return {"declared": declared, "stats": per, "best": best, "flag": bool(flag), "message": msg}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _pick(ids: list[int], n: int) -> list[int]:
    if len(ids) <= n:
        return ids
    return [ids[int(round(i))] for i in np.linspace(0, len(ids) - 1, n)]


def views_from_source(source, n_frames: int, raw_matrices: dict[str, np.ndarray], pixel_shift: float = 0.0,
                      with_keypoints: bool = False) -> list[dict]:
    """Views of a ``ClipSource`` at up to ``n_frames`` frames having both points and images."""
    cams = source.camera_names()
    with_images = {f for c in cams for f in source.frame_ids(c)}
    point_frames = sorted(set(source.verts_frame_ids()) & with_images)
    use_kp = not point_frames and with_keypoints
    if use_kp:
        point_frames = sorted(f for f in with_images if _nonempty(source.keypoints3d(f)))
    views = []
    for f in _pick(point_frames, n_frames):
        pts = source.keypoints3d(f) if use_kp else source.verts(f)
        kp3d = source.keypoints3d(f) if with_keypoints else None
        for c in cams:
            if f not in set(source.frame_ids(c)) or c not in raw_matrices:
                continue
            cam = source.camera(c)
            img = decode_rgb(source.image_data(c, f), channel_order=source.channel_order)
            m = source.mask_data(c, f)
            alpha = decode_mask(m) if m is not None else None
            kp2d = source.keypoints2d(c, f) if with_keypoints else None
            if kp2d is not None and len(kp2d) >= 106:
                kp2d = np.asarray(kp2d, float)[33:] + pixel_shift  # 106-point set minus its 33 contour points
            views.append({"raw": raw_matrices[c], "K": cam.K, "width": img.shape[1], "height": img.shape[0],
                          "points": np.asarray(pts, float), "fg": foreground(img, alpha),
                          "kp2d": kp2d if _nonempty(kp2d) else None, "kp3d": kp3d if _nonempty(kp3d) else None,
                          "camera": c, "frame": f})
    return views


def _nonempty(a) -> bool:
    return a is not None and np.size(a) > 0


def check_manifest(path: str | Path, n_frames: int = 2) -> list[dict]:
    tasks, skipped, _ = plan_folder(path)
    out = [{"clip": f"{s['identity']}/{s['clip']}", "error": s["reason"]} for s in skipped]
    for t in tasks:
        key = f"{t['identity']}/{t['clip']}"
        try:
            src = FolderClip.from_task(t["source"])
            raw, _ = read_camera_file(t["source"]["entry"]["cameras"], t["source"]["entry"].get("camera_format"))
            raw = {c: r["matrix"] for c, r in raw.items()}
            views = views_from_source(src, n_frames, raw)
            if not views:
                out.append({"clip": key, "error": "no frame with both a mesh and images"})
                continue
            out.append({"clip": key, **rank_conventions(views, str(src.convention))})
        except Exception as e:  # noqa: BLE001 - report and go on
            out.append({"clip": key, "error": f"{type(e).__name__}: {e}"})
    return out


def check_smc(smc_dir: str | Path, n_frames: int = 2, max_clips: int | None = None) -> list[dict]:
    pairs, skipped = discover_smc(smc_dir)
    out = [{"clip": f"{s.get('identity')}/{s.get('clip')}", "error": s["reason"]} for s in skipped]
    for p in pairs[:max_clips]:
        key = f"{p.actor}/{p.perf}"
        clip = None
        try:
            clip = SMCClip(p.raw, p.anno)
            raw = {}
            for c in clip.camera_names():
                for f in (clip.labels_file, clip.frames_file):
                    rt = f.array(f"Calibration/{c}/RT")
                    if rt is not None:
                        raw[c] = rt
                        break
            # keypoints are in OpenCV pixel coordinates: shift them to the project's (+0.5)
            views = views_from_source(clip, n_frames, raw, pixel_shift=0.5, with_keypoints=True)
            if not views:
                out.append({"clip": key, "error": "no frame with FLAME verts or Keypoints3d and images"})
                continue
            out.append({"clip": key, **rank_conventions(views, RT_CONVENTION)})
        except Exception as e:  # noqa: BLE001
            out.append({"clip": key, "error": f"{type(e).__name__}: {e}"})
        finally:
            if clip is not None:
                clip.close()
    return out


def check_shards(root: str | Path, n_samples: int = 4) -> list[dict]:
    """Frames samples with verts (else the identity's template) of a shard folder."""
    templates = {i: t["verts"] for i, t in load_templates(root, stats=SkipStats(max_logged=0)).items()
                 if len(t["verts"])}
    by_clip: dict[str, list[dict]] = {}
    for split in SPLITS:
        for s in iter_dataset(root, "frames", split, stats=SkipStats(max_logged=0)):
            key = f"{s['meta']['identity']}/{s['meta']['clip']}"
            if len(by_clip.setdefault(key, [])) >= n_samples:
                continue
            pts = s["verts"] if s["verts"] is not None else templates.get(s["meta"]["identity"])
            if pts is None:
                continue
            for cam in s["cameras"]:
                img = s["images"][cam["name"]]
                by_clip[key].append({"raw": cam["viewmat"], "K": cam["K"], "width": cam["width"],
                                     "height": cam["height"], "points": np.asarray(pts, float),
                                     "fg": foreground(img), "camera": cam["name"], "frame": s["meta"]["frame"]})
    out = [{"clip": k, **rank_conventions(v, "opencv_w2c_m")} for k, v in sorted(by_clip.items()) if v]
    if not out:
        out.append({"clip": str(root), "error": "no frames sample with verts or a template"})
    return out


def check_cameras(path: str | Path, n_frames: int = 2) -> list[dict]:
    """Dispatch on the input: shard folder (manifest.json), .smc folder, or a data manifest file."""
    p = Path(path)
    if p.is_dir() and (p / "manifest.json").is_file():
        return check_shards(p, n_frames)
    if p.is_dir() and any(p.rglob("*.smc")):
        return check_smc(p, n_frames)
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml", ".json"):
        return check_manifest(p, n_frames)
    raise FileNotFoundError(f"{path}: expected a data manifest (.yaml/.json), a shard folder with manifest.json "
                            f"or a folder of .smc files")


def format_check_report(results: list[dict]) -> str:
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['clip']}: ERROR {r['error']}")
            continue
        lines.append(f"{r['clip']}: {'LIKELY WRONG' if r['flag'] else 'ok'}: {r['message']}")
        order = sorted(r["stats"], key=lambda c: -_score(r["stats"][c]))
        for c in [r["declared"]] + [c for c in order if c != r["declared"]][:3]:
            s = r["stats"].get(c, {})
            extra = f", reproj {s['reproj_px']:.1f} px" if "reproj_px" in s else ""
            mark = "  (declared)" if c == r["declared"] else ""
            lines.append(f"    {c:16s} in_front {s.get('in_front', 0):.2f}  in_frame {s.get('in_frame', 0):.2f}  "
                         f"on_fg {s.get('on_fg', float('nan')):.2f}{extra}{mark}")
    return "\n".join(lines)


def report_json(results: list[dict]) -> str:
    return json.dumps(results, indent=1, default=float)
