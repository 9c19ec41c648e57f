"""Viewer state without a browser: AU codes, the edit list, the time range, dirty frames, last good clip.

The AU editor works on **range edits**: a time range [start, end] (frames, inclusive) and one offset
per AU that the 17 sliders show while that range is selected. Several ranges may be edited; their
offsets add up per frame (with short linear ramps outside each range so the motion does not jump).
The per-frame sum is turned into one ``edits.AUCurve`` per AU (``mode="offset"``, ``step``
interpolation, one keyframe where the value changes), so ``edits_to_dict(state.curves())`` is what the
viewer exports and ``animate --edits`` reproduces exactly at the same fps.

Target AU codes = ``apply_edits(base, curves, fps, lip_lock)`` with ``base`` = the clip's AU codes,
Text-to-AU-modulated when a text prompt is set. The **good clip** is the last consistent pair
(AU codes, vertex offsets): the viewer always shows it; the frames whose target AU codes differ
from it are **dirty** and the edit worker re-samples their motion. A failed edit keeps the good
clip and records the error.

Thread safety: the GUI callbacks and the edit worker call into one ``ViewerState`` from different
threads; every public method takes the state's lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from emodifftalk import au
from emodifftalk.edits import AUCurve, apply_edits, edits_to_dict
from emodifftalk.text2au.modulation import modulate_aus

CHANGE_EPS = 1e-6  # AU codes closer than this count as unchanged (float32 round-off)


@dataclass
class Clip:
    """A consistent animation: AU codes and the motion made from them (what the viewer shows)."""

    aus: np.ndarray  # (T, 17) float32 in [0, 1]
    offsets: np.ndarray  # (T, V, 3) float32 metres, vertices = template + offsets
    fps: float

    def __post_init__(self) -> None:
        self.aus = np.asarray(self.aus, dtype=np.float32)
        self.offsets = np.asarray(self.offsets, dtype=np.float32)
        if self.aus.ndim != 2 or self.aus.shape[1] != au.NUM_AUS:
            raise ValueError(f"clip AU codes must be (T, {au.NUM_AUS}), got {self.aus.shape}")
        if self.offsets.ndim != 3 or self.offsets.shape[2] != 3 or self.offsets.shape[0] != self.aus.shape[0]:
            raise ValueError(f"clip offsets must be (T={self.aus.shape[0]}, V, 3), got {self.offsets.shape}")
        if not self.fps > 0:
            raise ValueError(f"clip fps must be positive, got {self.fps}")

    @property
    def n_frames(self) -> int:
        return int(self.aus.shape[0])


@dataclass
class EditRequest:
    """A snapshot for the edit worker: make ``target`` consistent, starting from ``good``."""

    version: int
    target: np.ndarray  # (T, 17) target AU codes
    good: Clip
    dirty: np.ndarray  # (T,) bool
    spans: list[tuple[int, int]]  # half-open [a, b) frame spans to re-sample
    reference: np.ndarray | None = None  # (T, 17) unedited AU codes: guidance amplifies the edit only


@dataclass
class Status:
    """What the page shows about editing."""

    busy: bool = False
    progress: float = 0.0  # 0..1 of the running job
    message: str = ""
    error: str | None = None
    dirty_frames: int = 0


def frame_spans(mask: np.ndarray, merge_gap: int = 0) -> list[tuple[int, int]]:
    """Half-open [a, b) runs of True in ``mask`` (T,); runs at most ``merge_gap`` frames apart are merged."""
    mask = np.asarray(mask, dtype=bool)
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    spans = []
    a = prev = int(idx[0])
    for i in idx[1:]:
        i = int(i)
        if i - prev - 1 > merge_gap:
            spans.append((a, prev + 1))
            a = i
        prev = i
    spans.append((a, prev + 1))
    return spans


def track_to_curves(track: np.ndarray, fps: float) -> list[AUCurve]:
    """Per-frame AU offsets (T, 17) → one step ``AUCurve`` per AU that has a non-zero offset.

    Keyframes sit at the first non-zero frame, at every frame where the value changes, and at the
    last non-zero frame, at times ``frame / fps``; ``apply_edits`` at ``fps`` gives back ``track``
    exactly (the same float64 division makes the keyframe times and the frame times equal).
    """
    track = np.asarray(track, dtype=np.float64)
    curves = []
    for k, name in enumerate(au.AU_NAMES):
        col = track[:, k]
        nz = np.flatnonzero(col != 0.0)
        if nz.size == 0:
            continue
        lo, hi = int(nz[0]), int(nz[-1])
        keys = [lo] + [f for f in range(lo + 1, hi + 1) if col[f] != col[f - 1]]
        if keys[-1] != hi:
            keys.append(hi)
        curves.append(AUCurve(name, tuple(f / float(fps) for f in keys), tuple(float(col[f]) for f in keys),
                              mode="offset", interpolation="step"))
    return curves


@dataclass
class RangeEdit:
    start: int  # first frame, inclusive
    end: int  # last frame, inclusive
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(au.NUM_AUS))  # (17,) in [-1, 1]


class ViewerState:
    """AU codes, range edits, text prompt, lip lock and the last good clip of one viewer session."""

    def __init__(self, clip: Clip, *, lip_lock: bool = True, ramp_seconds: float = 0.12,
                 text_params: dict | None = None):
        self._lock = threading.RLock()
        self.lip_lock = bool(lip_lock)
        self.ramp_seconds = float(ramp_seconds)
        # modulate_aus keyword arguments (alpha, beta, target) from cfg.text2au
        self.text_params = dict(text_params or {})
        self.status = Status()
        self._reset(clip)

    def _reset(self, clip: Clip) -> None:
        self.good = clip
        self.source_aus = clip.aus.copy()  # AU codes before text and edits (speech or a loaded clip)
        self.text = ""
        self.text_probs: np.ndarray | None = None
        self.edits: dict[tuple[int, int], RangeEdit] = {}
        self.range = (0, clip.n_frames - 1)
        self.version = 0  # bumped by every change of the target AU codes
        self.good_version = 0  # the version the good clip was made for
        self.failed_version: int | None = None
        self.status = Status()

    # ------------------------------------------------------------------ queries

    @property
    def fps(self) -> float:
        return self.good.fps

    @property
    def n_frames(self) -> int:
        return self.good.n_frames

    @property
    def ramp_frames(self) -> int:
        return max(0, round(self.ramp_seconds * self.fps))

    def slider_values(self) -> np.ndarray:
        """(17,) the offsets of the selected range (zeros if it has no edit yet)."""
        with self._lock:
            e = self.edits.get(self.range)
            return np.zeros(au.NUM_AUS) if e is None else e.offsets.copy()

    def base_aus(self) -> np.ndarray:
        """(T, 17) the clip's AU codes, modulated by the text prompt's AU probabilities if one is set."""
        with self._lock:
            if self.text_probs is None:
                return self.source_aus.copy()
            return np.asarray(modulate_aus(self.source_aus, self.text_probs, lip_lock=self.lip_lock,
                                           **self.text_params), dtype=np.float32)

    def range_weights(self, edit: RangeEdit) -> np.ndarray:
        """(T,) 1 inside [start, end], linear ramp to 0 over ``ramp_frames`` outside, 0 beyond."""
        f = np.arange(self.n_frames)
        dist = np.maximum(edit.start - f, f - edit.end).clip(min=0)
        return np.clip(1.0 - dist / (self.ramp_frames + 1.0), 0.0, 1.0)

    def offset_track(self) -> np.ndarray:
        """(T, 17) per-frame AU offsets: the sum of all range edits, clipped to [-1, 1]."""
        with self._lock:
            track = np.zeros((self.n_frames, au.NUM_AUS))
            for e in self.edits.values():
                if np.any(e.offsets != 0):
                    track += self.range_weights(e)[:, None] * e.offsets[None]
            return np.clip(track, -1.0, 1.0)

    def curves(self) -> list[AUCurve]:
        return track_to_curves(self.offset_track(), self.fps)

    def edits_dict(self) -> dict:
        """The edit curves in ``edits_to_dict`` form (JSON for ``animate --edits``)."""
        return edits_to_dict(self.curves())

    def target_aus(self) -> np.ndarray:
        """(T, 17) the AU codes the current edits ask for."""
        with self._lock:
            return apply_edits(self.base_aus(), self.curves(), self.fps, lip_lock=self.lip_lock)

    def dirty_mask(self, target: np.ndarray | None = None) -> np.ndarray:
        """(T,) True where the target AU codes differ from the good clip's."""
        with self._lock:
            target = self.target_aus() if target is None else target
            return np.abs(target - self.good.aus).max(axis=1) > CHANGE_EPS

    def is_clean(self) -> bool:
        return not self.dirty_mask().any()

    def edit_request(self, merge_gap: int = 0) -> EditRequest | None:
        """Snapshot for the worker, or None when nothing needs doing (clean, or this version already failed)."""
        with self._lock:
            if self.failed_version == self.version:
                return None
            target = self.target_aus()
            dirty = self.dirty_mask(target)
            if not dirty.any():
                self.good_version = self.version
                self.status.dirty_frames = 0
                return None
            return EditRequest(self.version, target, self.good, dirty, frame_spans(dirty, merge_gap),
                               reference=self.source_aus.copy())

    # ------------------------------------------------------------------ edits

    def _changed(self) -> None:
        self.version += 1
        self.status.error = None

    def set_range(self, start: int, end: int) -> None:
        """Select frames [start, end] (inclusive, clamped to the clip); the sliders then show its offsets."""
        with self._lock:
            last = self.n_frames - 1
            start, end = int(np.clip(start, 0, last)), int(np.clip(end, 0, last))
            if end < start:
                start, end = end, start
            self.range = (start, end)

    def set_range_seconds(self, start_s: float, end_s: float) -> None:
        self.set_range(round(start_s * self.fps), round(end_s * self.fps))

    def select_whole_clip(self) -> None:
        self.set_range(0, self.n_frames - 1)

    def set_offset(self, au_name: str | int, value: float) -> bool:
        """Offset of one AU in the selected range; returns True when the value changed."""
        k = au_name if isinstance(au_name, int) else au.au_index(au_name)
        value = float(np.clip(value, -1.0, 1.0))
        with self._lock:
            e = self.edits.setdefault(self.range, RangeEdit(*self.range))
            if e.offsets[k] == value:
                return False
            e.offsets = e.offsets.copy()
            e.offsets[k] = value
            if not np.any(e.offsets != 0):
                del self.edits[self.range]
            self._changed()
            return True

    def set_offsets(self, values) -> bool:
        """All 17 offsets of the selected range at once."""
        values = np.clip(np.asarray(values, dtype=np.float64).reshape(au.NUM_AUS), -1.0, 1.0)
        with self._lock:
            old = self.slider_values()
            if np.array_equal(old, values):
                return False
            if np.any(values != 0):
                self.edits[self.range] = RangeEdit(*self.range, offsets=values.copy())
            else:
                self.edits.pop(self.range, None)
            self._changed()
            return True

    def clear_edits(self) -> bool:
        with self._lock:
            if not self.edits:
                return False
            self.edits.clear()
            self._changed()
            return True

    def set_lip_lock(self, on: bool) -> bool:
        with self._lock:
            if self.lip_lock == bool(on):
                return False
            self.lip_lock = bool(on)
            self._changed()
            return True

    def set_text(self, text: str, probs) -> None:
        """Text prompt and its (17,) AU probabilities from Text-to-AU; empty text removes it."""
        with self._lock:
            if not text:
                self.text, self.text_probs = "", None
            else:
                p = np.asarray(probs, dtype=np.float32).reshape(-1)
                if p.shape != (au.NUM_AUS,):
                    raise ValueError(f"text AU probabilities must have {au.NUM_AUS} entries, got {p.shape}")
                self.text, self.text_probs = text, p
            self._changed()

    # ------------------------------------------------------------------ worker results

    def commit(self, request: EditRequest, clip: Clip) -> None:
        """The worker made ``clip`` for ``request``: it becomes the good clip (even if newer edits came)."""
        with self._lock:
            if clip.aus.shape != self.good.aus.shape:
                raise ValueError(f"committed clip has {clip.n_frames} frames, the session has {self.n_frames}")
            self.good = clip
            self.good_version = request.version
            if self.failed_version is not None and self.failed_version <= request.version:
                self.failed_version = None
            self.status.error = None
            self.status.dirty_frames = int(self.dirty_mask().sum())

    def fail(self, request: EditRequest, error: str) -> None:
        """The edit for ``request`` failed: keep the good clip, show the error, do not retry this version."""
        with self._lock:
            self.failed_version = request.version
            self.status.error = error

    def replace_clip(self, clip: Clip) -> None:
        """A new clip (e.g. generated from a wav): edits, text and range start over."""
        with self._lock:
            self._reset(clip)
