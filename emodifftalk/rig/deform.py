"""Animate the canonical rig: mesh vertices (+ opacity changes) -> Gaussians for rendering.

``deform(rig, verts_t, delta_alpha)`` is the one place where G0 meets motion; training of the
feature line and inference both call it.

* Bound Gaussians: μ_t = v_t (the tracked / predicted mesh vertex, exactly), orientation
  rotated with the vertex's one-ring.
* Free Gaussians: linear blend skinning with their anchor vertices (``emodifftalk.rig.binding``).
* Opacity: α_t = clip(α0 + Δα_t, 0, 1) on the Q **facial** Gaussians only; Δα is in opacity units
  (not logits) so that eq. (21)'s γ·|Δα| has a plain meaning.

Choice of Q (the feature line F ∈ R^{17×Q×16}): the bound Gaussians of the template's
``vertex_sets["face"]`` when the template defines a non-empty face set, otherwise all bound
Gaussians. Opacity changes model facial muscle detail; back-of-head and neck vertices gain
nothing from them, and Q stays several times smaller than V. ``rig.facial_idx`` holds the
choice so every consumer uses the same Q and order.
"""

from __future__ import annotations

import torch

from emodifftalk.rig.binding import matrix_to_quat, quat_multiply, vertex_rotations
from emodifftalk.rig.gaussians import GaussianRig, Gaussians


def deform(rig: GaussianRig, verts_t: torch.Tensor, delta_alpha: torch.Tensor | None = None,
           rotate: bool = True) -> Gaussians:
    """Gaussians of the rig driven by mesh ``verts_t`` (V, 3) or (T, V, 3).

    ``delta_alpha``: opacity change of the facial Gaussians, (Q,) or (T, Q) (broadcast over T).
    ``rotate=False`` skips the local rotation fit (translation-only following, faster).
    Returns ``Gaussians`` with means/quats (T?, N, ·), opacities (N,) or (T, N), scales and
    colours (N, 3). Differentiable w.r.t. ``verts_t`` (translations) and ``delta_alpha``.
    """
    v = rig.n_bound
    if verts_t.dim() not in (2, 3) or verts_t.shape[-2:] != (v, 3):
        raise ValueError(f"deform: verts_t must be (V, 3) or (T, V, 3) with V={v} (the rig's template "
                         f"vertex count), got {tuple(verts_t.shape)}")
    dev, dt = rig.means.device, rig.means.dtype
    verts_t = verts_t.to(device=dev, dtype=dt)
    canon = rig.canonical_verts
    lead = verts_t.shape[:-2]  # () or (T,)

    if rotate:
        rot_v = vertex_rotations(canon, verts_t, rig.vertex_nbr_idx, rig.vertex_nbr_w)  # (..., V, 3, 3)
    else:
        rot_v = torch.eye(3, dtype=dt, device=dev).expand(*lead, v, 3, 3)

    # free points: LBS with the per-vertex rigid transforms of their anchors; weights summing to
    # less than 1 leave the rest of the point where it is (rigid with the head, binding.py)
    a_idx, a_w = rig.free_anchor_idx, rig.free_anchor_w  # (P, K)
    p0 = rig.means[v:]  # (P, 3)
    local = p0.unsqueeze(1) - canon[a_idx]  # (P, K, 3) offset from each anchor in canonical space
    r_a = rot_v[..., a_idx, :, :]  # (..., P, K, 3, 3)
    moved = verts_t[..., a_idx, :] + (r_a @ local.unsqueeze(-1)).squeeze(-1)  # (..., P, K, 3)
    free_means = p0 + (a_w.unsqueeze(-1) * (moved - p0.unsqueeze(1))).sum(-2)

    means = torch.cat([verts_t, free_means], dim=-2)  # (..., N, 3)

    q0 = torch.nn.functional.normalize(rig.quats, dim=-1)
    if rotate:
        q_v = matrix_to_quat(rot_v)  # (..., V, 4)
        q_a = q_v[..., a_idx, :]  # (..., P, K, 4)
        q_a = torch.where((q_a * q_a[..., :1, :]).sum(-1, keepdim=True) < 0, -q_a, q_a)  # one hemisphere
        rest = (1.0 - a_w.sum(-1, keepdim=True)).clamp_min(0.0) * torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dt,
                                                                                 device=dev)
        q_free = torch.nn.functional.normalize((a_w.unsqueeze(-1) * q_a).sum(-2) + rest, dim=-1)
        quats = quat_multiply(torch.cat([q_v, q_free], dim=-2), q0)
    else:
        quats = q0.expand(*lead, rig.n_points, 4)

    opac = rig.opacities
    if delta_alpha is not None:
        q = rig.n_facial
        if delta_alpha.shape[-1] != q or delta_alpha.dim() not in (1, 2):
            raise ValueError(f"deform: delta_alpha must be (Q,) or (T, Q) with Q={q} facial Gaussians, "
                             f"got {tuple(delta_alpha.shape)}")
        if delta_alpha.dim() == 2 and lead and delta_alpha.shape[0] != lead[0]:
            raise ValueError(f"deform: delta_alpha has {delta_alpha.shape[0]} frames, verts_t has {lead[0]}")
        full = torch.zeros(*delta_alpha.shape[:-1], rig.n_points, dtype=dt, device=dev)
        full = full.index_add(-1, rig.facial_idx, delta_alpha.to(device=dev, dtype=dt))
        opac = (opac + full).clamp(0.0, 1.0)
        if lead and opac.dim() == 1:
            opac = opac.expand(*lead, rig.n_points)
    return Gaussians(means=means, quats=quats, scales=rig.scales, opacities=opac, colors=rig.colors)
