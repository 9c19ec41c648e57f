"""Starting Gaussians of a rig: surfels that tile the template mesh (bound points) and free points
carved out of the training views' visual hull (hair, clothes)."""

from __future__ import annotations

import logging
import math

import torch

from emodifftalk.render.cameras import project_points
from emodifftalk.rig.binding import knn, matrix_to_quat
from emodifftalk.rig.triplane import bbox_from_points
from emodifftalk.rig.views import NeutralViews

log = logging.getLogger(__name__)

# --- choices not worth a config knob (all marked so they are easy to audit) -------------------
BOUND_SCALE_INIT = 0.85  # × RMS one-ring offset along each tangent axis (≈ 0.6 × spacing)  # choice
BOUND_MIN_SCALE = 0.3  # × the vertex's mean edge: no thinner bound Gaussians  # choice
FACE_CLEARANCE = 2.0  # × mean edge: free points start no closer than this to facial vertices
FOREGROUND_THRESHOLD = 0.04  # |pixel − background| that counts as foreground  # choice
PHOTO_STD = 0.05  # colour std across training views of a point on a surface  # choice


def foreground_masks(images: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(C, H, W) bool: pixels that differ from the render background (the subject's silhouette)."""
    return (images - background.to(images)).abs().amax(-1) > FOREGROUND_THRESHOLD


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals (V, 3), oriented away from the mesh centroid."""
    f = faces.long()
    fn = torch.cross(verts[f[:, 1]] - verts[f[:, 0]], verts[f[:, 2]] - verts[f[:, 0]], dim=-1)
    n = torch.zeros_like(verts).index_add_(0, f.reshape(-1), fn.repeat_interleave(3, dim=0))
    n = torch.nn.functional.normalize(n, dim=-1)
    if ((verts - verts.mean(0)) * n).sum() < 0:  # faces wound inward
        n = -n
    return n


def init_free_points(views: NeutralViews, faces: torch.Tensor, facial: torch.Tensor, n: int,
                     edge: float, background: torch.Tensor, gen: torch.Generator,
                     mesh_depth: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` starting positions for free Gaussians (hair, clothes), (n, 3).

    Candidates are drawn in the template's bounding box grown by 60 % and kept when

    * every training view that sees them shows foreground there (visual hull), and at least
      two of them see them unoccluded by the head mesh (``mesh_depth`` (C_train, H, W), inf
      where the mesh is not; a point seen by one view only is unconstrained in depth and
      becomes a floater in novel views),
    * they lie outside the head surface and not next to a facial vertex (the face belongs to
      the bound Gaussians), and
    * the training views agree on their colour (photo-consistency, std across views below
      ``PHOTO_STD``): points of the hull that are not on a surface see different surface
      points in different views (computed over the unoccluded views). This removes most of
      the "ghost" volume of a hull carved from few views.

    If too few pass, the most consistent of the rest fill up, then a shell just outside the head.
    """
    if n == 0:
        return views.verts.new_zeros(0, 3)
    verts = views.verts
    lo, hi = bbox_from_points(verts, margin=0.6)
    normals = vertex_normals(verts, faces) if faces.numel() else torch.nn.functional.normalize(
        verts - verts.mean(0), dim=-1)
    tr = views.train_idx
    imgs = views.images[tr]  # (C, H, W, 3)
    fg = foreground_masks(imgs, background)  # (C, H, W)
    is_facial = torch.zeros(verts.shape[0], dtype=torch.bool)
    is_facial[facial] = True
    pts, scores = [], []
    for _ in range(8):  # a few rounds of rejection sampling
        cand = lo + (hi - lo) * torch.rand(40 * n, 3, generator=gen)
        uv, z = project_points(cand, views.viewmats[tr], views.Ks[tr])
        px = uv[..., 0].floor().long()
        py = uv[..., 1].floor().long()
        inside = (px >= 0) & (px < views.width) & (py >= 0) & (py < views.height) & (z > 0)  # (C, P)
        hit = torch.ones_like(inside)
        visible = inside.clone()
        cols = torch.zeros(*inside.shape, 3)
        for c in range(len(tr)):
            m = inside[c]
            hit[c, m] = fg[c, py[c, m], px[c, m]]
            cols[c, m] = imgs[c, py[c, m], px[c, m]]
            if mesh_depth is not None:
                visible[c, m] = z[c, m] < mesh_depth[c, py[c, m], px[c, m]] + 2 * edge
        n_seen = visible.sum(0)
        dist, idx = knn(cand, verts, 1)
        dist, idx = dist[:, 0], idx[:, 0]
        outside = ((cand - verts[idx]) * normals[idx]).sum(-1) > 0.25 * edge
        off_face = ~(is_facial[idx] & (dist < FACE_CLEARANCE * edge))
        ok = hit.all(0) & (n_seen >= min(2, len(tr))) & outside & off_face
        w = visible.unsqueeze(-1).float()
        mean = (cols * w).sum(0) / n_seen.clamp_min(1).unsqueeze(-1)
        std = (((cols - mean) ** 2 * w).sum(0) / n_seen.clamp_min(1).unsqueeze(-1)).mean(-1).sqrt()  # (P,)
        pts.append(cand[ok])
        scores.append(std[ok])
        if int(sum((s < PHOTO_STD).sum() for s in scores)) >= n:
            break
    pts, scores = torch.cat(pts), torch.cat(scores)
    good = scores < PHOTO_STD
    if int(good.sum()) >= n:
        cand = pts[good]
        return cand[torch.randperm(len(cand), generator=gen)[:n]]
    chosen = pts[torch.argsort(scores)[:n]]  # all consistent ones, then the least inconsistent
    if len(chosen) >= n:
        return chosen
    log.warning("%s: the visual hull gave %d of %d free points; the rest start in a shell around the head",
                views.identity, len(chosen), n)
    non_facial = torch.nonzero(~is_facial).squeeze(1)
    pool = non_facial if len(non_facial) else torch.arange(verts.shape[0])
    pick = pool[torch.randint(len(pool), (n - len(chosen),), generator=gen)]
    shell = verts[pick] + normals[pick] * edge * (1 + 4 * torch.rand(len(pick), 1, generator=gen))
    return torch.cat([chosen, shell])


@torch.no_grad()
def mesh_depth(verts: torch.Tensor, edge: float, viewmats: torch.Tensor, Ks: torch.Tensor, width: int,
               height: int, near_plane: float = 0.01, eps2d: float = 0.3) -> torch.Tensor:
    """Depth of a template mesh in each camera: (C, H, W), inf where the mesh is not. Rendered as
    small opaque Gaussians at the vertices."""
    from emodifftalk.render import rasterize

    n = verts.shape[0]
    out = rasterize(verts, torch.tensor([1.0, 0, 0, 0]).repeat(n, 1), torch.full((n, 3), 0.8 * edge),
                    torch.full((n,), 0.99), torch.zeros(n, 3), viewmats, Ks, width, height, backend="torch",
                    near_plane=near_plane, eps2d=eps2d)
    return torch.where(out.alpha[..., 0] > 0.5, out.depth[..., 0], torch.full_like(out.depth[..., 0], math.inf))


def mesh_depth_maps(views: NeutralViews, edge: float, cam_idx: list[int], cfg) -> torch.Tensor:
    """``mesh_depth`` of the neutral moment's mesh in cameras ``cam_idx`` of ``views``."""
    return mesh_depth(views.verts, edge, views.viewmats[cam_idx], views.Ks[cam_idx], views.width, views.height,
                      cfg.render.near_plane, cfg.render.eps2d)


def surfel_init(verts: torch.Tensor, nbr_idx: torch.Tensor, nbr_w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Bound Gaussians as surfels that tile the mesh: (log_scales (V,3), quats (V,4), local edge (V,)).

    The principal axes of each vertex's one-ring offsets give the tangent directions and
    extents (so the sparse back of a head gets big Gaussians and the dense face small ones);
    the normal axis starts thin. ``local edge`` is the mean distance to the ring neighbours.
    """
    off = verts[nbr_idx] - verts.unsqueeze(1)  # (V, K, 3)
    real = (nbr_w > 0) & (nbr_idx != torch.arange(len(verts)).unsqueeze(1))
    n_real = real.sum(1).clamp_min(1)
    local_edge = (off.norm(dim=-1) * real).sum(1) / n_real
    cov = torch.einsum("vk,vki,vkj->vij", real.float(), off, off) / n_real[:, None, None]
    evals, evecs = torch.linalg.eigh(cov.double())  # ascending
    rot = evecs.flip(-1)  # columns: largest tangent axis, second, normal
    rot[..., 2] *= torch.sign(torch.linalg.det(rot)).unsqueeze(-1)  # a proper rotation
    sigma = BOUND_SCALE_INIT * evals.flip(-1).clamp_min(0).sqrt().float()
    floor = (BOUND_MIN_SCALE * local_edge).unsqueeze(1)
    sigma[:, 2] = 0  # the normal axis starts at the floor
    sigma = torch.maximum(sigma, floor)
    return sigma.log(), matrix_to_quat(rot.float()), local_edge


