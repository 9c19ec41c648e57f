"""Re-sample the motion of edited frames, in a worker thread so the page stays responsive.

``MotionEditor`` re-runs the windowed sampler (``diffusion.windowed.resample_spans``, few DDIM
steps) only where the AU codes changed, fading back into the old motion after each edited span.
The feature-line opacity needs no sampling: it is computed from the AU codes when a frame is shown
or rendered.

``EditWorker`` runs one job at a time: AU edits (coalesced, latest state wins, after a short
debounce so a dragged slider does not queue dozens of samplings) and queued jobs (exports,
generating a clip from a wav). A failed edit records the error in the state and keeps the last
good clip.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch

from emodifftalk.diffusion.windowed import resample_spans
from emodifftalk.s2au.inference import extract_features
from emodifftalk.viewer.state import Clip, EditRequest, ViewerState

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]  # (fraction 0..1, message)


def _noop(_f: float, _m: str) -> None:
    pass


class MotionEditor:
    """Binds a motion model, the rig template and the clip's audio features for ``resample_spans``."""

    def __init__(self, models, template: torch.Tensor, cfg, *, audio: np.ndarray | None = None,
                 steps: int = 8, seed: int = 0):
        self.models, self.template, self.cfg = models, template, cfg
        self.audio, self.steps, self.seed = audio, int(steps), int(seed)
        self._feats: torch.Tensor | None = None

    def features(self) -> torch.Tensor | None:
        """Audio features of the clip (computed once), or None: the denoiser's null audio."""
        if self.audio is None or self.models.motion_frontend is None:
            return None
        if self._feats is None:
            mcfg = self.models.motion_cfg
            device = next(self.models.motion.parameters()).device
            self._feats = extract_features(self.models.motion_frontend, self.audio, mcfg.s2au.window_seconds,
                                           mcfg.s2au.overlap_seconds, device).float()
        return self._feats

    def __call__(self, request: EditRequest, progress: Progress = _noop) -> np.ndarray:
        mcfg = self.models.motion_cfg
        return resample_spans(self.models.motion, self.models.schedule, self.template, request.target,
                              self.features(), request.good.offsets, request.spans, mcfg, steps=self.steps,
                              seed=self.seed, window_frames=self.cfg.diffusion.window_frames,
                              context_frames=self.cfg.diffusion.context_frames,
                              guidance_scale=self.cfg.diffusion.animate_guidance_scale,
                              reference_aus=request.reference, progress=progress)


class EditWorker:
    """One background thread: AU edits (coalesced, debounced) and queued jobs, one at a time.

    ``resample(request, progress) -> offsets`` makes the motion for an ``EditRequest`` (None: no
    motion model, edits change only the AU codes, hence the feature-line opacity). ``on_change()``
    is called after every state change the page should show (progress, commit, error).
    """

    def __init__(self, state: ViewerState, resample: Callable | None, on_change: Callable[[], None] = lambda: None,
                 debounce: float = 0.2, merge_gap: int = 8):
        self.state, self.resample, self.on_change = state, resample, on_change
        self.debounce, self.merge_gap = float(debounce), int(merge_gap)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._jobs: queue.Queue = queue.Queue()
        self._edit_wanted = False
        self._idle = threading.Event()
        self._idle.set()
        self._idle_lock = threading.Lock()  # request/submit vs. the loop deciding it is idle
        self._thread = threading.Thread(target=self._run, name="viewer-edit-worker", daemon=True)

    # ------------------------------------------------------------------ control

    def start(self) -> EditWorker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def request_edit(self) -> None:
        """The AU edits changed: bring the good clip up to date (soon, latest state wins)."""
        with self._idle_lock:
            self._idle.clear()
            self._edit_wanted = True
        self._wake.set()

    def submit(self, name: str, job: Callable[[Progress], object]) -> None:
        """Queue ``job(progress)`` (an export, loading a clip); errors are shown, not raised."""
        with self._idle_lock:
            self._idle.clear()
            self._jobs.put((name, job))
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job or edit is pending (tests, scripted use). True if idle."""
        return self._idle.wait(timeout)

    # ------------------------------------------------------------------ loop

    def _progress(self, fraction: float, message: str) -> None:
        st = self.state.status
        st.progress, st.message = float(fraction), message
        self.on_change()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            while not self._stop.is_set():
                try:
                    name, job = self._jobs.get_nowait()
                except queue.Empty:
                    if not self._edit_wanted:
                        break
                    time.sleep(self.debounce)  # let a dragged slider settle
                    self._edit_wanted = False
                    self._do_edit()
                    continue
                self._do_job(name, job)
            with self._idle_lock:
                if self._jobs.empty() and not self._edit_wanted:
                    self._idle.set()

    def _begin(self, message: str) -> None:
        st = self.state.status
        st.busy, st.progress, st.message = True, 0.0, message
        self.on_change()

    def _end(self, message: str) -> None:
        st = self.state.status
        st.busy, st.progress, st.message = False, 1.0, message
        self.on_change()

    def _do_job(self, name: str, job: Callable[[Progress], object]) -> None:
        self._begin(name)
        t0 = time.perf_counter()
        try:
            result = job(self._progress)
        except Exception as e:  # noqa: BLE001 - any failure is shown in the page, the viewer keeps running
            log.error("%s failed:\n%s", name, traceback.format_exc())
            self.state.status.error = f"{name} failed: {e}"
            self._end(f"{name} failed")
            return
        self._end(f"{name}: done in {time.perf_counter() - t0:.1f} s" + (f" ({result})" if result else ""))

    def _do_edit(self) -> None:
        request = self.state.edit_request(self.merge_gap)
        if request is None:
            self.on_change()
            return
        n_dirty = int(request.dirty.sum())
        self._begin(f"editing {n_dirty} frame(s)")
        t0 = time.perf_counter()
        try:
            if self.resample is None:
                offsets = request.good.offsets
            else:
                offsets = self.resample(request, self._progress)
            clip = Clip(request.target, offsets, request.good.fps)
            self.state.commit(request, clip)
        except Exception as e:  # noqa: BLE001 - a failed edit keeps the last good animation
            log.error("AU edit failed:\n%s", traceback.format_exc())
            self.state.fail(request, f"edit failed: {type(e).__name__}: {e}")
            self._end("edit failed; showing the last good animation")
            return
        self._end(f"edited {n_dirty} frame(s) in {time.perf_counter() - t0:.2f} s")
        if not self.state.is_clean():  # newer edits arrived while sampling
            self._edit_wanted = True
