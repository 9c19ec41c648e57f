"""Tile-based front-to-back alpha compositing of screen-space Gaussians (pure torch, CPU or GPU).

How it works, and why it is shaped this way:

* Binning (no grad): every visible Gaussian is listed in each ``tile_size``² tile where its
  alpha >= 1/255 ellipse reaches a pixel centre (exact, so tiles never change the image);
  lists are in depth order (Gaussians are depth-sorted first, then a stable sort by tile).
  Tiles are ranked by list length and packed into *groups* of tiles with similar lengths,
  padded with a dummy Gaussian that never contributes, so a group is one dense
  ``(tiles, ts, ts, K)`` block and padding waste stays small. Small tiles (4x4 by default)
  waste the fewest evaluations outside the ellipses.
* Compositing: per block, alpha is evaluated for every (pixel, Gaussian) pair with a few
  broadcast ops (``dx`` depends only on the pixel column and ``dy`` on the row), the
  transmittance is a ``cumprod`` along the depth axis, and the weighted sum of features is a
  ``bmm``. Memory is bounded by ``chunk_elements`` pairs per block: a tile whose list alone
  is longer is cut into depth chunks that carry the transmittance from one to the next.
* Backward is written by hand (as gsplat's CUDA backward is): nothing of size
  (pixels x Gaussians) is kept between forward and backward, it is recomputed chunk by chunk,
  and the gradient w.r.t. alpha uses suffix sums, ``dL/da_i = T_i (g.f_i) - S_i / (1 - a_i)``
  with ``S_i = sum_{k > i} w_k (g.f_k)``.

Compositing rules are gsplat's "classic" mode: ``alpha = min(0.999, o * exp(-sigma))``, alphas
below 1/255 are skipped, and a pixel stops before the Gaussian that would bring its
transmittance to 1e-4 or below.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from emodifftalk.render.projection import ALPHA_THRESHOLD

MAX_ALPHA = 0.999
T_EPS = 1e-4  # a pixel is finished once its transmittance would drop to this or below
# Upper bound on (pixel, Gaussian) pairs evaluated at once; ~5 float temporaries of this size
# are alive in the backward pass (10 MB at 2**19). Small enough to stay cache friendly.
CHUNK_ELEMENTS = 1 << 19


@dataclass
class _Group:
    tiles: Tensor  # (Tg,) flat tile ids: camera * tiles_per_image + ty * ntx + tx
    idx: Tensor  # (Tg, K) flat Gaussian ids (camera * N + n), depth-sorted, padded with dummy
    origin_x: Tensor  # (Tg,) pixel x of the tile's left edge
    origin_y: Tensor  # (Tg,) pixel y of the tile's top edge
    k_chunks: list  # [(k0, k1)] depth chunks, each with Tg * ts * ts * (k1 - k0) <= budget


@dataclass
class TilePlan:
    groups: list
    num_cameras: int
    width: int
    height: int
    tile_size: int
    tiles_x: int
    tiles_y: int
    num_flat: int  # C * N; the dummy Gaussian has id num_flat


@torch.no_grad()
def build_plan(
    means2d: Tensor,  # (C, N, 2)
    conics: Tensor,  # (C, N, 3)
    opacities: Tensor,  # (N,) or (C, N)
    radii_xy: Tensor,  # (C, N, 2) int, 0 = culled
    depths: Tensor,  # (C, N)
    width: int,
    height: int,
    tile_size: int,
    chunk_elements: int | None = None,
) -> TilePlan:
    """Bin visible Gaussians into depth-sorted per-tile lists and pack tiles into groups."""
    budget = chunk_elements or CHUNK_ELEMENTS
    C, N = depths.shape
    device, dtype = means2d.device, means2d.dtype
    ts = int(tile_size)
    ntx, nty = math.ceil(width / ts), math.ceil(height / ts)
    tiles_per_image = ntx * nty
    plan = TilePlan(groups=[], num_cameras=C, width=width, height=height, tile_size=ts,
                    tiles_x=ntx, tiles_y=nty, num_flat=C * N)

    flat_ids = (radii_xy > 0).all(dim=-1).reshape(-1).nonzero().squeeze(1)
    if flat_ids.numel() == 0:
        return plan
    # depth order first, so that a stable sort by tile keeps every tile's list front-to-back
    flat_ids = flat_ids.index_select(0, torch.sort(depths.reshape(-1).index_select(0, flat_ids), stable=True).indices)
    owner, tile_key = _tile_pairs(
        means2d.reshape(-1, 2).index_select(0, flat_ids), conics.reshape(-1, 3).index_select(0, flat_ids),
        _opacity_extent_sq(opacities, flat_ids, N), torch.div(flat_ids, N, rounding_mode="floor"),
        ts, ntx, nty)
    if owner.numel() == 0:
        return plan

    counts = torch.bincount(tile_key, minlength=C * tiles_per_image)
    order = torch.argsort(counts, descending=True, stable=True)  # longest lists first
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=device)
    tile_rank, perm = torch.sort(rank.index_select(0, tile_key).int(), stable=True)
    tile_rank = tile_rank.long()
    gids = flat_ids.index_select(0, owner.index_select(0, perm))
    counts_ranked = counts.index_select(0, order)
    starts = torch.cumsum(counts_ranked, 0) - counts_ranked
    pos_in_tile = torch.arange(gids.numel(), device=device) - starts.index_select(0, tile_rank)

    counts_list = counts_ranked.tolist()
    starts_list = starts.tolist()
    n_nonempty = sum(1 for c in counts_list if c > 0)
    pix = ts * ts
    r0 = 0
    while r0 < n_nonempty:
        k_max = counts_list[r0]
        n_group = max(1, min(n_nonempty - r0, budget // (pix * k_max)))
        r1 = r0 + n_group
        lo = starts_list[r0]
        hi = starts_list[r1 - 1] + counts_list[r1 - 1]
        idx = torch.full((n_group, k_max), C * N, dtype=torch.long, device=device)
        idx[tile_rank[lo:hi] - r0, pos_in_tile[lo:hi]] = gids[lo:hi]
        tiles = order[r0:r1]
        local_tile = tiles % tiles_per_image
        n_chunks = math.ceil(n_group * pix * k_max / budget)
        step = math.ceil(k_max / n_chunks)
        plan.groups.append(_Group(
            tiles=tiles, idx=idx,
            origin_x=((local_tile % ntx) * ts).to(dtype),
            origin_y=(torch.div(local_tile, ntx, rounding_mode="floor") * ts).to(dtype),
            k_chunks=[(k, min(k + step, k_max)) for k in range(0, k_max, step)],
        ))
        r0 = r1
    return plan


def _opacity_extent_sq(opacities: Tensor, flat_ids: Tensor, N: int) -> Tensor:
    """d^2 = (x - m)^T conic (x - m) at which opacity * exp(-d^2 / 2) falls to 1/255."""
    op = opacities.reshape(-1)
    op = op.index_select(0, flat_ids if op.numel() != N else flat_ids % N)
    return 2.0 * torch.log(op.clamp(min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)


def _tile_pairs(m2d, conics, ext_sq, cam, ts: int, ntx: int, nty: int) -> tuple[Tensor, Tensor]:
    """(owner, tile_key) for every (Gaussian, tile) pair where the ellipse of alpha >= 1/255
    reaches one of the tile's pixel centres, owners in input order.

    Exact per tile row: the ellipse ``d^T conic d <= E`` restricted to the row's band of pixel
    centre y values spans an x interval (its rightmost point is a concave function of y, so it
    is found by clamping the unconstrained maximiser into the band; likewise the leftmost), and
    that interval gives the row's tile columns directly. Cheaper than testing every tile of the
    Gaussian's bounding box, and about a quarter fewer pairs than the box."""
    device, dtype = m2d.device, m2d.dtype
    e = ext_sq * (1 + 1e-3) + 1e-3  # a little margin: an extra pair never changes the image
    mx, my = m2d[:, 0], m2d[:, 1]
    a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
    det = (a * c - b * b).clamp(min=1e-30)
    half_y = torch.sqrt(e * a / det)
    # tile row ty holds centres y in [ty ts + 0.5, ty ts + ts - 0.5]
    ty_lo = torch.ceil((my - half_y + 0.5) / ts - 1).clamp_(min=0)
    ty_hi = torch.floor((my + half_y - 0.5) / ts).clamp_(max=nty - 1)
    n_rows = (ty_hi - ty_lo + 1).clamp_(min=0).long()

    row_owner = _segment_ids(n_rows)
    first = torch.cumsum(n_rows, 0) - n_rows
    row_ty = (ty_lo.index_select(0, row_owner)
              + (torch.arange(len(row_owner), device=device) - first.index_select(0, row_owner)).to(dtype))
    g = torch.stack([mx, my, a, b, c, e, det, half_y], dim=1).index_select(0, row_owner)
    rmx, rmy, ra, rb, rc, re, rdet, rhy = g.unbind(1)
    v0 = torch.maximum(row_ty * ts + 0.5 - rmy, -rhy)  # the band relative to the mean, inside the ellipse
    v1 = torch.minimum(row_ty * ts + (ts - 0.5) - rmy, rhy)
    v_right = -rb / rc * torch.sqrt(re * rc / rdet)  # y of the ellipse's rightmost point
    slope = -rb / ra  # x of the chord centre per unit y

    def half_width(v):
        return torch.sqrt((re - rdet / ra * v * v).clamp(min=0) / ra)

    vr = torch.minimum(torch.maximum(v_right, v0), v1)
    vl = torch.minimum(torch.maximum(-v_right, v0), v1)
    x_right = rmx + slope * vr + half_width(vr) + 1e-3
    x_left = rmx + slope * vl - half_width(vl) - 1e-3
    tx_lo = torch.ceil((x_left + 0.5) / ts - 1).clamp_(min=0)
    tx_hi = torch.floor((x_right - 0.5) / ts).clamp_(max=ntx - 1)
    n_cols = (tx_hi - tx_lo + 1).clamp_(min=0).long()
    # tile key of a row's first pair, minus that pair's position in the output: adding the
    # output position then gives consecutive tiles along the row
    first = torch.cumsum(n_cols, 0) - n_cols
    row_base = cam.index_select(0, row_owner) * (ntx * nty) + row_ty.long() * ntx + tx_lo.long() - first
    pair_row = _segment_ids(n_cols)
    tile_key = row_base.index_select(0, pair_row)
    tile_key += torch.arange(len(tile_key), device=device)
    return row_owner.index_select(0, pair_row), tile_key


