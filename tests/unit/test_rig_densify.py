"""The rig's densify strategy (visual-hull floater prune, schedule) and the fill of unseen surface."""

import torch

from emodifftalk.render.cameras import intrinsics, look_at
from emodifftalk.rig.densify import DensifyStrategy, Silhouettes
from emodifftalk.rig.params import RigParams, make_optimizer
from emodifftalk.rig.triplane import TriplaneColorField
from emodifftalk.rig.visibility import UnseenFill, blend_weights, seen_vertices

SIZE = 32


def _cameras(eyes):
    vm = torch.stack([look_at(e, (0.0, 0.0, 0.0)) for e in eyes])
    return vm, intrinsics(40.0, SIZE, SIZE)[None].repeat(len(eyes), 1, 1)


def _disc_masks(n):
    """Foreground = a disc of radius 6 px at the image centre, in every view."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    return (((yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2) < 36).expand(n, SIZE, SIZE)


def test_silhouettes_flag_points_on_background_or_framed_by_too_few_views():
    vm, ks = _cameras([(0.0, 0.0, 1.0), (0.5, 0.0, 0.87), (-0.5, 0.0, 0.87)])
    sil = Silhouettes(_disc_masks(3), vm, ks)
    pts = torch.tensor([[0.0, 0.0, 0.0],  # centre: foreground everywhere
                        [0.15, 0.0, 0.0],  # beside the subject: background in the frontal view
                        [0.0, 0.0, 5.0]])  # behind the frontal camera: framed by no view
    assert sil.outside(pts).tolist() == [False, True, True]
    assert sil.outside(pts[:1], min_views=3).tolist() == [False]
    assert sil.outside(pts[:1], min_views=4).tolist() == [False]  # capped at the number of views


def test_strategy_recycles_floaters_on_its_schedule():
    verts = torch.randn(20, 3) * 0.05
    free = torch.zeros(10, 3)
    free[:3, 0] = 0.15  # three floaters beside the subject
    params = RigParams(verts, free, 0.02, TriplaneColorField(8, 2, 8, -torch.ones(3), torch.ones(3)))
    opt = make_optimizer(params, type("R", (), {k: 1e-3 for k in ("lr_position", "lr_scale", "lr_rotation",
                                                                   "lr_opacity", "lr_triplane", "lr_mlp")})())
    vm, ks = _cameras([(0.0, 0.0, 1.0), (0.5, 0.0, 0.87), (-0.5, 0.0, 0.87)])
    strategy = DensifyStrategy(budget=10, edge=0.02, every=5, stop_step=20, grad_threshold=1.0,
                               silhouettes=Silhouettes(_disc_masks(3), vm, ks))
    radii = torch.ones(3, 30, 2)
    gen = torch.Generator().manual_seed(0)
    assert strategy.step_post_backward(params, opt, torch.zeros(3, 30, 2), radii, 3, gen) is None  # not due
    stats = strategy.step_post_backward(params, opt, torch.zeros(3, 30, 2), radii, 5, gen)
    assert stats["floaters"] == 3 and stats["cloned"] + stats["split"] == 0  # no gradient: slots stay free
    assert params.n_free == 7 and torch.all(params.free_means == 0)
    assert strategy.step_post_backward(params, opt, None, radii[:, :27], 25, gen) is None  # past stop_step


def test_unseen_fill_is_the_harmonic_extension_and_differentiable():
    n = 9  # a path graph 0 - 1 - ... - 8 (self weight included, as vertex_one_ring gives); ends seen
    idx = torch.tensor([[i, max(i - 1, 0), min(i + 1, n - 1)] for i in range(n)])
    w = torch.full((n, 3), 1 / 3)
    values = torch.rand(n, 1, requires_grad=True)
    seen = torch.zeros(n, dtype=torch.bool)
    seen[[0, -1]] = True
    fill = UnseenFill.build(seen, idx, w)
    with torch.no_grad():
        values[0], values[-1] = 0.0, 1.0
    out = fill(values)
    assert torch.allclose(out[:, 0], torch.linspace(0, 1, n), atol=1e-4)  # linear = harmonic on a path
    out[4].sum().backward()  # the middle vertex depends on the seen ends only, half each
    assert torch.allclose(values.grad[:, 0], torch.tensor([0.5, 0, 0, 0, 0, 0, 0, 0, 0.5]), atol=1e-4)
    everything = UnseenFill.build(torch.ones(n, dtype=torch.bool), idx, w)
    assert torch.equal(everything(values), values)


def test_blend_weights_sum_what_each_gaussian_adds_to_the_images():
    vm, ks = _cameras([(0.0, 0.0, 1.0)])
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -0.2], [0.0, 0.0, -0.4]])  # the front one hides the rest
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(3, 1)
    scales = torch.tensor([[0.08] * 3, [0.02] * 3, [0.02] * 3])  # the front one covers the others

    from emodifftalk.render import rasterize

    def render(colors):
        return rasterize(means, quats, scales, torch.tensor([0.99, 0.99, 0.5]), colors, vm, ks, SIZE, SIZE).rgb

    w = blend_weights(render, 3, "cpu")
    assert w[0] > 5.0 and w[1] < 0.1 * w[0] and w[2] < w[1]


def test_seen_vertices_excludes_the_far_side_of_a_sphere():
    from emodifftalk.rig.init_points import mesh_depth

    g = torch.randn(400, 3, generator=torch.Generator().manual_seed(0))
    verts = 0.1 * torch.nn.functional.normalize(g, dim=-1)
    normals = torch.nn.functional.normalize(verts, dim=-1)
    vm, ks = _cameras([(0.0, 0.0, 0.6)])
    seen = seen_vertices(verts, normals, vm, ks, mesh_depth(verts, 0.01, vm, ks, SIZE, SIZE), 0.02)
    front = verts[:, 2] > 0.06
    back = verts[:, 2] < -0.01
    assert seen[front].float().mean() > 0.9 and not seen[back].any()
