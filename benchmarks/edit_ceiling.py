"""How much can an AU edit change the demo's picture at all? The demo's rig (its held-out
identity, camera and face box) is rendered at the neutral face, with each of the 17 AUs at full
strength (1.0), and with all 17 at once, each moved by the synthetic world's own displacement
fields (what a motion model with gain 1 would do) with the feature line following the AUs.
Printed: the mean |Δpixel| over the face box in 8-bit levels (as ``edit_pixel_change`` in the
demo's ``metrics.json``), the same change in the world's own renders (sharp Gaussians, expression
tint; the rig's blur softens it), and the face vertices' mean and largest move. The figures bound
what any motion model can show for an edit.

Usage: python benchmarks/edit_ceiling.py --demo results/demo   (~15 s; reads work/ and results/)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emodifftalk.au import AU_NAMES, NUM_AUS
from emodifftalk.config import load_config
from emodifftalk.data.synthetic import synthetic_au_fields
from emodifftalk.data.synthetic.appearance import expression_tint
from emodifftalk.data.synthetic.gaussians import gaussian_head
from emodifftalk.data.synthetic.writer import make_identity
from emodifftalk.data.synthetic.writer import render_frames as world_render
from emodifftalk.pipeline.animate import camera_path, render_frames
from emodifftalk.pipeline.demo import _face_box
from emodifftalk.rig.feature_line_fit import load_feature_line
from emodifftalk.rig.gaussians import GaussianRig


def world_frames(synth_cfg, identity: str, offsets: np.ndarray, aus: np.ndarray, viewmat: np.ndarray,
                 K: np.ndarray, size: int) -> np.ndarray:
    """The synthetic world's own renders (its sharp Gaussians and expression tint) of the template
    + ``offsets`` (T, V, 3) with AU codes ``aus`` (T, 17), (T, size, size, 3) float in 0-255."""
    ident = make_identity(synth_cfg, int(identity[2:]))
    out = []
    for off, a in zip(offsets, aus):
        gs = gaussian_head(ident.template, ident.template.verts + off, ident.params, ident.free,
                           tint=expression_tint(ident.masks, a))
        out.append(world_render(gs, viewmat[None].astype(np.float32), K[None].astype(np.float32), size)[0])
    return np.stack(out).astype(np.float64)


def per_au_change(demo: Path) -> tuple[list[dict], tuple[int, int, int, int]]:
    cfg = load_config(demo / "config.json")
    anim = json.loads((demo / "results" / "animation.json").read_text())
    rig_dir = demo / "work" / "rigs" / anim["identity"]
    rig = GaussianRig.load(rig_dir)
    line = load_feature_line(rig_dir, rig)
    cams = rig.info["cameras"]
    cam = int(anim["camera"])
    box = _face_box(rig.canonical_verts[rig.facial_idx].numpy(), np.asarray(cams["viewmats"][cam]),
                    np.asarray(cams["Ks"][cam]), int(cams["width"]), int(cams["height"]))
    fields = torch.from_numpy(np.asarray(synthetic_au_fields(cfg.synth, rig.identity), np.float32))
    # neutral, each AU at 1.0, then all of them at once
    offsets = torch.cat([torch.zeros(1, *fields.shape[1:]), fields, fields.sum(0, keepdim=True)])
    aus = np.concatenate([np.zeros((1, NUM_AUS)), np.eye(NUM_AUS), np.ones((1, NUM_AUS))]).astype(np.float32)
    frames = np.stack(list(render_frames(rig, line, offsets, aus, camera_path(rig, str(cam), len(aus),
                                                                           cfg.infer.image_size), cfg,
                                         progress=False))).astype(np.float64)
    world = world_frames(cfg.synth, rig.identity, offsets.numpy(), aus, np.asarray(cams["viewmats"][cam]),
                         np.asarray(cams["Ks"][cam]), int(cams["width"]))
    scale = frames.shape[2] / int(cams["width"])  # the box is in capture pixels
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    rows = []
    for k, name in enumerate([*AU_NAMES, "all 17"]):
        move = 1000 * offsets[k + 1][rig.facial_idx].norm(dim=-1)
        change = np.abs(frames[k + 1] - frames[0])[y0:y1, x0:x1]
        world_change = np.abs(world[k + 1] - world[0])[box[1]:box[3], box[0]:box[2]]
        rows.append({"au": name, "face_pixel_change": float(change.mean()),
                     "world_face_pixel_change": float(world_change.mean()),
                     "face_move_mm_mean": float(move.mean()), "face_move_mm_max": float(move.max())})
    return rows, box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", required=True, help="the demo's --out folder")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, box = per_au_change(Path(args.demo))
    print(f"face box {box}\n| AU at 1.0 | mean |Δ| face box, rig (/255) | same, the world's own render | "
          "face move mean / max (mm) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['au']} | {r['face_pixel_change']:.2f} | {r['world_face_pixel_change']:.2f} | "
              f"{r['face_move_mm_mean']:.2f} / {r['face_move_mm_max']:.1f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
