"""Which parts of the template surface the training cameras saw, and colours for the rest.

A capture arc in front of the face never sees the back of the head. Its bound Gaussians would
still get colours from the triplane, whose axis-aligned planes are shared by the front and the back
of the head (the xy plane holds the face for every z): the back of the head shows a "ghost" of the
face, or, where a back surfel pokes out of a training silhouette, whatever colour hides it there
(the background's). Bound positions never move, so which vertices the training cameras see
(``seen_vertices``: in frame, facing, unoccluded) is known before the fit; ``UnseenFill`` ties the
unseen ones' colours to the harmonic extension of the seen colours during the fit and at baking,
so the back of the head continues the hair and skin seen at the edges of the arc and the fit has
to shape silhouettes with geometry and opacity, not with colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from emodifftalk.render.cameras import project_points

MIN_FACING_COS = 0.2  # a vertex seen at more than ~78° from its normal does not count as seen  # choice
FILL_RIDGE = 1e-6  # pull of unseen islands towards the mean seen colour  # choice


def seen_vertices(verts: torch.Tensor, normals: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                  mesh_depth: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(V,) bool: vertices some camera sees in frame, facing it and unoccluded.

    ``mesh_depth`` (C, H, W) depth of the mesh per camera (inf where it is not),
    ``tolerance`` the depth slack of the occlusion test (metres).
    """
    uv, z = project_points(verts, viewmats, Ks)  # (C, V, 2), (C, V)
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


@dataclass
class UnseenFill:
    """Colours of unseen vertices as the harmonic extension of the seen ones over the one-ring
    graph (each unseen vertex the weighted mean of its neighbours, the seen ones fixed): a linear
    map ``(U, S)`` solved once, applied at every step of the fit and at baking."""

    unseen: torch.Tensor  # (V,) bool
    operator: torch.Tensor  # (U, S): unseen values = operator @ seen values

    @classmethod
    def build(cls, seen: torch.Tensor, nbr_idx: torch.Tensor, nbr_w: torch.Tensor) -> UnseenFill:
        v = seen.shape[0]
        w = torch.zeros(v, v, dtype=torch.float64)
        w.index_put_((torch.arange(v).unsqueeze(1).expand_as(nbr_idx), nbr_idx), nbr_w.double(), accumulate=True)
        u, s = ~seen, seen
        n_s = int(s.sum())
        # (I − W_uu + εI) x_u = W_us x_s + ε·mean(x_s): ε keeps islands without a seen neighbour
        # (at the mean seen colour) from making the system singular
        a = torch.eye(int(u.sum()), dtype=torch.float64) * (1 + FILL_RIDGE) - w[u][:, u]
        b = w[u][:, s] + FILL_RIDGE / max(n_s, 1)
        return cls(u, torch.linalg.solve(a, b).float() if n_s else b.float())

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (V, D) with the unseen rows replaced (differentiable in the seen rows)."""
        if not bool(self.unseen.any()):
            return values
        unseen = self.unseen.to(values.device)
        out = values.clone()
        out[unseen] = self.operator.to(values) @ values[~unseen]
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
