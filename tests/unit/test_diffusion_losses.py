"""Geometry losses (eq. 12–17) on hand-computed values."""

import pytest
import torch

from emodifftalk.config import DiffusionConfig
from emodifftalk.losses import (
    acceleration_loss,
    deformation_loss,
    geometry_loss,
    laplacian_coordinates,
    lip_loss,
    mesh_edges,
    motion_loss,
    velocity_loss,
    vertex_loss,
    vertex_mask_from_indices,
)


def pair():
    """B=1, T=3, V=2. Error d_t(v) only in x: d = [[1, 0], [3, 0], [2, 2]]."""
    target = torch.zeros(1, 3, 2, 3)
    pred = torch.zeros(1, 3, 2, 3)
    pred[0, :, 0, 0] = torch.tensor([1.0, 3.0, 2.0])
    pred[0, 2, 1, 0] = 2.0
    return pred, target


def test_vertex_velocity_acceleration_by_hand():
    pred, target = pair()
    # squared errors: frame0 [1,0], frame1 [9,0], frame2 [4,4] -> mean over 6 = 18/6
    assert float(vertex_loss(pred, target)) == pytest.approx(3.0)
    # velocities of d: v0: [2, 0], [-1, 2] -> squares [4,0],[1,4] -> mean 9/4
    assert float(velocity_loss(pred, target)) == pytest.approx(2.25)
    # acceleration: d2 - 2 d1 + d0 = [2 - 6 + 1, 2 - 0 + 0] = [-3, 2] -> (9 + 4) / 2
    assert float(acceleration_loss(pred, target)) == pytest.approx(6.5)
    assert float(motion_loss(pred, target)) == pytest.approx(8.75)


def test_frame_mask_equals_unpadded():
    pred, target = pair()
    padded_p = torch.cat([pred, torch.full((1, 2, 2, 3), 7.0)], dim=1)
    padded_t = torch.cat([target, torch.zeros(1, 2, 2, 3)], dim=1)
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    for fn in (vertex_loss, velocity_loss, acceleration_loss):
        assert float(fn(padded_p, padded_t, mask)) == pytest.approx(float(fn(pred, target)))


def test_lip_loss_uses_only_lip_vertices():
    pred, target = pair()
    lips = vertex_mask_from_indices([1], 2)
    # vertex 1 errors: [0, 0, 4] over 3 frames
    assert float(lip_loss(pred, target, lips)) == pytest.approx(4.0 / 3)
    per_sample = lips[None].expand(1, 2)
    assert float(lip_loss(pred, target, per_sample)) == pytest.approx(4.0 / 3)
    with pytest.raises(ValueError):
        vertex_mask_from_indices([2], 2)


def test_laplacian_and_deformation():
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    edges = mesh_edges(faces)
    assert edges.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [2, 3]]
    x = torch.zeros(4, 3)
    x[0, 2] = 3.0  # lift vertex 0 (neighbours 1, 2, 3)
    lap = laplacian_coordinates(x, edges)
    assert lap[0].tolist() == [0.0, 0.0, 3.0]
    assert lap[1].tolist() == [0.0, 0.0, -1.5]  # neighbours 0, 2
    assert lap[2].tolist() == [0.0, 0.0, -1.0]  # neighbours 0, 1, 3
    # a rigid translation has zero Laplacian -> zero deformation loss
    shift = torch.ones(1, 2, 4, 3)
    assert float(deformation_loss(shift, edges)) == pytest.approx(0.0, abs=1e-7)
    off = x.view(1, 1, 4, 3)
    expected = (9 + 2.25 + 1 + 2.25) / 4  # vertex 3: neighbours 0, 2 -> -1.5
    assert float(deformation_loss(off, edges)) == pytest.approx(expected)


def test_geometry_total_uses_config_weights():
    pred, target = pair()
    w = DiffusionConfig()
    edges = torch.tensor([[0, 1]])
    out = geometry_loss(pred, target, lip_mask=vertex_mask_from_indices([1], 2), edges=edges, weights=w)
    expected = (w.lambda_vertex * out["vertex"] + w.lambda_motion * (out["vel"] + out["acc"])
                + w.lambda_deform * out["deform"] + w.lambda_lip * out["lip"])
    assert float(out["geometry"]) == pytest.approx(float(expected))
    assert (w.lambda_vertex, w.lambda_motion, w.lambda_deform, w.lambda_lip) == (1.0, 0.5, 0.1, 0.8)
    # deform on two vertices joined by one edge: lap = x0 - x1 and x1 - x0
    d = pred[0, :, 0] - pred[0, :, 1]
    assert float(out["deform"]) == pytest.approx(float(d.square().sum(-1).mean()))


def test_losses_are_differentiable():
    pred, target = pair()
    pred.requires_grad_(True)
    out = geometry_loss(pred, target, lip_mask=torch.tensor([True, False]), edges=torch.tensor([[0, 1]]),
                        weights=DiffusionConfig())
    out["geometry"].backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_short_sequences_give_zero_motion():
    p = torch.ones(1, 1, 2, 3)
    assert float(velocity_loss(p, torch.zeros_like(p))) == 0.0
    assert float(acceleration_loss(p, torch.zeros_like(p))) == 0.0


def test_lip_gap_loss_sees_the_lips_part_not_move_together():
    from emodifftalk.losses.geometry import lip_gap_loss, lip_gap_weights

    template = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.9, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    lips = torch.tensor([[True, True, False, True]])  # upper half: vertex 3; lower: vertex 1
    w = lip_gap_weights(template, lips)
    assert w.tolist() == [[0.0, -1.0, 0.0, 1.0]]
    target = torch.zeros(1, 2, 4, 3)
    together = target.clone()
    together[..., [1, 3], 1] = 0.5  # both lips up by the same amount: no gap change
    parted = target.clone()
    parted[:, 1, 1, 1] = -0.3  # the lower lip drops in frame 1
    assert float(lip_gap_loss(together, target, w)) == pytest.approx(0.0)
    assert float(lip_gap_loss(parted, target, w)) == pytest.approx(0.09 / 2)
    cfg = DiffusionConfig(lambda_lip_gap=2.0)
    out = geometry_loss(parted, target, lip_mask=lips[0], edges=None, weights=cfg, lip_gap=w)
    base = geometry_loss(parted, target, lip_mask=lips[0], edges=None, weights=cfg)
    assert float(out["geometry"] - base["geometry"]) == pytest.approx(2.0 * 0.09 / 2)
