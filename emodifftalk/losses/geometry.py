"""Geometry losses of the AU-prompt diffusion (paper supp. eq. 12–17). Pure functions.

All take per-vertex offsets (or meshes — only differences matter) ``pred``/``target`` of shape
(B, T, V, 3) and an optional ``frame_mask`` (B, T) (1 = real frame, 0 = padding). ‖·‖² is the
squared L2 norm over xyz; averages run over *valid* frames (and vertices), so padded batches give
the same value as their unpadded pieces. Where the paper normalises by T·V for a sum over T−1
differences (eq. 13) we average over the valid differences instead.

``L_deform`` is not defined in the paper. We use **Laplacian-coordinate preservation**: the
uniform graph Laplacian δ(X)_v = X_v − mean_{u∈N(v)} X_u of the predicted mesh should stay that of
the template, L_deform = mean ‖δ(P + ΔP̂) − δ(P)‖² = mean ‖δ(ΔP̂)‖² (δ is linear and depends only
on the topology). It keeps local surface detail (no crumpling / spikes between neighbours) while
allowing smooth large-scale motion, and needs only the template's faces.
"""

from __future__ import annotations

import torch


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    assert pred.ndim == 4 and pred.shape[-1] == 3, f"pred must be (B, T, V, 3), got {tuple(pred.shape)}"
    assert pred.shape == target.shape, f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ"


