"""`eval rig`: novel-view scores of a rig against ground truth rendered from a held-out ring."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_rig_gaussians import make_rig

from emodifftalk.cli import main
from emodifftalk.eval.rig import RigEvalError, evaluate_rig
from emodifftalk.render import rasterize
from emodifftalk.render.cameras import intrinsics, orbit_cameras
from emodifftalk.rig.deform import deform

SIZE = 24


def _cams(names, viewmats, k):
    return {"cameras": [{"name": n, "K": k.tolist(), "viewmat": v.tolist(), "width": SIZE, "height": SIZE}
                        for n, v in zip(names, viewmats)]}


def _write_world(root, truth_rig, n_frames=3):
    """A raw folder in the synth layout whose images are renders of ``truth_rig`` driven by a
    slowly moving mesh, with a rigid head pose per frame, seen by 3 capture and 4 ring cameras."""
    ident = root / truth_rig.identity
    clip = ident / "clip00"
    k = intrinsics(40.0, SIZE, SIZE)
    capture, _ = orbit_cameras(3, 0.5, 0.0, (0, 0, 0), 40.0, SIZE, SIZE, arc_deg=90.0)
    ring, _ = orbit_cameras(4, 0.5, 0.1, (0, 0, 0), 40.0, SIZE, SIZE)
    (ident).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"identities": [truth_rig.identity], "fps": 25.0}))
    (ident / "cameras.json").write_text(json.dumps(_cams(["cam0", "cam1", "cam2"], capture, k)))
    (ident / "eval_cameras.json").write_text(json.dumps(_cams([f"ring{i}" for i in range(4)], ring, k)))
    canon = truth_rig.canonical_verts
    verts = torch.stack([canon * (1 + 0.05 * t) for t in range(n_frames)])
    pose = np.tile(np.eye(4, dtype=np.float32), (n_frames, 1, 1))
    pose[:, 0, 3] = np.linspace(0, 0.03, n_frames)  # the head drifts sideways
    clip.mkdir()
    (clip / "meta.json").write_text(json.dumps({"fps": 25.0, "n_frames": n_frames}))
    np.save(clip / "verts.npy", verts.numpy())
    np.save(clip / "head_pose.npy", pose)
    for folder, names, viewmats in (("images", ["cam0", "cam1", "cam2"], capture),
                                    ("eval_images", [f"ring{i}" for i in range(4)], ring)):
        for f in range(n_frames):
            out = rasterize(**deform(truth_rig, verts[f]).render_args(), viewmats=viewmats @ torch.from_numpy(pose[f]),
                            Ks=k[None].repeat(len(names), 1, 1), width=SIZE, height=SIZE, background=torch.ones(3))
            for c, n in enumerate(names):
                (clip / folder / n).mkdir(parents=True, exist_ok=True)
                img = (out.rgb[c].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
                Image.fromarray(img).save(clip / folder / n / f"{f:05d}.png")


def test_truth_scores_high_and_a_wrong_rig_scores_lower(tmp_path):
    truth = make_rig(identity="id0")
    truth.opacity_logits = torch.full_like(truth.opacity_logits, 3.0)
    truth.log_scales = torch.full_like(truth.log_scales, -3.5)
    truth.info["cameras"] = {"holdout": "cam2"}
    _write_world(tmp_path / "raw", truth)
    truth.save(tmp_path / "rigs" / "id0")
    wrong = make_rig(identity="id0")
    wrong.opacity_logits, wrong.log_scales = truth.opacity_logits.clone(), truth.log_scales.clone()
    wrong.colors = 1 - truth.colors  # right geometry, wrong appearance
    wrong.save(tmp_path / "wrong" / "id0")

    good = evaluate_rig(tmp_path / "rigs" / "id0", tmp_path / "raw", progress=False)
    bad = evaluate_rig(tmp_path / "wrong" / "id0", tmp_path / "raw", progress=False)
    # only 8-bit quantisation separates the truth from its own renders
    assert good["psnr_ring"] > 40 and good["psnr_train"] > 40 and good["psnr_holdout"] > 40
    assert good["ssim_ring"] > 0.98
    assert bad["psnr_ring"] < good["psnr_ring"] - 15
    kinds = {n: c["kind"] for n, c in good["per_camera"].items()}
    assert kinds == {"cam0": "capture", "cam1": "capture", "cam2": "holdout",
                     "ring0": "ring", "ring1": "ring", "ring2": "ring", "ring3": "ring"}
    assert all(c["frames"] == 3 for c in good["per_camera"].values())
    assert good["psnr_holdout_expressive"] is None  # no AU labels (openface.csv): no expressive frames
    # coverage: a 90° capture arc in front sees none of what the rear ring views see
    ring = {n: c for n, c in good["per_camera"].items() if c["kind"] == "ring"}
    assert all(0 <= c["surface_seen"] <= 1 and 0 <= c["nearest_train_deg"] <= 180 for c in ring.values())
    assert set(good["ring_covered"]) == {n for n, c in ring.items() if c["surface_seen"] >= 0.9}
    assert min(c["surface_seen"] for c in ring.values()) < 0.5 < max(c["surface_seen"] for c in ring.values())

    out = tmp_path / "report"
    assert main(["eval", "rig", str(tmp_path / "rigs" / "id0"), "--data", str(tmp_path / "raw"),
                 "--out", str(out)]) == 0
    saved = json.loads((out / "rig_eval.json").read_text())["rigs"][0]
    assert saved["psnr_ring"] == pytest.approx(good["psnr_ring"])


def test_shards_instead_of_the_raw_folder_is_a_clear_error(tmp_path):
    rig = make_rig(identity="id0")
    rig.save(tmp_path / "rigs" / "id0")
    (tmp_path / "shards").mkdir()
    with pytest.raises(RigEvalError, match="eval_cameras.json.*raw folder"):
        evaluate_rig(tmp_path / "rigs" / "id0", tmp_path / "shards", progress=False)


def test_lpips_is_reported_per_camera_and_ring_when_a_network_is_given(tmp_path):
    truth = make_rig(identity="id0")
    truth.info["cameras"] = {"holdout": "cam2"}
    _write_world(tmp_path / "raw", truth, n_frames=2)
    truth.save(tmp_path / "rigs" / "id0")
    seen = []

    def fake_lpips(render, gt):  # the LPIPS interface: (N, H, W, 3) pairs -> (N,)
        seen.append(render.shape)
        return (render - gt).abs().mean((1, 2, 3)) + torch.arange(len(render), dtype=torch.float32)

    rep = evaluate_rig(tmp_path / "rigs" / "id0", tmp_path / "raw", progress=False, lpips=fake_lpips)
    assert all(s[1:] == (SIZE, SIZE, 3) for s in seen) and len(seen) == 4  # 2 frames x (ring, capture)
    ring = [rep["per_camera"][f"ring{i}"]["lpips"] for i in range(4)]
    assert ring == pytest.approx([0, 1, 2, 3], abs=0.05) and rep["lpips_ring"] == pytest.approx(np.mean(ring))
    assert rep["lpips_holdout"] == pytest.approx(rep["per_camera"]["cam2"]["lpips"])
    assert evaluate_rig(tmp_path / "rigs" / "id0", tmp_path / "raw", progress=False)["lpips_ring"] is None
