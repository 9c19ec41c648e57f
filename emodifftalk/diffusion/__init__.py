"""Diffusion schedule and samplers, kept separate from the denoiser (diffusers style)."""

from emodifftalk.diffusion.sampler import ddim_sample, ddim_timesteps, ddpm_sample, guided_x0
from emodifftalk.diffusion.schedule import NoiseSchedule

__all__ = ["NoiseSchedule", "ddim_sample", "ddim_timesteps", "ddpm_sample", "guided_x0"]
