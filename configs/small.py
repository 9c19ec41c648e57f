"""Small preset: one GPU, a few hours; larger synthetic set and models."""

from emodifftalk.config import Config


def small() -> Config:
    cfg = Config(name="small")
    cfg.synth.n_identities = 24
    cfg.synth.clips_per_identity = 8
    cfg.synth.clip_seconds = 8.0
    cfg.synth.n_cameras = 8
    cfg.synth.image_size = 256
    cfg.synth.mesh_resolution = 64
    cfg.synth.n_free_points = 5000
    cfg.rig.steps = 2000
    cfg.rig.n_free_points = 5000
    cfg.diffusion.num_train_steps = 1000
    cfg.train.max_steps = 20000
    cfg.train.mixed_precision = "bf16"
    cfg.data.batch_size = 32
    cfg.data.num_workers = 4
    cfg.infer.image_size = 512
    cfg.train.ema_decay = 0.999  # EMA of the diffusion model's weights
    return cfg
