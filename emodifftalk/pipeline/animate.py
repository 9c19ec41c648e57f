"""``emodifftalk animate``: audio (+ text prompt, + per-AU edits) → animated Gaussian head → video.

Pipeline, one stage a function so the viewer and benchmarks reuse them:

1. ``speech_aus``   audio → Speech-to-AU → AU codes E (T, 17) at ``fps``
2. ``edit_aus``     Text-to-AU probabilities modulate E (lip lock), rising and falling with the
                    speech (``text2au.modulation.modulate_with_dynamics``), then per-AU edit curves
3. ``motion``       AU codes + audio features → DDIM/DDPM sampler (windowed) → offsets ΔP (T, V, 3)
4. ``render_frames`` deformed Gaussians (μ follow the mesh, free points follow structurally,
                     α0 + Δα from the identity's feature line) → frames, streamed to the encoder

Outputs land in a temp directory that is renamed to ``out`` only when everything succeeded, so a
bad input never leaves partial outputs behind.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from emodifftalk import au
from emodifftalk.config import Config
from emodifftalk.data.audio import SAMPLE_RATE, load_audio
from emodifftalk.motion.methods import predict_offsets
from emodifftalk.edits import apply_edits, load_edits
from emodifftalk.s2au.inference import extract_features, load_s2au, predict_aus
from emodifftalk.motion.inference import load_motion
from emodifftalk.render import rasterize
from emodifftalk.render.cameras import intrinsics, look_at, most_frontal_camera
from emodifftalk.render.video import write_video
from emodifftalk.rig.deform import deform
from emodifftalk.rig.feature_line_fit import load_feature_line
from emodifftalk.rig.gaussians import GaussianRig, is_complete
from emodifftalk.rig.ply import write_gaussians_ply
from emodifftalk.text2au.modulation import modulate_with_dynamics
from emodifftalk.text2au.predict import Text2AU
from emodifftalk.utils import atomic_dir, ensure_writable

log = logging.getLogger(__name__)

SILENCE_RMS = 1e-4  # below this the input is treated as silent (nothing to lip-sync)


class AnimateError(ValueError):
    """A bad input to ``animate``; the message names the input."""


@dataclass
class Models:
    """Loaded models for animation (load once, animate many clips)."""

    s2au: object | None  # s2au.inference.S2AUBundle
    motion: torch.nn.Module | None  # motion.denoiser.Denoiser or motion.faceformer.FaceFormer
    motion_cfg: Config | None
    schedule: object | None
    motion_frontend: object | None  # audio front end matching the motion model's features
    text2au: object | None = None  # text2au.predict.Text2AU

    def frame_rate(self, cfg: Config) -> float:
        """Frames per second of the animation: the motion model's own (``diffusion.fps`` of its
        export), or ``cfg.diffusion.fps`` without a motion model."""
        return float(self.motion.fps) if self.motion is not None else float(cfg.diffusion.fps)


@dataclass
class AnimationResult:
    out_dir: Path
    n_frames: int
    fps: float
    seconds_audio: float
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------


def load_models(s2au_dir: str | Path | None, motion_dir: str | Path | None, text2au_dir: str | Path | None = None,
                device: str = "cpu") -> Models:
    """Load the exported models; each is optional here (``animate`` itself needs Speech-to-AU and
    motion; the viewer can show an ``animate`` folder with none, or edit opacity without motion)."""
    s2au = motion = mcfg = schedule = frontend = t2a = None
    if s2au_dir:
        if not Path(s2au_dir).is_dir():
            raise AnimateError(f"--s2au {s2au_dir}: model directory does not exist")
        s2au = load_s2au(s2au_dir, device=device)
    if motion_dir:
        if not Path(motion_dir).is_dir():
            raise AnimateError(f"--motion {motion_dir}: model directory does not exist")
        try:
            loaded = load_motion(motion_dir, device=device)
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise AnimateError(f"--motion {motion_dir}: cannot load the motion model ({e})") from None
        motion, mcfg, schedule, frontend = loaded.model, loaded.cfg, loaded.schedule, loaded.frontend
    if text2au_dir:
        t2a = Text2AU.load(text2au_dir)
    return Models(s2au=s2au, motion=motion, motion_cfg=mcfg, schedule=schedule, motion_frontend=frontend,
                  text2au=t2a)


def check_inputs(rig_dir: str | Path, wav, out: str | Path, *, edits_path: str | Path | None = None,
                 camera: str = "front", overwrite: bool = False) -> None:
    """Cheap checks of every ``animate`` input, before any model is loaded: each failure is an
    ``AnimateError``/``FileExistsError``/``OutputError`` naming the argument and the path."""
    rig_dir = Path(rig_dir)
    if not rig_dir.is_dir():
        raise AnimateError(f"RIG_DIR {rig_dir}: no such folder (make rigs with `emodifftalk rig SHARDS OUT_DIR`)")
    if not is_complete(rig_dir):
        raise AnimateError(f"RIG_DIR {rig_dir}: not a rig folder (needs rig.safetensors and rig.json from "
                           "`emodifftalk rig`; pass one identity's folder, e.g. rigs/id000)")
    if isinstance(wav, (str, Path)) and not Path(wav).is_file():
        raise AnimateError(f"WAV {wav}: no such file")
    load_audio_16k(wav)  # unreadable, empty, silent, NaN: milliseconds to find out
    if edits_path:
        load_edits(edits_path)  # parse errors name the file and the AU
    if camera.endswith(".json"):
        if not Path(camera).is_file():
            raise AnimateError(f"--camera {camera}: file does not exist")
    elif camera not in ("orbit", "front"):
        try:
            int(camera)
        except ValueError:
            raise AnimateError(f"--camera {camera!r}: {CAMERA_SPECS}") from None
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} already exists; pass --overwrite to replace it")
    ensure_writable(out.parent)


def warn_edits_outside_audio(curves, seconds: float, source: str) -> list[str]:
    """Warnings for edit curves that start at or after the end of the audio (they change nothing)."""
    warnings = []
    for c in curves:
        if c.times[0] >= seconds:
            warnings.append(f"{source}: the {c.au_name} edit starts at {c.times[0]:g} s, after the audio ends "
                            f"({seconds:.2f} s): it has no effect")
    for w in warnings:
        log.warning("%s", w)
    return warnings


def load_audio_16k(wav) -> np.ndarray:
    try:
        audio = load_audio(wav, target_sr=SAMPLE_RATE)
    except Exception as e:  # noqa: BLE001 - unreadable audio of any kind → one clear message
        raise AnimateError(f"audio {wav}: cannot read ({e})") from None
    if audio.size == 0:
        raise AnimateError(f"audio {wav}: empty")
    if float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) < SILENCE_RMS:
        raise AnimateError(f"audio {wav}: silent (RMS < {SILENCE_RMS}); nothing to lip-sync")
    return audio


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------


def speech_aus(models: Models, audio: np.ndarray, fps: float) -> np.ndarray:
    device = next(models.s2au.model.parameters()).device  # predict_aus would move it to its default, the CPU
    return predict_aus(audio, sample_rate=SAMPLE_RATE, fps=fps, model=models.s2au, device=device)


def check_text(text: str | None) -> str | None:
    """``None`` = no prompt; an empty or blank prompt (``--text ""`` or ``--text "  "``) is an error."""
    if text is not None and not text.strip():
        raise AnimateError('--text is empty: give a description (e.g. --text "a nervous smile") or leave --text out')
    return text


def edit_aus(models: Models, aus: np.ndarray, fps: float, text: str | None, edits, cfg: Config,
             audio: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Text modulation (following the speech in ``audio``, 16 kHz; else the speech AU codes), then
    explicit edit curves; returns final AUs and what the text asked for."""
    info: dict = {}
    out = aus
    if check_text(text) is not None:
        if models.text2au is None:
            raise AnimateError("--text needs a Text-to-AU model (--text2au DIR)")
        probs = models.text2au.predict_probs([text])[0].cpu().numpy()
        out = modulate_with_dynamics(out, probs, fps, cfg.text2au, audio=audio, sample_rate=SAMPLE_RATE)
        info = {"text": text, "probs": {n: round(float(p), 4) for n, p in zip(au.AU_NAMES, probs)},
                "aus": au.au_names_from_vector(probs, models.text2au.threshold),
                "strength": cfg.text2au.modulation_strength}
    if edits:
        out = apply_edits(out, edits, fps, lip_lock=cfg.text2au.lip_lock)
    return np.asarray(out, np.float32), info


