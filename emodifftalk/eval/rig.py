"""Novel-view evaluation of a canonical Gaussian rig against ground truth it never saw.

The synthetic generator (world v2) renders every clip from a held-out ring of cameras all around
the head (``<identity>/eval_cameras.json`` + ``<clip>/eval_images/<cam>/<frame>.png``; never
packed, so no rig trains on them). This module drives the rig with each rendered frame's tracked
mesh (``verts.npy``), folds the frame's rigid head pose into the cameras as the generator and
``pack`` do (``viewmat @ pose``), renders, and scores the result per camera:

* ``psnr_ring`` / ``ssim_ring``: the held-out ring (novel views, back of the head included);
* ``psnr_ring_covered`` / ``ssim_ring_covered``: the ring cameras whose visible surface the
  rig's training cameras captured (``surface_seen`` >= ``COVERED_FRACTION``, per camera in the
  report with the angle to the nearest training camera). The tiny world's capture arc spans ±60°
  in front of the face, so the ring's views from behind (±112°, ±158°) see mostly surface no
  training image shows (the back of the head): no method can score there, and the covered
  ring is the generalisation measure;
* ``psnr_train`` / ``ssim_train``: the capture cameras the rig was fitted on (``images/``), minus
  its own held-out capture camera, which is reported apart as ``psnr_holdout``;
* ``psnr_holdout_expressive`` / ``psnr_ring_covered_expressive``: the same over the expressive
  frames only (some OpenFace AU ≥ ``EXPRESSIVE_AU``), where v2's expression-dependent appearance
  (creases, dark inner lips) shows: what the feature line is for.

With a fitted feature line the opacity follows the frame's AUs (the clip's OpenFace-format labels,
as at inference); ``feature_line=False`` scores the rig without it. Scores are means over the
rendered frames of every clip of the identity. LPIPS (``lpips_ring`` ...) is added when a network
is passed (``eval.lpips_weights``, local files only: ``emodifftalk/eval/lpips.py``); else None.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emodifftalk.data.raw import RawDataset
from emodifftalk.eval.lpips import LPIPS
from emodifftalk.losses.image import psnr, ssim
from emodifftalk.render import rasterize
from emodifftalk.rig.deform import deform
from emodifftalk.rig.feature_line_fit import load_feature_line
from emodifftalk.rig.gaussians import GaussianRig
from emodifftalk.rig.init_points import vertex_normals
from emodifftalk.rig.visibility import surface_seen_fraction

REPORT_JSON = "rig_eval.json"
EXPRESSIVE_AU = 0.5  # a frame with some AU at ≥ half intensity (OpenFace labels, 0–1) is expressive  # choice
COVERED_FRACTION = 0.9  # a ring view whose visible surface was ≥ 90 % captured interpolates  # choice
RING_CAMERAS = "eval_cameras.json"


class RigEvalError(ValueError):
    """The rig or the ground-truth folder cannot be evaluated; the message names the path."""


@dataclass
class CameraSet:
    names: list[str]
    viewmats: torch.Tensor  # (C, 4, 4) world-to-camera, OpenCV axes
    Ks: torch.Tensor  # (C, 3, 3)
    width: int
    height: int

    @classmethod
    def of(cls, cameras: list[dict]) -> CameraSet:
        """From ``RawDataset.cameras`` (validated dicts)."""
        return cls([c["name"] for c in cameras], torch.from_numpy(np.stack([c["viewmat"] for c in cameras])),
                   torch.from_numpy(np.stack([c["K"] for c in cameras])),
                   int(cameras[0]["width"]), int(cameras[0]["height"]))


def _read_png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)


def _scores(render: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """(PSNR dB, SSIM) of one (H, W, 3) image pair in [0, 1]."""
    return (float(psnr(render[None], truth[None])),
            float(ssim(render[None], truth[None], channel_last=True)))


def _complete_frames(frames: dict[int, dict[str, Path]], names: list[str]) -> list[int]:
    """Frames that have an image for every camera in ``names``."""
    return [f for f, cams in frames.items() if all(n in cams for n in names)]


def evaluate_rig(rig_dir: str | Path, data_dir: str | Path, *, feature_line: bool = True,
                 background=(1.0, 1.0, 1.0), max_frames_per_clip: int | None = None,
                 progress: bool = True, lpips: LPIPS | None = None) -> dict:
    """Per-camera PSNR/SSIM (and LPIPS with ``lpips``) of the rig in ``rig_dir`` on the raw
    synthetic folder ``data_dir`` (the ``emodifftalk synth`` output), ring and capture cameras.
    Returns the report dict."""
    rig_dir = Path(rig_dir)
    rig = GaussianRig.load(rig_dir)
    ident_dir = Path(data_dir) / rig.identity
    if not (ident_dir / RING_CAMERAS).is_file():
        raise RigEvalError(f"{ident_dir / RING_CAMERAS}: no held-out camera ring; `eval rig` needs the raw folder "
                           "of `emodifftalk synth` (world v2, synth.n_eval_cameras > 0), not packed shards")
    raw = RawDataset(data_dir)
    ring = CameraSet.of(raw.cameras(rig.identity, RING_CAMERAS))
    capture = CameraSet.of(raw.cameras(rig.identity))
    holdout = rig.info.get("cameras", {}).get("holdout")
    line = load_feature_line(rig_dir, rig) if feature_line else None
    bg = torch.tensor(background, dtype=torch.float32)
    clips = [c for c in raw.clips(rig.identity) if c.verts_path.is_file()]
    if not clips:
        raise RigEvalError(f"{ident_dir}: no clips with verts.npy")

    jobs = []  # (clip, frame, camera set, {camera: image path}, kind), clip by clip
    for clip in clips:
        for cams, frames, kind in ((ring, clip.eval_image_frames, "ring"), (capture, clip.image_frames, "capture")):
            jobs += [(clip, f, cams, frames[f], kind)
                     for f in _complete_frames(frames, cams.names)[:max_frames_per_clip]]
    if not any(kind == "ring" for *_, kind in jobs):
        raise RigEvalError(f"{ident_dir}: the clips have no eval_images/ renders of the ring")

    per_camera: dict[str, dict] = {}
    loaded: tuple = (None,)  # (clip, verts, head pose, AUs) of the clip being scored
    it = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc=f"eval rig {rig.identity}", unit="frame")
    with torch.no_grad():
        for clip, f, cams, images, kind in it:
            if loaded[0] is not clip:
                loaded = (clip, clip.load_verts(), clip.load_frame_array(clip.head_pose_path, (4, 4)),
                          clip.load_aus().aus if clip.openface_path.is_file() else None)
            _, verts, pose, aus = loaded
            expressive = aus is not None and float(aus[f].max()) >= EXPRESSIVE_AU
            delta = line(torch.from_numpy(aus[f:f + 1]))[0] if line is not None else None
            g = deform(rig, torch.from_numpy(np.array(verts[f])), delta)  # a copy: verts is memory-mapped
            viewmats = cams.viewmats @ torch.from_numpy(pose[f]) if pose is not None else cams.viewmats
            out = rasterize(**g.render_args(), viewmats=viewmats, Ks=cams.Ks, width=cams.width,
                            height=cams.height, background=bg)
            rgb = out.rgb.clamp(0, 1)
            truth = torch.stack([_read_png(images[name]) for name in cams.names])
            lp = lpips(rgb, truth).tolist() if lpips is not None else None
            for c, name in enumerate(cams.names):
                p, s = _scores(rgb[c], truth[c])
                entry = per_camera.setdefault(name, {"kind": kind, "psnr": [], "ssim": [], "lpips": [],
                                                     "psnr_expressive": []})
                entry["psnr"].append(p)
                entry["ssim"].append(s)
                if lp is not None:
                    entry["lpips"].append(lp[c])
                if expressive:
                    entry["psnr_expressive"].append(p)
    return _report(rig, per_camera, holdout, line is not None, ring_coverage(rig, ring, capture, holdout))


def ring_coverage(rig: GaussianRig, ring: CameraSet, capture: CameraSet, holdout: str | None) -> dict[str, dict]:
    """Per ring camera: ``surface_seen`` (share of the mesh surface it sees that a training camera
    of the rig saw too, neutral mesh) and ``nearest_train_deg`` (angle at the head's centre to the
    nearest training camera)."""
    train = [i for i, n in enumerate(capture.names) if n != holdout]
    verts = rig.canonical_verts
    edge = float(rig.info.get("mean_edge_length") or 0.01)
    normals = vertex_normals(verts, rig.faces)
    seen = surface_seen_fraction(verts, normals, edge, (capture.viewmats[train], capture.Ks[train]),
                                 (ring.viewmats, ring.Ks), ring.width, ring.height)

    def directions(vm: torch.Tensor) -> torch.Tensor:
        centres = -torch.einsum("cji,cj->ci", vm[:, :3, :3], vm[:, :3, 3])
        return torch.nn.functional.normalize(centres - verts.mean(0), dim=-1)

    cos = (directions(ring.viewmats) @ directions(capture.viewmats[train]).T).amax(1).clamp(-1, 1)
    return {n: {"surface_seen": float(seen[i]), "nearest_train_deg": float(torch.rad2deg(torch.acos(cos[i])))}
            for i, n in enumerate(ring.names)}


def _report(rig: GaussianRig, per_camera: dict, holdout: str | None, with_line: bool,
            coverage: dict[str, dict]) -> dict:
    cams = {n: {"kind": ("holdout" if n == holdout else e["kind"]), "psnr": float(np.mean(e["psnr"])),
                "ssim": float(np.mean(e["ssim"])), "frames": len(e["psnr"]),
                "lpips": float(np.mean(e["lpips"])) if e["lpips"] else None,
                "psnr_expressive": float(np.mean(e["psnr_expressive"])) if e["psnr_expressive"] else None,
                "frames_expressive": len(e["psnr_expressive"]), **coverage.get(n, {})}
            for n, e in per_camera.items()}
    for c in cams.values():
        if c["kind"] == "ring":
            c["covered"] = c["surface_seen"] >= COVERED_FRACTION

    def mean(kind: str, key: str, covered_only: bool = False) -> float | None:
        vals = [c[key] for c in cams.values()
                if c["kind"] == kind and (c.get("covered") or not covered_only) and c[key] is not None]
        return float(np.mean(vals)) if vals else None

    return {"identity": rig.identity, "feature_line": with_line,
            "psnr_ring": mean("ring", "psnr"), "ssim_ring": mean("ring", "ssim"), "lpips_ring": mean("ring", "lpips"),
            "psnr_ring_covered": mean("ring", "psnr", True), "ssim_ring_covered": mean("ring", "ssim", True),
            "ring_covered": [n for n, c in cams.items() if c.get("covered")],
            "psnr_holdout_expressive": mean("holdout", "psnr_expressive"),
            "psnr_ring_covered_expressive": mean("ring", "psnr_expressive", True),
            "psnr_train": mean("capture", "psnr"), "ssim_train": mean("capture", "ssim"),
            "lpips_train": mean("capture", "lpips"),
            "psnr_holdout": mean("holdout", "psnr"), "ssim_holdout": mean("holdout", "ssim"),
            "lpips_holdout": mean("holdout", "lpips"),
            "per_camera": cams}


def format_table(reports: list[dict]) -> str:
    """Markdown: one row per rig (and feature-line setting)."""
    def f(x, digits=2):
        return "–" if x is None else f"{x:.{digits}f}"

    rows = ["| identity | feature line | PSNR ring | SSIM ring | LPIPS ring | PSNR covered ring (cams) | PSNR train "
            "| PSNR held-out capture cam | expressive frames: held-out cam, covered ring |",
            "|---|---|---|---|---|---|---|---|---|"]
    rows += [f"| {r['identity']} | {'yes' if r['feature_line'] else 'no'} | {f(r['psnr_ring'])} | "
             f"{r['ssim_ring']:.3f} | {f(r.get('lpips_ring'), 3)} | "
             f"{f(r['psnr_ring_covered'])} ({len(r['ring_covered'])}) | "
             f"{f(r['psnr_train'])} | {f(r['psnr_holdout'])} | {f(r['psnr_holdout_expressive'])}, "
             f"{f(r['psnr_ring_covered_expressive'])} |" for r in reports]
    return "\n".join(rows)
