"""Tests for emodifftalk.render: projection vs gsplat's torch reference, hand-computed renders,
the tile renderer vs a dense all-pairs reference (values and autograd gradients), culling,
backend selection, and the camera helpers."""

import math
import sys

import pytest
import torch

import emodifftalk.render._tiles as tiles_mod
from emodifftalk.render import RenderOutput, rasterize
from emodifftalk.render.cameras import (
    c2w_to_viewmat,
    intrinsics,
    look_at,
    opengl_to_opencv,
    orbit_cameras,
    project_points,
)
from emodifftalk.render.projection import covariance_3d, project_gaussians

PARAMS = ("means", "quats", "scales", "opacities", "colors")


def random_scene(n, seed=0, size=32, opaque=False, cameras=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    scene = {
        "means": torch.randn(n, 3, generator=gen, dtype=dtype) * 0.3 + torch.tensor([0.0, 0.0, 2.0], dtype=dtype),
        "quats": torch.randn(n, 4, generator=gen, dtype=dtype),
        "scales": torch.rand(n, 3, generator=gen, dtype=dtype) * 0.15 + 0.02,
        "opacities": (0.7 + 0.3 * torch.rand(n, generator=gen, dtype=dtype)) if opaque
        else torch.rand(n, generator=gen, dtype=dtype),
        "colors": torch.rand(n, 3, generator=gen, dtype=dtype),
    }
    f = 1.25 * size
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2 - 1.0], [0.0, 0.0, 1.0]], dtype=dtype)
    viewmats = torch.eye(4, dtype=dtype)[None].repeat(cameras, 1, 1)
    for c in range(1, cameras):  # small rotation + translation per extra camera
        a = 0.15 * c
        viewmats[c, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                                           dtype=dtype)
        viewmats[c, :3, 3] = torch.tensor([0.1 * c, -0.05 * c, 0.2 * c], dtype=dtype)
    scene["viewmats"] = viewmats
    scene["Ks"] = K[None].repeat(cameras, 1, 1)
    return scene


def dense_reference(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background=None):
    """Every pixel against every Gaussian, gsplat's classic compositing rules, plain autograd."""
    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height)
    rgbs, alphas, depths = [], [], []
    ys, xs = torch.meshgrid(torch.arange(height, dtype=means.dtype) + 0.5,
                            torch.arange(width, dtype=means.dtype) + 0.5, indexing="ij")
    for c in range(viewmats.shape[0]):
        order = torch.argsort(proj.depths[c].detach())
        m, con = proj.means2d[c][order], proj.conics[c][order]
        col = (colors[c] if colors.dim() == 3 else colors)[order]
        dx = m[:, 0] - xs.reshape(-1, 1)
        dy = m[:, 1] - ys.reshape(-1, 1)
        sigma = 0.5 * (con[:, 0] * dx**2 + con[:, 2] * dy**2) + con[:, 1] * dx * dy
        alpha = torch.clamp(opacities[order] * torch.exp(-sigma), max=0.999)
        keep = (alpha >= 1 / 255) & (sigma >= 0) & proj.visible[c][order]
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        trans_after = torch.cumprod(1 - alpha, dim=1)
        trans_before = torch.cat([torch.ones_like(alpha[:, :1]), trans_after[:, :-1]], dim=1)
        w = alpha * trans_before * (trans_after > 1e-4)  # stop before T <= 1e-4
        acc = w.sum(1, keepdim=True)
        rgb = w @ col
        if background is not None:
            rgb = rgb + (1 - acc) * (background[c] if background.dim() == 2 else background)
        rgbs.append(rgb.reshape(height, width, -1))
        alphas.append(acc.reshape(height, width, 1))
        depths.append(((w @ proj.depths[c][order][:, None]) / acc.clamp(min=1e-10)).reshape(height, width, 1))
    return torch.stack(rgbs), torch.stack(alphas), torch.stack(depths)


def render(scene, size, **kw):
    return rasterize(**scene, width=size, height=size, backend="torch", **kw)


# ---------------------------------------------------------------- projection vs gsplat


