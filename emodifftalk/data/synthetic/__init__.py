"""Procedural multi-view talking-head data set (the embedded default data).

Same structure and learning problems as EmoTalk3D / RenderMe-360, at toy scale: per identity a
template mesh with named vertex sets; per clip speech audio, tracked meshes, an OpenFace 2.x CSV
(no AU24 column, some failed rows) and multi-view renders of a ground-truth Gaussian head.
Everything is deterministic in ``SynthConfig.seed``. Two worlds (``synth.version``):

* v2 (default): espeak-ng speech with phoneme timings (``tts``, ``sentences``, ``talk``), lips from
  visemes (``visemes``), a nonlinear face with head pose (``face``), OpenFace-like labels estimated
  from the geometry (``labels``), expression-dependent appearance (``appearance``), ``gallery``.
* v1: formant speech of 12 phone classes (``speech``) and a linear AU rig (``rig``).

Shared: ``head`` (identity, template mesh, albedo), ``gaussians`` (ground-truth Gaussian head),
``writer`` (raw layout on disk).
"""

from .gaussians import GaussianSet, face_gaussians, gaussian_head, make_free_gaussians
from .head import IdentityParams, Template, Voice, make_template, sample_identity
from .rig import apply_rig, make_au_rig
from .speech import (
                     EMOTION_AUS,
                     EMOTIONS,
                     PHONES,
                     SpeechClip,
                     synthesize_clip,
                     synthesize_speech,
)
from .talk import TalkClip, talk_clip
from .tts import espeak_available
from .writer import (
                     generate_dataset,
                     make_cameras,
                     make_eval_cameras,
                     make_clip,
                     make_identity,
                     render_frames,
                     rendered_frame_indices,
                     synthetic_au_fields,
)

__all__ = [
    "EMOTIONS", "EMOTION_AUS", "PHONES", "GaussianSet", "IdentityParams", "SpeechClip", "Template",
    "Voice", "apply_rig", "face_gaussians", "gaussian_head", "generate_dataset", "make_au_rig",
    "make_cameras", "make_clip", "make_free_gaussians", "make_identity", "make_template",
    "render_frames", "rendered_frame_indices", "sample_identity", "synthesize_clip",
    "synthesize_speech", "synthetic_au_fields", "TalkClip", "talk_clip", "espeak_available",
    "make_eval_cameras",
]
