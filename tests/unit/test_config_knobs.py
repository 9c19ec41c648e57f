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
import io
import re
import tokenize
from pathlib import Path

import emodifftalk
from emodifftalk.config import Config

PACKAGE = Path(emodifftalk.__file__).parent

# Functions that receive a config section as a parameter under their own name.
SECTION_PARAMETERS = {
    "rig": ("rig_cfg", "rc"),  # rig/reconstruct.py helpers
    "text2au": ("t2a_cfg", "t2a"),  # text2au/losses.py, text2au/modulation.py
    "diffusion": ("weights", "dcfg"),  # losses/geometry.py: geometry_loss(..., weights=cfg.diffusion);
    # diffusion/schedule.py: NoiseSchedule.from_config(dcfg), how every loader builds the schedule
    "data": ("data_cfg",),
    "audio": ("audio_cfg",),
    "s2au": ("s2au_cfg",),  # s2au/inference.py: gate_silence(..., s2au_cfg)
}

# Knobs read generically (not as ``section.name``), with where: none today. Add an entry only with
# the file that consumes the knob and why a plain attribute read is not possible there.
GENERIC = {}


def code_only(text: str) -> str:
    """``text`` with comments and string literals blanked out: a knob named in a docstring or a help
    text is not a knob that is read."""
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    out = list(text)
    literal = {tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in literal:
            a = starts[tok.start[0] - 1] + tok.start[1]
            b = starts[tok.end[0] - 1] + tok.end[1]
            out[a:b] = [c if c == "\n" else " " for c in text[a:b]]
    return "".join(out)


def _sources() -> str:
    return "\n".join(code_only(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))
                      if p.name != "config.py" and "configs" not in p.relative_to(PACKAGE).parts)


def unread_knobs(cfg=None, src: str | None = None) -> list[str]:
    """``section.knob`` names of ``cfg`` (default: ``Config()``) that ``src`` (default: the package
    outside config.py and the presets) never reads."""
    src = _sources() if src is None else src
    cfg = Config() if cfg is None else cfg
    reads = set(re.findall(r"\b(?=(\w+)\.(\w+))", src))  # every (name, attribute) pair, overlapping
    bound = re.findall(r"\b(\w+)\s*=\s*(?:self\.)?_?(?:cfg|config)\.(\w+)\b(?![.\w(])", src)  # d = cfg.diffusion
    annotated = re.findall(r"\b(\w+)\s*:\s*\"?(\w+)\b", src)  # fcfg: FeatureLineConfig
    out = []
    for sec in dataclasses.fields(cfg):
        obj = getattr(cfg, sec.name)
        if not dataclasses.is_dataclass(obj):
            continue
        aliases = {sec.name, *SECTION_PARAMETERS.get(sec.name, ())}
        aliases |= {name for name, section in bound if section == sec.name}
        aliases |= {name for name, cls in annotated if cls == type(obj).__name__}
        for f in dataclasses.fields(obj):
            key = f"{sec.name}.{f.name}"
            if key not in GENERIC and not any((a, f.name) in reads for a in aliases):
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
    # named in a docstring or comment is not read
    src = code_only('def f(cfg):\n    """uses cfg.sec.spare"""\n    return cfg.sec.used  # and cfg.sec.spare\n')
    assert unread_knobs(Cfg(), src) == ["sec.spare"]