def test_projection_matches_gsplat_torch_reference():
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    scene = random_scene(200, seed=3, cameras=2)
    scene["means"][:5, 2] = -1.0  # behind the camera: culled
    W, H = 40, 30
    ours = project_gaussians(scene["means"], scene["quats"], scene["scales"], None, scene["viewmats"],
                             scene["Ks"], W, H, eps2d=0.3)
    covars, _ = impl._quat_scale_to_covar_preci(scene["quats"], scene["scales"], True, False)
    radii, means2d, depths, conics, _ = impl._fully_fused_projection(
        scene["means"], covars, scene["viewmats"], scene["Ks"], W, H, eps2d=0.3)
    vis = (radii > 0).all(-1)
    assert torch.equal(ours.visible, vis)
    assert 0 < vis.sum() < vis.numel()
    torch.testing.assert_close(ours.means2d[vis], means2d[vis], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours.conics[vis], conics[vis], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.depths, depths)
    diff = (ours.radii_xy - radii).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99  # ceil() may flip on rounding


def test_covariance_and_cov2d_match_gsplat():
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    scene = random_scene(50, seed=4)
    covars, _ = impl._quat_scale_to_covar_preci(scene["quats"], scene["scales"], True, False)
    torch.testing.assert_close(covariance_3d(scene["quats"], scene["scales"]), covars, rtol=1e-5, atol=1e-7)
    means_c, covars_c = impl._world_to_cam(scene["means"], covars, scene["viewmats"])
    _, cov2d = impl._persp_proj(means_c, covars_c, scene["Ks"], 32, 32)
    ours = project_gaussians(scene["means"], scene["quats"], scene["scales"], None, scene["viewmats"],
                             scene["Ks"], 32, 32, eps2d=0.0)
    torch.testing.assert_close(ours.cov2d, cov2d, rtol=1e-4, atol=1e-5)


def test_opacity_aware_radius():
    scene = random_scene(100, seed=5)
    out = render(scene, 32)
    proj = project_gaussians(scene["means"], scene["quats"], scene["scales"], None, scene["viewmats"],
                             scene["Ks"], 32, 32)
    extend = torch.sqrt(2 * torch.log(255 * scene["opacities"])).clamp(max=3.33)
    expected = torch.ceil(extend * proj.cov2d.diagonal(dim1=-2, dim2=-1).sqrt().amax(-1))
    vis = out.radii > 0
    assert vis.sum() > 20
    assert ((out.radii[vis] - expected[vis]).abs() <= 1).all()
    assert (out.radii[scene["opacities"][None].expand_as(vis) < 1 / 255] == 0).all()


# ---------------------------------------------------------------- hand-computed renders


def single_gaussian(z=2.0, s=0.05, opacity=0.8, color=(0.9, 0.2, 0.1), size=33, f=40.0):
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])  # centre = pixel 16's centre
    return {
        "means": torch.tensor([[0.0, 0.0, z]]), "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        "scales": torch.full((1, 3), s), "opacities": torch.tensor([opacity]), "colors": torch.tensor([color]),
        "viewmats": torch.eye(4)[None], "Ks": K[None],
    }


@pytest.mark.parametrize("eps2d", [0.0, 0.3])
def test_single_isotropic_gaussian(eps2d):
    z, s, o, f, size = 2.0, 0.05, 0.8, 40.0, 33
    scene = single_gaussian(z, s, o, size=size, f=f)
    bg = torch.tensor([0.1, 0.5, 0.3])
    out = render(scene, size, background=bg, eps2d=eps2d)
    color = scene["colors"][0]
    var = (f * s / z) ** 2 + eps2d  # sigma = f s / z pixels, plus gsplat's blur
    c = size // 2
    torch.testing.assert_close(out.rgb[0, c, c], o * color + (1 - o) * bg)
    torch.testing.assert_close(out.depth[0, c, c, 0], torch.tensor(z))
    for d in range(6):
        alpha = o * math.exp(-d * d / (2 * var))
        expected = alpha * color + (1 - alpha) * bg if alpha >= 1 / 255 else bg
        torch.testing.assert_close(out.rgb[0, c, c + d], expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.rgb[0, c - d, c], expected, atol=1e-6, rtol=1e-5)
    assert out.alpha[0, 0, 0, 0] == 0 and torch.equal(out.rgb[0, 0, 0], bg)
    extend = math.sqrt(2 * math.log(255 * o))
    assert out.radii[0, 0] == math.ceil(extend * math.sqrt(var))


