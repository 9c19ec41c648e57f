"""How much held-out PSNR can an expression-dependent appearance model (the feature line) gain on
the synthetic v2 world at all? An oracle answers, on the rig's held-out capture camera and the
expressive frames that ``eval rig`` scores (some OpenFace AU >= ``EXPRESSIVE_AU``):

* ``rig``: the rig as ``eval rig --no-feature-line`` renders it (static colour and opacity);
* ``rig_feature_line``: with its fitted feature line, as ``eval rig`` renders it;
* ``rig_oracle_tint``: the rig's bound (surface) Gaussians take the world's **exact** expression
  tint of the frame (``data/synthetic/appearance.py``: creases, folds, dark inner lips, lids;
  computed from the true AUs), relative to the mean tint of the identity's captured frames that
  the canonical colours absorbed. Geometry is the tracked mesh, as in every render here. No
  appearance model can do better than the true appearance change, so
  ``ceiling_gain_db`` = ``rig_oracle_tint`` − ``rig`` bounds what a feature line can earn;
* ``tint_psnr``: PSNR between the world's own renders with and without the tint (the size of the
  appearance signal: the higher, the less of the picture it touches).

Usage (the demo's data and rigs; ~15 s per identity on one thread):
  python benchmarks/appearance_ceiling.py --data work/raw --rigs work/rigs/id00* [--config tiny] [k=v ...]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emodifftalk.config import PRESETS, build_config
from emodifftalk.data.raw import RawDataset
from emodifftalk.data.synthetic.appearance import expression_tint
from emodifftalk.data.synthetic.gaussians import gaussian_head
from emodifftalk.data.synthetic.writer import BACKGROUND, make_identity
from emodifftalk.eval.rig import EXPRESSIVE_AU
from emodifftalk.losses.image import psnr
from emodifftalk.render import rasterize
from emodifftalk.rig.deform import deform
from emodifftalk.rig.feature_line_fit import load_feature_line
from emodifftalk.rig.gaussians import GaussianRig, Gaussians


def tinted(g: Gaussians, n_bound: int, ratio: np.ndarray) -> Gaussians:
    """``g`` with the colours of its first ``n_bound`` (surface) Gaussians multiplied by ``ratio`` (V, 3)."""
    colors = g.colors.clone()
    colors[:n_bound] = (colors[:n_bound] * torch.from_numpy(ratio).to(colors)).clamp(0, 1)
    return Gaussians(means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities, colors=colors)


def identity_ceiling(rig_dir: Path, raw: RawDataset, synth_cfg) -> dict:
    rig = GaussianRig.load(rig_dir)
    match = re.fullmatch(r"id(\d+)", rig.identity)
    if match is None:
        raise ValueError(f"{rig_dir}: {rig.identity!r} is not a synthetic identity")
    ident = make_identity(synth_cfg, int(match.group(1)))
    if ident.masks is None or len(ident.template.verts) != rig.n_bound:
        raise ValueError(f"{rig_dir}: the world of --config (version {synth_cfg.version}, "
                         f"{len(ident.template.verts)} vertices) is not the one this rig was made from "
                         f"({rig.n_bound} vertices, v2 needed)")
    cams = raw.cameras(rig.identity)
    names = [c["name"] for c in cams]
    holdout = names.index(rig.info["cameras"]["holdout"])
    viewmat = torch.tensor(cams[holdout]["viewmat"], dtype=torch.float32)
    K = torch.tensor(cams[holdout]["K"], dtype=torch.float32)[None]
    size = (int(cams[holdout]["width"]), int(cams[holdout]["height"]))
    line = load_feature_line(rig_dir, rig)
    clips = [c for c in raw.clips(rig.identity) if c.aus_true_path.is_file()]
    truth = {c.clip: c.load_frame_array(c.aus_true_path, (17,)) for c in clips}
    mean_tint = np.mean([expression_tint(ident.masks, truth[c.clip][f]) for c in clips for f in c.image_frames], 0)
    bg = torch.tensor(BACKGROUND, dtype=torch.float32)

    def render(g: Gaussians, vm: torch.Tensor) -> torch.Tensor:
        return rasterize(**g.render_args(), viewmats=vm[None], Ks=K, width=size[0], height=size[1],
                         background=bg).rgb.clamp(0, 1)

    scores: dict[str, list[float]] = {k: [] for k in ("rig", "rig_feature_line", "rig_oracle_tint", "tint_psnr")}
    with torch.no_grad():
        for clip in clips:
            verts, labels = clip.load_verts(), clip.load_aus().aus
            pose = clip.load_frame_array(clip.head_pose_path, (4, 4))
            for f in sorted(clip.image_frames):
                if float(labels[f].max()) < EXPRESSIVE_AU:
                    continue
                vm = viewmat @ torch.from_numpy(pose[f]) if pose is not None else viewmat
                target = torch.from_numpy(np.asarray(Image.open(clip.image_frames[f][names[holdout]]).convert("RGB"),
                                                     np.float32) / 255.0)[None]
                mesh = torch.from_numpy(np.array(verts[f]))
                plain = deform(rig, mesh)
                scores["rig"].append(float(psnr(render(plain, vm), target)))
                if line is not None:
                    delta = line(torch.from_numpy(labels[f:f + 1]))[0]
                    scores["rig_feature_line"].append(float(psnr(render(deform(rig, mesh, delta), vm), target)))
                tint = expression_tint(ident.masks, truth[clip.clip][f])
                scores["rig_oracle_tint"].append(float(psnr(render(tinted(plain, rig.n_bound, tint / mean_tint), vm),
                                                            target)))
                world = {k: Gaussians(**gaussian_head(ident.template, np.asarray(verts[f]), ident.params, ident.free,
                                                      tint=t).to_torch())
                         for k, t in (("with", tint), ("without", None))}
                scores["tint_psnr"].append(float(psnr(render(world["with"], vm), render(world["without"], vm))))
    out = {k: float(np.mean(v)) if v else None for k, v in scores.items()}
    out["frames"] = len(scores["rig"])
    out["ceiling_gain_db"] = out["rig_oracle_tint"] - out["rig"]
    out["feature_line_gain_db"] = (out["rig_feature_line"] - out["rig"]) if line is not None else None
    return {"identity": rig.identity, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="raw folder of `emodifftalk synth` the rigs were made from")
    ap.add_argument("--rigs", nargs="+", required=True, help="rig folders (rigs/id000 ...)")
    ap.add_argument("--config", default="tiny", choices=PRESETS, help="preset the data was synthesised with")
    ap.add_argument("overrides", nargs="*", help="section.key=value (the synth.* options of the data)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = build_config(args.config, args.overrides)
    raw = RawDataset(args.data)
    rows = [identity_ceiling(Path(d), raw, cfg.synth) for d in args.rigs]
    print("| identity | frames | rig | + feature line | + oracle tint | ceiling gain | tint PSNR |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        fl = "–" if r["rig_feature_line"] is None else f"{r['rig_feature_line']:.2f}"
        print(f"| {r['identity']} | {r['frames']} | {r['rig']:.2f} | {fl} | {r['rig_oracle_tint']:.2f} | "
              f"{r['ceiling_gain_db']:+.3f} | {r['tint_psnr']:.1f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
