"""Write the synthetic data set in the raw layout of ``emodifftalk.data.schema``.

Everything is a deterministic function of ``SynthConfig`` (``seed`` included): each identity and
clip draws from its own ``np.random.SeedSequence`` keyed by (seed, stream, identity, clip), so a
clip can be regenerated on its own with :func:`make_clip` (e.g. to recover noise-free AUs).

``synth.version`` picks the world: 2 (default) = espeak-ng speech, visemes, nonlinear face, head
motion, OpenFace-like estimated labels, expression-dependent appearance, a held-out camera ring
(see the README, "Synthetic world v2"); 1 = the original linear-rig world.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import io
import json
import logging
import multiprocessing as mp
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodifftalk.config import SynthConfig
from emodifftalk.data.audio import SAMPLE_RATE, write_wav
from emodifftalk.data.augment import augment_audio
from emodifftalk.data.openface import write_openface_csv
from emodifftalk.data.schema import SCHEMA_VERSION, validate_name
from emodifftalk.interrupt import stop_process_pool
from emodifftalk.utils import atomic_dir

from .appearance import ExpressionMasks, expression_masks, expression_tint
from .face import Face, deform, head_pose_track, linear_au_fields, make_face
from .gaussians import GaussianSet, gaussian_head, make_free_gaussians
from .head import IdentityParams, Template, make_template, sample_identity
from .labels import TrackerTraits, estimate_labels, tracker_traits
from .rig import apply_rig, make_au_rig
from .speech import EMOTIONS, SpeechClip, synthesize_clip
from .talk import TalkClip, TTSVoice, identity_voice, talk_clip

log = logging.getLogger(__name__)

BACKGROUND = (1.0, 1.0, 1.0)
TRACKING_NOISE_M = 1e-4  # per-vertex jitter of the "tracked" meshes
OPENFACE_NOISE = 0.01  # std of the AU estimation noise in the CSV (normalised units)
CAMERA_ARC_DEG = 60.0  # cameras spread over [-60°, +60°] around the face
CAMERA_RADIUS_M = 0.75
CAMERA_FOV_DEG = 24.0
CAMERA_TARGET = (0.0, -0.04, 0.0)
EVAL_RING_ELEVATION_DEG = 12.0  # the held-out ring sits above the training arc, all around the head
# ``synth.camera_layout=dome``: rows added after the frontal arc, (elevation°, azimuths°), like
# RenderMe-360's 60 cameras all around the head at several heights (about -25° to +30°). Every
# azimuth and elevation differs from the held-out ring's (12°; ±22.5°, ±67.5° ...), whose views
# are 14-24° from the nearest capture camera (angles at the look-at point).  # choice
DOME_ROWS = ((0.0, (90.0, -90.0, 140.0, -140.0, 180.0)),  # the back of the head, level
             (35.0, (0.0, 60.0, -60.0, 120.0, -120.0, 180.0)))  # the scalp and shoulders from above

# Independent random streams.
_S_IDENTITY, _S_RIG, _S_CLIP, _S_EMOTION, _S_OBS = 1, 2, 3, 4, 5
_S_VOICE, _S_TRACKER, _S_POSE, _S_AUGMENT = 6, 7, 8, 9


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
    rig: np.ndarray  # (17, V, 3) per-unit AU fields (v2: linearised at the neutral face)
    free: GaussianSet
    face: Face | None = None  # v2 only from here on
    voice: TTSVoice | None = None
    traits: TrackerTraits | None = None
    masks: ExpressionMasks | None = None


@dataclass
class SynthClip:
    speech: SpeechClip | TalkClip
    verts: np.ndarray  # (T, V, 3) registered meshes
    aus_observed: np.ndarray  # (T, 17) what the CSV says (noisy; failures zeroed)
    success: np.ndarray  # (T,) bool
    confidence: np.ndarray  # (T,)
    aus_true: np.ndarray | None = None  # v2: (T, 17) the generating activations (evaluation only)
    head_pose: np.ndarray | None = None  # v2: (T, 4, 4) world-from-registered rigid pose
    label_lag: int = 0


def make_identity(cfg: SynthConfig, i: int) -> SynthIdentity:
    params = sample_identity(_rng(cfg.seed, _S_IDENTITY, i), index=i, n_free_points=cfg.n_free_points)
    template = make_template(cfg.mesh_resolution, params=params)
    free = make_free_gaussians(template, params)
    if cfg.version == 1:
        rig = make_au_rig(template, _rng(cfg.seed, _S_RIG, i))
        return SynthIdentity(params=params, template=template, rig=rig, free=free)
    face = make_face(template, _rng(cfg.seed, _S_RIG, i), jaw_angle=cfg.jaw_angle)
    return SynthIdentity(params=params, template=template, rig=linear_au_fields(face), free=free, face=face,
                         voice=identity_voice(params.voice, i, _rng(cfg.seed, _S_VOICE, i)),
                         traits=tracker_traits(_rng(cfg.seed, _S_TRACKER, i)),
                         masks=expression_masks(template.dirs))


def clip_emotion(cfg: SynthConfig, i: int, c: int) -> str:
    """Balanced labels: the data set's clips, in order, walk through shuffled blocks of the 7
    emotions, so every emotion is equally common and an identity's clips mostly differ."""
    k = i * cfg.clips_per_identity + c
    order = _rng(cfg.seed, _S_EMOTION, k // len(EMOTIONS)).permutation(len(EMOTIONS))
    return EMOTIONS[int(order[k % len(EMOTIONS)])]


def synthetic_au_fields(cfg: SynthConfig, identity: str) -> np.ndarray:
    """(17, V, 3) true per-unit AU displacement fields (metres) of a synthetic identity by name
    (v2: the nonlinear face's fields at the neutral face, jaw rotation linearised)."""
    match = re.fullmatch(r"id(\d{3,})", identity)
    if match is None or int(match.group(1)) >= cfg.n_identities:
        raise ValueError(f"{identity!r} is not an identity of this synthetic data set "
                         f"(id000..{identity_name(cfg.n_identities - 1)})")
    return make_identity(cfg, int(match.group(1))).rig


def make_clip(cfg: SynthConfig, ident: SynthIdentity, i: int, c: int) -> SynthClip:
    if cfg.version == 2:
        return _make_clip_v2(cfg, ident, i, c)
    rng = _rng(cfg.seed, _S_CLIP, i, c)
    speech = synthesize_clip(cfg.clip_seconds, SAMPLE_RATE, cfg.fps, rng,
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


def use_tts(cfg: SynthConfig) -> bool:
    """Whether v2 clips speak with espeak-ng (False: v1 formant speech, by choice or fallback)."""
    from .tts import espeak_available

    return cfg.speech == "tts" and espeak_available()


def _make_clip_v2(cfg: SynthConfig, ident: SynthIdentity, i: int, c: int) -> SynthClip:
    rng = _rng(cfg.seed, _S_CLIP, i, c)
    talk = talk_clip(cfg.clip_seconds, SAMPLE_RATE, cfg.fps, rng, ident.voice,
                     emotion=clip_emotion(cfg, i, c), gestures=cfg.gestures,
                     formant_voice=None if use_tts(cfg) else ident.params.voice)
    verts = deform(ident.face, talk.aus, talk.articulators)
    verts += rng.normal(0.0, TRACKING_NOISE_M, verts.shape).astype(np.float32)
    times = np.arange(len(verts)) / cfg.fps
    pose = head_pose_track(times, talk.lead, talk.accents, _rng(cfg.seed, _S_POSE, i, c))
    labels = estimate_labels(verts, ident.template.verts, ident.template.vertex_sets, ident.traits,
                             _rng(cfg.seed, _S_OBS, i, c), cfg.openface_failure_rate, cfg.jaw_angle)
    return SynthClip(speech=talk, verts=verts, aus_observed=labels.aus, success=labels.success,
                     confidence=labels.confidence, aus_true=talk.aus, head_pose=pose, label_lag=labels.lag)


def frame_gaussians(ident: SynthIdentity, clip: SynthClip, f: int) -> GaussianSet:
    """The ground-truth Gaussians of frame ``f`` in registered (head) coordinates."""
    tint = None
    if ident.masks is not None and clip.aus_true is not None:
        tint = expression_tint(ident.masks, clip.aus_true[f])
    return gaussian_head(ident.template, clip.verts[f], ident.params, ident.free, tint=tint)


def posed_viewmats(viewmats: np.ndarray, clip: SynthClip, f: int) -> np.ndarray:
    """World-to-camera matrices that see the registered head as the posed head is seen:
    ``viewmat @ pose`` (rigid head motion folded into the cameras; ``pack`` does the same)."""
    if clip.head_pose is None:
        return viewmats
    return (viewmats @ clip.head_pose[f][None]).astype(np.float32)


def _arc_cameras(azimuths_deg, heights, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    from emodifftalk.render.cameras import intrinsics, look_at

    target = np.array(CAMERA_TARGET)
    K = intrinsics(CAMERA_FOV_DEG, cfg.image_size, cfg.image_size).numpy()
    viewmats = []
    for a, h in zip(np.deg2rad(azimuths_deg), heights):
        eye = target + np.array([CAMERA_RADIUS_M * np.sin(a), h, CAMERA_RADIUS_M * np.cos(a)])
        viewmats.append(look_at(tuple(eye), tuple(target), (0.0, 1.0, 0.0)).numpy())
    return np.stack(viewmats).astype(np.float32), np.stack([K] * len(viewmats)).astype(np.float32)


def make_cameras(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """(viewmats (C,4,4), Ks (C,3,3)): ``n_cameras`` on a frontal arc [-60°, 60°] (±30° for two
    cameras), alternating slightly in height so the views are not all coplanar; an odd count
    includes the frontal camera (v2's tiny preset: 9 cameras, every 15°). ``camera_layout=dome``
    appends the ``DOME_ROWS`` cameras (the arc keeps the first indices)."""
    n = cfg.n_cameras
    span = CAMERA_ARC_DEG if n > 2 else CAMERA_ARC_DEG / 2
    az, heights = list(np.linspace(-span, span, n)), [0.04 if k % 2 else -0.02 for k in range(n)]
    if cfg.camera_layout == "dome":
        for elevation, azimuths in DOME_ROWS:
            az += list(azimuths)
            heights += [CAMERA_RADIUS_M * np.tan(np.deg2rad(elevation))] * len(azimuths)
    return _arc_cameras(az, heights, cfg)


def frontal_camera(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """(viewmats (1,4,4), Ks (1,3,3)) of one camera straight in front of the face."""
    return _arc_cameras([0.0], [0.0], cfg)


def make_eval_cameras(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """The held-out ring: ``n_eval_cameras`` all around the head, above the training arc and
    between its azimuths, so every ring view is a novel view."""
    n = cfg.n_eval_cameras
    az = 360.0 * (np.arange(n) + 0.5) / max(n, 1) - 180.0
    h = CAMERA_RADIUS_M * np.tan(np.deg2rad(EVAL_RING_ELEVATION_DEG))
    return _arc_cameras(az, [h] * n, cfg)


def eval_camera_name(k: int) -> str:
    return f"ring{k:02d}"


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


def _write_audio(cfg: SynthConfig, path: Path, audio: np.ndarray, i: int, c: int) -> tuple[int, list[str]]:
    """Write a clip's audio; v2 writes ``augment_prob`` of the clips augmented (other rates,
    stereo, PCM24, noise ...; ``pack`` converts them). Returns (sample rate, effects)."""
    rng = _rng(cfg.seed, _S_AUGMENT, i, c)
    if cfg.version == 1 or rng.uniform() >= cfg.augment_prob:
        write_wav(path, audio, SAMPLE_RATE)
        return SAMPLE_RATE, []
    import soundfile as sf

    aug = augment_audio(audio, SAMPLE_RATE, rng)
    buf = io.BytesIO()
    sf.write(buf, aug.audio, aug.sample_rate, format="WAV", subtype=str(rng.choice(["PCM_16", "PCM_24"])))
    path.write_bytes(buf.getvalue())
    return aug.sample_rate, aug.effects


def _save_views(folder: Path, names: list[str], f: int, imgs: np.ndarray) -> None:
    for k, cam in enumerate(names):
        _save_png(folder / cam / f"{f:05d}.png", imgs[k])


def write_identity(cfg: SynthConfig, i: int, root: Path, viewmats, Ks, eval_views=None, progress=None) -> dict:
    name = validate_name(identity_name(i), "identity")
    ident = make_identity(cfg, i)
    d = root / name
    (d / "template").mkdir(parents=True)
    _save_npy(d / "template" / "verts.npy", ident.template.verts.astype(np.float32))
    _save_npy(d / "template" / "faces.npy", ident.template.faces.astype(np.int32))
    _save_json(d / "template" / "vertex_sets.json", ident.template.vertex_sets)

    def cameras(names, vms, ks):
        return [{"name": n, "K": ks[k].tolist(), "viewmat": vms[k].tolist(), "width": cfg.image_size,
                 "height": cfg.image_size} for k, n in enumerate(names)]

    cam_names = [camera_name(k) for k in range(len(Ks))]
    _save_json(d / "cameras.json", {"cameras": cameras(cam_names, viewmats, Ks)})
    ring_names = []
    if eval_views is not None:
        ring_names = [eval_camera_name(k) for k in range(len(eval_views[1]))]
        _save_json(d / "eval_cameras.json", {"cameras": cameras(ring_names, *eval_views)})
    clips = []
    for c in range(cfg.clips_per_identity):
        cname = validate_name(clip_name(c), "clip")
        clip = make_clip(cfg, ident, i, c)
        cd = d / cname
        cd.mkdir()
        sample_rate, effects = _write_audio(cfg, cd / "audio.wav", clip.speech.audio, i, c)
        write_openface_csv(cd / "openface.csv", clip.aus_observed, cfg.fps, success=clip.success,
                           confidence=clip.confidence)
        _save_npy(cd / "verts.npy", clip.verts.astype(np.float32))
        n_frames = clip.verts.shape[0]
        frames = rendered_frame_indices(n_frames, cfg.image_stride)
        ring_frames = rendered_frame_indices(n_frames, cfg.eval_image_stride) if ring_names else []
        for cam in cam_names:
            (cd / "images" / cam).mkdir(parents=True)
        for cam in ring_names:
            (cd / "eval_images" / cam).mkdir(parents=True)
        for f in sorted(set(frames) | set(ring_frames)):
            gs = frame_gaussians(ident, clip, f)
            if f in frames:
                _save_views(cd / "images", cam_names, f,
                            render_frames(gs, posed_viewmats(viewmats, clip, f), Ks, cfg.image_size))
            if f in ring_frames:
                _save_views(cd / "eval_images", ring_names, f,
                            render_frames(gs, posed_viewmats(eval_views[0], clip, f), eval_views[1],
                                          cfg.image_size))
        meta = {"identity": name, "clip": cname, "fps": cfg.fps, "n_frames": int(n_frames),
                "sample_rate": sample_rate, "emotion": clip.speech.emotion,
                "modalities": ["audio", "aus", "verts", "frames"],
                "emotion_intensity": round(clip.speech.intensity, 4), "rendered_frames": frames,
                "neutral_frame": 0, "phones": [list(p) for p in clip.speech.phones]}
        if cfg.version == 2:
            _save_npy(cd / "aus_true.npy", clip.aus_true.astype(np.float32))
            _save_npy(cd / "head_pose.npy", clip.head_pose.astype(np.float32))
            meta.update(language=clip.speech.language, text=clip.speech.text, audio_effects=effects,
                        label_lag_frames=clip.label_lag, eval_rendered_frames=ring_frames)
        _save_json(cd / "meta.json", meta)
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


def _identity_process(cfg: SynthConfig, i: int, tmp: Path, viewmats, Ks, eval_views, num_threads) -> dict:
    """One identity in a worker process (``generate_dataset(workers=...)``)."""
    with _torch_threads(num_threads):
        return write_identity(cfg, i, tmp, viewmats, Ks, eval_views)


def _write_identities(cfg: SynthConfig, tmp: Path, viewmats, Ks, eval_views, num_threads, workers: int,
                      bar) -> list[dict]:
    """Every identity, in order; ``workers`` > 1: one process each at a time (each identity's
    randomness is seeded by its index, so the bytes do not depend on the worker count)."""
    if workers <= 1:
        with _torch_threads(num_threads):
            return [write_identity(cfg, i, tmp, viewmats, Ks, eval_views, progress=bar)
                    for i in range(cfg.n_identities)]
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    try:
        futures = [pool.submit(_identity_process, cfg, i, tmp, viewmats, Ks, eval_views, num_threads)
                   for i in range(cfg.n_identities)]
        for fut in cf.as_completed(futures):
            bar.update(len(fut.result()["clips"]))
        return [f.result() for f in futures]
    except BaseException:  # a failed identity, Ctrl-C or SIGTERM: the other workers stop now
        stop_process_pool(pool)
        raise
    finally:
        pool.shutdown(wait=True)


def generate_dataset(cfg: SynthConfig, out_dir: str | Path, overwrite: bool = False,
                     progress: bool = True, num_threads: int | None = 1, workers: int = 1) -> Path:
    """Write the whole synthetic data set to ``out_dir`` atomically; returns ``out_dir``.

    ``num_threads``: torch threads while rendering (``None`` = leave torch's setting). The renders
    are tiny (a few thousand Gaussians, ~128 px), so per-op threading overhead dominates; on a
    shared 2-core machine the default 2 threads were ~10x slower than 1 (see the report).
    ``workers``: identities written at once, one process each (same bytes for any count).
    """
    from tqdm.auto import tqdm

    cfg.validate()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    if cfg.version == 2 and cfg.speech == "tts" and not use_tts(cfg):
        from .tts import INSTALL_HINT

        log.warning("%s -- falling back to v1 formant speech for every clip", INSTALL_HINT)
    viewmats, Ks = make_cameras(cfg)
    eval_views = make_eval_cameras(cfg) if cfg.version == 2 and cfg.n_eval_cameras else None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        bar = tqdm(total=cfg.n_identities * cfg.clips_per_identity, desc="synth clips", unit="clip",
                   disable=not progress)
        idents = _write_identities(cfg, tmp, viewmats, Ks, eval_views, num_threads,
                                   min(workers, cfg.n_identities), bar)
        bar.close()
        generator = {
            "name": "emodifftalk.data.synthetic", "version": cfg.version,
            "config": dataclasses.asdict(cfg), "emotions": list(EMOTIONS),
            "tracking_noise_m": TRACKING_NOISE_M,
            "clips": {d["identity"]: d["clips"] for d in idents},
            "identity_params": {d["identity"]: d["params"] for d in idents}}
        if cfg.version == 1:
            generator["openface_noise"] = OPENFACE_NOISE
        else:
            generator["speech"] = "espeak-ng" if use_tts(cfg) else "formant"
        _save_json(tmp / "dataset.json", {
            "name": "synthetic", "fps": cfg.fps, "sample_rate": SAMPLE_RATE,
            "schema_version": SCHEMA_VERSION, "identities": [d["identity"] for d in idents],
            "background": list(BACKGROUND), "generator": generator})
        if cfg.version == 2:
            from .gallery import write_gallery

            write_gallery(cfg, tmp / "gallery.png")
    log.info("wrote synthetic data set to %s", out)
    return out
