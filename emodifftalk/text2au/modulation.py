"""Text-driven modulation of speech AU codes (paper: Text-to-AU emotion controller -> AU codes).

Given speech-driven AU codes ``E`` (T, 17) in [0, 1] and text AU probabilities ``y`` (17,)::

    E' = E * (1 + alpha * y) - beta * (1 - y) * E          (boost requested AUs, damp the others)
    E' = max(E', target * y)                                (a requested AU needs no speech activation)
    E' = clamp(E', 0, 1)

The second line is our addition: the multiplicative rule alone cannot create an AU that speech
never activates (E = 0 stays 0), so "a smile" would do nothing on a neutral talking face.
A requested AU (y ~ 1) is raised to at least ``target``; where speech already drives it harder
the max keeps the speech value. For y ~ 0 the floor is ~0 and changes nothing.

Lip lock (``lip_lock=True``) protects articulation. ``au.SPEECH_AUS`` marks AU10..AU26 as mouth
AUs; we split them by what they carry:

* ``ARTICULATION_AUS`` AU10, AU17, AU23, AU24, AU25, AU26 -- lip closure for /p b m/, lip
  tension, jaw opening, upper lip for /f v/: kept exactly as speech drives them.
* ``LIP_CORNER_AUS`` AU12, AU14, AU15 -- lip-corner pull / dimpler / depressor carry most of the
  emotion in the lower face and little articulation: editable by blending *upward only*,
  ``max(E, E')``. A smile or frown can be added on top of speech, but the edit never removes
  lip-corner motion the speech produced (e.g. the spread of /i/).

Without lip lock every AU follows the formula.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from emodifftalk.au import AU_INDEX, NUM_AUS, SPEECH_AU_MASK, SPEECH_AUS
from emodifftalk.data.audio import SAMPLE_RATE, frame_levels_db

ARTICULATION_AUS: tuple[str, ...] = ("AU10", "AU17", "AU23", "AU24", "AU25", "AU26")
LIP_CORNER_AUS: tuple[str, ...] = ("AU12", "AU14", "AU15")
assert set(ARTICULATION_AUS) | set(LIP_CORNER_AUS) == set(SPEECH_AUS)


def _mask(names: tuple[str, ...]) -> Tensor:
    m = torch.zeros(NUM_AUS, dtype=torch.bool)
    m[[AU_INDEX[n] for n in names]] = True
    return m


def modulate_aus(E, y, alpha: float = 1.0, beta: float = 0.5, lip_lock: bool = True, target: float = 0.6):
    """E (T, 17) in [0, 1], y (17,) or (T, 17) probabilities in [0, 1] -> (T, 17) in [0, 1].

    Returns the same kind (torch tensor / numpy array) as ``E``. ``alpha`` >= 0 boosts requested
    AUs, ``beta`` in [0, 1] attenuates the others, ``target`` in [0, 1] is the level a requested
    AU reaches when speech does not activate it.
    """
    as_numpy = isinstance(E, np.ndarray)
    E_t = torch.as_tensor(E, dtype=torch.float32)
    y_t = torch.as_tensor(y, dtype=torch.float32, device=E_t.device)
    if E_t.dim() != 2 or E_t.shape[1] != NUM_AUS:
        raise ValueError(f"E must be (T, {NUM_AUS}) AU codes, got {tuple(E_t.shape)}")
    if y_t.shape not in ((NUM_AUS,), tuple(E_t.shape)):
        raise ValueError(f"y must be ({NUM_AUS},) or {tuple(E_t.shape)} probabilities, got {tuple(y_t.shape)}")
    if alpha < 0 or not 0 <= beta <= 1 or not 0 <= target <= 1:
        raise ValueError(f"need alpha >= 0, 0 <= beta <= 1, 0 <= target <= 1 (got {alpha}, {beta}, {target})")
    if not torch.isfinite(E_t).all() or not torch.isfinite(y_t).all():
        raise ValueError("E and y must be finite")
    y_t = y_t.clamp(0, 1)
    E_c = E_t.clamp(0, 1)

    out = E_c * (1 + alpha * y_t) - beta * (1 - y_t) * E_c
    out = torch.maximum(out, target * y_t.expand_as(out))
    out = out.clamp(0, 1)
    if lip_lock:
        locked = _mask(ARTICULATION_AUS).to(out.device)
        corner = _mask(LIP_CORNER_AUS).to(out.device)
        out = torch.where(locked, E_c, out)
        out = torch.where(corner, torch.maximum(E_c, out), out)
    return out.numpy() if as_numpy else out


# --------------------------------------------------------------------------------------------
# Dynamics: the text's AUs rise and fall with the speech
# --------------------------------------------------------------------------------------------
#
# A constant text request reads as a mask glued on the face, and lower-face AUs held through a
# pause move a mouth that should rest. ``text_envelope`` turns the speech into a (T,) gain in
# [0, 1]: loudness (frame RMS in dB relative to the clip's loud frames; louder, stressed syllables
# give more expression) smoothed by an attack/release follower (the expression sets in over
# ``onset_s`` and relaxes over ``release_s`` in pauses), times clip-level fade-in / fade-out ramps
# of ``ramp_s``. ``dynamic_text_aus`` applies it per AU: upper-face AUs never drop below
# ``pause_level`` (an emotion lingers in the eyes and brows through a pause), lower-face AUs follow
# the envelope fully (the mouth rests when the speaker does). ``strength`` scales the request.

DYNAMICS_RANGE_DB = 30.0  # frames this far below the loud (95th percentile) frames count as silence


def loudness_activity(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
    """(n_frames,) in [0, 1]: per-video-frame RMS loudness mapped from [peak - 30 dB, peak] to [0, 1]."""
    db = frame_levels_db(np.asarray(audio).reshape(-1), n_frames, fps, sample_rate)
    peak = np.percentile(db, 95) if n_frames else 0.0
    return np.clip((db - (peak - DYNAMICS_RANGE_DB)) / DYNAMICS_RANGE_DB, 0.0, 1.0)


def articulation_activity(E) -> np.ndarray:
    """(T,) in [0, 1] from speech AU codes (T, 17): how open / active the mouth is, a stand-in for
    loudness when no audio is at hand."""
    E = np.asarray(E, dtype=np.float64)
    idx = [AU_INDEX[a] for a in ("AU25", "AU26", "AU10", "AU23")]
    act = E[:, idx].max(1)
    peak = np.percentile(act, 95) if len(act) else 1.0
    return np.clip(act / max(peak, 1e-6), 0.0, 1.0)


def follow(activity: np.ndarray, fps: float, onset_s: float, release_s: float) -> np.ndarray:
    """Attack/release envelope follower: rises toward ``activity`` with time constant ``onset_s``,
    falls with ``release_s``."""
    up = 1 - np.exp(-1 / (fps * max(onset_s, 1e-6)))
    down = 1 - np.exp(-1 / (fps * max(release_s, 1e-6)))
    env = np.zeros(len(activity))
    level = 0.0
    for t, a in enumerate(activity):
        level += (up if a > level else down) * (a - level)
        env[t] = level
    return env


def edge_ramps(n_frames: int, fps: float, ramp_s: float) -> np.ndarray:
    """(T,) fade-in over the first and fade-out over the last ``ramp_s`` seconds (smoothstep; 0 at
    the first and last frame)."""
    k = np.arange(n_frames)
    if ramp_s <= 0:
        return np.ones(n_frames)
    x = np.clip(np.minimum(k, n_frames - 1 - k) / (ramp_s * fps), 0, 1)
    return x * x * (3 - 2 * x)


def text_envelope(n_frames: int, fps: float, *, audio=None, sample_rate: int = SAMPLE_RATE, speech_aus=None,
                  onset_s: float = 0.15, release_s: float = 0.6) -> np.ndarray:
    """(T,) gain in [0, 1] that follows the speech (audio loudness, else the speech AU codes, else 1)."""
    if audio is not None:
        activity = loudness_activity(audio, sample_rate, fps, n_frames)
    elif speech_aus is not None:
        activity = articulation_activity(speech_aus)
    else:
        activity = np.ones(n_frames)
    return follow(activity, fps, onset_s, release_s)


def dynamic_text_aus(y, envelope: np.ndarray, ramps: np.ndarray | None = None, strength: float = 1.0,
                     pause_level: float = 0.4) -> np.ndarray:
    """Text AU probabilities (17,), speech envelope (T,), clip ramps (T,) -> per-frame requests (T, 17).

    Upper-face AUs: ``ramps * (pause_level + (1 - pause_level) * envelope)``; lower-face (speech)
    AUs: ``ramps * envelope``; both times ``strength * y``, clipped to [0, 1].
    """
    if strength < 0 or not 0 <= pause_level <= 1:
        raise ValueError(f"need strength >= 0 and 0 <= pause_level <= 1 (got {strength}, {pause_level})")
    env = np.clip(np.asarray(envelope, dtype=np.float64).reshape(-1, 1), 0, 1)
    ramps = np.ones_like(env) if ramps is None else np.asarray(ramps, dtype=np.float64).reshape(-1, 1)
    if ramps.shape != env.shape:
        raise ValueError(f"ramps {ramps.shape[0]} and envelope {env.shape[0]} frames differ")
    y = np.clip(np.asarray(y, dtype=np.float64).reshape(1, NUM_AUS) * strength, 0, 1)
    upper = ~np.array(SPEECH_AU_MASK, dtype=bool)
    gain = ramps * np.where(upper, pause_level + (1 - pause_level) * env, env)
    return np.clip(y * gain, 0, 1).astype(np.float32)


def modulate_with_dynamics(E, y, fps: float, t2a_cfg, *, audio=None, sample_rate: int = SAMPLE_RATE,
                           strength: float | None = None) -> np.ndarray:
    """Speech AU codes (T, 17) + text probabilities (17,) -> modulated codes (T, 17), with the
    dynamics, strength and modulation parameters of ``cfg.text2au`` (``strength`` overrides
    ``text2au.modulation_strength``). Articulation stays locked when ``text2au.lip_lock``."""
    t = t2a_cfg
    strength = t.modulation_strength if strength is None else strength
    E = np.asarray(E, dtype=np.float32)
    env = text_envelope(E.shape[0], fps, audio=audio, sample_rate=sample_rate, speech_aus=E,
                        onset_s=t.modulation_onset_s, release_s=t.modulation_release_s)
    y_t = dynamic_text_aus(y, env, edge_ramps(E.shape[0], fps, t.modulation_ramp_s), strength,
                           t.modulation_pause_level)
    # the damping of unrequested AUs scales with the strength too: strength 0 leaves E unchanged
    return modulate_aus(E, y_t, alpha=t.modulation_alpha, beta=t.modulation_beta * min(strength, 1.0),
                        lip_lock=t.lip_lock, target=t.modulation_target)
