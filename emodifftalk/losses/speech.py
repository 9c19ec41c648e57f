"""Speech-to-AU losses (paper supp. §2, eq. 9–11) — pure functions, weights come from config.

Masks and normalisation (the paper writes plain sums; we average so the loss scale does not
depend on batch size, crop length or how many labels OpenFace dropped):

* ``frame_mask`` (B, T) bool: real frames (False = padding after a shorter clip).
* ``au_mask`` (B, T, 17) bool: label validity per frame and AU (False where OpenFace failed on a
  frame, and always for AU24 which OpenFace never outputs).
* eq. 9 is averaged over the valid (frame, AU) label entries.
* eq. 10 is a property of the *prediction*, defined wherever there is audio, so it only uses the
  frame mask: the squared L2 norm over the 17 AUs of E_t - E_{t-1} is averaged over the pairs of
  consecutive frames that are both real.
"""

from __future__ import annotations

import torch


def _check(pred: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    assert pred.ndim == 3, f"pred must be (B, T, K), got {tuple(pred.shape)}"
    if frame_mask is None:
        return torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
    assert frame_mask.shape == pred.shape[:2], (
        f"frame_mask must be (B, T)={tuple(pred.shape[:2])}, got {tuple(frame_mask.shape)}")
    return frame_mask.bool()


def au_regression_loss(pred: torch.Tensor, target: torch.Tensor, au_mask: torch.Tensor | None = None,
                       frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (9): L1 between predicted AU codes E (B, T, 17) and OpenFace labels a (B, T, 17).

    Mean of |E - a| over entries where ``au_mask & frame_mask`` holds; 0 if there is none.
    """
    assert target.shape == pred.shape, f"target {tuple(target.shape)} != pred {tuple(pred.shape)}"
    fm = _check(pred, frame_mask)
    valid = fm[..., None].expand_as(pred)
    if au_mask is not None:
        assert au_mask.shape == pred.shape, f"au_mask {tuple(au_mask.shape)} != pred {tuple(pred.shape)}"
        valid = valid & au_mask.bool()
    w = valid.to(pred.dtype)
    # where() keeps NaN labels under the mask from poisoning the sum
    err = torch.where(valid, (pred - target).abs(), torch.zeros_like(pred))
    return (err * w).sum() / w.sum().clamp(min=1.0)


def au_temporal_loss(pred: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (10): sum_t ||E_t - E_{t-1}||^2, averaged over consecutive pairs of real frames.

    pred (B, T, 17), frame_mask (B, T) bool -> scalar; 0 if no pair is valid (T < 2).
    """
    fm = _check(pred, frame_mask)
    if pred.shape[1] < 2:
        return pred.sum() * 0.0
    pair = (fm[:, 1:] & fm[:, :-1]).to(pred.dtype)  # (B, T-1)
    sq = (pred[:, 1:] - pred[:, :-1]).square().sum(dim=-1)  # (B, T-1)
    return (sq * pair).sum() / pair.sum().clamp(min=1.0)


def speech_to_au_loss(pred: torch.Tensor, target: torch.Tensor, au_mask: torch.Tensor | None,
                      frame_mask: torch.Tensor | None, *, lambda_reg: float,
                      lambda_temp: float) -> dict[str, torch.Tensor]:
    """Eq. (11): L_audio = lambda_reg * L_reg + lambda_temp * L_temp (``cfg.s2au.lambda_*``).

    Returns ``{"loss", "reg", "temp"}`` (the unweighted terms for logging).
    """
    reg = au_regression_loss(pred, target, au_mask, frame_mask)
    temp = au_temporal_loss(pred, frame_mask)
    return {"loss": lambda_reg * reg + lambda_temp * temp, "reg": reg.detach(), "temp": temp.detach()}
