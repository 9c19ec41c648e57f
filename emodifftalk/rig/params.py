"""The optimisable state of a rig fit: bound attributes, the free set (which densification resizes),
the colour field, and the Adam optimiser over them (one parameter group per tensor, by name)."""

from __future__ import annotations

import math

import torch
from torch import nn

from emodifftalk.rig.init_points import BOUND_MIN_SCALE, BOUND_SCALE_INIT, surfel_init
from emodifftalk.rig.losses import inverse_sigmoid

FREE_SCALE_INIT = 0.8  # × mean template edge  # choice
BOUND_OPACITY_INIT = 0.9  # choice
FREE_OPACITY_INIT = 0.3  # choice

FREE_NAMES = ("free_means", "free_log_scales", "free_quats", "free_opacity")


class RigParams(nn.Module):
    def __init__(self, verts: torch.Tensor, free_means: torch.Tensor, edge: float, color_field: nn.Module,
                 nbr_idx: torch.Tensor | None = None, nbr_w: torch.Tensor | None = None):
        super().__init__()
        v, p = verts.shape[0], free_means.shape[0]
        self.register_buffer("bound_means", verts.clone())
        if nbr_idx is not None:
            log_s, quats, local_edge = surfel_init(verts, nbr_idx, nbr_w)
        else:
            log_s = torch.full((v, 3), math.log(BOUND_SCALE_INIT * edge))
            quats, local_edge = torch.tensor([1.0, 0, 0, 0]).repeat(v, 1), torch.full((v,), edge)
        self.register_buffer("bound_log_scale_floor", (BOUND_MIN_SCALE * local_edge).log().unsqueeze(1))
        self.bound_log_scales = nn.Parameter(log_s)
        self.bound_quats = nn.Parameter(quats)
        self.bound_opacity = nn.Parameter(torch.full((v,), float(inverse_sigmoid(BOUND_OPACITY_INIT))))
        self.free_means = nn.Parameter(free_means.clone())
        self.free_log_scales = nn.Parameter(torch.full((p, 3), math.log(FREE_SCALE_INIT * edge)))
        self.free_quats = nn.Parameter(torch.tensor([1.0, 0, 0, 0]).repeat(p, 1))
        self.free_opacity = nn.Parameter(torch.full((p,), float(inverse_sigmoid(FREE_OPACITY_INIT))))
        self.color_field = color_field

    @property
    def n_bound(self) -> int:
        return int(self.bound_means.shape[0])

    @property
    def n_free(self) -> int:
        return int(self.free_means.shape[0])

    def means(self) -> torch.Tensor:
        return torch.cat([self.bound_means, self.free_means])

    def log_scales(self) -> torch.Tensor:
        # bound Gaussians tile the mesh: none may get thinner than BOUND_MIN_SCALE × edge in any
        # axis, else grazing training views squeeze them into slivers with gaps between them
        bound = torch.maximum(self.bound_log_scales, self.bound_log_scale_floor)
        return torch.cat([bound, self.free_log_scales])

    def quats(self) -> torch.Tensor:
        return torch.cat([self.bound_quats, self.free_quats])

    def opacity_logits(self) -> torch.Tensor:
        return torch.cat([self.bound_opacity, self.free_opacity])


def make_optimizer(params: RigParams, rig_cfg) -> torch.optim.Adam:
    groups = [
        {"params": [params.free_means], "lr": rig_cfg.lr_position, "name": "free_means"},
        {"params": [params.free_log_scales], "lr": rig_cfg.lr_scale, "name": "free_log_scales"},
        {"params": [params.free_quats], "lr": rig_cfg.lr_rotation, "name": "free_quats"},
        {"params": [params.free_opacity], "lr": rig_cfg.lr_opacity, "name": "free_opacity"},
        {"params": [params.bound_log_scales], "lr": rig_cfg.lr_scale, "name": "bound_log_scales"},
        {"params": [params.bound_quats], "lr": rig_cfg.lr_rotation, "name": "bound_quats"},
        {"params": [params.bound_opacity], "lr": rig_cfg.lr_opacity, "name": "bound_opacity"},
        {"params": [params.color_field.triplane.planes], "lr": rig_cfg.lr_triplane, "name": "triplane"},
        {"params": list(params.color_field.mlp.parameters()), "lr": rig_cfg.lr_mlp, "name": "mlp"},
    ]
    return torch.optim.Adam(groups, lr=rig_cfg.lr_mlp, eps=1e-15)


def resize_free(params: RigParams, opt: torch.optim.Adam, keep: torch.Tensor,
                 new_values: dict[str, torch.Tensor]) -> None:
    """Keep rows ``keep`` of every free tensor and append ``new_values[name]`` rows (Adam state 0)."""
    for group in opt.param_groups:
        name = group["name"]
        if name not in FREE_NAMES:
            continue
        old = group["params"][0]
        new = nn.Parameter(torch.cat([old.data[keep], new_values[name].to(old.dtype)]))
        state = opt.state.pop(old, None)
        if state:
            pad = new.shape[0] - int(keep.shape[0])
            for key in ("exp_avg", "exp_avg_sq"):
                s = state[key]
                state[key] = torch.cat([s[keep], s.new_zeros(pad, *s.shape[1:])])
            opt.state[new] = state
        group["params"][0] = new
        setattr(params, name, new)
