"""Source and docs reference repository files only, and the files they name exist.

Design notes outside the repository (a shared drive, another checkout) are invisible to whoever
reads the code later: format notes live in ``docs/formats/``, metric definitions in
``emodifftalk/eval/metrics.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "emodifftalk"
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".cfg", ".sbatch"}
SKIP_DIRS = {".git", ".venv", "results", "build", "dist", "__pycache__", "node_modules"}

OUTSIDE = re.compile(r"(?<![\w.-])/work/|\.\./shared\b|/shared/(?:DESIGN|PERFORMANCE|formats|paper)\b")
# a path that starts at a folder of the repository root or of the package (or beside the file)
_TOP = sorted({p.name for p in ROOT.iterdir() if p.is_dir() and p.name not in SKIP_DIRS and not p.name.startswith(".")}
              | {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"})
REFERENCE = re.compile(r"(?<![\w/.-])((?:%s)/[\w./-]*\w\.(?:py|md|sh|ya?ml|jsonl?|toml))\b" % "|".join(map(re.escape, _TOP)))


def _text_files():
    for p in sorted(ROOT.rglob("*")):
        rel = p.relative_to(ROOT)
        if p.is_file() and p.suffix in TEXT_SUFFIXES and not SKIP_DIRS & set(rel.parts):
            yield rel, p.read_text(errors="ignore")


def test_no_reference_outside_the_repository():
    bad = [f"{rel}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
           for rel, text in _text_files() if rel.parts[0] != "tests" or rel.name != Path(__file__).name
           for m in OUTSIDE.finditer(text)]
    assert bad == [], "references to files outside the repository:\n" + "\n".join(bad)


def test_referenced_repository_files_exist():
    missing = sorted({f"{rel}: {m.group(1)}" for rel, text in _text_files() for m in REFERENCE.finditer(text)
                      if not any((base / m.group(1)).exists() for base in (ROOT, PACKAGE, (ROOT / rel).parent))})
    assert missing == [], "references to files that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("text, outside", [("see /work/shared/DESIGN.md", True), ("``../shared/x``", True),
                                           ("see emodifftalk/eval/metrics.py", False),
                                           ("results/demo/work/raw: the demo's own folder", False)])
def test_the_scan_recognises_outside_paths(text, outside):
    assert bool(OUTSIDE.search(text)) is outside
