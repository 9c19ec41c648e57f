"""Which parts of the template surface the training cameras saw, and colours for the rest.

A capture arc in front of the face never sees the back of the head. Its bound Gaussians still get
colours from the triplane, whose axis-aligned planes are shared by the front and the back of the
head (the xy plane holds the face for every z): unseen, the back of the head shows a "ghost" of the
face. A vertex counts as unseen when no training camera sees it facing and unoccluded
(``seen_vertices``) and its surfel adds little to the training images (``blend_weights``): a
large surfel whose centre hides behind the head may still shape a silhouette there. ``fill_unseen`` gives unseen vertices the harmonic extension of the seen colours over the
mesh instead (each the mean of its one-ring, the seen ones fixed), so the back continues the hair
and skin seen at the edges of the arc.
"""

from __future__ import annotations

import torch

from emodifftalk.rig.init_points import project

MIN_FACING_COS = 0.2  # a vertex seen at more than ~78° from its normal does not count as seen  # choice
MIN_CONTRIBUTION = 2.0  # summed blend weight (pixels) that makes an off-view surfel count as seen  # choice
FILL_ITERATIONS = 400  # Jacobi sweeps of the harmonic fill (the head is ~40 one-rings across)  # choice


def seen_vertices(verts: torch.Tensor, normals: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                  mesh_depth: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(V,) bool: vertices some camera sees in frame, facing it and unoccluded.

    ``mesh_depth`` (C, H, W) depth of the mesh per camera (inf where it is not),
    ``tolerance`` the depth slack of the occlusion test (metres).
    """
    uv, z = project(verts, viewmats, Ks)  # (C, V, 2), (C, V)
    _, h, w = mesh_depth.shape
    px, py = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    framed = (px >= 0) & (px < w) & (py >= 0) & (py < h) & (z > 0)
    cam = torch.arange(len(viewmats)).unsqueeze(1).expand_as(px)
    unoccluded = z <= mesh_depth[cam, py.clamp(0, h - 1), px.clamp(0, w - 1)] + tolerance
    centres = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])  # camera centres (C, 3)
    to_cam = torch.nn.functional.normalize(centres[:, None] - verts[None], dim=-1)
    facing = (to_cam * normals[None]).sum(-1) > MIN_FACING_COS
    return (framed & unoccluded & facing).any(0)


def blend_weights(render, n_points: int, device) -> torch.Tensor:
    """(N,) each Gaussian's blend weight summed over every pixel of ``render(colors)`` (a function
    of (N, 3) colours returning (C, H, W, 3) images): the gradient of the summed red channel with
    respect to the colours, one backward pass instead of one render per Gaussian."""
    colors = torch.zeros(n_points, 3, device=device, requires_grad=True)
    with torch.enable_grad():
        render(colors)[..., 0].sum().backward()
    return colors.grad[:, 0].detach()


def fill_unseen(values: torch.Tensor, seen: torch.Tensor, nbr_idx: torch.Tensor, nbr_w: torch.Tensor,
                iterations: int = FILL_ITERATIONS) -> torch.Tensor:
    """``values`` (V, D) with the rows of unseen vertices replaced by the harmonic extension of the
    seen rows over the one-ring graph (``nbr_idx``/``nbr_w`` (V, K), weights summing to 1)."""
    if bool(seen.all()) or not bool(seen.any()):
        return values
    out = values.clone()
    out[~seen] = values[seen].mean(0)
    w = nbr_w.unsqueeze(-1).to(values)
    for _ in range(iterations):
        out = torch.where(seen.unsqueeze(-1), values, (out[nbr_idx] * w).sum(1))
    return out


def surface_seen_fraction(verts: torch.Tensor, normals: torch.Tensor, edge: float, seen_by: tuple, views: tuple,
                          width: int, height: int) -> torch.Tensor:
    """(C,) for each camera of ``views`` = (viewmats, Ks): the share of the mesh surface it sees
    that some camera of ``seen_by`` = (viewmats, Ks) saw too. 1 = every visible vertex was captured
    (the view interpolates); the back of the head seen from a frontal arc gives ~0."""
    from emodifftalk.rig.init_points import mesh_depth

    tol = 2 * edge
    captured = seen_vertices(verts, normals, *seen_by, mesh_depth(verts, edge, *seen_by, width, height), tol)
    out = []
    for vm, K in zip(*views):
        visible = seen_vertices(verts, normals, vm[None], K[None], mesh_depth(verts, edge, vm[None], K[None],
                                                                              width, height), tol)
        out.append((visible & captured).sum() / visible.sum().clamp_min(1))
    return torch.stack(out).float()
