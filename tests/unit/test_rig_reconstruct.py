import copy

import numpy as np
import pytest
import torch

from emodifftalk.config import build_config
from emodifftalk.rig.gaussians import GaussianRig, is_complete
from emodifftalk.rig.densify import DensifyStrategy
from emodifftalk.rig.params import RigParams, make_optimizer
from emodifftalk.rig.reconstruct import RigDataError, reconstruct_identity, select_neutral_views
from emodifftalk.rig.toy import make_toy_identity
from emodifftalk.rig.triplane import TriplaneColorField


@pytest.fixture(scope="module")
def toy():
    with torch.no_grad():
        return make_toy_identity("toy", n_lat=8, n_lon=12, n_hair=60, n_cameras=4, image_size=32, n_clips=2)


def _cfg(**rig):
    cfg = build_config("tiny", ["rig.n_free_points=60", "rig.densify_every=10", "rig.log_images_every=20",
                                "rig.triplane_resolution=16"])
    for k, v in rig.items():
        setattr(cfg.rig, k, v)
    return cfg.validate()


def test_reconstruction_fits_the_views_and_saves_a_complete_rig(toy, tmp_path):
    samples, template = toy
    base = reconstruct_identity(samples, template, _cfg(steps=1), tmp_path / "r1", progress=False)
    res = reconstruct_identity(samples, template, _cfg(steps=60), tmp_path / "r60", log_dir=tmp_path / "tb",
                               progress=False)
    assert res.metrics["psnr_train"] > base.metrics["psnr_train"] + 4.0
    assert res.metrics["psnr_holdout"] > base.metrics["psnr_holdout"] + 2.0
    assert res.metrics["psnr_train"] >= res.metrics["psnr_holdout"] - 1.0  # held-out view is harder
    assert 0 < res.metrics["ssim_holdout"] <= 1
    assert is_complete(res.rig_dir) and (res.rig_dir / "preview.png").is_file()
    assert any((tmp_path / "tb").iterdir())  # TensorBoard events were written
    rig = GaussianRig.load(res.rig_dir)
    v = template["verts"].shape[0]
    assert rig.n_bound == v and 0 < rig.n_free <= 60
    assert torch.equal(rig.canonical_verts, torch.from_numpy(template["verts"]))  # bound points never move
    assert rig.n_facial == len(template["vertex_sets"]["face"])
    assert torch.all((rig.colors >= 0) & (rig.colors <= 1))
    assert rig.info["cameras"]["holdout"] == f"cam{_cfg().rig.holdout_camera % 4}"
    assert rig.info["neutral"] == {"clip": "clip00", "frame": 0}
    with pytest.raises(FileExistsError):
        reconstruct_identity(samples, template, _cfg(steps=1), tmp_path / "r60", progress=False)


def test_reconstruction_is_deterministic(toy, tmp_path):
    samples, template = toy
    a = reconstruct_identity(samples, template, _cfg(steps=3), tmp_path / "a", progress=False)
    b = reconstruct_identity(samples, template, _cfg(steps=3), tmp_path / "b", progress=False)
    ra, rb = GaussianRig.load(a.rig_dir), GaussianRig.load(b.rig_dir)
    assert torch.equal(ra.means, rb.means) and torch.equal(ra.colors, rb.colors)


def _broken(samples, fn):
    out = copy.deepcopy(samples)
    fn(out[0])
    return out


def test_clear_errors_for_unusable_input(toy, tmp_path):
    samples, template = toy
    cfg = _cfg(steps=1)
    cases = [
        (_broken(samples, lambda s: s["images"].pop("cam1")), "missing image for camera 'cam1'"),
        (_broken(samples, lambda s: s["images"].update(cam2=np.zeros((20, 32, 3), np.uint8))), r"shape \(20, 32, 3\)"),
        (_broken(samples, lambda s: s.update(cameras=s["cameras"][:1])), "need >= 2"),
        (_broken(samples, lambda s: s.update(verts=s["verts"][:-1])), "do not match the template"),
        (_broken(samples, lambda s: s["meta"].update(identity="other")), "several identities"),
        ([], "no frames samples"),
    ]
    for bad, match in cases:
        with pytest.raises(RigDataError, match=match):
            reconstruct_identity(bad, template, cfg, tmp_path / "x", progress=False)
    with pytest.raises(RigDataError, match="no neutral frame"):
        reconstruct_identity(samples, template, _cfg(steps=1, neutral_frame=5), tmp_path / "x", progress=False)
    with pytest.raises(RigDataError, match="holdout_camera"):
        select_neutral_views(samples, template, _cfg(holdout_camera=7))
    assert not (tmp_path / "x").exists()


def test_densify_and_prune_keeps_the_free_budget(toy):
    _, template = toy
    verts = torch.from_numpy(template["verts"])
    budget = 30
    free = torch.randn(budget, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    field = TriplaneColorField(8, 2, 8, -torch.ones(3), torch.ones(3))
    params = RigParams(verts, free, 0.02, field)
    cfg = _cfg()
    opt = make_optimizer(params, cfg.rig)
    strategy = DensifyStrategy(budget=budget, edge=0.02, every=10, stop_step=100, grad_threshold=2e-4)
    for p in params.parameters():  # give Adam some state
        p.grad = torch.ones_like(p)
    opt.step()
    with torch.no_grad():
        params.free_opacity[:10] = -10.0  # 10 transparent points: recycled
        params.free_log_scales[10:12] = np.log(0.05)  # two big high-gradient points: split
    grads = torch.zeros(budget)
    grads[10:20] = 1.0  # 10 high-gradient candidates for the 10 free slots
    bound_before = params.bound_log_scales.detach().clone()
    stats = strategy.densify_and_prune(params, opt, grads, torch.Generator().manual_seed(0))
    assert stats == {"pruned": 10, "floaters": 0, "hidden": 0, "cloned": 8, "split": 2}
    assert params.n_free == budget
    assert torch.equal(params.bound_log_scales, bound_before)
    for group in opt.param_groups:  # optimiser state follows the resized tensors
        p = group["params"][0]
        st = opt.state.get(p)
        if group["name"].startswith("free_"):
            assert p.shape[0] == budget and st["exp_avg"].shape == p.shape
            assert torch.all(st["exp_avg_sq"][-10:] == 0)
    # nothing above the threshold: pruning only, the count drops below the budget
    with torch.no_grad():
        params.free_opacity[:5] = -10.0
    strategy.densify_and_prune(params, opt, torch.zeros(budget), torch.Generator().manual_seed(0))
    assert params.n_free == budget - 5
