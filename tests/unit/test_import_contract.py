"""The import contract: the package's layers, top to bottom, and the direction imports may flow.

A module may import modules of its own layer and of the layers below it, never above: inference
(``pipeline.animate``, the viewer, the model families' ``load``/``predict``) never imports
training code, building blocks never import evaluation, and nothing but the CLI imports the
commands. Every import counts, also one inside a function (it is still a dependency, only a late
one). Module-level imports must also be free of cycles.

``LEAVES`` are pure definition modules (metric formulas, the AU list): any layer may use them,
and they import nothing of the project but other leaves.

A new module belongs to the layer of its longest listed prefix; one that matches none fails the
test until it is given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import emodifftalk

PACKAGE = Path(emodifftalk.__file__).parent

LAYERS: list[tuple[str, tuple[str, ...]]] = [  # top first
    ("apps", ("emodifftalk.cli", "emodifftalk.commands", "emodifftalk.pipeline.demo",
              "emodifftalk.pipeline.demo_metrics", "emodifftalk.pipeline.stage_pool")),
    ("training and jobs", ("emodifftalk.train", "emodifftalk.distributed.ray_jobs", "emodifftalk.ingest")),
    ("evaluation", ("emodifftalk.eval",)),
    ("inference", ("emodifftalk.pipeline", "emodifftalk.viewer")),
    ("model families and the rig", ("emodifftalk.motion", "emodifftalk.s2au", "emodifftalk.text2au", "emodifftalk.rig",
                                    "emodifftalk.featurize")),
    ("building blocks", ("emodifftalk.models", "emodifftalk.diffusion", "emodifftalk.losses", "emodifftalk.render",
                         "emodifftalk.data", "emodifftalk.edits", "emodifftalk.distributed")),
    ("foundation", ("emodifftalk.config", "emodifftalk.configs", "emodifftalk.utils", "emodifftalk.safetensors_io",
                    "emodifftalk.threads", "emodifftalk.interrupt")),
]
# The package's __init__ is its public facade (``emodifftalk.predict_aus``): top layer.
ROOT_LAYER = "apps"
LEAVES = ("emodifftalk.au", "emodifftalk.eval.metrics")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def imports(tree: ast.AST, top_level_only: bool = False) -> list[tuple[int, str]]:
    """[(line, imported emodifftalk module)] of a parsed module."""
    nodes = ast.walk(tree) if not top_level_only else _top_level(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "emodifftalk"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "emodifftalk":
            subs = [f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}")]
            out += [(node.lineno, m) for m in subs] or [(node.lineno, node.module)]
    return out


def _top_level(tree: ast.Module):
    """Statements run at import time: the module body, including inside top-level if/try blocks."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", []) + \
                [s for h in getattr(node, "handlers", []) for s in h.body]


def layer_of(module: str) -> int | None:
    """Index into LAYERS (0 = top) of ``module``; None if no prefix matches."""
    if module == "emodifftalk":
        return [name for name, _ in LAYERS].index(ROOT_LAYER)
    best, index = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, index = p, i
    return index


def is_leaf(module: str) -> bool:
    return any(module == leaf or module.startswith(leaf + ".") for leaf in LEAVES)


def violations(sources: dict[str, str]) -> list[str]:
    """Every import in ``sources`` ({module name: source}) that breaks the contract, as messages."""
    out = []
    for module, source in sorted(sources.items()):
        for line, target in imports(ast.parse(source)):
            if target == module or module.startswith(target + ".") or target == "emodifftalk":
                continue  # a package's own __init__ runs first anyway
            where = f"{module}:{line} imports {target}"
            if is_leaf(module):
                if not is_leaf(target):
                    out.append(f"{where}: the leaf {module} may import only other leaves ({', '.join(LEAVES)})")
                continue
            mine, theirs = layer_of(module), layer_of(target)
            if mine is None:
                out.append(f"{module} has no layer: add its prefix to LAYERS in {Path(__file__).name}")
                break
            if is_leaf(target) or theirs is None:
                continue
            if theirs < mine:
                out.append(f"{where}: layer '{LAYERS[mine][0]}' may not import layer '{LAYERS[theirs][0]}' "
                           "(imports flow downwards only)")
    return out


def package_sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def import_cycles(sources: dict[str, str]) -> list[list[str]]:
    """Strongly connected components (> 1 module) of the module-level import graph."""
    graph = {m: {t for _, t in imports(ast.parse(s), top_level_only=True) if t in sources and t != m}
             for m, s in sources.items()}
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_keeps_its_import_contract():
    found = violations(package_sources())
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_module_level_imports_have_no_cycles():
    cycles = import_cycles(package_sources())
    assert not cycles, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module, source, needle", [
    ("emodifftalk.pipeline.animate", "def f():\n    from emodifftalk.train.export import load_exported\n",
     "layer 'inference' may not import layer 'training and jobs'"),
    ("emodifftalk.rig.losses", "from emodifftalk.eval import rig\n", "may not import layer 'evaluation'"),
    ("emodifftalk.text2au.predict", "from emodifftalk.train.tasks import text2au\n", "training and jobs"),
    ("emodifftalk.data.shards", "import emodifftalk.commands.pack\n", "may not import layer 'apps'"),
    ("emodifftalk.eval.metrics", "from emodifftalk.config import Config\n", "the leaf"),
    ("emodifftalk.newfamily.model", "import torch\nfrom emodifftalk.au import AU_NAMES\n", "has no layer"),
])
def test_the_contract_catches_violations(module, source, needle):
    # the checks must be able to fail: each of these imports breaks one rule
    found = violations({module: source})
    assert len(found) == 1 and needle in found[0], found


def test_the_contract_allows_downward_imports_and_leaves():
    ok = {"emodifftalk.train.loop": "from emodifftalk.eval.motion import run_eval\nfrom emodifftalk import au\n",
          "emodifftalk.rig.losses": "from emodifftalk.losses import image\nfrom emodifftalk.eval.metrics import psnr\n",
          "emodifftalk.au": "import numpy as np\n"}
    assert violations(ok) == []


def test_cycle_detection_finds_a_cycle():
    src = {"emodifftalk.a": "from emodifftalk.b import x\n", "emodifftalk.b": "import emodifftalk.a\n",
           "emodifftalk.c": "def f():\n    import emodifftalk.a\n"}
    assert import_cycles(src) == [["emodifftalk.a", "emodifftalk.b"]]
