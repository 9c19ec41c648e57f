"""The browser viewer and AU editor: a local viser server showing the rig's Gaussians as splats.

Layout of the page (right-hand panel):

* **Info**: identity, Gaussian count, frames, what drives the edits (``#emodifftalk-info``).
* **Timeline**: play/pause, frame scrubber, playback fps, loop, and an HTML ``<audio>`` element with
  the clip's sound (started at the current frame when *Play* is pressed at the native fps; the
  server drives the frames, the browser the sound, so they stay in step only approximately).
* **AU editor**: status + progress (``#emodifftalk-status``), time range (whole clip or a range in
  seconds), lip lock, 17 AU sliders (offsets for the selected range), reset/clear, a Text-to-AU prompt.
* **Export**: edited AU curves as JSON (``animate --edits`` format), mp4 (rendered with the project's
  rasterizer, audio muxed) and the PLY sequence, written under ``--out`` (JSON/mp4 also offered
  as downloads in the page).

All state logic lives in ``viewer.state``; sampling and exports run in ``viewer.edit_worker``'s
thread; this module only wires viser widgets to them.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from emodifftalk import au
from emodifftalk.config import Config
from emodifftalk.data.audio import SAMPLE_RATE
from emodifftalk.pipeline.animate import (camera_path, capture_camera_index, load_audio_16k, load_models,
                                          motion_offsets, render_frames, speech_aus, write_ply_sequence)
from emodifftalk.render.video import write_video
from emodifftalk.rig.feature_line_fit import load_feature_line
from emodifftalk.rig.gaussians import GaussianRig
from emodifftalk.utils import atomic_dir, atomic_write_text
from emodifftalk.viewer.edit_worker import EditWorker, MotionEditor
from emodifftalk.viewer.source import (
    SourceError,
    canonical_clip,
    is_audio_path,
    load_animation_dir,
    load_audio_file,
    wav_bytes,
)
from emodifftalk.viewer.splats import ViewFrame, frame_gaussians, splat_arrays
from emodifftalk.viewer.state import Clip, ViewerState

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_DOWNLOAD_BYTES = 64 * 2 ** 20  # larger exports are only written to --out


def check_port_free(host: str, port: int) -> None:
    """``ValueError`` when ``host:port`` is taken: viser would silently move to the next port, and
    the printed address would reach another program (or an older viewer) instead."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f"--port {port}: {host}:{port} is already in use ({e.strerror}); stop what runs "
                             "there (another viewer?) or pass another --port") from None


def load_viewer_models(s2au_dir=None, motion_dir=None, text2au_dir=None, device: str = "cpu"):
    """``pipeline.animate.Models`` for the viewer (each part optional; an ``animate`` folder needs no
    Speech-to-AU model, and without a motion model edits change only the feature-line opacity).
    None when no model is given."""
    if not (s2au_dir or motion_dir or text2au_dir):
        return None
    return load_models(s2au_dir, motion_dir, text2au_dir, device=device)


def _next_free(path: Path) -> Path:
    """``path`` or ``stem-2.suffix``, ``stem-3.suffix``, ... so exports never replace earlier ones."""
    if not path.exists():
        return path
    k = 2
    while (path.parent / f"{path.stem}-{k}{path.suffix}").exists():
        k += 1
    return path.parent / f"{path.stem}-{k}{path.suffix}"


