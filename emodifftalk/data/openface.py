"""OpenFace 2.x ``FeatureExtraction`` CSV: the AU label source (paper supp. §2, "GT from OpenFace").

Format notes (what real files look like)
----------------------------------------
* Header and rows are separated by ``", "``: every column name but the first carries a leading
  space (``frame, face_id, timestamp, confidence, success, ..., AU01_r, ...``). We strip names, so
  padded and unpadded files both read.
* Intensities ``AU*_r`` are on OpenFace's 0..5 scale; we store ``AU/5`` clipped to [0, 1].
* OpenFace 2.x writes ``AU*_r`` for 01 02 04 05 06 07 09 10 12 14 15 17 20 23 25 26 45 and
  ``AU*_c`` for the same plus 28. **There is no AU24 column**: AU24 (lip pressor, one of the
  paper's 17) is therefore marked invalid in the mask (``au.OPENFACE_MISSING_AUS``) unless a file
  happens to carry an ``AU24_r`` column (e.g. labels from another tracker written in this
  format). AU20 is read by nobody: it is not one of the paper's 17.
* Rows with ``success == 0`` or ``confidence < min_confidence`` are tracking failures: their AUs
  get value 0 and mask False, never treated as valid zeros.
* Only the face with the smallest ``face_id`` is kept if a file holds several faces.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodifftalk.au import (
    AU_NAMES,
    NUM_AUS,
    OPENFACE_MAX_INTENSITY,
    OPENFACE_MISSING_AUS,
)
from emodifftalk.utils import atomic_write_text

log = logging.getLogger(__name__)

# What OpenFace 2.x writes, in its own column order.
OPENFACE_INTENSITY_AUS: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15",
    "AU17", "AU20", "AU23", "AU25", "AU26", "AU45",
)
OPENFACE_PRESENCE_AUS: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15",
    "AU17", "AU20", "AU23", "AU25", "AU26", "AU28", "AU45",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("timestamp", "success", "confidence") + tuple(
    f"{a}_r" for a in AU_NAMES if a not in OPENFACE_MISSING_AUS)

# Snap a target time onto a source timestamp closer than this (OpenFace rounds to 1 ms).
_SNAP_SECONDS = 1.5e-3


class OpenFaceError(ValueError):
    """A malformed OpenFace CSV; the message names the file and the column/row."""


@dataclass
class OpenFaceAUs:
    """AU labels of one clip, in the paper's AU order (``emodifftalk.au.AU_NAMES``).

    aus:        (T, 17) float32 in [0, 1] (0 where invalid)
    mask:       (T, 17) bool, True = a valid observation (AU24 is False for OpenFace 2.x files)
    timestamps: (T,) float64 seconds
    """

    aus: np.ndarray
    mask: np.ndarray
    timestamps: np.ndarray

    def __post_init__(self) -> None:
        t = self.timestamps.shape[0]
        assert self.aus.shape == (t, NUM_AUS), self.aus.shape
        assert self.mask.shape == (t, NUM_AUS), self.mask.shape

    @property
    def n_frames(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def frame_valid(self) -> np.ndarray:
        """(T,) True where the tracker succeeded (any AU valid)."""
        return self.mask.any(axis=1)


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def _to_float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return float("nan")  # e.g. "-nan(ind)" from MSVC builds; judged below like any NaN


def read_openface_csv(path: str | Path, fps: float | None = None, n_frames: int | None = None,
                      min_confidence: float = 0.75) -> OpenFaceAUs:
    """Read an OpenFace 2.x CSV into normalised AUs + validity mask (see module docstring).

    fps:      if given, resample onto frames ``i / fps`` for ``i in range(n_frames)`` using the
              timestamps (linear between neighbours; valid only if both neighbours are valid;
              a target time that coincides with a source row takes that row).
              ``n_frames`` defaults to ``round(last_timestamp * fps) + 1``.
    n_frames: without ``fps``: rows are frames; truncate, or pad with invalid frames.
    Raises ``OpenFaceError`` naming the file and column on malformed input.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OpenFace CSV not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if any(c.strip() for c in r)]
    if not rows:
        raise OpenFaceError(f"OpenFace CSV {path} is empty (no header)")
    header = [c.strip() for c in rows[0]]
    body = rows[1:]
    col = {name: i for i, name in enumerate(header)}
    missing = [c for c in REQUIRED_COLUMNS if c not in col]
    if missing:
        raise OpenFaceError(f"OpenFace CSV {path}: missing column(s) {', '.join(missing)} "
                            f"(expected OpenFace 2.x FeatureExtraction output with AU intensities)")
    if not body:
        raise OpenFaceError(f"OpenFace CSV {path} has a header but no rows")
    for ln, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise OpenFaceError(f"OpenFace CSV {path}: line {ln} has {len(r)} values, "
                                f"header has {len(header)} columns")

    def column(name: str) -> np.ndarray:
        j = col[name]
        return np.array([_to_float(r[j]) for r in body], dtype=np.float64)

    lines = np.arange(2, len(body) + 2)
    if "face_id" in col:
        face_id = column("face_id")
        if np.unique(face_id[np.isfinite(face_id)]).size > 1:
            keep_id = np.nanmin(face_id)
            log.warning("%s holds several faces; keeping face_id %d", path, int(keep_id))
            keep = face_id == keep_id
            body = [r for r, k in zip(body, keep) if k]
            lines = lines[keep]

    if "frame" in col:  # one row per video frame: a repeated number means a merged or edited file
        frame_no = column("frame")
        _, first, counts = np.unique(frame_no, return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = int(np.argmax(counts > 1))
            raise OpenFaceError(f"OpenFace CSV {path}: frame number {frame_no[first[dup]]:g} appears "
                                f"{counts[dup]} times (first on line {lines[first[dup]]}); one row per frame expected")

    ts, success, conf = column("timestamp"), column("success"), column("confidence")
    for name, arr in (("timestamp", ts), ("success", success), ("confidence", conf)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise OpenFaceError(f"OpenFace CSV {path}: column {name} has a non-numeric/NaN value "
                                f"on line {lines[bad][0]}")
    steps = np.diff(ts)
    if (steps <= 0).any():
        k = int(np.argmax(steps <= 0))
        raise OpenFaceError(f"OpenFace CSV {path}: column timestamp is not increasing "
                            f"({ts[k]} then {ts[k + 1]} on line {lines[k + 1]})")

    valid_row = (success > 0.5) & (conf >= min_confidence)
    t = len(body)
    aus = np.zeros((t, NUM_AUS), dtype=np.float32)
    mask = np.zeros((t, NUM_AUS), dtype=bool)
    out_of_range: list[str] = []
    for k, au in enumerate(AU_NAMES):
        name = f"{au}_r"
        if name not in col:  # AU24 in every OpenFace 2.x file: unobserved
            continue
        vals = column(name)
        bad = valid_row & ~np.isfinite(vals)
        if bad.any():
            raise OpenFaceError(f"OpenFace CSV {path}: column {name} is NaN/non-numeric on line "
                                f"{lines[bad][0]} of a successfully tracked frame")
        outside = valid_row & ((vals < 0) | (vals > OPENFACE_MAX_INTENSITY))
        if outside.any():
            out_of_range.append(f"{name}: {int(outside.sum())} (e.g. {vals[outside][0]:g} on line {lines[outside][0]})")
        aus[valid_row, k] = np.clip(vals[valid_row] / OPENFACE_MAX_INTENSITY, 0.0, 1.0)
        mask[:, k] = valid_row
    if out_of_range:
        log.warning("%s: AU intensities outside OpenFace's 0-%g range, clipped: %s", path,
                    OPENFACE_MAX_INTENSITY, "; ".join(out_of_range))

    if fps is not None:
        return _resample_to_fps(aus, mask, ts, float(fps), n_frames, path)
    if n_frames is not None:
        aus, mask, ts = _fit_length(aus, mask, ts, int(n_frames))
    return OpenFaceAUs(aus=aus, mask=mask, timestamps=ts)


def _fit_length(aus, mask, ts, n):
    t = aus.shape[0]
    if n <= t:
        return aus[:n], mask[:n], ts[:n]
    dt = float(np.median(np.diff(ts))) if t > 1 else 0.0
    pad = n - t
    ts_pad = ts[-1] + dt * np.arange(1, pad + 1)
    return (np.concatenate([aus, np.zeros((pad, NUM_AUS), np.float32)]),
            np.concatenate([mask, np.zeros((pad, NUM_AUS), bool)]), np.concatenate([ts, ts_pad]))


def _resample_to_fps(aus, mask, ts, fps, n_frames, path) -> OpenFaceAUs:
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps} (reading {path})")
    if n_frames is None:
        n_frames = int(round(ts[-1] * fps)) + 1
    target = np.arange(int(n_frames), dtype=np.float64) / fps
    dt = float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0 / fps
    out = np.zeros((len(target), NUM_AUS), np.float32)
    out_mask = np.zeros((len(target), NUM_AUS), bool)
    right = np.searchsorted(ts, target, side="left")  # first source time >= target
    for i, tt in enumerate(target):
        r = right[i]
        if r < len(ts) and abs(ts[r] - tt) <= _SNAP_SECONDS:
            out[i], out_mask[i] = aus[r], mask[r]
        elif r > 0 and abs(ts[r - 1] - tt) <= _SNAP_SECONDS:
            out[i], out_mask[i] = aus[r - 1], mask[r - 1]
        elif r == 0 or r == len(ts):  # outside the tracked span: only within half a source frame
            e = 0 if r == 0 else len(ts) - 1
            if abs(ts[e] - tt) <= 0.5 * dt:
                out[i], out_mask[i] = aus[e], mask[e]
        else:
            w = (tt - ts[r - 1]) / (ts[r] - ts[r - 1])
            out[i] = (1 - w) * aus[r - 1] + w * aus[r]
            out_mask[i] = mask[r - 1] & mask[r]
    out[~out_mask] = 0.0
    return OpenFaceAUs(aus=out, mask=out_mask, timestamps=target)


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def write_openface_csv(path: str | Path, aus: np.ndarray, fps: float, success=None, confidence=None,
                       frame_offset: int = 0) -> Path:
    """Write AUs (T, 17) in [0, 1] (paper order) as an OpenFace 2.x FeatureExtraction CSV.

    Columns: ``frame, face_id, timestamp, confidence, success, AU*_r (17, OpenFace order, with
    AU20 = 0 and no AU24), AU*_c (18, + AU28)`` with OpenFace's ", " separators. Intensities are
    ``aus * 5`` with 2 decimals; failure rows (``success == 0``) have all AUs 0 like OpenFace.
    ``frame`` is 1-based like OpenFace's, offset by ``frame_offset``; timestamp = (frame - 1) / fps.
    """
    aus = np.asarray(aus, dtype=np.float64)
    if aus.ndim != 2 or aus.shape[1] != NUM_AUS:
        raise ValueError(f"aus must be (T, {NUM_AUS}), got {aus.shape} (writing {path})")
    t = aus.shape[0]
    success = np.ones(t, bool) if success is None else np.asarray(success).astype(bool)
    if confidence is None:
        confidence = np.where(success, 0.98, 0.0)
    confidence = np.asarray(confidence, dtype=np.float64)
    if success.shape != (t,) or confidence.shape != (t,):
        raise ValueError(f"success/confidence must be ({t},) (writing {path})")
    from emodifftalk.au import AU_INDEX

    intens = np.zeros((t, len(OPENFACE_INTENSITY_AUS)))
    for j, au in enumerate(OPENFACE_INTENSITY_AUS):
        if au in AU_INDEX:
            intens[:, j] = np.clip(aus[:, AU_INDEX[au]], 0.0, 1.0) * OPENFACE_MAX_INTENSITY
    intens[~success] = 0.0
    r_of = dict(zip(OPENFACE_INTENSITY_AUS, intens.T))
    presence = np.zeros((t, len(OPENFACE_PRESENCE_AUS)))
    for j, au in enumerate(OPENFACE_PRESENCE_AUS):
        if au in r_of:  # OpenFace's classifier fires roughly where the intensity exceeds 1
            presence[:, j] = (r_of[au] >= 1.0).astype(float)

    names = (["frame", "face_id", "timestamp", "confidence", "success"]
             + [f"{a}_r" for a in OPENFACE_INTENSITY_AUS] + [f"{a}_c" for a in OPENFACE_PRESENCE_AUS])
    lines = [", ".join(names)]
    for i in range(t):
        frame = frame_offset + i + 1
        vals = [str(frame), "0", f"{(frame - 1) / fps:.3f}", f"{confidence[i]:.2f}",
                str(int(success[i]))]
        vals += [f"{v:.2f}" for v in intens[i]]
        vals += [f"{v:.2f}" for v in presence[i]]
        lines.append(", ".join(vals))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)
