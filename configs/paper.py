"""Paper preset: the paper's sizes and loss weights (supplementary §1-3).

Where the paper is silent (layer counts, window sizes, Q, schedules) the values are our choices;
they are marked ``# choice`` in emodifftalk/config.py.
"""

from emodifftalk.config import Config


def paper() -> Config:
    cfg = Config(name="paper")
    cfg.synth.n_identities = 64
    cfg.synth.n_cameras = 11  # EmoTalk3D reports 11 views
    cfg.synth.image_size = 512  # EmoTalk3D processed resolution
    cfg.synth.mesh_resolution = 72
    cfg.audio.frontend = "hubert"  # eq. (6): A_t in R^768
    cfg.audio.hubert_path = "checkpoints/hubert-base-ls960"  # local directory, see README
    cfg.s2au.d_model = 512
    cfg.s2au.n_heads = 8
    cfg.s2au.local_layers = 3
    cfg.s2au.global_layers = 3
    cfg.s2au.lambda_reg = 1.0
    cfg.s2au.lambda_temp = 0.1
    cfg.diffusion.num_train_steps = 1000
    cfg.diffusion.d_model = 512
    cfg.diffusion.n_heads = 8
    cfg.diffusion.n_layers = 6
    cfg.diffusion.lambda_vertex = 1.0
    cfg.diffusion.lambda_motion = 0.5
    cfg.diffusion.lambda_deform = 0.1
    cfg.diffusion.lambda_lip = 0.8
    cfg.feature_line.feature_dim = 16
    cfg.feature_line.lambda_sparse = 0.01
    cfg.feature_line.lambda_smooth = 0.001
    cfg.rig.steps = 30000
    cfg.rig.n_free_points = 20000
    cfg.rig.num_gpus_per_task = 1.0
    cfg.text2au.encoder = "open_clip"
    cfg.text2au.open_clip_checkpoint = "checkpoints/open_clip_vit_b32.bin"
    cfg.text2au.focal_alpha = 0.35
    cfg.text2au.focal_gamma = 3.0
    cfg.text2au.infonce_tau = 0.07
    cfg.text2au.lambda_infonce = 0.005
    cfg.text2au.epochs = 300
    cfg.data.batch_size = 128
    cfg.train.lr = 1e-4
    cfg.train.weight_decay = 0.01
    cfg.train.betas = (0.9, 0.999)
    cfg.train.max_steps = 200000
    cfg.train.mixed_precision = "bf16"
    cfg.infer.image_size = 512
    cfg.train.ema_decay = 0.999  # EMA of the diffusion model's weights
    return cfg