def test_two_gaussians_depth_order():
    front = single_gaussian(z=2.0, opacity=0.6, color=(1.0, 0.0, 0.0))
    back = single_gaussian(z=3.0, opacity=0.7, color=(0.0, 0.0, 1.0), s=0.08)
    scene = {k: torch.cat([back[k], front[k]]) if k in PARAMS else front[k] for k in front}  # back listed first
    out = render(scene, 33)
    c = 16
    w_front, w_back = 0.6, (1 - 0.6) * 0.7
    torch.testing.assert_close(out.rgb[0, c, c], torch.tensor([w_front, 0.0, w_back]))
    torch.testing.assert_close(out.alpha[0, c, c, 0], torch.tensor(w_front + w_back))
    torch.testing.assert_close(out.depth[0, c, c, 0], torch.tensor((2.0 * w_front + 3.0 * w_back) / (w_front + w_back)))
    # move the blue one in front: now it dominates
    scene["means"] = torch.tensor([[0.0, 0.0, 1.5], [0.0, 0.0, 2.0]])
    out2 = render(scene, 33)
    assert out2.rgb[0, c, c, 2] > out2.rgb[0, c, c, 0]


def test_culling_behind_near_plane_and_off_screen():
    scene = single_gaussian()
    scene = {k: torch.cat([v] * 3) if k in PARAMS else v for k, v in scene.items()}
    scene["means"] = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -2.0], [50.0, 0.0, 2.0]])
    out = render(scene, 33)
    assert out.radii[0].tolist()[1:] == [0, 0] and out.radii[0, 0] > 0
    only_first = render({k: v[:1] if k in PARAMS else v for k, v in scene.items()}, 33)
    torch.testing.assert_close(out.rgb, only_first.rgb)


# ---------------------------------------------------------------- tiles vs dense reference


@pytest.mark.parametrize("cameras,opaque", [(1, False), (2, True)])
def test_tile_sizes_match_dense_reference(cameras, opaque):
    scene = random_scene(50 if not opaque else 150, seed=7, opaque=opaque, cameras=cameras)
    bg = torch.rand(cameras, 3)
    ref = dense_reference(**scene, width=32, height=32, background=bg)
    assert ref[1].max() > 0.9
    for tile_size in (4, 8, 16, 5):
        out = render(scene, 32, tile_size=tile_size, background=bg)
        for got, want in zip((out.rgb, out.alpha, out.depth), ref):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_non_square_image_and_per_camera_colors():
    scene = random_scene(80, seed=8, cameras=2)
    scene["colors"] = torch.rand(2, 80, 3)
    ref = dense_reference(**scene, width=37, height=21)
    out = rasterize(**scene, width=37, height=21, backend="torch", tile_size=8)
    assert out.rgb.shape == (2, 21, 37, 3) and out.radii.shape == (2, 80) and out.means2d.shape == (2, 80, 2)
    for got, want in zip((out.rgb, out.alpha, out.depth), ref):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _grads(outputs, weights, scene):
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, [scene[k] for k in PARAMS])


@pytest.mark.parametrize("opaque,chunk", [(False, None), (True, None), (True, 3000)])
def test_gradients_match_dense_reference(monkeypatch, opaque, chunk):
    if chunk is not None:  # force depth chunks that carry transmittance between them
        monkeypatch.setattr(tiles_mod, "CHUNK_ELEMENTS", chunk)
    scene = random_scene(60 if not opaque else 200, seed=11, opaque=opaque)
    for k in PARAMS:
        scene[k].requires_grad_(True)
    bg = torch.tensor([0.3, 0.2, 0.1])
    ref = dense_reference(**scene, width=32, height=32, background=bg)
    if opaque:
        assert (1 - ref[1]).min() < 1e-3  # some pixels saturate: the T < 1e-4 stop is exercised
    weights = [torch.randn_like(r) for r in ref]
    want = _grads(ref, weights, scene)
    out = render(scene, 32, background=bg, tile_size=8)
    got = _grads((out.rgb, out.alpha, out.depth), weights, scene)
    for name, g, w in zip(PARAMS, got, want):
        assert torch.isfinite(g).all(), name
        assert w.abs().max() > 0, name
        torch.testing.assert_close(g, w, atol=2e-5 * w.abs().max().item(), rtol=1e-4, msg=name)


