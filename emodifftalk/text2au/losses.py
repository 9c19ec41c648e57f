"""Text-to-AU losses (paper supp. §3, eq. 23–25). Pure functions; weights come from ``cfg.text2au``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def focal_bce(logits: Tensor, labels: Tensor, alpha: float = 0.35, gamma: float = 3.0,
              weight: Tensor | None = None) -> Tensor:
    """Weighted focal binary cross-entropy, eq. (23)::

        L_BCE = 1/N sum_i [ -alpha y_i (1 - p_i)^gamma log p_i - (1 - alpha)(1 - y_i) p_i^gamma log(1 - p_i) ]

    with ``p_i = sigmoid(logit_i)``; N runs over every (sample, AU) pair, i.e. the mean over all
    elements. ``logits``, ``labels`` (..., 17) with labels in {0, 1} (soft labels also work).
    ``log p`` / ``log(1 - p)`` are computed as ``-softplus(-x)`` / ``-softplus(x)`` for stability.
    ``weight`` (...,) 0/1 per sample: the mean runs over the samples with weight 1 only.
    """
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    y = labels.to(logits.dtype)
    p = torch.sigmoid(logits)
    log_p = -F.softplus(-logits)
    log_1mp = -F.softplus(logits)
    loss = -alpha * y * (1 - p).pow(gamma) * log_p - (1 - alpha) * (1 - y) * p.pow(gamma) * log_1mp
    return loss.mean() if weight is None else _weighted_mean(loss.mean(-1), weight)


def _weighted_mean(values: Tensor, weight: Tensor) -> Tensor:
    w = weight.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def structured_infonce(z_a: Tensor, z_p: Tensor, z_n: Tensor, tau: float = 0.07,
                       weight: Tensor | None = None) -> Tensor:
    """Improved (structured) InfoNCE, eq. (24), for one anchor with P positives and M negatives::

        L = -log( exp(s_ap / tau) / (exp(s_ap / tau) + sum_n exp(s_an / tau)) ),  s = <z_a, z> (unit vectors)

    The paper writes the loss for a single positive. With P = 3 paraphrases per anchor we evaluate
    eq. (24) once per positive -- each positive competes only against the anchor's own M
    negatives, never against the other positives -- and average over the P positives and then
    over the batch. (Putting all positives in one numerator instead would let one easy positive
    hide the others.)

    z_a (B, D), z_p (B, P, D), z_n (B, M, D): expected L2-normalised (we do not re-normalise so the
    function is the formula as written; ``TextToAU`` returns unit-norm ``z``). ``weight`` (B,)
    0/1: average over the anchors with weight 1 only.
    """
    if z_a.dim() != 2 or z_p.dim() != 3 or z_n.dim() != 3:
        raise ValueError(f"expected z_a (B, D), z_p (B, P, D), z_n (B, M, D); got {tuple(z_a.shape)}, "
                         f"{tuple(z_p.shape)}, {tuple(z_n.shape)}")
    if not (z_a.shape[0] == z_p.shape[0] == z_n.shape[0] and z_a.shape[1] == z_p.shape[2] == z_n.shape[2]):
        raise ValueError(f"batch/feature dims disagree: {tuple(z_a.shape)}, {tuple(z_p.shape)}, {tuple(z_n.shape)}")
    s_ap = torch.einsum("bd,bpd->bp", z_a, z_p) / tau  # (B, P)
    s_an = torch.einsum("bd,bmd->bm", z_a, z_n) / tau  # (B, M)
    # log(exp(s_ap) + sum_n exp(s_an)) per positive, via logsumexp over [s_ap, s_an...]
    denom = torch.logsumexp(torch.cat([s_ap.unsqueeze(-1), s_an.unsqueeze(1).expand(-1, s_ap.shape[1], -1)],
                                      dim=-1), dim=-1)  # (B, P)
    per_anchor = (denom - s_ap).mean(-1)
    return per_anchor.mean() if weight is None else _weighted_mean(per_anchor, weight)


def text2au_loss(logits: Tensor, labels: Tensor, z_a: Tensor, z_p: Tensor, z_n: Tensor, t2a_cfg,
                 label_weight: Tensor | None = None, anchor_weight: Tensor | None = None) -> dict[str, Tensor]:
    """Total loss, eq. (25): ``L = lambda_BCE L_BCE + lambda_infoNCE L_infoNCE`` (weights from ``cfg.text2au``).

    Computed in float32 even under bf16/fp16 autocast (exp(s / 0.07) and the focal powers need it).
    ``label_weight`` (rows of ``logits``) / ``anchor_weight`` (rows of ``z_a``): 0/1 masks of the
    rows that count (the cross-fitted ensemble hides each member's held-out concept fold).
    """
    bce = focal_bce(logits.float(), labels, t2a_cfg.focal_alpha, t2a_cfg.focal_gamma, label_weight)
    nce = structured_infonce(z_a.float(), z_p.float(), z_n.float(), t2a_cfg.infonce_tau, anchor_weight)
    total = t2a_cfg.lambda_bce * bce + t2a_cfg.lambda_infonce * nce
    return {"loss": total, "focal_bce": bce.detach(), "infonce": nce.detach()}
