"""Load a ``train motion`` export for inference: ``load_motion(export_dir) -> MotionModel``.

The network of the export's method (``motion.methods``: the diffusion denoiser, the regression
baseline or FaceFormer), its noise schedule and its audio front end are rebuilt from the export's
own ``config.json`` (adjusted by ``overrides``), with no training code: ``animate``, the viewer,
``eval motion`` and ``eval speech`` load models through here. Sampling is
``motion.methods.predict_offsets`` (``diffusion.windowed.sample_motion`` for the denoiser).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from emodifftalk.config import Config, apply_overrides, load_config
from emodifftalk.diffusion.schedule import NoiseSchedule
from emodifftalk.models.audio_frontend import AudioFrontend, build_frontend
from emodifftalk.motion.methods import build_motion_model, method_of
from emodifftalk.safetensors_io import load_tensors

MODEL_FILE = "model.safetensors"  # the weights inference uses (the EMA when training kept one)


@dataclass
class MotionModel:
    model: nn.Module  # Denoiser or FaceFormer (motion.methods), eval mode, on the requested device
    cfg: Config  # the export's config (+ overrides)
    schedule: NoiseSchedule | None  # None for the regression baseline and FaceFormer
    frontend: AudioFrontend  # audio features the model was trained on (eval mode, same device)


def load_motion(export_dir: str | Path, device: str | torch.device = "cpu",
                overrides: list[str] | tuple = ()) -> MotionModel:
    """The motion model exported into ``export_dir`` (``config.json`` + ``model.safetensors``).

    ``FileNotFoundError`` when a file is missing; ``ValueError`` when the weights do not fit the
    architecture the config describes, the model has no ``offset_scale``, or the audio front end
    does not give the features the model expects.
    """
    export_dir = Path(export_dir)
    for name in ("config.json", MODEL_FILE):
        if not (export_dir / name).is_file():
            raise FileNotFoundError(f"{export_dir / name} not found: is {export_dir} a `train motion` export?")
    cfg = load_config(export_dir / "config.json")
    if overrides:
        apply_overrides(cfg, list(overrides))
    cfg.validate()
    model = build_motion_model(cfg, offset_scale=cfg.diffusion.offset_scale)
    try:
        model.load_state_dict(load_tensors(export_dir / MODEL_FILE, device=device), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{export_dir / MODEL_FILE} does not fit the motion model its config.json "
                         f"describes: {e}") from None
    model.to(device).eval()
    if not float(model.offset_scale) > 0:
        raise ValueError(f"{export_dir}: exported model has no offset_scale (was it trained?)")
    frontend = build_frontend(cfg.audio).to(device).eval()
    if frontend.dim != model.audio_dim:
        raise ValueError(f"model expects {model.audio_dim}-d audio features but its audio front end "
                         f"({cfg.audio.frontend}) gives {frontend.dim}")
    d = cfg.diffusion
    schedule = NoiseSchedule.from_config(d) if method_of(cfg) == "diffusion" else None
    return MotionModel(model=model, cfg=cfg, schedule=schedule, frontend=frontend)
