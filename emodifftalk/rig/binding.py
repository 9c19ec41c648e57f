"""How rig Gaussians are tied to the template mesh (computed once, stored in the rig).

* Bound Gaussian i sits on vertex i. Its orientation follows the local rotation of the vertex's
  one-ring (a weighted Kabsch fit between the canonical and the current neighbourhood).
* Free Gaussian j follows its ``k`` nearest template vertices a_1..a_k (inverse-distance weights
  w): linear blend skinning with the per-vertex rigid transforms,
  ``p_t = p_0 + Σ_k w_k (v_t[a_k] + R_{a_k}(t) (p_0 − v_0[a_k]) − p_0)``.
  So hair and the mouth interior move structurally with the mesh, without any learned dynamics
  (paper supp. §1: non-facial points are "driven structurally by facial motion").
* The weights sum to how far the point follows the mesh (``follow_weight``): 1 on and near the
  surface, falling to 0 with the distance to the nearest anchor. The rest of the motion is the
  head's rigid motion, which is the identity in registered coordinates: neck and shoulders a
  head's height below the nearest (chin) vertex must not swing with the jaw's local rotation
  (its lever arm there is ten edges long). Weights summing to 1 are plain LBS.

Rotations are estimated without gradient (SVD gradients blow up for the near-identity, nearly
degenerate fits that dominate talking-head motion); gradients still flow to vertex positions
through the translation terms.
"""

from __future__ import annotations

import torch



def vertex_one_ring(faces: torch.Tensor, n_verts: int, max_k: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Each vertex plus its mesh neighbours: idx (V, K) long, w (V, K) (uniform, 0 = padding).

    ``faces`` (F, 3). Vertices with more than ``max_k - 1`` neighbours keep the first ones;
    padding repeats the vertex itself with weight 0.
    """
    assert faces.dim() == 2 and faces.shape[1] == 3, f"faces must be (F, 3), got {tuple(faces.shape)}"
    faces = faces.long().cpu()
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.cat([edges, edges.flip(1)])
    edges = torch.unique(edges, dim=0)  # sorted by source vertex
    neighbours: list[list[int]] = [[v] for v in range(n_verts)]
    for a, b in edges.tolist():
        if a != b and len(neighbours[a]) < max_k:
            neighbours[a].append(b)
    k = max(len(n) for n in neighbours)
    idx = torch.arange(n_verts).unsqueeze(1).repeat(1, k)
    w = torch.zeros(n_verts, k)
    for v, nb in enumerate(neighbours):
        idx[v, : len(nb)] = torch.tensor(nb)
        w[v, : len(nb)] = 1.0 / len(nb)
    return idx, w


def knn(points: torch.Tensor, ref: torch.Tensor, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest ``ref`` points of each of ``points``: (dist (P, k), idx (P, k)), ascending."""
    k = min(k, ref.shape[0])
    dists, idxs = [], []
    for s in range(0, points.shape[0], chunk):
        d = torch.cdist(points[s: s + chunk], ref)
        dd, ii = d.topk(k, dim=1, largest=False)
        dists.append(dd)
        idxs.append(ii)
    if not dists:
        return points.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(dists), torch.cat(idxs)


def follow_weight(dist: torch.Tensor, radius: float) -> torch.Tensor:
    """How far a free point at ``dist`` from its nearest anchor follows the mesh: 1 up to
    ``radius / 2``, linearly down to 0 at ``radius`` (``radius`` <= 0: 1 everywhere)."""
    if radius <= 0:
        return torch.ones_like(dist)
    return ((radius - dist) / (0.5 * radius)).clamp(0.0, 1.0)


def bind_free_points(points: torch.Tensor, verts: torch.Tensor, k: int = 4, eps: float = 1e-4,
                     follow_radius: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors of free points: idx (P, k) nearest template vertices, w (P, k) ∝ 1/distance,
    summing to ``follow_weight(nearest distance, follow_radius)`` (same length unit as ``points``)."""
    assert points.dim() == 2 and points.shape[1] == 3 and verts.dim() == 2 and verts.shape[1] == 3
    dist, idx = knn(points.detach().float(), verts.detach().float(), k)
    w = 1.0 / (dist + eps)
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return idx, w * follow_weight(dist[:, :1], follow_radius)


@torch.no_grad()
def vertex_rotations(canon: torch.Tensor, verts: torch.Tensor, nbr_idx: torch.Tensor,
                     nbr_w: torch.Tensor) -> torch.Tensor:
    """Local rotation of every vertex's neighbourhood from ``canon`` (V,3) to ``verts`` (..., V, 3).

    Weighted Kabsch fit; returns (..., V, 3, 3) proper rotations (identity where nothing moved).
    """
    p0 = canon[nbr_idx]  # (V, K, 3)
    pt = verts[..., nbr_idx, :]  # (..., V, K, 3)
    w = nbr_w.unsqueeze(-1)  # (V, K, 1)
    x0 = p0 - (w * p0).sum(-2, keepdim=True)
    xt = pt - (w * pt).sum(-2, keepdim=True)
    h = (x0 * w).transpose(-1, -2) @ xt  # (..., V, 3, 3) = Σ w x0 xtᵀ
    h = h.double()  # 3x3 SVDs are cheap; double keeps near-identity fits exact
    u, _, vh = torch.linalg.svd(h)
    v = vh.transpose(-1, -2)
    d = torch.sign(torch.linalg.det(v @ u.transpose(-1, -2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    fix = torch.ones(*d.shape, 3, dtype=h.dtype, device=h.device)
    fix[..., 2] = d
    r = (v * fix.unsqueeze(-2)) @ u.transpose(-1, -2)
    return r.to(verts.dtype)


def matrix_to_quat(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) wxyz with w >= 0."""
    m = r
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # four candidate (4·q_i²) terms; pick the largest for numerical stability (Shepperd)
    t = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = t.argmax(-1, keepdim=True)
    s = (torch.sqrt(t.gather(-1, best).clamp_min(1e-12)) * 2).squeeze(-1)  # = 4·|q_best|
    cands = torch.stack([
        torch.stack([s / 4, (m[..., 2, 1] - m[..., 1, 2]) / s, (m[..., 0, 2] - m[..., 2, 0]) / s,
                     (m[..., 1, 0] - m[..., 0, 1]) / s], -1),
        torch.stack([(m[..., 2, 1] - m[..., 1, 2]) / s, s / 4, (m[..., 0, 1] + m[..., 1, 0]) / s,
                     (m[..., 0, 2] + m[..., 2, 0]) / s], -1),
        torch.stack([(m[..., 0, 2] - m[..., 2, 0]) / s, (m[..., 0, 1] + m[..., 1, 0]) / s, s / 4,
                     (m[..., 1, 2] + m[..., 2, 1]) / s], -1),
        torch.stack([(m[..., 1, 0] - m[..., 0, 1]) / s, (m[..., 0, 2] + m[..., 2, 0]) / s,
                     (m[..., 1, 2] + m[..., 2, 1]) / s, s / 4], -1),
    ], -2)  # (..., 4 candidates, 4)
    q = cands.gather(-2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = torch.nn.functional.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a ⊗ b of wxyz quaternions (rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)
