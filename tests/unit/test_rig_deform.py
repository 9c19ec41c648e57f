import math

import pytest
import torch
from test_rig_gaussians import make_rig

from emodifftalk.render.projection import quat_to_rotmat as quat_to_matrix
from emodifftalk.rig.binding import (
    bind_free_points,
    matrix_to_quat,
    quat_multiply,
    vertex_one_ring,
    vertex_rotations,
)
from emodifftalk.rig.deform import deform


def _rot(axis, angle):
    axis = torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float32), dim=0)
    q = torch.cat([torch.tensor([math.cos(angle / 2)]), axis * math.sin(angle / 2)])
    return quat_to_matrix(q)


def test_quaternion_helpers_are_consistent():
    q = torch.nn.functional.normalize(torch.randn(200, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    r = quat_to_matrix(q)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3).expand(200, 3, 3), atol=1e-5)
    q2 = matrix_to_quat(r)
    assert torch.all(q2[:, 0] >= 0)
    assert torch.allclose(q2, torch.where(q[:, :1] < 0, -q, q), atol=1e-5)
    a, b = q[:100], q[100:]
    assert torch.allclose(quat_to_matrix(quat_multiply(a, b)), quat_to_matrix(a) @ quat_to_matrix(b), atol=1e-5)


def test_one_ring_and_free_binding():
    rig = make_rig()
    idx, w = vertex_one_ring(rig.faces, rig.n_bound)
    assert torch.equal(idx[:, 0], torch.arange(rig.n_bound))  # each vertex is in its own ring
    assert torch.allclose(w.sum(1), torch.ones(rig.n_bound))
    # vertex 0 (a pole) is connected to the whole first latitude ring (8 vertices)
    assert (w[0] > 0).sum() == 9
    pts = rig.means[:3] + 0.001
    a_idx, a_w = bind_free_points(pts, rig.canonical_verts, k=4)
    assert torch.equal(a_idx[:, 0], torch.arange(3)) and torch.allclose(a_w.sum(1), torch.ones(3))
    assert torch.all(a_w[:, 0] > a_w[:, 1])  # nearer vertices weigh more


def test_rigid_motion_moves_every_gaussian_rigidly():
    rig = make_rig(n_free=30)
    r = _rot([0.3, 1.0, -0.2], 0.4)
    t = torch.tensor([0.01, -0.02, 0.03])
    verts = rig.canonical_verts @ r.T + t
    rots = vertex_rotations(rig.canonical_verts, verts, rig.vertex_nbr_idx, rig.vertex_nbr_w)
    assert torch.allclose(rots, r.expand_as(rots), atol=1e-5)
    g = deform(rig, verts)
    assert torch.allclose(g.means, rig.means @ r.T + t, atol=1e-5)  # free points included
    want = quat_to_matrix(rig.quats) @ torch.eye(3)
    assert torch.allclose(quat_to_matrix(g.quats), r @ want, atol=1e-4)
    assert torch.equal(g.scales, rig.scales) and torch.equal(g.colors, rig.colors)
    assert torch.allclose(g.opacities, rig.opacities)


def test_rest_pose_is_identity_and_translation_only_mode():
    rig = make_rig()
    g = deform(rig, rig.canonical_verts.clone())
    assert torch.allclose(g.means, rig.means, atol=1e-6)
    assert torch.allclose(g.quats, torch.nn.functional.normalize(rig.quats, dim=-1), atol=1e-6)
    shifted = deform(rig, rig.canonical_verts + torch.tensor([0.0, 0.05, 0.0]), rotate=False)
    assert torch.allclose(shifted.means, rig.means + torch.tensor([0.0, 0.05, 0.0]), atol=1e-6)


def test_free_points_follow_their_local_region():
    rig = make_rig(n_free=40)
    verts = rig.canonical_verts.clone()
    low = rig.canonical_verts[:, 1] < -0.05  # the bottom cap stays, the rest moves forward
    verts[~low] += torch.tensor([0.0, 0.0, 0.02])
    g = deform(rig, verts, rotate=False)
    anchors_up = (~low)[rig.free_anchor_idx].all(1)
    anchors_down = low[rig.free_anchor_idx].all(1)
    assert anchors_up.any() and anchors_down.any()
    free_shift = g.means[rig.n_bound:] - rig.means[rig.n_bound:]
    assert torch.allclose(free_shift[anchors_up], torch.tensor([0.0, 0.0, 0.02]).expand(int(anchors_up.sum()), 3), atol=1e-6)
    assert torch.allclose(free_shift[anchors_down], torch.zeros(int(anchors_down.sum()), 3), atol=1e-6)


