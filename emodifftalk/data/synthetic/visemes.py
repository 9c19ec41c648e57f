"""Visemes: from an IPA phoneme timeline to lip/jaw articulation, with co-articulation.

Five articulators, each in [0, 1]:

* ``jaw``    jaw opening (a true rotation in ``face.py``); set per vowel by its height
* ``close``  bilabial closure (p b m): the lips meet whatever the jaw does
* ``labio``  labiodental (f v): the lower lip tucks up and back under the upper teeth
* ``round``  rounding + protrusion (u o w ʃ …): AU18/AU22-like, *not* one of the 17 AUs
* ``spread`` lip spreading (i e)

Co-articulation follows Cohen & Massaro's dominance model: every phone pulls each articulator
toward its target with a dominance that peaks at the phone's centre and decays exponentially
with time; the track is the dominance-weighted mean of the targets. Bilabial closure and
labiodental contact get a dominance several times a vowel's (they must be reached), vowels' lip shape spreads into
neighbouring consonants (anticipatory rounding in "screw"), alveolar/velar consonants barely
constrain the lips. Lips move ``ANTICIPATION_S`` before the sound, as in real speech.

Silence is a viseme too: pauses, the lead-in before the first phone, the gaps between sentences
and the tail after the last phone are filled with the closed rest mouth (lips together, jaw
shut), so the mouth relaxes shut whenever nobody speaks, through the same dominance ramps. The
jaw height of a vowel also scales with its loudness in the audio (``levels_db``): louder vowels
are spoken with a more open jaw, as in real speech, where the opening shapes the loudness.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass

import numpy as np

from emodifftalk.data.audio import level_gain

ARTICULATORS: tuple[str, ...] = ("jaw", "close", "labio", "round", "spread")
A_JAW, A_CLOSE, A_LABIO, A_ROUND, A_SPREAD = range(len(ARTICULATORS))

ANTICIPATION_S = 0.03
DOMINANCE_DECAY_S = 0.045  # exponential decay of a phone's dominance beyond its own span
CONTACT_DECAY_S = 0.02  # lip contacts (p b m, f v) dominate their own span but release fast
QUIET_VOWEL_DB = -24.0  # a vowel this far below the clip's loudest phone opens the jaw least ...
QUIET_JAW_GAIN = 0.35  # ... this share of its height; the loudest opens it fully (linear in dB between)


@dataclass(frozen=True)
class Viseme:
    name: str
    target: tuple[float, float, float, float, float]  # ARTICULATORS order
    dominance: tuple[float, float, float, float, float]
    decay_s: float = DOMINANCE_DECAY_S  # how far beyond its span the dominance reaches


# Vowels by height (jaw) and lip shape; (jaw, round, spread).
_VOWELS: dict[str, tuple[float, float, float]] = {
    "i": (0.12, 0.0, 0.8), "y": (0.12, 0.9, 0.0), "ɨ": (0.15, 0.0, 0.3), "ʉ": (0.15, 0.7, 0.0),
    "ɯ": (0.15, 0.0, 0.3), "u": (0.15, 1.0, 0.0), "ɪ": (0.2, 0.0, 0.6), "ʏ": (0.2, 0.7, 0.0),
    "ʊ": (0.2, 0.7, 0.0), "e": (0.35, 0.0, 0.65), "ø": (0.35, 0.8, 0.0), "ɘ": (0.3, 0.0, 0.2),
    "ɵ": (0.35, 0.6, 0.0), "ɤ": (0.35, 0.0, 0.2), "o": (0.4, 0.85, 0.0), "ə": (0.3, 0.0, 0.1),
    "ɛ": (0.5, 0.0, 0.5), "œ": (0.5, 0.6, 0.0), "ɜ": (0.45, 0.0, 0.2), "ʌ": (0.55, 0.0, 0.1),
    "ɔ": (0.55, 0.7, 0.0), "æ": (0.7, 0.0, 0.5), "ɐ": (0.65, 0.0, 0.1), "a": (0.8, 0.0, 0.15),
    "ä": (0.8, 0.0, 0.1), "ɶ": (0.75, 0.5, 0.0), "ɑ": (0.85, 0.0, 0.0), "ɒ": (0.8, 0.5, 0.0),
}
_BILABIAL = set("pbmɓʙɸβ")
_LABIODENTAL = set("fvɱʋ")
_ROUNDED_CONS = {"w": 0.9, "ɥ": 0.8, "ʍ": 0.9, "ʃ": 0.5, "ʒ": 0.5, "ɹ": 0.35, "ʂ": 0.4, "ʐ": 0.4}

REST = Viseme("rest", (0.0, 0.0, 0.0, 0.0, 0.0), (0.6, 0.6, 0.6, 0.6, 0.6))  # jaw shut = lips shut
SILENCE_PAD_S = 1.0  # the rest viseme reaches this far before the first and after the last phone


def _base_symbols(phone: str) -> list[str]:
    """IPA base letters of a phone string, diacritics and length marks dropped."""
    out = []
    for ch in unicodedata.normalize("NFD", phone):
        if unicodedata.category(ch).startswith("M") or ch in "ːˑʲʰʷᵝ'ˈˌ-_0123456789":
            continue
        out.append(ch)
    return out


def viseme_of(phone: str) -> list[Viseme]:
    """The viseme(s) of one IPA phone; diphthongs give two (first and second half)."""
    syms = _base_symbols(phone)
    if not syms:
        return [REST]
    vowels = [s for s in syms if s in _VOWELS]
    if vowels:
        out = []
        for v in vowels[:2]:
            jaw, rnd, spr = _VOWELS[v]
            out.append(Viseme(v, (jaw, 0.0, 0.0, rnd, spr), (0.5, 0.3, 0.3, 0.5, 0.5)))
        return out
    if any(s in _BILABIAL for s in syms):
        return [Viseme("p", (0.08, 1.0, 0.0, 0.0, 0.0), (0.4, 3.0, 0.6, 0.15, 0.15), CONTACT_DECAY_S)]
    if any(s in _LABIODENTAL for s in syms):
        return [Viseme("f", (0.12, 0.0, 1.0, 0.0, 0.0), (0.4, 0.6, 3.0, 0.15, 0.15), CONTACT_DECAY_S)]
    rnd = max((_ROUNDED_CONS.get(s, 0.0) for s in syms), default=0.0)
    if rnd > 0:
        return [Viseme("w", (0.12, 0.0, 0.0, rnd, 0.0), (0.3, 0.2, 0.2, 0.7, 0.5))]
    # alveolar, dental, velar, glottal consonants: a fairly closed jaw, lips free
    return [Viseme("t", (0.14, 0.0, 0.0, 0.0, 0.0), (0.3, 0.05, 0.05, 0.05, 0.05))]


def is_vowel(v: Viseme) -> bool:
    return v.name in _VOWELS


def jaw_gain(level_db: float) -> float:
    """Share of a vowel's jaw height opened at ``level_db`` re the clip's loudest phone."""
    return float(level_gain(level_db, QUIET_VOWEL_DB, QUIET_JAW_GAIN))


def _segments(phones: list[tuple[str, float, float]], times: np.ndarray,
              levels_db=None) -> list[tuple[Viseme, float, float]]:
    """Viseme spans of a timeline, every gap (lead-in, between sentences, tail) filled with REST."""
    if levels_db is not None and len(levels_db) != len(phones):
        raise ValueError(f"levels_db has {len(levels_db)} entries for {len(phones)} phones")
    segments: list[tuple[Viseme, float, float]] = []
    t = float(times[0]) - SILENCE_PAD_S if len(times) else 0.0
    for k, (phone, s, e) in enumerate(phones):
        if s > t:
            segments.append((REST, t, s))
        vis = viseme_of(phone)
        if levels_db is not None:
            g = jaw_gain(levels_db[k])
            vis = [dataclasses.replace(v, target=(v.target[A_JAW] * g, *v.target[1:])) if is_vowel(v) else v
                   for v in vis]
        step = (e - s) / len(vis)
        segments += [(v, s + j * step, s + (j + 1) * step) for j, v in enumerate(vis)]
        t = max(t, e)
    end = float(times[-1]) + SILENCE_PAD_S if len(times) else t
    if end > t:
        segments.append((REST, t, end))
    return segments


def _blend(segments, times: np.ndarray, targets: np.ndarray, dominance: np.ndarray) -> np.ndarray:
    """Cohen–Massaro: the dominance-weighted mean of the segments' ``targets`` (S, C) at ``times``."""
    t = np.asarray(times, dtype=np.float64)[:, None] + ANTICIPATION_S
    starts = np.array([s for _, s, _ in segments])[None]
    ends = np.array([e for _, _, e in segments])[None]
    outside = np.maximum(starts - t, 0) + np.maximum(t - ends, 0)  # 0 inside the span
    decay = np.array([v.decay_s for v, _, _ in segments])[None]
    w = np.exp(-outside / decay)[:, :, None] * dominance[None]  # (T, S, C)
    return (w * targets[None]).sum(1) / np.maximum(w.sum(1), 1e-9)


def articulation(phones: list[tuple[str, float, float]], times: np.ndarray, levels_db=None) -> np.ndarray:
    """(len(times), 5) articulator tracks for an IPA timeline [(phone, start_s, end_s)] ("" = pause);
    ``levels_db`` (one per phone, dB re the clip's loudest phone) scales each vowel's jaw height."""
    segments = _segments(phones, np.asarray(times, dtype=np.float64), levels_db)
    if not segments:
        return np.tile(np.array(REST.target), (len(times), 1))
    dom = np.array([v.dominance for v, _, _ in segments])  # (S, 5)
    tgt = np.array([v.target for v, _, _ in segments])
    return _blend(segments, times, tgt, dom)


def speaking(phones: list[tuple[str, float, float]], times: np.ndarray) -> np.ndarray:
    """(len(times),) in [0, 1]: 1 while phones are spoken, 0 in pauses, with the visemes' ramps."""
    segments = _segments(phones, np.asarray(times, dtype=np.float64))
    if not segments:
        return np.zeros(len(times))
    active = np.array([[0.0 if v is REST else 1.0] for v, _, _ in segments])
    dom = np.array([[v.dominance[A_JAW]] for v, _, _ in segments])
    return _blend(segments, times, active, dom)[:, 0]