class ViewerApp:
    """One viewer session: viser server, state, edit worker and playback thread."""

    def __init__(self, rig, rig_dir: str | Path, cfg: Config, clip: Clip, *, models=None,
                 audio: np.ndarray | None = None, generate_from: str | Path | None = None,
                 host: str = "127.0.0.1", port: int = 8080, out_dir: str | Path = "view_out",
                 camera: str | None = None, edit_steps: int = 8, seed: int = 0, source: str = "canonical head",
                 verbose: bool = False):
        import viser

        self.rig, self.cfg, self.models, self.audio = rig, cfg, models, audio
        self.feature_line = load_feature_line(rig_dir, rig)
        self.out_dir = Path(out_dir)
        self.seed, self.source = int(seed), source
        has_cams = bool(rig.info.get("cameras", {}).get("viewmats"))
        self.camera = camera or ("front" if has_cams else "orbit")
        t = cfg.text2au
        self.state = ViewerState(clip, lip_lock=t.lip_lock,
                                 text_params={"alpha": t.modulation_alpha, "beta": t.modulation_beta,
                                              "target": t.modulation_target})
        self.view = ViewFrame.for_rig(rig)
        self.editor = None
        if models is not None and getattr(models, "motion", None) is not None:
            self.editor = MotionEditor(models, rig.canonical_verts, cfg, audio=audio, steps=edit_steps, seed=seed)
        self.worker = EditWorker(self.state, self.editor, on_change=self._on_worker_change)

        self._show_lock = threading.RLock()
        self._shown: tuple[int, int] | None = None  # (id of the clip, frame) on screen
        self.frame = 0
        self.playing = False
        self._play_t0, self._play_f0 = 0.0, 0
        self._stop = threading.Event()
        self._audio_uri: str | None = None

        self.server = viser.ViserServer(host=host, port=port, verbose=verbose)
        self.host = host
        self._setup_camera()
        self.splats = self.server.scene.add_gaussian_splats("/head", **self._frame_arrays(0))
        self._shown = (id(self.state.good), 0)
        self._build_gui()
        self.worker.start()
        self._player = threading.Thread(target=self._play_loop, name="viewer-playback", daemon=True)
        self._player.start()
        if generate_from is not None:
            self.worker.submit("animating audio", lambda progress: self._generate(generate_from, progress))

    # ------------------------------------------------------------------ public

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def n_gaussians(self) -> int:
        """Gaussians in the splat node the page renders."""
        return int(self.splats.buffer.shape[0])

    def stop(self) -> None:
        self._stop.set()
        self.worker.stop()
        self._player.join(2.0)
        self.server.stop()

    # ------------------------------------------------------------------ scene

    def _frame_arrays(self, t: int) -> dict[str, np.ndarray]:
        clip = self.state.good
        t = int(np.clip(t, 0, clip.n_frames - 1))
        return splat_arrays(frame_gaussians(self.rig, self.feature_line, clip.aus, clip.offsets, t), self.view)

    def show_frame(self, t: int, force: bool = False) -> None:
        """Put frame ``t`` of the good clip on screen (no-op if it is already there)."""
        with self._show_lock:
            clip = self.state.good
            t = int(np.clip(t, 0, clip.n_frames - 1))
            self.frame = t
            if not force and self._shown == (id(clip), t):
                return
            self.splats.set_gaussians(**self._frame_arrays(t))
            self._shown = (id(clip), t)

    def _setup_camera(self) -> None:
        """Start the page at the capture camera facing the face (or a front view), scene up = camera up."""
        verts = self.rig.canonical_verts.detach().cpu().numpy().astype(np.float64)
        center = (verts.max(0) + verts.min(0)) / 2
        cams = self.rig.info.get("cameras", {}) or {}
        fov = np.radians(30.0)
        try:
            idx = capture_camera_index(self.rig, "front")
            vm = np.asarray(cams["viewmats"][idx], dtype=np.float64)
            rot, trans = vm[:3, :3], vm[:3, 3]
            eye = -rot.T @ trans
            fwd, up = rot[2], -rot[1]  # OpenCV camera: z forward, y down
            fy, h = float(np.asarray(cams["Ks"][idx])[1, 1]), float(cams["height"])
            fov = 2 * np.arctan(h / 2 / fy)
        except (KeyError, IndexError, TypeError, ValueError):
            extent = float((verts.max(0) - verts.min(0)).max())
            eye, fwd, up = center + np.array([0.0, 0.0, 2.5 * extent]), np.array([0.0, 0.0, -1.0]), np.array([0, 1.0, 0])
        target = eye + fwd * float(np.dot(center - eye, fwd))  # on the camera's axis, level with the head
        self.server.scene.set_up_direction(tuple(float(x) for x in up))
        ic = self.server.initial_camera
        ic.position = tuple(self.view.point(eye))
        ic.look_at = tuple(self.view.point(target))
        ic.up = tuple(float(x) for x in up)
        ic.fov = float(fov)

    # ------------------------------------------------------------------ GUI

    def _build_gui(self) -> None:
        gui = self.server.gui
        gui.configure_theme(control_width="large", show_share_button=False)
        st = self.state
        self.info_html = gui.add_html(self._info_html())
        with gui.add_folder("Timeline"):
            self.play_button = gui.add_button("Play", icon="player-play", hint="play / pause the clip")
            self.frame_slider = gui.add_slider("Frame", min=0, max=max(st.n_frames - 1, 1), step=1, initial_value=0,
                                               disabled=st.n_frames < 2)
            self.fps_number = gui.add_number("Playback fps", initial_value=float(st.fps), min=1.0, max=120.0,
                                             step=1.0, hint="the sound plays only at the clip's own fps")
            self.loop_checkbox = gui.add_checkbox("Loop", initial_value=True)
            self.audio_html = gui.add_html(self._audio_html(play=False))
        with gui.add_folder("AU editor"):
            self.status_html = gui.add_html(self._status_html())
            self.progress_bar = gui.add_progress_bar(0.0, visible=False, animated=True)
            self.whole_checkbox = gui.add_checkbox("Whole clip", initial_value=True,
                                                   hint="edit the whole clip, or untick to pick a time range")
            dur = self._duration()
            self.range_slider = gui.add_multi_slider("Range (s)", min=0.0, max=dur, step=1.0 / st.fps,
                                                     initial_value=(0.0, dur), disabled=True,
                                                     hint="the frames the AU sliders edit")
            self.lip_checkbox = gui.add_checkbox("Lip lock", initial_value=st.lip_lock,
                                                 hint="edits never push mouth/jaw AUs below the speech value")
            self.au_sliders = []
            for name in au.AU_NAMES:
                a = au.ACTION_UNITS[name]
                hint = f"{name}: {a.facs_name} ({a.region})" + (", a speech AU (lip lock)" if a.speech else "")
                s = gui.add_slider(f"{name} {a.facs_name}", min=-1.0, max=1.0, step=0.01, initial_value=0.0,
                                   hint=hint)
                s.on_update(self._au_callback(au.AU_INDEX[name]))
                self.au_sliders.append(s)
            self.reset_button = gui.add_button("Reset sliders of this range", icon="restore")
            self.clear_button = gui.add_button("Clear all edits", icon="trash")
            no_t2a = self.models is None or getattr(self.models, "text2au", None) is None
            self.text_box = gui.add_text("Text prompt", initial_value="", disabled=no_t2a,
                                         hint="needs a Text-to-AU model (--text2au / --model)" if no_t2a
                                         else 'e.g. "a nervous smile"; empty = no prompt')
            self.text_button = gui.add_button("Apply text", disabled=no_t2a, icon="message")
            self.text_html = gui.add_html("")
        with gui.add_folder("Export"):
            self.export_edits_button = gui.add_button("Edits JSON", icon="file-code",
                                                      hint="AU curves for `emodifftalk animate --edits`")
            self.export_video_button = gui.add_button("Video mp4", icon="movie")
            self.export_ply_button = gui.add_button("PLY sequence", icon="files")
            self.export_html = gui.add_html(f"<small>exports go to <code>{html.escape(str(self.out_dir))}"
                                            f"</code></small>")

        self.play_button.on_click(lambda e: self._toggle_play())
        self.frame_slider.on_update(self._on_frame_slider)
        self.fps_number.on_update(lambda e: self._restart_clock() if e.client is not None else None)
        self.whole_checkbox.on_update(self._on_range_change)
        self.range_slider.on_update(self._on_range_change)
        self.lip_checkbox.on_update(self._on_lip_lock)
        self.reset_button.on_click(self._on_reset)
        self.clear_button.on_click(self._on_clear)
        self.text_button.on_click(self._on_text)
        self.export_edits_button.on_click(lambda e: self.worker.submit("exporting edits", self._export_edits))
        self.export_video_button.on_click(lambda e: self.worker.submit("exporting video", self._export_video))
        self.export_ply_button.on_click(lambda e: self.worker.submit("exporting PLY sequence", self._export_ply))

    def _duration(self) -> float:
        return max(self.state.n_frames - 1, 1) / self.state.fps

    def _info_html(self) -> str:
        r, st = self.rig, self.state
        if self.editor is not None:
            drive = f"motion model: {self.editor.steps} DDIM steps per edit"
        else:
            drive = "no motion model: AU edits change only the feature-line opacity"
        fl = "feature line: yes" if self.feature_line is not None else "feature line: none (opacity fixed)"
        return (f'<div id="emodifftalk-info" data-gaussians="{r.n_points}" data-frames="{st.n_frames}" '
                f'data-fps="{st.fps:g}"><b>{html.escape(r.identity)}</b>: {r.n_points} Gaussians '
                f"({r.n_bound} bound, {r.n_free} free), {st.n_frames} frame(s) at {st.fps:g} fps<br>"
                f"<small>{html.escape(self.source)}; {drive}; {fl}</small></div>")

    def _status_html(self) -> str:
        st = self.state
        s = st.status
        text = html.escape(s.message or "ready")
        err = (f'<div style="color:#b00020"><b>Error:</b> {html.escape(s.error)}</div>' if s.error else "")
        return (f'<div id="emodifftalk-status" data-busy="{int(s.busy)}" data-version="{st.version}" '
                f'data-good-version="{st.good_version}" data-error="{int(s.error is not None)}">'
                f"<small>{'⏳ ' if s.busy else ''}{text}</small>{err}</div>")

    def _audio_html(self, play: bool) -> str:
        if self.audio is None:
            return "<small><i>no audio for this clip</i></small>"
        if self._audio_uri is None:
            self._audio_uri = "data:audio/wav;base64," + base64.b64encode(wav_bytes(self.audio)).decode("ascii")
        if not play:
            return f'<audio controls preload="auto" style="width:100%" src="{self._audio_uri}"></audio>'
        start = self.frame / self.state.fps
        return (f'<audio controls autoplay style="width:100%" data-start="{start:.3f}" '
                f'src="{self._audio_uri}#t={start:.3f}"></audio>')

    def refresh_status(self) -> None:
        s = self.state.status
        self.status_html.content = self._status_html()
        self.progress_bar.visible = s.busy
        self.progress_bar.value = float(np.clip(100.0 * s.progress, 0.0, 100.0))

    def _on_worker_change(self) -> None:
        self.refresh_status()
        self.show_frame(self.frame)  # a commit swaps the good clip: show its frame

    # ------------------------------------------------------------------ timeline

    def _toggle_play(self) -> None:
        self.set_playing(not self.playing)

    def set_playing(self, on: bool) -> None:
        if on and self.frame >= self.state.n_frames - 1:
            self.frame = 0
        self.playing = bool(on) and self.state.n_frames > 1
        self._restart_clock()
        self.play_button.label = "Pause" if self.playing else "Play"
        self.play_button.icon = "player-pause" if self.playing else "player-play"
        native = abs(float(self.fps_number.value) - self.state.fps) < 1e-6
        self.audio_html.content = self._audio_html(play=self.playing and native)

    def _restart_clock(self) -> None:
        self._play_t0, self._play_f0 = time.perf_counter(), self.frame

    def _on_frame_slider(self, event) -> None:
        if event.client is None:  # set by the playback thread
            return
        self.show_frame(int(event.target.value))
        self._restart_clock()
        if self.playing:
            self.audio_html.content = self._audio_html(play=True)

    def _play_loop(self) -> None:
        while not self._stop.is_set():
            if not self.playing:
                self._stop.wait(0.05)
                continue
            fps = max(float(self.fps_number.value), 1e-3)
            n = self.state.n_frames
            t = self._play_f0 + int((time.perf_counter() - self._play_t0) * fps)
            if t >= n:
                if self.loop_checkbox.value:
                    self.frame = 0
                    self._restart_clock()
                    if self.audio is not None:
                        self.audio_html.content = self._audio_html(play=True)
                    t = 0
                else:
                    self.show_frame(n - 1)
                    self.frame_slider.value = n - 1
                    self.set_playing(False)
                    continue
            if t != self.frame or self._shown is None or self._shown[1] != t:
                self.show_frame(t)
                self.frame_slider.value = t
            self._stop.wait(min(0.5 / fps, 0.02))

    # ------------------------------------------------------------------ AU editor

    def _au_callback(self, k: int):
        def cb(event) -> None:
            if event.client is None:  # the server moved the slider (range change, reset)
                return
            if self.state.set_offset(k, float(event.target.value)):
                self.worker.request_edit()
                self.refresh_status()
        return cb

    def _sync_sliders(self) -> None:
        """Show the selected range's offsets on the 17 sliders (server-side, no edit triggered)."""
        for s, v in zip(self.au_sliders, self.state.slider_values()):
            s.value = float(round(v, 4))

    def _on_range_change(self, event) -> None:
        if event.client is None:
            return
        whole = bool(self.whole_checkbox.value)
        self.range_slider.disabled = whole
        if whole:
            self.state.select_whole_clip()
        else:
            lo, hi = self.range_slider.value
            self.state.set_range_seconds(float(lo), float(hi))
        self._sync_sliders()

    def _on_lip_lock(self, event) -> None:
        if event.client is not None and self.state.set_lip_lock(bool(self.lip_checkbox.value)):
            self.worker.request_edit()

    def _on_reset(self, _event) -> None:
        if self.state.set_offsets(np.zeros(au.NUM_AUS)):
            self.worker.request_edit()
        self._sync_sliders()

    def _on_clear(self, _event) -> None:
        if self.state.clear_edits():
            self.worker.request_edit()
        self._sync_sliders()

    def _on_text(self, _event) -> None:
        text = str(self.text_box.value).strip()

        def job(progress) -> str:
            if not text:
                self.state.set_text("", None)
                self.text_html.content = ""
            else:
                t2a = self.models.text2au
                probs = t2a.predict_probs([text])[0].detach().cpu().numpy()
                self.state.set_text(text, probs)
                names = au.au_names_from_vector(probs, t2a.threshold)
                self.text_html.content = (f"<small>“{html.escape(text)}” → "
                                          f"{html.escape(', '.join(names) or 'no AU above threshold')}</small>")
            self.worker.request_edit()
            return ""

        self.worker.submit("text prompt", job)

    # ------------------------------------------------------------------ jobs (worker thread)

    def _generate(self, wav, progress) -> str:
        fps = self.models.frame_rate(self.cfg)
        progress(0.05, "reading audio")
        audio = load_audio_16k(wav)
        progress(0.1, "Speech-to-AU")
        speech = speech_aus(self.models, audio, fps)
        progress(0.3, "sampling motion (full clip)")
        offsets = motion_offsets(self.models, self.rig.canonical_verts, speech, audio, self.cfg, seed=self.seed)
        clip = Clip(speech, offsets.numpy(), fps)
        with self._show_lock:
            self.state.replace_clip(clip)
            self.audio, self._audio_uri = audio, None
            if self.editor is not None:
                self.editor.audio, self.editor._feats = audio, None
            self.source = f"animated from {wav}"
        self._clip_replaced()
        return f"{clip.n_frames} frames"

    def _clip_replaced(self) -> None:
        st = self.state
        self.set_playing(False)
        self.frame_slider.max = max(st.n_frames - 1, 1)
        self.frame_slider.disabled = st.n_frames < 2
        self.frame_slider.value = 0
        dur = self._duration()
        self.range_slider.max = dur
        self.range_slider.step = 1.0 / st.fps
        self.range_slider.value = (0.0, dur)
        self.whole_checkbox.value = True
        self.range_slider.disabled = True
        self._sync_sliders()
        self.fps_number.value = float(st.fps)
        self.info_html.content = self._info_html()
        self.audio_html.content = self._audio_html(play=False)
        self.show_frame(0, force=True)

    def _good_tensors(self):
        clip = self.state.good
        return clip, torch.from_numpy(clip.offsets)

    def _send(self, path: Path) -> None:
        if path.stat().st_size <= MAX_DOWNLOAD_BYTES:
            self.server.send_file_download(path.name, path.read_bytes())

    def _export_note(self, text: str) -> None:
        self.export_html.content = f"<small>{text}</small>"

    def export_edits(self) -> Path:
        """Write the edit curves (``edits_to_dict`` JSON) to ``out_dir``; returns the file."""
        data = self.state.edits_dict()
        path = _next_free(self.out_dir / "edits.json")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
        return path

    def _export_edits(self, progress) -> str:
        path = self.export_edits()
        self._send(path)
        self._export_note(f"edits: <code>{html.escape(str(path))}</code> ({len(self.state.curves())} curve(s))")
        return str(path)

    def _export_video(self, progress) -> str:
        clip, offsets = self._good_tensors()
        n = clip.n_frames
        cams = camera_path(self.rig, self.camera, n, self.cfg.infer.image_size)

        def counted():
            for i, frame in enumerate(render_frames(self.rig, self.feature_line, offsets, clip.aus, cams, self.cfg,
                                                    progress=False)):
                progress((i + 1) / n, f"rendering frame {i + 1}/{n}")
                yield frame

        path = _next_free(self.out_dir / "video.mp4")
        write_video(path, counted(), clip.fps, audio=self.audio, sample_rate=SAMPLE_RATE)
        self._send(path)
        self._export_note(f"video: <code>{html.escape(str(path))}</code> ({n} frames)")
        return str(path)

    def _export_ply(self, progress) -> str:
        clip, offsets = self._good_tensors()
        path = _next_free(self.out_dir / "ply")
        with atomic_dir(path) as tmp:
            write_ply_sequence(tmp, self.rig, offsets, clip.aus, self.feature_line)
        self._export_note(f"PLY: <code>{html.escape(str(path))}</code> ({clip.n_frames} files)")
        return str(path)