def test_means2d_retain_grad():
    scene = random_scene(40, seed=2)
    scene["means"][0, 2] = -1.0  # culled
    scene["means"].requires_grad_(True)
    out = render(scene, 32)
    out.means2d.retain_grad()
    out.rgb.sum().backward()
    g = out.means2d.grad
    assert g.shape == (1, 40, 2)
    assert torch.all(g[0, 0] == 0) and (g[out.radii > 0].abs().sum(-1) > 0).float().mean() > 0.8


def test_memory_bounded_20k_gaussians():
    gen = torch.Generator().manual_seed(0)
    n, size = 20_000, 128
    d = torch.randn(n, 3, generator=gen)
    scene = {
        "means": d / d.norm(dim=-1, keepdim=True) * torch.tensor([0.08, 0.11, 0.09]) + torch.tensor([0, 0, 0.6]),
        "quats": torch.randn(n, 4, generator=gen), "scales": torch.full((n, 3), 0.003),
        "opacities": torch.rand(n, generator=gen), "colors": torch.rand(n, 3, generator=gen),
        "viewmats": torch.eye(4)[None], "Ks": intrinsics(25.0, size, size)[None],
    }
    for k in ("means", "opacities", "colors"):
        scene[k].requires_grad_(True)
    scene["quats"].requires_grad_(True)
    out = render(scene, size)
    (out.rgb.sum() + out.depth.mean()).backward()
    assert 0.3 < out.alpha.mean() < 1 and torch.isfinite(scene["means"].grad).all()
    proj = project_gaussians(scene["means"].detach(), scene["quats"].detach(), scene["scales"],
                             scene["opacities"].detach(), scene["viewmats"], scene["Ks"], size, size)
    plan = tiles_mod.build_plan(proj.means2d, proj.conics, scene["opacities"].detach(), proj.radii_xy,
                                proj.depths, size, size, 16)
    largest = max(g.idx.shape[0] * 256 * (k1 - k0) for g in plan.groups for k0, k1 in g.k_chunks)
    assert largest <= tiles_mod.CHUNK_ELEMENTS + 256  # the bound on every scratch buffer


# ---------------------------------------------------------------- backends


def test_gsplat_backend_on_cpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA"):
        rasterize(**single_gaussian(), width=33, height=33, backend="gsplat")
    with pytest.raises(ValueError, match="backend"):
        rasterize(**single_gaussian(), width=33, height=33, backend="cuda")


def test_auto_backend_on_cpu_is_torch_and_inputs_are_checked():
    scene = random_scene(30, seed=1)
    auto = rasterize(**scene, width=32, height=32)
    assert isinstance(auto, RenderOutput)
    torch.testing.assert_close(auto.rgb, render(scene, 32).rgb)
    bad = dict(scene, quats=scene["quats"][:, :3])
    with pytest.raises(ValueError, match="quats"):
        rasterize(**bad, width=32, height=32)
    # float64 cameras (numpy's default) follow the means' dtype
    mixed = dict(scene, viewmats=scene["viewmats"].double(), Ks=scene["Ks"].double())
    out = rasterize(**mixed, width=32, height=32)
    assert out.rgb.dtype == torch.float32
    torch.testing.assert_close(out.rgb, auto.rgb)