def _segment_ids(counts: Tensor) -> Tensor:
    """``repeat_interleave(arange(len(counts)), counts)``, built from segment-start marks and a
    cumulative sum, which is faster on CPU."""
    total = int(counts.sum())
    nonempty = (counts > 0).nonzero().squeeze(1)
    if total == 0:
        return nonempty
    marks = torch.zeros(total, dtype=torch.int32, device=counts.device)
    starts = (torch.cumsum(counts, 0) - counts).index_select(0, nonempty[1:])
    marks.index_fill_(0, starts, 1)
    return nonempty.index_select(0, marks.cumsum(0))


# alpha = exp(log_op - sigma) is below 1/255 long before this exponent; clamping keeps exp()
# away from the (very slow) denormal range
_MIN_EXPONENT = -20.0


class _Workspace:
    """Flat scratch buffers reused by every chunk: fresh large tensors per op cost page faults."""

    def __init__(self, plan: TilePlan, like: Tensor, names: tuple):
        pix = plan.tile_size ** 2
        sizes = [g.idx.shape[0] * pix * (k1 - k0) for g in plan.groups for k0, k1 in g.k_chunks]
        n = max(sizes, default=0)
        self.buffers = {name: like.new_empty(n) for name in names}

    def get(self, name: str, shape: tuple) -> Tensor:
        return self.buffers[name][: math.prod(shape)].view(shape)


