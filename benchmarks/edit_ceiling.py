"""How much can one AU change the demo's picture at all? For each of the 17 AUs, the demo's rig
(its held-out identity, camera and face box) is rendered at the neutral face and with the AU at
full strength (1.0) moved by the synthetic world's own displacement field (what a motion model
with gain 1 would do), the feature line following the AU; prints the mean |Δpixel| over the face
box in 8-bit levels (as ``edit_pixel_change`` in the demo's ``metrics.json``) and the face
vertices' mean and largest move. The figures bound what any motion model can show for an edit.

Usage: python benchmarks/edit_ceiling.py --demo results/demo   (~10 s; reads work/ and results/)
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
from emodifftalk.pipeline.animate import camera_path, render_frames
from emodifftalk.pipeline.demo import _face_box
from emodifftalk.rig.feature_line_fit import load_feature_line
from emodifftalk.rig.gaussians import GaussianRig


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
    offsets = torch.cat([torch.zeros(1, *fields.shape[1:]), fields])  # neutral, then each AU at 1.0
    aus = np.concatenate([np.zeros((1, NUM_AUS)), np.eye(NUM_AUS)]).astype(np.float32)
    frames = np.stack(list(render_frames(rig, line, offsets, aus, camera_path(rig, str(cam), len(aus),
                                                                           cfg.infer.image_size), cfg,
                                         progress=False))).astype(np.float64)
    scale = frames.shape[2] / int(cams["width"])  # the box is in capture pixels
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    rows = []
    for k, name in enumerate(AU_NAMES):
        move = 1000 * fields[k][rig.facial_idx].norm(dim=-1)
        change = np.abs(frames[k + 1] - frames[0])[y0:y1, x0:x1]
        rows.append({"au": name, "face_pixel_change": float(change.mean()),
                     "face_move_mm_mean": float(move.mean()), "face_move_mm_max": float(move.max())})
    return rows, box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", required=True, help="the demo's --out folder")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, box = per_au_change(Path(args.demo))
    print(f"face box {box}\n| AU at 1.0 | mean |Δ| face box (/255) | face move mean / max (mm) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['au']} | {r['face_pixel_change']:.2f} | "
              f"{r['face_move_mm_mean']:.2f} / {r['face_move_mm_max']:.1f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
