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

from emodifftalk.au import AU_INDEX, NUM_AUS, SPEECH_AUS

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
