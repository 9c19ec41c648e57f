"""Per-AU edit curves applied to AU codes (``animate --edits``, the viewer's AU editor).

Edit file (JSON or YAML), AU names in any spelling ``au.au_index`` accepts; values are normalised
intensities (OpenFace 0–5 divided by 5)::

    {
      "AU12": {"keyframes": [[2.0, 0.0], [2.5, 0.6], [4.0, 0.6], [4.5, 0.0]]},  # time (s) -> offset
      "AU04": {"offset": 0.3, "start": 1.0, "end": 3.0},                     # constant offset in [start, end)
      "AU45": {"keyframes": [[0, 0], [1, 1]], "mode": "set", "interpolation": "step"}
    }

``mode``: ``offset`` (default, added to the AU code) or ``set`` (replaces it where the curve is
defined). ``interpolation``: ``linear`` (default), ``step`` or ``smooth`` (cubic ease). Outside the
keyframe range a curve contributes nothing. Offsets must lie in [-1, 1], set values in [0, 1].

Lip lock (on by default): the AUs in ``au.SPEECH_AUS`` carry articulation. Under lip lock an edit
may raise them but never pushes them below the speech value, so the mouth still follows the audio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodifftalk import au

MODES = ("offset", "set")
INTERPOLATIONS = ("linear", "step", "smooth")


class EditError(ValueError):
    """An edit file or curve is invalid; the message names the source and the AU."""


@dataclass(frozen=True)
class AUCurve:
    au_name: str
    times: tuple[float, ...]  # seconds, strictly increasing
    values: tuple[float, ...]
    mode: str = "offset"
    interpolation: str = "linear"

    def evaluate(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Curve value at times ``t`` (T,) and a bool mask of where it is defined."""
        times = np.asarray(self.times, dtype=np.float64)
        values = np.asarray(self.values, dtype=np.float64)
        inside = (t >= times[0]) & (t <= times[-1]) if len(times) > 1 else np.isclose(t, times[0])
        if len(times) == 1:
            return np.full_like(t, values[0]), inside
        if self.interpolation == "step":
            idx = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 1)
            return values[idx], inside
        idx = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
        u = np.clip((t - times[idx]) / (times[idx + 1] - times[idx]), 0.0, 1.0)
        if self.interpolation == "smooth":
            u = u * u * (3.0 - 2.0 * u)
        return values[idx] + u * (values[idx + 1] - values[idx]), inside


def _curve_from_spec(name: str, spec, source: str) -> AUCurve:
    where = f"{source}: {name}"
    try:
        canonical = au.AU_NAMES[au.au_index(name)]
    except ValueError as e:
        raise EditError(f"{source}: {e}") from None
    if isinstance(spec, (int, float)):
        spec = {"offset": float(spec)}
    if not isinstance(spec, dict):
        raise EditError(f"{where}: expected a number or an object with 'keyframes' or 'offset'")
    unknown = set(spec) - {"keyframes", "offset", "start", "end", "mode", "interpolation"}
    if unknown:
        raise EditError(f"{where}: unknown field(s) {sorted(unknown)}")
    mode = spec.get("mode", "offset")
    interp = spec.get("interpolation", "linear")
    if mode not in MODES:
        raise EditError(f"{where}: mode must be one of {MODES}, got {mode!r}")
    if interp not in INTERPOLATIONS:
        raise EditError(f"{where}: interpolation must be one of {INTERPOLATIONS}, got {interp!r}")
    if "keyframes" in spec:
        try:
            pts = [(float(t), float(v)) for t, v in spec["keyframes"]]
        except (TypeError, ValueError):
            raise EditError(f"{where}: keyframes must be a list of [time_seconds, value] pairs") from None
        if not pts:
            raise EditError(f"{where}: keyframes is empty")
    elif "offset" in spec:
        start = float(spec.get("start", 0.0))
        end = float(spec.get("end", 1e9))
        if end <= start:
            raise EditError(f"{where}: end ({end}) must be after start ({start})")
        pts = [(start, float(spec["offset"])), (end, float(spec["offset"]))]
        interp = "step"
    else:
        raise EditError(f"{where}: give 'keyframes' or 'offset'")
    times = [p[0] for p in pts]
    values = [p[1] for p in pts]
    if any(t < 0 or not np.isfinite(t) for t in times):
        raise EditError(f"{where}: keyframe times must be finite and >= 0 seconds")
    if any(b <= a for a, b in zip(times, times[1:])):
        raise EditError(f"{where}: keyframe times must be strictly increasing, got {times}")
    lo, hi = (-1.0, 1.0) if mode == "offset" else (0.0, 1.0)
    bad = [v for v in values if not (lo <= v <= hi)]
    if bad:
        raise EditError(f"{where}: {mode} values must be in [{lo}, {hi}] (normalised AU intensity), got {bad}")
    return AUCurve(canonical, tuple(times), tuple(values), mode, interp)


def parse_edits(data: dict, source: str = "edits") -> list[AUCurve]:
    if not isinstance(data, dict):
        raise EditError(f"{source}: top level must be an object mapping AU names to curves")
    return [_curve_from_spec(str(k), v, source) for k, v in data.items()]


def load_edits(path: str | Path) -> list[AUCurve]:
    path = Path(path)
    if not path.exists():
        raise EditError(f"edit file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - report any parse error with the file name
        raise EditError(f"{path}: cannot parse ({e})") from None
    return parse_edits(data or {}, str(path))


def edits_to_dict(curves: list[AUCurve]) -> dict:
    """Inverse of ``parse_edits`` (what the viewer exports and ``animate --edits`` loads)."""
    return {c.au_name: {"keyframes": [[t, v] for t, v in zip(c.times, c.values)], "mode": c.mode,
                        "interpolation": c.interpolation} for c in curves}


def apply_edits(aus: np.ndarray, curves: list[AUCurve], fps: float, lip_lock: bool = True) -> np.ndarray:
    """Apply edit curves to AU codes ``aus`` (T, 17) sampled at ``fps``; returns a new (T, 17) in [0, 1]."""
    aus = np.asarray(aus, dtype=np.float32)
    if aus.ndim != 2 or aus.shape[1] != au.NUM_AUS:
        raise EditError(f"AU codes must have shape (T, {au.NUM_AUS}), got {aus.shape}")
    t = np.arange(aus.shape[0], dtype=np.float64) / float(fps)
    out = aus.astype(np.float64).copy()
    for curve in curves:
        k = au.AU_INDEX[curve.au_name]
        value, inside = curve.evaluate(t)
        if curve.mode == "offset":
            out[inside, k] += value[inside]
        else:
            out[inside, k] = value[inside]
    out = np.clip(out, 0.0, 1.0)
    if lip_lock:
        locked = np.asarray(au.SPEECH_AU_MASK)
        out[:, locked] = np.maximum(out[:, locked], aus[:, locked])
    return out.astype(np.float32)
