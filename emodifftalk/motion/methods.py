"""The motion methods compared in ``eval pipeline``: how each is built and how it turns a clip's
AU codes and audio features into per-vertex offsets. One place, so training, validation and every
evaluation run a method the same way.

* ``diffusion``  the paper's AU-prompt diffusion (``motion/denoiser.py``, DDIM through
  ``diffusion.windowed.sample_motion``) — AU codes + audio;
* ``regression`` the same backbone trained without noise, one forward pass (the stand-in for
  EmoTalk3D's S2GNet regression, Zhang et al. ECCV 2024) — AU codes + audio;
* ``faceformer`` FaceFormer (Fan et al. CVPR 2022, ``motion/faceformer.py``) — audio only;
* ``template``   zero offsets: the neutral template in every frame (nothing to train).

``train motion motion.model=diffusion|regression|faceformer`` trains the first three with the same
task, shards, losses and optimiser (``train/tasks/motion.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from emodifftalk.diffusion.windowed import sample_motion
from emodifftalk.motion.denoiser import Denoiser
from emodifftalk.motion.faceformer import FaceFormer

METHODS = ("diffusion", "regression", "faceformer", "template")
AU_CONDITIONED = ("diffusion", "regression")


def method_of(cfg) -> str:
    """The method a (validated) config trains: ``motion.model``, with the regression alias resolved."""
    return "regression" if cfg.diffusion.regression else cfg.motion.model


def build_motion_model(cfg, offset_scale: float = 0.0) -> nn.Module:
    """The network of ``method_of(cfg)``; ``offset_scale`` 0 = estimated later from the data."""
    method = method_of(cfg)
    if method == "faceformer":
        return FaceFormer.from_config(cfg, offset_scale=offset_scale)
    if method in ("diffusion", "regression"):
        return Denoiser.from_config(cfg, offset_scale=offset_scale)
    raise ValueError(f"motion method {method!r} has no network to build")


@torch.no_grad()
def predict_offsets(model: nn.Module | None, cfg, template: torch.Tensor, aus: torch.Tensor,
                    feats: torch.Tensor | None, *, schedule=None, generator: torch.Generator | None = None,
                    device=None, **sample_kwargs) -> torch.Tensor:
    """Offsets (T, V, 3) in metres, on the CPU, for one clip.

    ``model`` None = the template baseline (zeros). template (V, 3) m; aus (T, 17) AU codes (FaceFormer
    ignores them); feats (Ta, D) audio features. ``sample_kwargs`` (sampler, steps, guidance_scale,
    reference_aus, window_frames, context_frames) go to ``sample_motion`` for the Denoiser methods.
    """
    n_frames = aus.shape[0]
    if model is None:
        return torch.zeros(n_frames, template.shape[0], 3)

    device = device if device is not None else next(model.parameters()).device
    if isinstance(model, FaceFormer):
        if feats is None:
            raise ValueError("FaceFormer needs audio features")
        out = model.generate(template[None].to(device=device, dtype=torch.float32),
                             feats[None].to(device=device, dtype=torch.float32), n_frames,
                             context_frames=None if cfg is None else cfg.faceformer.context_frames)
        return out[0].float().cpu() * float(model.offset_scale)
    return sample_motion(model, schedule, template, aus, feats, cfg, generator=generator, device=device,
                         **sample_kwargs)
