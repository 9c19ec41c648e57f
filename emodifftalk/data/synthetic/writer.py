"""Write the synthetic data set in the raw layout of ``emodifftalk.data.schema``.

Everything is a deterministic function of ``SynthConfig`` (``seed`` included): each identity and
clip draws from its own ``np.random.SeedSequence`` keyed by (seed, stream, identity, clip), so a
clip can be regenerated on its own with :func:`make_clip` (e.g. to recover noise-free AUs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodifftalk.config import SynthConfig
from emodifftalk.data.audio import write_wav
from emodifftalk.data.openface import write_openface_csv
from emodifftalk.data.schema import SCHEMA_VERSION, validate_name
from emodifftalk.utils import atomic_dir

from .gaussians import GaussianSet, gaussian_head, make_free_gaussians
from .head import IdentityParams, Template, make_template, sample_identity
from .rig import apply_rig, make_au_rig
from .speech import EMOTIONS, SpeechClip, synthesize_clip

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
BACKGROUND = (1.0, 1.0, 1.0)
TRACKING_NOISE_M = 1e-4  # per-vertex jitter of the "tracked" meshes
OPENFACE_NOISE = 0.01  # std of the AU estimation noise in the CSV (normalised units)
CAMERA_ARC_DEG = 60.0  # cameras spread over [-60°, +60°] around the face
CAMERA_RADIUS_M = 0.75
CAMERA_FOV_DEG = 24.0
CAMERA_TARGET = (0.0, -0.04, 0.0)

# Independent random streams.
_S_IDENTITY, _S_RIG, _S_CLIP, _S_EMOTION, _S_OBS = 1, 2, 3, 4, 5


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def identity_name(i: int) -> str:
    return f"id{i:03d}"


def clip_name(c: int) -> str:
    return f"clip{c:02d}"


def camera_name(k: int) -> str:
    return f"cam{k:02d}"


@dataclass
class SynthIdentity:
    params: IdentityParams
    template: Template
    rig: np.ndarray  # (17, V, 3)
    free: GaussianSet


@dataclass
class SynthClip:
    speech: SpeechClip
    verts: np.ndarray  # (T, V, 3)
    aus_observed: np.ndarray  # (T, 17) what the CSV says (noisy; failures zeroed)
    success: np.ndarray  # (T,) bool
    confidence: np.ndarray  # (T,)


def make_identity(cfg: SynthConfig, i: int) -> SynthIdentity:
    params = sample_identity(_rng(cfg.seed, _S_IDENTITY, i), index=i, n_free_points=cfg.n_free_points)
    template = make_template(cfg.mesh_resolution, params=params)
    rig = make_au_rig(template, _rng(cfg.seed, _S_RIG, i))
    return SynthIdentity(params=params, template=template, rig=rig, free=make_free_gaussians(template, params))


def clip_emotion(cfg: SynthConfig, i: int, c: int) -> str:
    """Balanced labels: the data set's clips, in order, walk through shuffled blocks of the 7
    emotions, so every emotion is equally common and an identity's clips mostly differ."""
    k = i * cfg.clips_per_identity + c
    order = _rng(cfg.seed, _S_EMOTION, k // len(EMOTIONS)).permutation(len(EMOTIONS))
    return EMOTIONS[int(order[k % len(EMOTIONS)])]


def synthetic_au_fields(cfg: SynthConfig, identity: str) -> np.ndarray:
    """(17, V, 3) true per-unit AU displacement fields (metres) of a synthetic identity by name."""
    match = re.fullmatch(r"id(\d{3,})", identity)
    if match is None or int(match.group(1)) >= cfg.n_identities:
        raise ValueError(f"{identity!r} is not an identity of this synthetic data set "
                         f"(id000..{identity_name(cfg.n_identities - 1)})")
    return make_identity(cfg, int(match.group(1))).rig


def make_clip(cfg: SynthConfig, ident: SynthIdentity, i: int, c: int) -> SynthClip:
    rng = _rng(cfg.seed, _S_CLIP, i, c)
    speech = synthesize_clip(cfg.clip_seconds, cfg.sample_rate, cfg.fps, rng,
                             emotion=clip_emotion(cfg, i, c), voice=ident.params.voice,
                             gestures=cfg.gestures)
    verts = apply_rig(ident.template.verts, ident.rig, speech.aus)
    verts += rng.normal(0.0, TRACKING_NOISE_M, verts.shape).astype(np.float32)

    obs = _rng(cfg.seed, _S_OBS, i, c)
    t = speech.aus.shape[0]
    success = np.ones(t, bool)
    n_fail = int(round(cfg.openface_failure_rate * t))
    while (~success).sum() < n_fail:  # failures come in short bursts (blur, occlusion)
        start = int(obs.integers(0, t))
        success[start:start + int(obs.integers(1, 4))] = False
    confidence = np.where(success, obs.uniform(0.85, 0.98, t), obs.uniform(0.0, 0.3, t))
    observed = np.clip(speech.aus + obs.normal(0.0, OPENFACE_NOISE, speech.aus.shape), 0, 1)
    observed[~success] = 0.0
    return SynthClip(speech=speech, verts=verts, aus_observed=observed.astype(np.float32),
                     success=success, confidence=confidence)


def make_cameras(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """(viewmats (C,4,4), Ks (C,3,3)) on a frontal arc [-60°, 60°] (±30° for two cameras),
    alternating slightly in height so the views are not all coplanar."""
    from emodifftalk.render.cameras import intrinsics, look_at

    n = cfg.n_cameras
    span = CAMERA_ARC_DEG if n > 2 else CAMERA_ARC_DEG / 2
    angles = np.deg2rad(np.linspace(-span, span, n))
    target = np.array(CAMERA_TARGET)
    K = intrinsics(CAMERA_FOV_DEG, cfg.image_size, cfg.image_size).numpy()
    viewmats = []
    for k, a in enumerate(angles):
        height = 0.04 if k % 2 else -0.02
        eye = target + np.array([CAMERA_RADIUS_M * np.sin(a), height, CAMERA_RADIUS_M * np.cos(a)])
        viewmats.append(look_at(tuple(eye), tuple(target), (0.0, 1.0, 0.0)).numpy())
    return np.stack(viewmats).astype(np.float32), np.stack([K] * n).astype(np.float32)


def render_frames(gs: GaussianSet, viewmats: np.ndarray, Ks: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W, 3) uint8 renders of one Gaussian set."""
    import torch

    from emodifftalk.render import rasterize

    t = gs.to_torch()
    with torch.no_grad():
        out = rasterize(t["means"], t["quats"], t["scales"], t["opacities"], t["colors"],
                        torch.from_numpy(viewmats), torch.from_numpy(Ks), size, size,
                        background=torch.tensor(BACKGROUND, dtype=torch.float32))
    rgb = out.rgb.clamp(0, 1).numpy()
    return np.round(rgb * 255.0).astype(np.uint8)


def rendered_frame_indices(n_frames: int, stride: int) -> list[int]:
    return list(range(0, n_frames, stride))


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    path.write_bytes(buf.getvalue())


def _save_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _save_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def write_identity(cfg: SynthConfig, i: int, root: Path, viewmats, Ks, progress=None) -> dict:
    name = validate_name(identity_name(i), "identity")
    ident = make_identity(cfg, i)
    d = root / name
    (d / "template").mkdir(parents=True)
    _save_npy(d / "template" / "verts.npy", ident.template.verts.astype(np.float32))
    _save_npy(d / "template" / "faces.npy", ident.template.faces.astype(np.int32))
    _save_json(d / "template" / "vertex_sets.json", ident.template.vertex_sets)
    cams = [{"name": camera_name(k), "K": Ks[k].tolist(), "viewmat": viewmats[k].tolist(),
             "width": cfg.image_size, "height": cfg.image_size} for k in range(len(Ks))]
    _save_json(d / "cameras.json", {"cameras": cams})
    clips = []
    for c in range(cfg.clips_per_identity):
        cname = validate_name(clip_name(c), "clip")
        clip = make_clip(cfg, ident, i, c)
        cd = d / cname
        cd.mkdir()
        write_wav(cd / "audio.wav", clip.speech.audio, cfg.sample_rate)
        write_openface_csv(cd / "openface.csv", clip.aus_observed, cfg.fps, success=clip.success,
                           confidence=clip.confidence)
        _save_npy(cd / "verts.npy", clip.verts.astype(np.float32))
        frames = rendered_frame_indices(clip.verts.shape[0], cfg.image_stride)
        for cam in cams:
            (cd / "images" / cam["name"]).mkdir(parents=True)
        for f in frames:
            imgs = render_frames(gaussian_head(ident.template, clip.verts[f], ident.params, ident.free),
                                 viewmats, Ks, cfg.image_size)
            for k, cam in enumerate(cams):
                _save_png(cd / "images" / cam["name"] / f"{f:05d}.png", imgs[k])
        _save_json(cd / "meta.json", {
            "identity": name, "clip": cname, "fps": cfg.fps, "n_frames": int(clip.verts.shape[0]),
            "sample_rate": cfg.sample_rate, "emotion": clip.speech.emotion,
            "modalities": ["audio", "aus", "verts", "frames"],
            "emotion_intensity": round(clip.speech.intensity, 4), "rendered_frames": frames,
            "neutral_frame": 0, "phones": [list(p) for p in clip.speech.phones]})
        clips.append({"clip": cname, "emotion": clip.speech.emotion})
        if progress is not None:
            progress.update(1)
    return {"identity": name, "clips": clips, "params": ident.params.to_json()}


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Temporarily set torch's intra-op threads (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def generate_dataset(cfg: SynthConfig, out_dir: str | Path, overwrite: bool = False,
                     progress: bool = True, num_threads: int | None = 1) -> Path:
    """Write the whole synthetic data set to ``out_dir`` atomically; returns ``out_dir``.

    ``num_threads``: torch threads while rendering (``None`` = leave torch's setting). The renders
    are tiny (a few thousand Gaussians, ~128 px), so per-op threading overhead dominates; on a
    shared 2-core machine the default 2 threads were ~10x slower than 1 (see the report).
    """
    from tqdm.auto import tqdm

    cfg.validate()
    out = Path(out_dir)
    viewmats, Ks = make_cameras(cfg)
    with atomic_dir(out, overwrite=overwrite) as tmp, _torch_threads(num_threads):
        bar = tqdm(total=cfg.n_identities * cfg.clips_per_identity, desc="synth clips", unit="clip",
                   disable=not progress)
        idents = [write_identity(cfg, i, tmp, viewmats, Ks, progress=bar) for i in range(cfg.n_identities)]
        bar.close()
        _save_json(tmp / "dataset.json", {
            "name": "synthetic", "fps": cfg.fps, "sample_rate": cfg.sample_rate,
            "schema_version": SCHEMA_VERSION, "identities": [d["identity"] for d in idents],
            "background": list(BACKGROUND),
            "generator": {
                "name": "emodifftalk.data.synthetic", "version": GENERATOR_VERSION,
                "config": dataclasses.asdict(cfg), "emotions": list(EMOTIONS),
                "openface_noise": OPENFACE_NOISE, "tracking_noise_m": TRACKING_NOISE_M,
                "clips": {d["identity"]: d["clips"] for d in idents},
                "identity_params": {d["identity"]: d["params"] for d in idents}}})
    log.info("wrote synthetic data set to %s", out)
    return out