class _GroupGeometry:
    """One group's gathered Gaussian parameters and its separable pixel offsets."""

    def __init__(self, group: _Group, ts: int, packed: Tensor):
        n_tiles, k = group.idx.shape
        # (6 + D2, Tg, K): channels first, so every parameter is a contiguous (Tg, K) block
        g = packed.index_select(1, group.idx.reshape(-1)).view(packed.shape[0], n_tiles, k)
        mx, my, neg_half_a, neg_b, neg_half_c, log_op = g[:6]
        self.neg_half_a, self.neg_b, self.neg_half_c = neg_half_a, neg_b, neg_half_c
        self.feat_t = g[6:].transpose(0, 1)  # (Tg, D2, K)
        offs = torch.arange(ts, dtype=packed.dtype, device=packed.device) + 0.5
        # dx depends on (tile, column j, Gaussian), dy on (tile, row i, Gaussian): (Tg, ts, K)
        dx = mx[:, None, :] - (group.origin_x[:, None] + offs)[:, :, None]
        self.dy = my[:, None, :] - (group.origin_y[:, None] + offs)[:, :, None]
        # exponent log_op - sigma with sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, split by axis
        self.ex = torch.addcmul(log_op[:, None, :], neg_half_a[:, None, :], dx * dx)[:, None]  # (Tg, 1, ts, K)
        self.ey = (neg_half_c[:, None, :] * (self.dy * self.dy))[:, :, None]  # (Tg, ts, 1, K)
        self.nbdx = (neg_b[:, None, :] * dx)[:, None]  # (Tg, 1, ts, K)
        # means relative to the tile centre, for the moment form of the backward pass
        self.mx_rel = mx - (group.origin_x + ts / 2)[:, None]  # (Tg, K)
        self.my_rel = my - (group.origin_y + ts / 2)[:, None]

    def alpha_and_transmittance(self, k0: int, k1: int, t_in: Tensor, ws: _Workspace):
        """alpha (Tg, ts, ts, k), 1 - alpha (same shape) and the transmittance after each
        Gaussian (same shape), set to 0 once a pixel is finished (T <= T_EPS).

        With the cut-off folded into T this way, ``w = alpha T_before = alpha / (1 - alpha) T_after``
        and ``dL/dalpha = (T_after g.f - S) / (1 - alpha)`` both vanish for skipped pairs, so no
        masks are needed."""
        n_tiles, ts = self.dy.shape[:2]
        shape = (n_tiles, ts, ts, k1 - k0)
        alpha = torch.add(self.ex[..., k0:k1], self.ey[..., k0:k1], out=ws.get("alpha", shape))
        alpha.addcmul_(self.nbdx[..., k0:k1], self.dy[:, :, None, k0:k1])
        alpha.clamp_(min=_MIN_EXPONENT).exp_().clamp_(max=MAX_ALPHA)
        F.threshold(alpha, _below(ALPHA_THRESHOLD, alpha.dtype), 0.0, inplace=True)  # skip alpha < 1/255
        one_minus = torch.sub(torch.ones((), dtype=alpha.dtype, device=alpha.device), alpha,
                              out=ws.get("one_minus", shape))
        trans = torch.cumprod(one_minus, -1, out=ws.get("trans", shape))
        if t_in is not None:  # a later depth chunk: continue from the previous chunk's T
            trans.mul_(t_in[..., None])
        F.threshold(trans, T_EPS, 0.0, inplace=True)  # gsplat: stop before T <= 1e-4
        return alpha, one_minus, trans