def guidance_reference(cfg: Config, speech: np.ndarray) -> np.ndarray | None:
    """The AU codes guidance pushes away from (``diffusion.guidance_reference``): the speech-only codes,
    or None for the null condition."""
    return speech if cfg.diffusion.guidance_reference == "speech" else None


def motion_offsets(models: Models, template: torch.Tensor, aus: np.ndarray, audio: np.ndarray, cfg: Config,
                   seed: int = 0, progress: bool = False, reference_aus: np.ndarray | None = None) -> torch.Tensor:
    """Offsets (T, V, 3) m for AU codes ``aus``; ``reference_aus``: what guidance pushes away from
    (``sample_motion``), e.g. the speech-only codes so that only edits are amplified."""
    mcfg = models.motion_cfg
    device = next(models.motion.parameters()).device
    feats = extract_features(models.motion_frontend, audio, mcfg.s2au.window_seconds, mcfg.s2au.overlap_seconds,
                             device)
    gen = torch.Generator(device=device).manual_seed(seed)
    return predict_offsets(models.motion, mcfg, template, torch.from_numpy(aus), feats.float(),
                           schedule=models.schedule, steps=cfg.diffusion.ddim_steps,
                           guidance_scale=cfg.diffusion.animate_guidance_scale,
                           reference_aus=None if reference_aus is None else torch.from_numpy(reference_aus),
                           generator=gen, device=device,
                           window_frames=cfg.diffusion.window_frames, context_frames=cfg.diffusion.context_frames)


