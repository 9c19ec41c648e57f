"""Data contracts: the raw folder layout, the shard sample schema and the camera convention.

Camera convention (everywhere in the project, same as gsplat)
-------------------------------------------------------------
* World units are metres. The synthetic world is y-up, the face looks toward +z.
* ``viewmat`` is the 4x4 **world-to-camera** matrix in **OpenCV** camera axes
  (x right, y down, +z forward). ``K`` is the 3x3 pinhole intrinsics in pixels for an image of
  ``width`` x ``height``; pixel centres are at integer + 0.5.
* Data sets with camera-to-world or OpenGL axes are converted at ingest time, never later.

Raw folder layout (what ``emodifftalk synth`` writes and ``emodifftalk pack`` reads)
---------------------------------------------------------------------------------
::

    RAW/
      dataset.json                     {"name", "fps", "sample_rate", "schema_version", "identities": [...],
                                        "generator": {...}}  (generator only for synthetic data)
      <identity>/
        template/verts.npy             (V, 3) float32, neutral template mesh, metres
        template/faces.npy             (F, 3) int32
        template/vertex_sets.json      {"lips": [...], "upper_face": [...], "eyes": [...], "jaw": [...],
                                        "face": [...]}  vertex indices
        cameras.json                   {"cameras": [{"name", "K", "viewmat", "width", "height"}, ...]}
        <clip>/
          meta.json                    {"identity", "clip", "fps", "n_frames", "sample_rate", "emotion",
                                        "modalities": ["audio", "aus", "verts", "frames"]}
          audio.wav                    16 kHz mono PCM16
          openface.csv                 OpenFace 2.x FeatureExtraction output (the AU source)
          verts.npy                    (T, V, 3) float32 tracked mesh vertices per frame, absolute
          head_pose.npy                optional (T, 4, 4) rigid head pose; images show pose @ verts
          aus_true.npy                 optional (T, 17) true AU activations (synthetic; evaluation only)
          images/<camera>/<frame:05d>.png   multi-view frames (a subset of frames may be present)

Shard schema (WebDataset tar members of one sample; version ``SCHEMA_VERSION``)
--------------------------------------------------------------------------------
``seq`` samples (motion models), key ``<identity>__<clip>``:
    ``audio.wav``, ``aus.npy`` (T,17) float32 in [0,1], ``au_mask.npy`` (T,17) uint8 (1 = valid),
    ``verts.npy`` (T,V,3) float32 (absent if the clip has no meshes), ``meta.json``
    (identity, clip, fps, n_frames, sample_rate, emotion, split, template=<identity>, modalities),
    optional ``feats.npy`` (Ta, D) float16 audio features + ``feats.json`` (encoder id) from
    ``emodifftalk featurize``; optional ``aus_true.npy`` (T,17) true AU activations (synthetic data,
    evaluation only) and ``head_pose.npy`` (T,4,4) rigid head pose (images = pose applied to verts).
``frames`` samples (rig reconstruction), key ``<identity>__<clip>__f<frame:05d>``:
    ``<camera>.png`` per camera, ``cameras.json`` (the clip's head pose, if any, folded into each
    ``viewmat``: ``viewmat @ pose``), ``verts.npy`` (V,3) mesh of that moment,
    ``meta.json`` (identity, clip, frame, split, cameras: [names]).
``template`` samples, key ``<identity>__template``:
    ``verts.npy`` (V,3), ``faces.npy`` (F,3) int32, ``vertex_sets.json``, ``meta.json``.

Shard files: ``seq-<split>-%06d.tar``, ``frames-<split>-%06d.tar``, ``templates-%06d.tar`` plus
``manifest.json`` (schema version, counts, identities per split, per-shard sha256 and bytes).
"""

from __future__ import annotations

SCHEMA_VERSION = 1

SPLITS = ("train", "val", "test")
SAMPLE_KINDS = ("seq", "frames", "template")

# Members that may appear in a sample, and how each must be decoded. Anything else is rejected:
# no pickle-based extension (.pyd/.pickle/.pth) is ever decoded.
SEQ_REQUIRED = ("audio.wav", "aus.npy", "au_mask.npy", "meta.json")
SEQ_OPTIONAL = ("verts.npy", "feats.npy", "feats.json", "aus_true.npy", "head_pose.npy")
FRAMES_REQUIRED = ("cameras.json", "meta.json")
TEMPLATE_REQUIRED = ("verts.npy", "faces.npy", "vertex_sets.json", "meta.json")

VERTEX_SETS = ("lips", "upper_face", "eyes", "jaw", "face")

MODALITIES = ("audio", "aus", "verts", "frames")


def seq_key(identity: str, clip: str) -> str:
    return f"{identity}__{clip}"


def frames_key(identity: str, clip: str, frame: int) -> str:
    return f"{identity}__{clip}__f{frame:05d}"


def template_key(identity: str) -> str:
    return f"{identity}__template"


def validate_name(name: str, what: str) -> str:
    """Identity/clip/camera names become tar keys: no dots, no '__', no path separators."""
    bad = [c for c in ("/", "\\", ".", " ") if c in name]
    if not name or bad or "__" in name:
        raise ValueError(f"invalid {what} name {name!r}: use letters, digits, '-' or single '_'")
    return name
