"""The 17 facial Action Units used throughout EmoDiffTalk — the one place they are defined.

Order follows the paper (supplementary §3, the GPT-5 prompt) and every (..., 17) array in the
project uses it. Intensities are stored normalised to [0, 1]: OpenFace's 0–5 scale divided by
``OPENFACE_MAX_INTENSITY``.
"""

from __future__ import annotations

from dataclasses import dataclass

AU_NAMES: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU23", "AU24", "AU25", "AU26", "AU45",
)
NUM_AUS = len(AU_NAMES)
AU_INDEX: dict[str, int] = {name: i for i, name in enumerate(AU_NAMES)}

# OpenFace reports intensities on a 0..5 scale; we divide by this to get [0, 1].
OPENFACE_MAX_INTENSITY = 5.0


@dataclass(frozen=True)
class ActionUnit:
    name: str
    facs_name: str
    region: str  # "brow" | "eye" | "cheek" | "nose" | "mouth" | "jaw"
    speech: bool  # carries articulation: protected by lip lock during text edits


_AU_TABLE: tuple[ActionUnit, ...] = (
    ActionUnit("AU01", "inner brow raiser", "brow", False),
    ActionUnit("AU02", "outer brow raiser", "brow", False),
    ActionUnit("AU04", "brow lowerer", "brow", False),
    ActionUnit("AU05", "upper lid raiser", "eye", False),
    ActionUnit("AU06", "cheek raiser", "cheek", False),
    ActionUnit("AU07", "lid tightener", "eye", False),
    ActionUnit("AU09", "nose wrinkler", "nose", False),
    ActionUnit("AU10", "upper lip raiser", "mouth", True),
    ActionUnit("AU12", "lip corner puller", "mouth", True),
    ActionUnit("AU14", "dimpler", "mouth", True),
    ActionUnit("AU15", "lip corner depressor", "mouth", True),
    ActionUnit("AU17", "chin raiser", "mouth", True),
    ActionUnit("AU23", "lip tightener", "mouth", True),
    ActionUnit("AU24", "lip pressor", "mouth", True),
    ActionUnit("AU25", "lips part", "mouth", True),
    ActionUnit("AU26", "jaw drop", "jaw", True),
    ActionUnit("AU45", "blink", "eye", False),
)
ACTION_UNITS: dict[str, ActionUnit] = {au.name: au for au in _AU_TABLE}
assert tuple(ACTION_UNITS) == AU_NAMES

# Mouth/jaw AUs that carry speech articulation (issue: "lip lock" keeps them during text edits).
SPEECH_AUS: tuple[str, ...] = tuple(au.name for au in _AU_TABLE if au.speech)
EXPRESSION_AUS: tuple[str, ...] = tuple(au.name for au in _AU_TABLE if not au.speech)
SPEECH_AU_MASK: tuple[bool, ...] = tuple(au.speech for au in _AU_TABLE)

# OpenFace 2.x FeatureExtraction writes AU*_r for 01 02 04 05 06 07 09 10 12 14 15 17 20 23 25 26 45
# and AU*_c for the same plus 28. It has NO AU24 column at all, so AU24 is "unobserved" whenever
# labels come from OpenFace: the reader marks it invalid in the per-AU mask and every loss skips it.
OPENFACE_MISSING_AUS: tuple[str, ...] = ("AU24",)


def au_index(name: str) -> int:
    """Index of an AU given "AU12", "au12", "12" or "AU_12"; raises ValueError naming the valid set."""
    key = name.strip().upper().replace("_", "")
    if not key.startswith("AU"):
        key = "AU" + key
    if len(key) == 3:  # "AU1" -> "AU01"
        key = "AU0" + key[2:]
    if key not in AU_INDEX:
        raise ValueError(f"unknown Action Unit {name!r}; expected one of {', '.join(AU_NAMES)}")
    return AU_INDEX[key]


def au_vector_from_names(names) -> list[int]:
    """0/1 vector in the paper's order from an iterable of AU names."""
    vec = [0] * NUM_AUS
    for n in names:
        vec[au_index(n)] = 1
    return vec


def au_names_from_vector(vec, threshold: float = 0.5) -> list[str]:
    if len(vec) != NUM_AUS:
        raise ValueError(f"AU vector must have {NUM_AUS} entries, got {len(vec)}")
    return [AU_NAMES[i] for i, v in enumerate(vec) if float(v) >= threshold]
