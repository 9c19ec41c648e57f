"""Procedural multi-view talking-head data set (the embedded default data).

Same structure and learning problems as EmoTalk3D / RenderMe-360, at toy scale:
per identity a template mesh with named vertex sets and an AU displacement rig; per clip phone-
timed speech audio, mouth AUs driven by the phones, emotion AUs following a label, blinks, tracked
meshes, an OpenFace 2.x CSV (no AU24 column, some failed rows) and multi-view renders of a ground-
truth Gaussian head. Everything is deterministic in ``SynthConfig.seed``.

Modules: ``head`` (identity, template mesh, albedo), ``rig`` (AU displacement fields), ``speech``
(audio + AU tracks), ``gaussians`` (ground-truth Gaussian head), ``writer`` (raw layout on disk).
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
from .writer import (
                     generate_dataset,
                     make_cameras,
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
    "synthesize_speech", "synthetic_au_fields",
]
