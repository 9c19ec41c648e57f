"""Differentiable 3D Gaussian rasterization: gsplat on CUDA, a pure-torch tile renderer elsewhere.

Both backends follow gsplat's conventions (gsplat 1.5, classic mode) and return the same
:class:`RenderOutput`:

* ``means (N, 3)`` world, ``quats (N, 4)`` wxyz (normalised inside), ``scales (N, 3)`` linear,
  ``opacities (N,)`` in [0, 1], ``colors (N, 3)`` or per camera ``(C, N, 3)``;
* ``viewmats (C, 4, 4)`` world-to-camera with OpenCV axes (x right, y down, z forward),
  ``Ks (C, 3, 3)`` in pixels, pixel centres at ``(x + 0.5, y + 0.5)``;
* ``background (3,)`` or ``(C, 3)`` is composited as ``rgb + (1 - alpha) * background``.

``radii`` is ``(C, N)``: the larger half-side of gsplat's opacity-aware screen box, 0 = culled
(gsplat 1.5 itself reports both half-sides, ``(C, N, 2)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from emodifftalk.render._tiles import CompositeTiles, build_plan
from emodifftalk.render.projection import project_gaussians
from emodifftalk.utils import log

BACKENDS = ("auto", "torch", "gsplat")
GSPLAT_TILE_SIZE = 16
TORCH_TILE_SIZE = 4  # measured fastest on CPU (vs 8 and 16) for head-sized Gaussians at 256-512 px
# backend="auto": whether gsplat has rendered here, or why it is not used any more
_GSPLAT_STATE: dict = {"worked": False, "broken": None}


@dataclass
class RenderOutput:
    rgb: Tensor  # (C, H, W, 3) composited over the background
    alpha: Tensor  # (C, H, W, 1) accumulated opacity
    depth: Tensor  # (C, H, W, 1) expected depth: sum(w z) / alpha where alpha > 0, else 0
    radii: Tensor  # (C, N) int32, 0 = culled
    means2d: Tensor  # (C, N, 2) projected centres; call .retain_grad() for densification stats


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    backend: str = "auto",
    background: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int | None = None,
) -> RenderOutput:
    """Render N Gaussians into C cameras; differentiable w.r.t. means, quats, scales,
    opacities and colors (and viewmats on the torch backend).

    backend: "torch" (pure torch, any device), "gsplat" (CUDA only) or "auto" (gsplat when
        every input is on CUDA and gsplat works, else torch).
    tile_size: square tile side in pixels; None = the backend's best (16 for gsplat, 4 for the
        torch renderer, whose cost grows with the tile area each Gaussian is evaluated on).
        The image does not depend on it.
    """
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, tile_size)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    # cameras often arrive as float64 (numpy): everything follows the means' dtype
    tensors = (means, *(t.to(means.dtype) for t in (quats, scales, opacities, colors, viewmats, Ks)))
    if backend == "auto":
        fn = _gsplat_rasterization() if _all_cuda(tensors) else None
        if fn is not None:
            try:
                out = _render_gsplat(fn, *tensors, width, height, background, near_plane, far_plane, eps2d,
                                     tile_size or GSPLAT_TILE_SIZE)
            except (RuntimeError, ImportError, OSError) as err:
                # fall back only when gsplat never worked here (e.g. its CUDA extension fails to
                # build); later failures, and running out of memory, are real errors
                if _GSPLAT_STATE["worked"] or isinstance(err, torch.cuda.OutOfMemoryError):
                    raise
                _disable_gsplat(err)
            else:
                _GSPLAT_STATE["worked"] = True
                return out
        backend = "torch"
    if backend == "gsplat":
        if not _all_cuda(tensors):
            devices = sorted({str(t.device) for t in tensors})
            raise RuntimeError(f"backend='gsplat' needs every input on a CUDA device, got {devices}; "
                               "use backend='torch' (or 'auto') on CPU")
        fn = _gsplat_rasterization()
        if fn is None:
            raise RuntimeError("backend='gsplat' but gsplat could not be imported; install gsplat "
                               "or use backend='torch'")
        return _render_gsplat(fn, *tensors, width, height, background, near_plane, far_plane, eps2d,
                              tile_size or GSPLAT_TILE_SIZE)
    return _render_torch(*tensors, width, height, background, near_plane, far_plane, eps2d,
                         tile_size or TORCH_TILE_SIZE)


def _render_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                  background, near_plane, far_plane, eps2d, tile_size) -> RenderOutput:
    C, N = viewmats.shape[0], means.shape[0]
    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height,
                             near_plane=near_plane, far_plane=far_plane, eps2d=eps2d)
    plan = build_plan(proj.means2d.detach(), proj.conics.detach(), opacities.detach(), proj.radii_xy,
                      proj.depths.detach(), width, height, tile_size)
    colors_c = colors.expand(C, N, colors.shape[-1]) if colors.dim() == 2 else colors
    feats = torch.cat([colors_c, torch.ones_like(proj.depths)[..., None], proj.depths[..., None]], dim=-1)
    out = CompositeTiles.apply(
        proj.means2d.reshape(C * N, 2), proj.conics.reshape(C * N, 3),
        opacities[None].expand(C, N).reshape(C * N), feats.reshape(C * N, feats.shape[-1]), plan)
    D = colors.shape[-1]
    rgb, alpha, depth_sum = out[..., :D], out[..., D:D + 1], out[..., D + 1:]
    depth = depth_sum / alpha.clamp(min=1e-10)  # gsplat's "ED" (expected depth)
    rgb = _composite_background(rgb, alpha, background)
    radii = proj.radii_xy.amax(dim=-1)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, radii=radii, means2d=proj.means2d)


def _render_gsplat(fn, means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                   background, near_plane, far_plane, eps2d, tile_size) -> RenderOutput:
    render, alpha, meta = fn(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, packed=False, tile_size=tile_size,
        render_mode="RGB+ED", rasterize_mode="classic")
    D = colors.shape[-1]
    rgb = _composite_background(render[..., :D], alpha, background)
    radii = meta["radii"]
    if radii.dim() == 3:  # gsplat >= 1.5 reports (C, N, 2) half-sides
        radii = radii.amax(dim=-1)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=render[..., D:D + 1], radii=radii.to(torch.int32),
                        means2d=meta["means2d"])


def _composite_background(rgb: Tensor, alpha: Tensor, background: Tensor | None) -> Tensor:
    if background is None:
        return rgb
    bg = background.to(dtype=rgb.dtype, device=rgb.device)
    bg = bg[None].expand(rgb.shape[0], -1) if bg.dim() == 1 else bg  # (C, 3)
    return rgb + (1.0 - alpha) * bg[:, None, None, :]


def _all_cuda(tensors) -> bool:
    return all(t.is_cuda for t in tensors)


def _gsplat_rasterization():
    """gsplat.rasterization, or None when gsplat is not importable (or failed before)."""
    if _GSPLAT_STATE["broken"] is not None:
        return None
    try:
        from gsplat import rasterization
    except (ImportError, OSError, RuntimeError):  # not installed, or a broken CUDA extension
        return None
    return rasterization


def _disable_gsplat(err: BaseException) -> None:
    _GSPLAT_STATE["broken"] = f"{type(err).__name__}: {err}"
    log.warning("gsplat failed (%s); backend='auto' uses the pure-torch renderer from now on",
                _GSPLAT_STATE["broken"])


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, tile_size):
    N = means.shape[0]
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be (N, 3), got {tuple(means.shape)}")
    if quats.shape != (N, 4):
        raise ValueError(f"quats must be (N, 4) = ({N}, 4) wxyz, got {tuple(quats.shape)}")
    if scales.shape != (N, 3):
        raise ValueError(f"scales must be (N, 3) = ({N}, 3) linear scales, got {tuple(scales.shape)}")
    if opacities.shape != (N,):
        raise ValueError(f"opacities must be (N,) = ({N},), got {tuple(opacities.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be (C, 4, 4), got {tuple(viewmats.shape)}")
    C = viewmats.shape[0]
    if Ks.shape != (C, 3, 3):
        raise ValueError(f"Ks must be (C, 3, 3) = ({C}, 3, 3), got {tuple(Ks.shape)}")
    if not ((colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N))):
        raise ValueError(f"colors must be (N, D) or (C, N, D) with N={N}, C={C}, got {tuple(colors.shape)}")
    if background is not None and background.shape not in ((colors.shape[-1],), (C, colors.shape[-1])):
        raise ValueError(f"background must be ({colors.shape[-1]},) or ({C}, {colors.shape[-1]}), "
                         f"got {tuple(background.shape)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if tile_size is not None and int(tile_size) <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not means.is_floating_point():
        raise ValueError(f"means must be a floating point tensor, got {means.dtype}")