CAMERA_SPECS = "expected 'front', 'orbit', a cameras JSON file, or a capture camera index"


def capture_camera_index(rig, spec: str) -> int:
    """The rig's capture camera that ``spec`` names: an index ("0"), or "front", the camera that
    looks most squarely at the face (``render.cameras.most_frontal_camera``; capture rigs number
    their cameras arbitrarily, so index 0 is often a profile)."""
    viewmats = rig.info.get("cameras", {}).get("viewmats") or []
    if not viewmats:
        raise AnimateError(f"--camera {spec!r}: this rig stores no capture cameras; use --camera orbit "
                           "or a cameras JSON file")
    if spec == "front":
        return most_frontal_camera(torch.tensor(viewmats, dtype=torch.float32), rig.canonical_verts.detach().cpu(),
                                   rig.faces.cpu(), rig.facial_idx.cpu())
    try:
        idx = int(spec)
        if not -len(viewmats) <= idx < len(viewmats):
            raise IndexError(idx)
    except (ValueError, IndexError):
        raise AnimateError(f"--camera {spec!r}: {CAMERA_SPECS} 0..{len(viewmats) - 1} of this rig") from None
    return idx


def camera_path(rig, spec: str, n_frames: int, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, int]]:
    """Per-frame (viewmat (1,4,4), K (1,3,3), width, height) for a camera spec.

    ``spec``: "front" (the capture camera that faces the face most squarely), an index into the
    rig's capture cameras ("0"), "orbit" (one turn over the clip), or a JSON file
    ``{"cameras": [{"K", "viewmat", "width", "height"}, ...]}`` (one per frame, or one for all).
    Capture cameras and the orbit render at ``size`` on the long side; JSON cameras at their own size.
    """
    center = rig.canonical_verts.mean(0)
    extent = float((rig.canonical_verts.max(0).values - rig.canonical_verts.min(0).values).max())
    if spec == "orbit":
        k = intrinsics(30.0, size, size)
        radius = extent * 2.2 / np.tan(np.radians(15.0)) / 2
        for t in range(n_frames):
            a = 2 * np.pi * t / max(n_frames, 1)
            eye = center + torch.tensor([radius * np.sin(a), 0.0, radius * np.cos(a)])
            yield look_at(eye, center)[None], k[None], size, size
        return
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise AnimateError(f"--camera {spec}: file does not exist")
        cams = json.loads(path.read_text()).get("cameras", [])
        if not cams or len(cams) not in (1, n_frames):
            raise AnimateError(f"--camera {spec}: needs 1 camera or one per frame ({n_frames}), has {len(cams)}")
        for t in range(n_frames):
            c = cams[t if len(cams) > 1 else 0]
            yield (torch.tensor(c["viewmat"], dtype=torch.float32)[None], torch.tensor(c["K"], dtype=torch.float32)[None],
                   int(c["width"]), int(c["height"]))
        return
    cams = rig.info.get("cameras", {})
    idx = capture_camera_index(rig, spec)
    vm = torch.tensor(cams["viewmats"][idx], dtype=torch.float32)
    k = torch.tensor(cams["Ks"][idx], dtype=torch.float32)
    w, h = int(cams["width"]), int(cams["height"])
    scale = size / max(w, h)  # the capture camera's view at the output size (long side = size)
    k[:2] *= scale
    w, h = max(1, round(w * scale)), max(1, round(h * scale))
    for _ in range(n_frames):
        yield vm[None], k[None], w, h