@functools.cache
def _pixel_monomials(ts: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(6, ts*ts) rows 1, u, v, u^2, u v, v^2 of each pixel centre's offset from the tile centre
    (pixel p = i * ts + j has u = j + 0.5 - ts/2, v = i + 0.5 - ts/2)."""
    offs = torch.arange(ts, dtype=torch.float64) + 0.5 - ts / 2
    v, u = torch.meshgrid(offs, offs, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v]).to(dtype=dtype, device=device)


@functools.cache
def _below(value: float, dtype: torch.dtype) -> float:
    """Largest ``dtype`` number below ``value``: F.threshold keeps x > t, gsplat keeps x >= value."""
    v = torch.tensor(value, dtype=dtype)
    return float(torch.nextafter(v, torch.zeros_like(v)))


def _to_tiles(image: Tensor, plan: TilePlan) -> Tensor:
    """(C, H, W, D) -> (C * tiles_per_image, ts * ts, D), zero padded to whole tiles."""
    C, H, W, D = image.shape
    ts, ntx, nty = plan.tile_size, plan.tiles_x, plan.tiles_y
    image = F.pad(image, (0, 0, 0, ntx * ts - W, 0, nty * ts - H))
    return image.reshape(C, nty, ts, ntx, ts, D).permute(0, 1, 3, 2, 4, 5).reshape(C * nty * ntx, ts * ts, D)


def _from_tiles(tiles: Tensor, plan: TilePlan) -> Tensor:
    ts, ntx, nty = plan.tile_size, plan.tiles_x, plan.tiles_y
    D = tiles.shape[-1]
    image = tiles.reshape(plan.num_cameras, nty, ntx, ts, ts, D).permute(0, 1, 3, 2, 4, 5)
    return image.reshape(plan.num_cameras, nty * ts, ntx * ts, D)[:, : plan.height, : plan.width]


def _packed_params(means2d, conics, opacities, feats) -> Tensor:
    """(6 + D2, CN + 1) channels [mx, my, -a/2, -b, -c/2, log opacity, features...] (the
    exponent's coefficients, so that per-tile set-up is a few fused ops); the last column is a
    dummy Gaussian (log opacity -inf) that pads every tile list and never contributes."""
    log_op = torch.log(opacities.clamp(min=ALPHA_THRESHOLD))
    coeffs = conics * conics.new_tensor([-0.5, -1.0, -0.5])
    packed = torch.cat([means2d, coeffs, log_op[:, None], feats], dim=1)
    dummy = torch.zeros_like(packed[:1])
    dummy[:, 5] = float("-inf")
    return torch.cat([packed, dummy], dim=0).t().contiguous()


class CompositeTiles(torch.autograd.Function):
    """(means2d, conics, opacities, features) of C*N flat Gaussians -> (C, H, W, D2) sums.

    Output channel d is ``sum_i w_i features_i[d]`` with ``w_i = alpha_i T_i``; pass a column of
    ones to get the pixel alpha and the depths to get alpha-weighted depth.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, plan: TilePlan):
        # means2d (CN, 2), conics (CN, 3), opacities (CN,), feats (CN, D2)
        ts, pix = plan.tile_size, plan.tile_size ** 2
        D2 = feats.shape[1]
        packed = _packed_params(means2d, conics, opacities, feats)
        ws = _Workspace(plan, feats, ("alpha", "one_minus", "trans"))
        out_tiles = feats.new_zeros((plan.num_cameras * plan.tiles_x * plan.tiles_y, D2, pix))
        saved_t_in = []
        for group in plan.groups:
            geo = _GroupGeometry(group, ts, packed)
            n_tiles = group.idx.shape[0]
            t_in = None  # transmittance carried between depth chunks (None = 1)
            acc = feats.new_zeros((n_tiles, D2, pix))
            t_ins = []
            for k0, k1 in group.k_chunks:
                if t_in is not None and t_in.max() <= 0.0:  # every pixel of these tiles is finished
                    break
                t_ins.append(t_in)
                alpha, one_minus, t_after = geo.alpha_and_transmittance(k0, k1, t_in, ws)
                weights = alpha.mul_(t_after).div_(one_minus)
                # (Tg, D2, k) @ (Tg, k, P): this orientation is the fast one for MKL/oneDNN
                acc.baddbmm_(geo.feat_t[..., k0:k1], weights.view(n_tiles, pix, k1 - k0).transpose(1, 2))
                t_in = t_after[..., -1].clone()  # 0 for finished pixels: later chunks skip them
            saved_t_in.append(t_ins)
            out_tiles[group.tiles] = acc
        ctx.plan = plan
        ctx.saved_t_in = saved_t_in
        ctx.save_for_backward(means2d, conics, opacities, feats)
        return _from_tiles(out_tiles.transpose(1, 2), plan)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        means2d, conics, opacities, feats = ctx.saved_tensors
        plan: TilePlan = ctx.plan
        ts, pix = plan.tile_size, plan.tile_size ** 2
        D2 = feats.shape[1]
        packed = _packed_params(means2d, conics, opacities, feats)
        ws = _Workspace(plan, feats, ("alpha", "one_minus", "trans", "g_dot_f", "weights", "suffix"))
        g_tiles = _to_tiles(grad_out, plan)
        # per flat Gaussian: [d mx, d my, d conic a, b, c, d log_op, d feats...] x (CN + 1 dummy);
        # channels first because index_add_ along the last dim is much faster on CPU
        grads = feats.new_zeros((6 + D2, plan.num_flat + 1))
        for group, t_ins in zip(plan.groups, ctx.saved_t_in):
            geo = _GroupGeometry(group, ts, packed)
            n_tiles = group.idx.shape[0]
            g = g_tiles[group.tiles]  # (Tg, P, D2)
            g_t = g.transpose(1, 2)  # (Tg, D2, P)
            later = feats.new_zeros((n_tiles, ts, ts, 1))  # sum_k w_k g.f_k over later chunks
            for (k0, k1), t_in in reversed(list(zip(group.k_chunks, t_ins))):
                kc = k1 - k0
                shape = (n_tiles, ts, ts, kc)
                alpha, one_minus, t_after = geo.alpha_and_transmittance(k0, k1, t_in, ws)
                clamped = alpha >= MAX_ALPHA if alpha.max() >= MAX_ALPHA else None
                ratio = alpha.div_(one_minus)  # alpha / (1 - alpha)
                weights = torch.mul(ratio, t_after, out=ws.get("weights", shape))
                # d feats = w^T g, computed as (Tg, D2, P) @ (Tg, P, k): the fast orientation
                d_feat = torch.bmm(g_t, weights.view(n_tiles, pix, kc))
                g_dot_f = torch.bmm(g, geo.feat_t[..., k0:k1], out=ws.get("g_dot_f", (n_tiles, pix, kc))).view(shape)
                # suffix sums S_k = sum_{k' > k} w_k' g.f_k' (this chunk and the later ones)
                suffix = torch.mul(weights, g_dot_f, out=ws.get("suffix", shape)).cumsum_(-1)
                total = suffix[..., -1:].clone()
                torch.sub(total + later, suffix, out=suffix)
                later += total
                # alpha dL/dalpha = (T_after g.f - S) alpha / (1 - alpha) = -dL/dsigma
                g_sig = g_dot_f.mul_(t_after).sub_(suffix).mul_(ratio)
                if clamped is not None:  # min(0.999, .) passes no gradient
                    g_sig.masked_fill_(clamped, 0.0)
                # sum_p G (dx, dy, dx^2, dx dy, dy^2) from pixel moments of G in one matmul;
                # dx = mx_rel - u with u, v pixel offsets from the tile centre (small numbers)
                m_0, m_u, m_v, m_uu, m_uv, m_vv = torch.matmul(
                    _pixel_monomials(ts, g_sig.dtype, g_sig.device), g_sig.view(n_tiles, pix, kc)).unbind(1)
                mx, my = geo.mx_rel[:, k0:k1], geo.my_rel[:, k0:k1]
                nha, nb, nhc = geo.neg_half_a[:, k0:k1], geo.neg_b[:, k0:k1], geo.neg_half_c[:, k0:k1]
                # per pair rows, constant factors applied once per Gaussian at the end:
                # [d mx / 2, d my / 2, s_xx, s_xy, s_yy, s_0 = d log_op, d feats...]
                rows = g_sig.new_empty((6 + D2, n_tiles, kc))
                s_x = torch.mul(mx, m_0).sub_(m_u)  # sum G dx
                s_y = torch.mul(my, m_0).sub_(m_v)  # sum G dy
                torch.mul(nha, s_x, out=rows[0]).addcmul_(nb, s_y, value=0.5)  # -(a s_x + b s_y) / 2
                torch.mul(nhc, s_y, out=rows[1]).addcmul_(nb, s_x, value=0.5)
                torch.sub(s_x, m_u, out=rows[2]).mul_(mx).add_(m_uu)  # sum G dx^2
                torch.mul(mx, s_y, out=rows[3]).addcmul_(my, m_u, value=-1.0).add_(m_uv)  # sum G dx dy
                torch.sub(s_y, m_v, out=rows[4]).mul_(my).add_(m_vv)  # sum G dy^2
                rows[5] = m_0
                rows[6:] = d_feat.transpose(0, 1)
                grads.index_add_(1, group.idx[:, k0:k1].reshape(-1), rows.view(6 + D2, -1))
        # d mean = 2 rows 0-1; d conic (a, b, c) = -(s_xx / 2, s_xy, s_yy / 2)
        grads[:6] *= grads.new_tensor([2.0, 2.0, -0.5, -1.0, -0.5, 1.0])[:, None]
        grads = grads[:, :-1].t()
        d_opacity = grads[:, 5] / opacities.clamp(min=ALPHA_THRESHOLD)  # d/dlog(o) -> d/do
        return grads[:, 0:2], grads[:, 2:5], d_opacity, grads[:, 6:], None
