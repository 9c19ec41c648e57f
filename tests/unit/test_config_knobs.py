"""Guard against config knobs that do nothing: every field of every section in
``emodifftalk/config.py`` must be read somewhere outside ``config.py`` and the presets, through its
section (``cfg.diffusion.lambda_move``) or a name bound to that section (``d = cfg.diffusion``;
``fcfg: FeatureLineConfig``; the parameter names in ``SECTION_PARAMETERS``).

A static scan cannot follow every call, so a knob read through an unrelated object of the same
attribute name could slip through; it does catch a knob nobody reads (e.g. ``infer.camera`` while
``animate --camera`` defaulted to "0" on its own).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import emodifftalk
from emodifftalk.config import Config

PACKAGE = Path(emodifftalk.__file__).parent

# Functions that receive a config section as a parameter under their own name.
SECTION_PARAMETERS = {
    "rig": ("rig_cfg", "rc"),  # rig/reconstruct.py helpers
    "text2au": ("t2a_cfg", "t2a"),  # text2au/losses.py, text2au/modulation.py
    "diffusion": ("weights",),  # losses/geometry.py: geometry_loss(..., weights=cfg.diffusion)
    "data": ("data_cfg",),
    "audio": ("audio_cfg",),
}

# Knobs read generically (not as ``section.name``), with where: none today. Add an entry only with
# the file that consumes the knob and why a plain attribute read is not possible there.
GENERIC = {}


def _sources() -> str:
    return "\n".join(p.read_text() for p in sorted(PACKAGE.rglob("*.py"))
                     if p.name != "config.py" and "configs" not in p.relative_to(PACKAGE).parts)


def _aliases(section: str, cls: str, src: str) -> set[str]:
    names = {section, *SECTION_PARAMETERS.get(section, ())}
    names |= set(re.findall(r"(\w+)\s*=\s*(?:self\.)?_?(?:cfg|config)\.%s\b(?![.\w(])" % section, src))
    names |= set(re.findall(r"(\w+)\s*:\s*(?:\"?)%s\b" % cls, src))
    return names


def unread_knobs(cfg=None, src: str | None = None) -> list[str]:
    """``section.knob`` names of ``cfg`` (default: ``Config()``) that ``src`` (default: the package
    outside config.py and the presets) never reads."""
    src = _sources() if src is None else src
    cfg = Config() if cfg is None else cfg
    out = []
    for sec in dataclasses.fields(cfg):
        obj = getattr(cfg, sec.name)
        if not dataclasses.is_dataclass(obj):
            continue
        alias = "|".join(sorted(map(re.escape, _aliases(sec.name, type(obj).__name__, src))))
        for f in dataclasses.fields(obj):
            key = f"{sec.name}.{f.name}"
            if key not in GENERIC and not re.search(r"\b(?:%s)\.%s\b" % (alias, re.escape(f.name)), src):
                out.append(key)
    return out


def test_every_config_knob_is_read_by_the_code():
    assert unread_knobs() == [], "config knobs that no code reads (wire them up or remove them)"


def test_the_scan_catches_an_unread_knob():
    @dataclasses.dataclass
    class Section:
        used: int = 0
        spare: int = 0

    @dataclasses.dataclass
    class Cfg:
        name: str = "x"
        sec: Section = dataclasses.field(default_factory=Section)

    assert unread_knobs(Cfg(), "def f(cfg):\n    s = cfg.sec\n    return s.used\n") == ["sec.spare"]
    assert unread_knobs(Cfg(), "cfg.sec.used + cfg.sec.spare") == []
    assert unread_knobs(Cfg(), "other.used + other.spare") == ["sec.used", "sec.spare"]