def render_frames(rig, feature_line, offsets: torch.Tensor, aus: np.ndarray, cameras, cfg: Config,
                  progress: bool = True) -> Iterator[np.ndarray]:
    """Yield uint8 frames (H, W, 3), one at a time (memory stays one frame). Renders on the rig's
    device (``GaussianRig.load(..., device="cuda")``; the feature line must be on it too)."""
    template = rig.canonical_verts
    dev = template.device
    bg = torch.tensor(cfg.render.background, dtype=torch.float32)
    frames = range(offsets.shape[0])
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, desc="render", unit="frame")
    cams = iter(cameras)
    with torch.no_grad():
        for t in frames:
            delta = feature_line(torch.from_numpy(aus[t:t + 1]).to(dev))[0] if feature_line is not None else None
            g = deform(rig, template + offsets[t].to(dev), delta)
            vm, k, w, h = next(cams)
            out = rasterize(**g.render_args(), viewmats=vm.to(dev), Ks=k.to(dev), width=w, height=h, background=bg,
                            backend=cfg.render.backend, tile_size=cfg.render.tile_size)
            yield (out.rgb[0].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------


def write_au_csv(path: Path, aus: np.ndarray, fps: float) -> None:
    lines = ["frame,time," + ",".join(au.AU_NAMES)]
    for t, row in enumerate(aus):
        lines.append(f"{t},{t / fps:.4f}," + ",".join(f"{v:.4f}" for v in row))
    path.write_text("\n".join(lines) + "\n")


def plot_aus(path: Path, speech: np.ndarray, final: np.ndarray, fps: float, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(speech.shape[0]) / fps
    fig, axes = plt.subplots(6, 3, figsize=(12, 11), sharex=True)
    for k, ax in enumerate(axes.flat):
        if k >= au.NUM_AUS:
            ax.axis("off")
            continue
        ax.plot(t, speech[:, k], color="0.6", lw=1, label="speech")
        ax.plot(t, final[:, k], color="C3", lw=1.2, label="edited")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{au.AU_NAMES[k]} {au.ACTION_UNITS[au.AU_NAMES[k]].facs_name}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title or "AU codes", fontsize=10)
    fig.supxlabel("time (s)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_ply_sequence(folder: Path, rig, offsets: torch.Tensor, aus: np.ndarray, feature_line,
                       y_up: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for t in range(offsets.shape[0]):
            delta = feature_line(torch.from_numpy(aus[t:t + 1]))[0] if feature_line is not None else None
            write_gaussians_ply(folder / f"frame_{t:05d}.ply", deform(rig, rig.canonical_verts + offsets[t], delta),
                                y_up=y_up)


def animate(rig_dir: str | Path, wav, models: Models, out: str | Path, cfg: Config, *, text: str | None = None,
            edits_path: str | Path | None = None, camera: str = "front", ply: bool = False, seed: int = 0,
            overwrite: bool = False, progress: bool = True) -> AnimationResult:
    check_text(text)
    if models.s2au is None or models.motion is None:
        raise AnimateError("animate needs a Speech-to-AU and a motion model (--s2au, --motion or --model)")
    rig_dir = Path(rig_dir)
    try:
        rig = GaussianRig.load(rig_dir)
    except (FileNotFoundError, ValueError) as e:
        raise AnimateError(f"RIG_DIR {rig_dir}: {e}") from None
    feature_line = load_feature_line(rig_dir, rig)
    edits = load_edits(edits_path) if edits_path else []
    fps = models.frame_rate(cfg)
    audio = load_audio_16k(wav)
    edit_warnings = warn_edits_outside_audio(edits, audio.shape[0] / SAMPLE_RATE, str(edits_path))
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    speech = speech_aus(models, audio, fps)
    timings["aus"] = time.perf_counter() - t0
    final, text_info = edit_aus(models, speech, fps, text, edits, cfg, audio=audio)
    n = final.shape[0]

    t0 = time.perf_counter()
    offsets = motion_offsets(models, rig.canonical_verts, final, audio, cfg, seed=seed,
                             reference_aus=guidance_reference(cfg, speech))
    timings["diffusion"] = time.perf_counter() - t0
    if offsets.shape != (n, rig.n_bound, 3):
        raise AnimateError(f"motion model produced offsets {tuple(offsets.shape)} for a rig with {rig.n_bound} "
                           "template vertices: identity template size mismatch")

    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_au_csv(tmp / "aus.csv", final, fps)
        write_au_csv(tmp / "aus_speech.csv", speech, fps)
        plot_aus(tmp / "aus.png", speech, final, fps, title=f"{rig.identity}: {text or 'speech only'}")
        np.save(tmp / "offsets.npy", offsets.numpy().astype(np.float32))
        t0 = time.perf_counter()
        frames = render_frames(rig, feature_line, offsets, final, camera_path(rig, camera, n, cfg.infer.image_size),
                               cfg, progress=progress)
        # render and encode are interleaved (streaming); the encode share is measured by the benchmark
        write_video(tmp / "video.mp4", frames, fps, audio=audio, sample_rate=SAMPLE_RATE)
        timings["render+encode"] = time.perf_counter() - t0
        if ply:
            write_ply_sequence(tmp / "ply", rig, offsets, final, feature_line, y_up=cfg.render.ply_y_up)
        info = {"rig": str(rig_dir), "identity": rig.identity, "fps": fps, "n_frames": n,
                "seconds_audio": audio.shape[0] / SAMPLE_RATE, "text": text_info, "edits": str(edits_path or ""),
                "camera": camera, "feature_line": feature_line is not None, "timings": timings, "seed": seed,
                "warnings": edit_warnings, "ply_axes": "y-up" if cfg.render.ply_y_up else "opencv (y-down)"}
        (tmp / "animation.json").write_text(json.dumps(info, indent=2))
    out = Path(out)
    files = {p.name: str(p) for p in sorted(out.iterdir())}
    return AnimationResult(out, n, fps, audio.shape[0] / SAMPLE_RATE, timings, files)