def _frame_weights(frame_mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    b, t = x.shape[:2]
    if frame_mask is None:
        return torch.ones(b, t, device=x.device, dtype=x.dtype)
    assert frame_mask.shape == (b, t), f"frame_mask must be (B, T) = {(b, t)}, got {tuple(frame_mask.shape)}"
    return frame_mask.to(device=x.device, dtype=x.dtype)


def _masked_frame_mean(per_frame: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T') per-frame values over entries with weight w (B, T'); 0 if none."""
    return (per_frame * w).sum() / w.sum().clamp(min=1.0)


def _vertex_mean(sq: torch.Tensor, vertex_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, V) squared errors → (B, T) mean over (selected) vertices."""
    if vertex_mask is None:
        return sq.mean(dim=-1)
    vm = vertex_mask.to(device=sq.device, dtype=sq.dtype)
    if vm.ndim == 1:
        vm = vm[None]
    assert vm.ndim == 2 and vm.shape[-1] == sq.shape[-1], (
        f"vertex_mask must be (V,) or (B, V) with V={sq.shape[-1]}, got {tuple(vertex_mask.shape)}")
    vm = vm[:, None, :]
    return (sq * vm).sum(-1) / vm.sum(-1).clamp(min=1.0)


def vertex_loss(pred: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None,
                vertex_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (12): L_vertex = 1/(T·V) Σ_t Σ_v ‖x0_t(v) − x̂0_t(v)‖²."""
    _check_pair(pred, target)
    sq = (pred - target).square().sum(-1)
    return _masked_frame_mean(_vertex_mean(sq, vertex_mask), _frame_weights(frame_mask, pred))


def velocity_loss(pred: torch.Tensor, target: torch.Tensor,
                  frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (13): mean over valid consecutive pairs and vertices of ‖∇x0 − ∇x̂0‖², ∇x_t = x_{t+1} − x_t."""
    _check_pair(pred, target)
    w = _frame_weights(frame_mask, pred)
    d = pred - target
    if d.shape[1] < 2:
        return d.sum() * 0.0
    vel = d[:, 1:] - d[:, :-1]
    return _masked_frame_mean(vel.square().sum(-1).mean(-1), w[:, 1:] * w[:, :-1])


def acceleration_loss(pred: torch.Tensor, target: torch.Tensor,
                      frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (14): mean over valid triples and vertices of ‖∇²x0 − ∇²x̂0‖², ∇²x_t = x_{t+2} − 2x_{t+1} + x_t."""
    _check_pair(pred, target)
    w = _frame_weights(frame_mask, pred)
    d = pred - target
    if d.shape[1] < 3:
        return d.sum() * 0.0
    acc = d[:, 2:] - 2 * d[:, 1:-1] + d[:, :-2]
    return _masked_frame_mean(acc.square().sum(-1).mean(-1), w[:, 2:] * w[:, 1:-1] * w[:, :-2])


def motion_loss(pred: torch.Tensor, target: torch.Tensor,
                frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (15): L_motion = L_vel + L_acc."""
    return velocity_loss(pred, target, frame_mask) + acceleration_loss(pred, target, frame_mask)


def lip_loss(pred: torch.Tensor, target: torch.Tensor, lip_mask: torch.Tensor,
             frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (16): eq. (12) restricted to the lip vertices 𝒱_lip (``lip_mask`` (V,) or (B, V) bool).

    𝒯_lip (the paper does not define it) is every valid frame: lips must also stay closed in
    silence.
    """
    return vertex_loss(pred, target, frame_mask, vertex_mask=lip_mask)


def lip_gap_weights(template: torch.Tensor, lip_mask: torch.Tensor) -> torch.Tensor:
    """(B, V) weights whose dot product with the offsets' height (y, world y up) is the lip gap:
    the mean height of the upper half of the lip vertices minus that of the lower half (halves
    split at the template's median lip height, as ``eval speech`` measures the opening)."""
    w = torch.zeros(lip_mask.shape, dtype=template.dtype, device=template.device)
    for b in range(lip_mask.shape[0]):
        idx = torch.nonzero(lip_mask[b]).flatten()
        if idx.numel() < 2:
            continue
        y = template[b, idx, 1]
        mid = y.median()
        up, lo = idx[y > mid], idx[y < mid]
        if up.numel() and lo.numel():
            w[b, up] = 1.0 / up.numel()
            w[b, lo] = -1.0 / lo.numel()
    return w


def lip_gap_loss(pred: torch.Tensor, target: torch.Tensor, gap_weights: torch.Tensor,
                 frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid frames of the squared error of the lip gap (``lip_gap_weights``): how far
    the lips are apart, one number per frame that L_lip weighs no more than any other lip motion."""
    _check_pair(pred, target)
    gap = torch.einsum("btv,bv->bt", (pred - target)[..., 1], gap_weights.to(pred.dtype))
    return _masked_frame_mean(gap.square(), _frame_weights(frame_mask, pred))


def vertex_mask_from_indices(indices, num_vertices: int, device=None) -> torch.Tensor:
    """Index list (e.g. ``vertex_sets["lips"]``) → (V,) bool mask; raises on out-of-range indices."""
    idx = torch.as_tensor(list(indices) if not isinstance(indices, torch.Tensor) else indices,
                          dtype=torch.long, device=device)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_vertices):
        raise ValueError(f"vertex indices must be in [0, {num_vertices}), got [{int(idx.min())}, {int(idx.max())}]")
    mask = torch.zeros(num_vertices, dtype=torch.bool, device=device)
    mask[idx] = True
    return mask


def mesh_edges(faces: torch.Tensor) -> torch.Tensor:
    """(F, 3) triangle indices → (E, 2) unique undirected edges (i < j)."""
    faces = torch.as_tensor(faces, dtype=torch.long)
    assert faces.ndim == 2 and faces.shape[1] == 3, f"faces must be (F, 3), got {tuple(faces.shape)}"
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    e = torch.sort(e, dim=1).values
    return torch.unique(e, dim=0)


def laplacian_matrix(edges: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """Sparse (V, V) uniform Laplacian L = I − D⁻¹A from (E, 2) undirected edges (rows of
    isolated vertices are 0). Build once per topology and pass it instead of ``edges``."""
    edges = torch.as_tensor(edges, dtype=torch.long)
    i, j = edges[:, 0], edges[:, 1]
    rows, cols = torch.cat([i, j]), torch.cat([j, i])
    deg = torch.zeros(num_vertices, dtype=torch.float32).index_add_(0, rows, torch.ones(rows.shape[0]))
    has = torch.nonzero(deg > 0).flatten()
    idx = torch.cat([torch.stack([rows, cols]), torch.stack([has, has])], dim=1)
    vals = torch.cat([-1.0 / deg[rows], torch.ones(has.shape[0])])
    return torch.sparse_coo_tensor(idx, vals, (num_vertices, num_vertices), check_invariants=False).coalesce()


def laplacian_coordinates(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Uniform Laplacian δ(x)_v = x_v − mean of its neighbours; x (..., V, 3).

    ``edges``: (E, 2) undirected edges or a prebuilt ``laplacian_matrix``. Isolated vertices get
    δ = 0. One sparse matmul over all frames (vertices as rows).
    """
    v = x.shape[-2]
    lap = edges if edges.is_sparse else laplacian_matrix(edges, v)
    assert lap.shape == (v, v), f"Laplacian is {tuple(lap.shape)} but x has {v} vertices"
    lap = lap.to(device=x.device, dtype=x.dtype)
    lead = x.shape[:-2]
    cols = x.reshape(-1, v, 3).permute(1, 0, 2).reshape(v, -1)  # (V, N·3)
    out = torch.sparse.mm(lap, cols)
    return out.reshape(v, -1, 3).permute(1, 0, 2).reshape(*lead, v, 3)


def deformation_loss(pred_offsets: torch.Tensor, edges: torch.Tensor,
                     frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_deform of eq. (17) (our definition, see module docstring): mean over valid frames and
    vertices of ‖δ(P + ΔP̂) − δ(P)‖² = ‖δ(ΔP̂)‖²; pred_offsets (B, T, V, 3), edges (E, 2) or a
    ``laplacian_matrix``."""
    assert pred_offsets.ndim == 4 and pred_offsets.shape[-1] == 3, (
        f"pred_offsets must be (B, T, V, 3), got {tuple(pred_offsets.shape)}")
    lap = laplacian_coordinates(pred_offsets, edges)
    return _masked_frame_mean(lap.square().sum(-1).mean(-1), _frame_weights(frame_mask, pred_offsets))


def geometry_loss(pred: torch.Tensor, target: torch.Tensor, *, lip_mask: torch.Tensor,
                  edges: torch.Tensor | None, weights, frame_mask: torch.Tensor | None = None,
                  lip_gap: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Eq. (17): λ_vertex L_vertex + λ_motion L_motion + λ_deform L_deform + λ_lip L_lip, plus our
    λ_lip_gap L_gap when ``lip_gap`` weights (``lip_gap_weights``) are given.

    ``weights``: a ``DiffusionConfig`` (``lambda_vertex/motion/deform/lip``). ``pred``/``target``
    are offsets from the template. ``edges``: (E, 2) or a ``laplacian_matrix`` (cheaper when
    reused); ``None`` skips L_deform (reported as 0).
    Returns every term plus ``"geometry"`` (the weighted total).
    """
    out = {
        "vertex": vertex_loss(pred, target, frame_mask),
        "vel": velocity_loss(pred, target, frame_mask),
        "acc": acceleration_loss(pred, target, frame_mask),
        "lip": lip_loss(pred, target, lip_mask, frame_mask),
    }
    out["motion"] = out["vel"] + out["acc"]
    out["deform"] = (deformation_loss(pred, edges, frame_mask) if edges is not None
                     else pred.sum() * 0.0)
    out["gap"] = lip_gap_loss(pred, target, lip_gap, frame_mask) if lip_gap is not None else pred.sum() * 0.0
    out["geometry"] = (weights.lambda_vertex * out["vertex"] + weights.lambda_motion * out["motion"]
                       + weights.lambda_deform * out["deform"] + weights.lambda_lip * out["lip"]
                       + weights.lambda_lip_gap * out["gap"])
    return out