def test_sequence_and_delta_alpha_on_facial_points_only():
    rig = make_rig()
    T, Q = 5, rig.n_facial
    verts = rig.canonical_verts.expand(T, -1, -1).clone()
    verts[:, :, 1] += torch.linspace(0, 0.01, T)[:, None]
    da = torch.full((T, Q), 0.3, requires_grad=True)
    g = deform(rig, verts, da)
    assert g.means.shape == (T, rig.n_points, 3) and g.quats.shape == (T, rig.n_points, 4)
    assert g.opacities.shape == (T, rig.n_points)
    facial = torch.zeros(rig.n_points, dtype=torch.bool)
    facial[rig.facial_idx] = True
    assert torch.allclose(g.opacities[:, ~facial], rig.opacities[~facial].expand(T, -1))
    assert torch.allclose(g.opacities[:, facial], (rig.opacities[facial] + 0.3).clamp(0, 1).expand(T, -1))
    g.opacities.sum().backward()
    assert da.grad is not None and da.grad.abs().sum() > 0
    one = g.frame(2)
    assert one.means.shape == (rig.n_points, 3) and one.opacities.shape == (rig.n_points,)
    assert set(one.render_args()) == {"means", "quats", "scales", "opacities", "colors"}
    # a (Q,) change broadcasts over the T frames
    assert deform(rig, verts, torch.full((Q,), -0.2)).opacities.shape == (T, rig.n_points)


def test_deform_rejects_wrong_shapes():
    rig = make_rig()
    with pytest.raises(ValueError, match="V="):
        deform(rig, torch.zeros(rig.n_bound + 1, 3))
    with pytest.raises(ValueError, match="Q="):
        deform(rig, rig.canonical_verts, torch.zeros(rig.n_facial + 2))


def test_far_free_points_stay_rigid_with_the_head_while_near_ones_follow():
    """Shoulders a head's height below the chin must not swing with the jaw (binding.follow_weight)."""
    rig = make_rig(n_free=0)
    verts0 = rig.canonical_verts
    edge = float((verts0[rig.faces[:, 0]] - verts0[rig.faces[:, 1]]).norm(dim=-1).mean())
    radius = 4 * edge
    bottom = verts0[verts0[:, 1].argmin()]
    near = bottom + torch.tensor([0.0, -0.5 * edge, 0.0])  # just below the lowest vertex
    far = bottom + torch.tensor([0.0, -10 * edge, 0.0])  # "shoulder"
    a_idx, a_w = bind_free_points(torch.stack([near, far]), verts0, k=4, follow_radius=radius)
    assert torch.allclose(a_w[0].sum(), torch.tensor(1.0)) and float(a_w[1].sum()) == 0.0
    rig.means = torch.cat([rig.means, torch.stack([near, far])])
    for name, pad in (("log_scales", rig.log_scales[:2]), ("quats", rig.quats[:2]),
                      ("opacity_logits", rig.opacity_logits[:2]), ("colors", rig.colors[:2])):
        setattr(rig, name, torch.cat([getattr(rig, name), pad]))
    rig.free_anchor_idx, rig.free_anchor_w = a_idx, a_w
    # a "jaw" opening: the lower half of the head rotates 0.2 rad about a hinge above it
    low = verts0[:, 1] < 0
    hinge = torch.tensor([0.0, 0.0, 0.05])
    verts = verts0.clone()
    verts[low] = (verts0[low] - hinge) @ _rot([1.0, 0.0, 0.0], 0.2).T + hinge
    g = deform(rig, verts)
    n = rig.n_bound
    assert torch.allclose(g.means[n + 1], far, atol=1e-7)  # the shoulder stays
    chin_moved = float((verts[verts0[:, 1].argmin()] - bottom).norm())
    assert chin_moved > 0.01 and float((g.means[n] - near).norm()) > 0.5 * chin_moved  # moves with the chin
    assert torch.allclose(g.quats[n + 1], torch.nn.functional.normalize(rig.quats[n + 1], dim=-1), atol=1e-6)
    # without the radius both follow (plain LBS): the far point swings further than the near one
    _, plain_w = bind_free_points(torch.stack([near, far]), verts0, k=4)
    rig.free_anchor_w = plain_w
    g = deform(rig, verts)
    assert float((g.means[n + 1] - far).norm()) > float((g.means[n] - near).norm())
