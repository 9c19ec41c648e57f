"""Re-sample the motion of edited frames, in a worker thread so the page stays responsive.

``resample_spans`` re-runs the diffusion sampler (few DDIM steps) only where the AU codes changed:
for a dirty span [a, b) it samples frames [a, b + fade) window by window (``motion_inference``'s rule:
each window's first frames are the already known frames before it, inpainted as context), then
cross-fades the last ``fade`` frames back into the old motion, so the frames around the edit keep
their motion and the seams do not jump. The feature-line opacity needs no sampling: it is computed
from the AU codes when a frame is shown or rendered.

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

from emodifftalk.au import NUM_AUS
from emodifftalk.motion_inference import reference_window, window_model_fn
from emodifftalk.viewer.state import Clip, EditRequest, ViewerState

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]  # (fraction 0..1, message)


def _noop(_f: float, _m: str) -> None:
    pass


@torch.no_grad()
def resample_spans(model, schedule, template: torch.Tensor, aus: np.ndarray, feats: torch.Tensor | None,
                   old_offsets: np.ndarray, spans: list[tuple[int, int]], cfg, *, steps: int = 8,
                   sampler: str | None = None, seed: int = 0, window_frames: int | None = None,
                   context_frames: int | None = None, fade_frames: int = 4,
                   guidance_scale: float | None = None, reference_aus: np.ndarray | None = None,
                   progress: Progress = _noop) -> np.ndarray:
    """New offsets (T, V, 3) metres: frames in ``spans`` (+ a fade after each) re-sampled for ``aus``.

    model: a ``Denoiser`` (eval); schedule: its ``NoiseSchedule`` (None for the regression baseline);
    template (V, 3) metres; aus (T, 17) target AU codes; feats (Ta, D) audio features of the whole clip
    at ``model.feature_rate`` or None (null audio); old_offsets (T, V, 3) the good clip's motion;
    spans: half-open [a, b) frame spans whose AU codes changed. Frames outside ``spans`` and their
    fades are returned unchanged (bit for bit). ``guidance_scale``: default ``cfg.diffusion.guidance_scale``;
    ``reference_aus`` (T, 17): guide away from these codes, not the null condition
    (``motion_inference``'s "Guidance"; windows where they equal ``aus`` are sampled unguided).
    """
    d = cfg.diffusion
    guidance = d.guidance_scale if guidance_scale is None else float(guidance_scale)
    sampler = sampler or ("regression" if d.regression else d.sampler)
    if sampler not in ("ddim", "ddpm", "regression"):
        raise ValueError(f"sampler must be ddim, ddpm or regression, got {sampler!r}")
    if sampler != "regression" and schedule is None:
        raise ValueError(f"sampler {sampler!r} needs a NoiseSchedule")
    window = int(window_frames or d.window_frames)
    context = int(d.context_frames if context_frames is None else context_frames)
    if window < 1 or not 0 <= context < window:
        raise ValueError(f"need window >= 1 and 0 <= context < window, got {window}, {context}")
    aus = np.asarray(aus, dtype=np.float32)
    n_frames, n_verts = old_offsets.shape[:2]
    assert aus.shape == (n_frames, NUM_AUS), f"aus must be ({n_frames}, {NUM_AUS}), got {aus.shape}"
    assert template.shape == (n_verts, 3), f"template must be ({n_verts}, 3), got {tuple(template.shape)}"
    scale = float(model.offset_scale)
    if not scale > 0:
        raise ValueError("motion model offset_scale is not set (untrained model?)")
    device = next(model.parameters()).device
    code = model.encode_template(template[None].to(device=device, dtype=torch.float32))
    feats_b = feats[None].to(device=device, dtype=torch.float32) if feats is not None else None
    aus_t = torch.from_numpy(aus).to(device)
    ref_t = None
    if reference_aus is not None:
        ref = np.asarray(reference_aus, dtype=np.float32)
        assert ref.shape == aus.shape, f"reference_aus must be {aus.shape}, got {ref.shape}"
        ref_t = torch.from_numpy(ref).to(device)
    old = torch.from_numpy(np.ascontiguousarray(old_offsets, dtype=np.float32)) / scale  # diffusion units
    out = old.clone()
    gen = torch.Generator().manual_seed(seed)

    plan = []  # per span: its (start, length, n_ctx) windows and its fade [b, end)
    for a, b in spans:
        if not 0 <= a < b <= n_frames:
            raise ValueError(f"span [{a}, {b}) outside the clip's {n_frames} frames")
        end = min(n_frames, b + fade_frames)
        windows, pos = [], a
        while pos < end:
            n_ctx = min(context, pos)
            start = pos - n_ctx
            length = min(window, end - start)
            windows.append((start, length, n_ctx))
            pos = start + length
        plan.append((windows, b, end))
    per_window = 1 if sampler == "regression" else (steps if sampler == "ddim" else schedule.num_train_steps)
    total = max(1, sum(len(w) for w, _, _ in plan) * per_window)
    done = 0

    def tick(*_):
        nonlocal done
        done += 1
        progress(done / total, f"sampling motion {done}/{total}")

    def sample_window(start: int, length: int, n_ctx: int) -> None:
        ref_w, window_guidance = reference_window(ref_t, aus_t, start, length, guidance)
        model_fn = window_model_fn(model, code, aus_t[None, start:start + length], feats_b, start, ref_w)

        shape = (1, length, n_verts, 3)
        if sampler == "regression":
            pred = model_fn(torch.zeros(shape, device=device), torch.zeros(1, dtype=torch.long, device=device),
                            None, False)[0].cpu()
            if n_ctx:  # the context frames are known: cross-fade into the prediction over them
                w = torch.linspace(1, 0, n_ctx + 2)[1:-1].view(-1, 1, 1)
                pred[:n_ctx] = w * out[start:start + n_ctx] + (1 - w) * pred[:n_ctx]
            out[start:start + length] = pred
            tick()
            return
        from emodifftalk.diffusion.sampler import ddim_sample, ddpm_sample

        known = out[None, start:start + n_ctx].to(device) if n_ctx else None
        kwargs = {"cond": None, "generator": gen, "guidance_scale": window_guidance, "known_x0": known,
                  "context": n_ctx, "device": device, "callback": tick}
        if sampler == "ddim":
            x0 = ddim_sample(model_fn, shape, schedule, steps, **kwargs)
        else:
            x0 = ddpm_sample(model_fn, shape, schedule, **kwargs)
        out[start + n_ctx:start + length] = x0[0, n_ctx:].float().cpu()

    result = np.array(old_offsets, dtype=np.float32, copy=True)  # untouched frames stay bit for bit
    for (windows, b, end), (a, _) in zip(plan, spans):
        for start, length, n_ctx in windows:
            sample_window(start, length, n_ctx)
        if end > b:  # new motion → old motion over [b, end); weight of the new 1 → 0
            w = torch.linspace(1, 0, end - b + 2)[1:-1].view(-1, 1, 1)
            out[b:end] = w * out[b:end] + (1 - w) * old[b:end]
        result[a:end] = (out[a:end] * scale).numpy()
    return result


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
            from emodifftalk.models.speech_inference import extract_features

            mcfg = self.models.motion_cfg
            device = next(self.models.motion.parameters()).device
            self._feats = extract_features(self.models.motion_frontend, self.audio, mcfg.s2au.window_seconds,
                                           mcfg.s2au.overlap_seconds, device).float()
        return self._feats

    def __call__(self, request: EditRequest, progress: Progress = _noop) -> np.ndarray:
        mcfg = self.models.motion_cfg
        return resample_spans(self.models.motion, self.models.schedule, self.template, request.target,
                              self.features(), request.good.offsets, request.spans, mcfg, steps=self.steps,
                              seed=self.seed, window_frames=self.cfg.infer.window_frames,
                              context_frames=self.cfg.infer.overlap_frames,
                              guidance_scale=self.cfg.infer.guidance_scale,
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