def test_auto_falls_back_once_when_gsplat_fails_to_build(monkeypatch):
    rast_mod = sys.modules["emodifftalk.render.rasterize"]  # the package attribute is the function
    calls = []

    def broken_gsplat(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("Error building extension 'gsplat_cuda'")

    monkeypatch.setattr(rast_mod, "_all_cuda", lambda tensors: True)
    monkeypatch.setattr(rast_mod, "_gsplat_rasterization", lambda: broken_gsplat)
    monkeypatch.setattr(rast_mod, "_GSPLAT_STATE", {"worked": False, "broken": None})
    scene = random_scene(20, seed=1)
    out = rasterize(**scene, width=16, height=16)  # falls back to torch
    torch.testing.assert_close(out.rgb, render(scene, 16).rgb)
    assert calls == [1] and "gsplat_cuda" in rast_mod._GSPLAT_STATE["broken"]
    # once gsplat has worked, a later failure is a real error, not a silent fallback
    monkeypatch.setattr(rast_mod, "_GSPLAT_STATE", {"worked": True, "broken": None})
    with pytest.raises(RuntimeError, match="gsplat_cuda"):
        rasterize(**scene, width=16, height=16)


@pytest.mark.gpu
def test_gsplat_matches_torch_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("gsplat")
    scene = {k: v.cuda() for k, v in random_scene(300, seed=9, cameras=2).items()}
    for k in PARAMS:
        scene[k].requires_grad_(True)
    bg = torch.tensor([0.2, 0.3, 0.4], device="cuda")
    outs, grads = {}, {}
    for backend in ("gsplat", "torch"):
        out = rasterize(**scene, width=64, height=48, backend=backend, background=bg)
        (out.rgb.sum() + out.alpha.sum()).backward()
        outs[backend] = out
        grads[backend] = [scene[k].grad.clone() for k in PARAMS]
        for k in PARAMS:
            scene[k].grad = None
    a, b = outs["gsplat"], outs["torch"]
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-4, rtol=1e-3, msg=name)
    assert ((a.radii - b.radii).abs() <= 1).all()
    torch.testing.assert_close(a.means2d.detach(), b.means2d.detach(), atol=1e-3, rtol=1e-4)
    for name, ga, gb in zip(PARAMS, grads["gsplat"], grads["torch"]):
        torch.testing.assert_close(ga, gb, atol=1e-3 * gb.abs().max().item(), rtol=1e-2, msg=name)


# ---------------------------------------------------------------- cameras


def test_look_at_centres_target_with_up_at_top():
    eye, target = torch.tensor([0.3, 0.2, 1.5]), torch.tensor([0.0, 0.05, 0.0])
    view = look_at(eye, target)
    rot = view[:3, :3]
    torch.testing.assert_close(rot @ rot.T, torch.eye(3), atol=1e-6, rtol=0)
    assert torch.det(rot) > 0
    K = intrinsics(30.0, 64, 48)
    uv, depth = project_points(torch.stack([target, target + torch.tensor([0.0, 0.1, 0.0])]), view, K)
    torch.testing.assert_close(uv[0], torch.tensor([32.0, 24.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(depth[0], (eye - target).norm())
    assert uv[1, 1] < uv[0, 1]  # world up is image up (smaller y)


def test_intrinsics_vertical_fov():
    K = intrinsics(90.0, 64, 48)
    assert K[1, 1] == pytest.approx(24.0) and K[0, 0] == K[1, 1] and K[0, 2] == 32 and K[1, 2] == 24


def test_c2w_viewmat_round_trip_and_opengl_flip():
    view = look_at(torch.tensor([1.0, 0.5, 2.0]), torch.zeros(3))
    c2w = c2w_to_viewmat(view)
    torch.testing.assert_close(c2w @ view, torch.eye(4), atol=1e-6, rtol=0)
    gl = opengl_to_opencv(c2w)  # cv -> gl (the flip is an involution)
    torch.testing.assert_close(opengl_to_opencv(gl), c2w)
    torch.testing.assert_close(gl[:3, 2], -c2w[:3, 2])  # GL looks down -z
    torch.testing.assert_close(gl[:3, 1], -c2w[:3, 1])  # GL y is up


def test_orbit_cameras_look_at_target_and_render():
    target = torch.tensor([0.0, 0.0, 0.0])
    viewmats, Ks = orbit_cameras(6, 0.6, 0.1, target, 25.0, 32, 32)
    assert viewmats.shape == (6, 4, 4) and Ks.shape == (6, 3, 3)
    for v in viewmats:
        uv, depth = project_points(target[None], v, Ks[0])
        torch.testing.assert_close(uv[0], torch.tensor([16.0, 16.0]), atol=1e-4, rtol=0)
        assert depth[0] == pytest.approx(math.hypot(0.6, 0.1), rel=1e-5)
    eye0 = c2w_to_viewmat(viewmats[0])[:3, 3]
    assert eye0[2] > 0.5  # first camera in front (+z)
    scene = single_gaussian(z=0.0, size=32)
    scene["means"] = target[None]
    out = rasterize(**{k: scene[k] for k in PARAMS}, viewmats=viewmats, Ks=Ks, width=32, height=32)
    assert (out.radii > 0).all() and (out.alpha[:, 16, 16, 0] > 0.5).all()