def start_viewer(rig_dir: str | Path, cfg: Config, *, animation: str | Path | None = None,
                 audio: str | Path | None = None, models=None, host: str = "127.0.0.1", port: int = 8080,
                 out_dir: str | Path | None = None, camera: str | None = None, edit_steps: int = 8, seed: int = 0,
                 verbose: bool = False) -> ViewerApp:
    """Load the rig and what to show, start the server (background threads) and return the app.

    ``animation``: None (the canonical head), an ``animate`` output folder, or an audio file that is
    animated in the viewer (needs ``models`` with Speech-to-AU and motion). ``audio`` overrides the
    folder's sound. ``models``: ``load_viewer_models(...)`` or None.
    """
    rig_dir = Path(rig_dir)
    try:
        rig = GaussianRig.load(rig_dir)
    except (FileNotFoundError, ValueError) as e:
        raise SourceError(f"RIG_DIR {rig_dir}: {e}") from None
    fps = models.frame_rate(cfg) if models is not None else float(cfg.diffusion.fps)
    sound = load_audio_file(audio) if audio is not None else None
    generate = None
    if animation is None:
        clip, source = canonical_clip(rig.n_bound, fps), "canonical head"
    elif Path(animation).is_dir():
        clip, sound, _ = load_animation_dir(animation, rig.n_bound, audio, fps)
        source = f"animation {animation}"
    elif is_audio_path(animation):
        if models is None or getattr(models, "s2au", None) is None or getattr(models, "motion", None) is None:
            raise SourceError(f"--animation {animation}: animating audio needs Speech-to-AU and motion models "
                              "(--model RUNS_DIR or --s2au/--motion)")
        clip, source, generate = canonical_clip(rig.n_bound, fps), "canonical head (animating audio...)", animation
    else:
        raise SourceError(f"--animation {animation}: expected an `emodifftalk animate` output folder or an audio "
                          f"file ({', '.join(s.lstrip('.') for s in ('.wav', '.flac', '.ogg', '.mp3', '.m4a'))})")
    out = Path(out_dir) if out_dir is not None else Path("view_out") / rig.identity
    return ViewerApp(rig, rig_dir, cfg, clip, models=models, audio=sound, generate_from=generate, host=host,
                     port=port, out_dir=out, camera=camera, edit_steps=edit_steps, seed=seed, source=source,
                     verbose=verbose)
