"""Adaptive density control of a rig's free Gaussians, apart from the optimisation loop.

``DensifyStrategy`` follows the shape of gsplat's ``DefaultStrategy`` (3DGS, Kerbl et al. 2023):
the loop calls ``step_post_backward`` after every backward pass; the strategy accumulates each free
point's view-space gradient and, on its schedule, prunes and densifies. Unlike 3DGS it works under
a fixed budget of free points (the paper's "predetermined" count): pruning frees slots that
cloning (small points) and splitting (large points) refill where the image needs detail. Bound
Gaussians (one per template vertex) are never touched.

Pruned, besides transparent points: runaway blobs, **floaters outside the visual hull** (free
points whose centre lands on background pixels in a training view, or that fewer than
``MIN_FRAMING_VIEWS`` views frame: they cannot be part of the subject, or nothing fixes their
depth; against a plain background they cost nothing in the training views, which is why the
photometric loss alone leaves them, and they show up as blobs in novel views) and **hidden**
points, which no training view shows at all (behind the head of a frontal arc).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from emodifftalk.render.cameras import project_points
from emodifftalk.render.projection import quat_to_rotmat
from emodifftalk.rig.params import RigParams, resize_free

log = logging.getLogger(__name__)

PRUNE_OPACITY = 0.01  # free points below this are recycled  # choice
SPLIT_SCALE = 1.5  # × mean edge: larger points are split, smaller are cloned  # choice
RUNAWAY_SCALE = 20.0  # × mean edge: larger points are pruned  # choice
SPLIT_SHRINK = 1.6  # both halves of a split shrink by this (3DGS)
MIN_FRAMING_VIEWS = 3  # free points inside fewer training frames than this are floaters  # choice
MIN_BLEND_WEIGHT = 0.5  # summed blend weight (pixels) over the training views below which a free point is hidden  # choice


@dataclass
class Silhouettes:
    """Foreground masks of the training views and their cameras (for the visual-hull prune)."""

    masks: torch.Tensor  # (C, H, W) bool
    viewmats: torch.Tensor  # (C, 4, 4)
    Ks: torch.Tensor  # (C, 3, 3)

    def outside(self, points: torch.Tensor, min_views: int = 1) -> torch.Tensor:
        """(P,) bool: points that project onto background in at least one view that frames them,
        or that fewer than ``min_views`` views frame at all (their depth is unconstrained)."""
        uv, z = project_points(points, self.viewmats, self.Ks)
        _, h, w = self.masks.shape
        px, py = uv[..., 0].floor().long(), uv[..., 1].floor().long()
        framed = (px >= 0) & (px < w) & (py >= 0) & (py < h) & (z > 0)  # (C, P)
        cam = torch.arange(len(self.masks), device=points.device).unsqueeze(1).expand_as(px)
        fg = self.masks[cam, py.clamp(0, h - 1), px.clamp(0, w - 1)]
        return (framed & ~fg).any(0) | (framed.sum(0) < min(min_views, len(self.masks)))


@dataclass
class DensifyStrategy:
    """Prune/clone/split of the free Gaussians every ``every`` steps until ``stop_step``.

    ``edge`` is the template's mean edge length (the length unit of the size thresholds);
    ``grad_threshold`` the mean NDC-space gradient above which a point is densified.
    """

    budget: int
    edge: float
    every: int
    stop_step: int
    grad_threshold: float
    silhouettes: Silhouettes | None = None
    # (N,) summed blend weight of every Gaussian over the training views (``RigFit.blend_weights``)
    blend_weights: Callable[[], torch.Tensor] | None = None
    totals: dict[str, int] = field(default_factory=lambda: {"pruned": 0, "floaters": 0, "hidden": 0, "cloned": 0,
                                                            "split": 0})
    _grad_sum: torch.Tensor | None = None
    _grad_count: torch.Tensor | None = None

    @classmethod
    def from_config(cls, rig_cfg, edge: float, silhouettes: Silhouettes | None = None,
                    blend_weights: Callable[[], torch.Tensor] | None = None) -> DensifyStrategy:
        """``rig.prune_outside_hull`` off: no floater or hidden-point prune."""
        hull = rig_cfg.prune_outside_hull
        return cls(budget=rig_cfg.n_free_points, edge=edge, every=rig_cfg.densify_every,
                   stop_step=int(rig_cfg.densify_until * rig_cfg.steps),
                   grad_threshold=rig_cfg.densify_grad_threshold,
                   silhouettes=silhouettes if hull else None, blend_weights=blend_weights if hull else None)

    def hidden(self, params: RigParams) -> torch.Tensor:
        """(n_free,) bool: free points no training view shows (behind the head from every camera:
        nothing constrains them, and novel views from behind see them as streaks)."""
        if self.blend_weights is None:
            return torch.zeros(params.n_free, dtype=torch.bool, device=params.free_means.device)
        return self.blend_weights()[params.n_bound:] < MIN_BLEND_WEIGHT

    @torch.no_grad()
    def prune_hidden(self, params: RigParams, opt: torch.optim.Adam) -> int:
        """Drop the hidden free points (the fit's last clean-up); returns how many."""
        hidden = self.hidden(params)
        if bool(hidden.any()):
            empty = {n: getattr(params, n).data[:0] for n in ("free_means", "free_log_scales", "free_quats",
                                                              "free_opacity")}
            resize_free(params, opt, torch.nonzero(~hidden).squeeze(1), empty)
        self.totals["hidden"] += int(hidden.sum())
        return int(hidden.sum())

    def _reset(self, n: int, device: torch.device) -> None:
        self._grad_sum = torch.zeros(n, device=device)
        self._grad_count = torch.zeros(n, device=device)

    @torch.no_grad()
    def step_post_backward(self, params: RigParams, opt: torch.optim.Adam, means2d_grad: torch.Tensor | None,
                           radii: torch.Tensor, step: int, gen: torch.Generator) -> dict[str, int] | None:
        """Accumulate the free points' view-space gradients of this step; densify when due.

        ``means2d_grad`` (C, N, 2) gradient of the loss w.r.t. the projected centres (in NDC
        units after scaling by half the image size), ``radii`` (C, N, ...) > 0 where a point is
        on screen. Returns the step's densify stats, or None when it did not densify.
        """
        nb, n_free = params.n_bound, params.n_free
        if n_free == 0:
            return None
        if self._grad_sum is None or self._grad_sum.shape[0] != n_free:
            self._reset(n_free, params.free_means.device)
        if means2d_grad is not None:
            g = means2d_grad[:, nb:].norm(dim=-1)  # (C, P)
            seen = radii[:, nb:].reshape(radii.shape[0], n_free, -1).amax(-1) > 0
            self._grad_sum += (g * seen).sum(0)
            self._grad_count += seen.sum(0)
        if not (0 < step < self.stop_step and self.every > 0 and step % self.every == 0):
            return None
        stats = self.densify_and_prune(params, opt, self._grad_sum / self._grad_count.clamp_min(1), gen)
        for k, v in stats.items():
            self.totals[k] += v
        self._reset(params.n_free, params.free_means.device)
        return stats

    @torch.no_grad()
    def densify_and_prune(self, params: RigParams, opt: torch.optim.Adam, avg_grad: torch.Tensor,
                          gen: torch.Generator) -> dict[str, int]:
        """Recycle transparent, runaway and out-of-hull free points, then clone/split the
        highest-gradient ones into the free slots (never beyond the budget)."""
        opac = torch.sigmoid(params.free_opacity)
        runaway = params.free_log_scales.exp().amax(-1) > RUNAWAY_SCALE * self.edge
        floater = (self.silhouettes.outside(params.free_means, MIN_FRAMING_VIEWS) if self.silhouettes is not None
                   else torch.zeros_like(runaway))
        hidden = self.hidden(params) & ~floater
        drop = (opac < PRUNE_OPACITY) | runaway | floater | hidden
        keep = torch.nonzero(~drop).squeeze(1)
        log.debug("densify: %d transparent, %d floaters, %d above the gradient threshold",
                  int((opac < PRUNE_OPACITY).sum()), int(floater.sum()), int((avg_grad > self.grad_threshold).sum()))
        avg_grad = avg_grad[keep]
        slots = self.budget - int(keep.shape[0])
        order = torch.argsort(avg_grad, descending=True)
        cand = order[avg_grad[order] > self.grad_threshold][:max(slots, 0)]
        src = keep[cand]  # indices into the old free set
        means = params.free_means.data[src]
        log_scales = params.free_log_scales.data[src]
        quats = params.free_quats.data[src]
        large = log_scales.exp().amax(-1) > SPLIT_SCALE * self.edge
        # split: the copy is displaced by a sample of the Gaussian and both shrink (3DGS);
        # clone: an identical copy that the optimiser moves along the gradient
        offset = torch.randn(means.shape, generator=gen).to(means.device) * log_scales.exp()  # CPU generator
        offset = (quat_to_rotmat(quats) @ offset.unsqueeze(-1)).squeeze(-1)
        shrink = math.log(SPLIT_SHRINK)
        new_means = torch.where(large.unsqueeze(-1), means + offset, means)
        new_log_scales = torch.where(large.unsqueeze(-1), log_scales - shrink, log_scales)
        params.free_log_scales.data[src[large]] -= shrink  # the originals of split points shrink as well
        resize_free(params, opt, keep, {"free_means": new_means, "free_log_scales": new_log_scales,
                                        "free_quats": quats, "free_opacity": params.free_opacity.data[src]})
        return {"pruned": int(drop.sum()), "floaters": int((floater & ~(opac < PRUNE_OPACITY)).sum()),
                "hidden": int((hidden & ~(opac < PRUNE_OPACITY)).sum()),
                "cloned": int((~large).sum()), "split": int(large.sum())}
