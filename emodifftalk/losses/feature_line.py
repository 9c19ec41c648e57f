"""Feature-line losses (paper supp. eq. 19–22). Pure functions; weights come from config.

Normalisation choices (the paper writes plain sums): every term is a *mean* over Gaussians and
frames (and feature entries for the L1), so the λ values do not have to change with the number of
Gaussians Q or the clip length. Δμ (T, Q, 3) are per-Gaussian position changes in metres, Δα
(T, Q) per-Gaussian opacity changes.

What each term acts on (each must have a gradient, or it is decoration):

* Eq. (19) smoothness index: the paper writes Σ_{k=1}^{K-1} ‖f_k − f_{k+1}‖² with f the "feature
  combination weighted by AU intensities". We read k as the **frame index**: f_t = Σ_j E_{t,j} F_j
  (T, Q, 16) should change smoothly between consecutive frames. (Consecutive AU slices F_k, F_{k+1}
  would tie unrelated AUs, e.g. AU26 jaw drop and AU45 blink, together.) The feature-line fit
  therefore draws a pair of consecutive video frames per step (``rig/feature_line_fit.py``).
* Eq. (21) couples the *learned* opacity change to the tracked motion. We divide it by γ² so it is
  in opacity units: (‖Δμ‖/γ − |Δα|)². The paper's form in metres is ~1e-6 of the loss at γ = 0.01 m
  and moves nothing; this one gives λ_opcmotion the scale of an opacity error.
* Eq. (22) penalises Gaussian motion. In the feature-line fit Δμ is fixed data (the rig's Gaussians
  follow the tracked mesh), so there it has no gradient; the model that *moves* the Gaussians is
  the motion diffusion model, whose predicted vertex offsets are the facial Gaussians' Δμ. The
  motion task applies it to those (``train/tasks/motion.py``, ``diffusion.lambda_move``), divided
  by τ so the term lies in [0, 1].
"""

from __future__ import annotations

import torch

from emodifftalk.losses.image import ssim


def _check_motion(delta_mu: torch.Tensor, delta_alpha: torch.Tensor | None = None) -> None:
    assert delta_mu.ndim == 3 and delta_mu.shape[-1] == 3, f"delta_mu must be (T, Q, 3), got {tuple(delta_mu.shape)}"
    if delta_alpha is not None:
        assert delta_alpha.shape == delta_mu.shape[:2], (
            f"delta_alpha must be (T, Q) = {tuple(delta_mu.shape[:2])}, got {tuple(delta_alpha.shape)}")


def feature_line_regularizer(F: torch.Tensor, f: torch.Tensor | None, lambda_sparse: float,
                             lambda_smooth: float) -> dict[str, torch.Tensor]:
    """Eq. (19): λ_sparse ‖F‖₁ + λ_smooth Σ_t ‖f_t − f_{t+1}‖².

    ``sparse`` = mean |F| over its 17·Q·16 entries; ``smooth`` = mean over consecutive frame pairs
    and Gaussians of ‖f_t^i − f_{t+1}^i‖² (0 for fewer than two frames or ``f=None``).
    F (17, Q, D); f (T, Q, D). Returns ``sparse``, ``smooth``, ``reg`` (weighted sum).
    """
    assert F.ndim == 3, f"F must be (17, Q, D), got {tuple(F.shape)}"
    sparse = F.abs().mean()
    if f is None or f.shape[0] < 2:
        smooth = F.sum() * 0.0
    else:
        assert f.ndim == 3 and f.shape[1:] == F.shape[1:], f"f must be (T, Q, D) = (T, {F.shape[1]}, {F.shape[2]}), got {tuple(f.shape)}"
        smooth = (f[1:] - f[:-1]).square().sum(-1).mean()
    return {"sparse": sparse, "smooth": smooth, "reg": lambda_sparse * sparse + lambda_smooth * smooth}


def reconstruction_loss(rendered: torch.Tensor, target: torch.Tensor, lambda_ssim: float,
                        channel_last: bool = True) -> dict[str, torch.Tensor]:
    """Eq. (20): (1 − λ_ssim) L1 + λ_ssim (1 − SSIM). Images (N, H, W, C) (or (N, C, H, W) with
    ``channel_last=False``) in [0, 1]. Returns ``l1``, ``ssim``, ``recon``."""
    assert rendered.shape == target.shape, f"rendered {tuple(rendered.shape)} and target {tuple(target.shape)} differ"
    l1 = (rendered - target).abs().mean()
    s = ssim(rendered, target, channel_last=channel_last)
    return {"l1": l1, "ssim": s, "recon": (1 - lambda_ssim) * l1 + lambda_ssim * (1 - s)}


def opacity_motion_loss(delta_mu: torch.Tensor, delta_alpha: torch.Tensor, gamma: float,
                        weight: float) -> torch.Tensor:
    """Eq. (21) in opacity units: λ_opcmotion · mean_{t,i} (‖Δμ_t^i‖₂ / γ − |Δα_t^i|)².

    Larger motion ↔ proportionally larger opacity change, γ metres of motion per unit of opacity
    (the paper's (‖Δμ‖ − γ|Δα|)² divided by γ², see the module docstring).
    """
    _check_motion(delta_mu, delta_alpha)
    assert gamma > 0, f"gamma must be > 0 metres per unit opacity, got {gamma}"
    return weight * (delta_mu.norm(dim=-1) / gamma - delta_alpha.abs()).square().mean()


def distance_loss(delta_mu: torch.Tensor, tau: float, weight: float) -> torch.Tensor:
    """Eq. (22) divided by τ: λ_move · mean_{t,i} min(‖Δμ_t^i‖₂, τ) / τ — capped penalty on the
    motion a model predicts (in [0, λ_move]); motions beyond τ cost the same, smaller ones are
    pulled towards zero."""
    _check_motion(delta_mu)
    assert tau > 0, f"tau must be > 0 metres, got {tau}"
    return weight * delta_mu.norm(dim=-1).clamp(max=tau).mean() / tau


def feature_line_step_losses(delta_mu: torch.Tensor, delta_alpha: torch.Tensor,
                             rendered: torch.Tensor, target: torch.Tensor, fcfg, *,
                             F: torch.Tensor | None = None, f: torch.Tensor | None = None,
                             channel_last: bool = True) -> dict[str, torch.Tensor]:
    """The feature-line training terms of one step (eq. 19–21); plugs into a rig/render loop.

    delta_mu (T, Q, 3) tracked motion and delta_alpha (T, Q) from ``FeatureLine`` for the rendered
    frames; rendered/target images of those frames ((N, H, W, 3) by default); ``fcfg`` a
    ``FeatureLineConfig``. Pass ``F`` (and ``f`` (T', Q, D) of consecutive frames from
    ``FeatureLine.forward(..., return_features=True)``) to include eq. (19). Eq. (22) is not here:
    Δμ is data in this fit (see the module docstring). Returns every term and ``loss``.
    """
    out = reconstruction_loss(rendered, target, fcfg.lambda_ssim, channel_last=channel_last)
    out["opcmotion"] = opacity_motion_loss(delta_mu, delta_alpha, fcfg.gamma, fcfg.lambda_opcmotion)
    loss = out["recon"] + out["opcmotion"]
    if F is not None:
        reg = feature_line_regularizer(F, f, fcfg.lambda_sparse, fcfg.lambda_smooth)
        out.update({"reg_sparse": reg["sparse"], "reg_smooth": reg["smooth"], "reg": reg["reg"]})
        loss = loss + reg["reg"]
    out["loss"] = loss
    return out
