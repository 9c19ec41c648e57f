"""Cheap stand-ins for ``test_sigterm.py``: the real ``emodifftalk.cli.main`` and the real worker
pools (synth's process pool, the demo's stage processes), but the work each worker does is a
long sleep. Importable by the spawned workers, which get the parent's ``sys.path``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SLEEP_S = 120  # far longer than the test waits: a worker alive after SIGTERM was not stopped


def _mark(name: str) -> None:
    (Path(os.environ["SIGTERM_MARKS"]) / name).touch()


def sleeping_identity(cfg, i, tmp, *rest):
    """Stands in for ``writer._identity_process`` (one synthetic identity in a pool worker)."""
    _mark(f"identity{i}")
    time.sleep(SLEEP_S)


def sleeping_stage(name, cfg, out):
    """Stands in for ``stage_pool._train_stage`` (one demo training stage in its process)."""
    _mark(f"stage-{name}")
    time.sleep(SLEEP_S)


def two_stage_demo(out, cfg, skip=frozenset(), text="", jobs=None):
    """Stands in for ``run_demo``: only its training phase, two stages side by side."""
    from emodifftalk.pipeline.stage_pool import run_training_stages

    runs = Path(out) / "runs"
    run_training_stages({"s2au": runs / "s2au" / "export", "motion": runs / "motion" / "export"}, cfg, runs,
                        jobs=2, train_stage=sleeping_stage)


def main(argv: list[str]) -> int:
    import emodifftalk.data.synthetic.writer as writer
    import emodifftalk.pipeline.demo as demo
    from emodifftalk.cli import main as cli_main

    writer._identity_process = sleeping_identity
    demo.run_demo = two_stage_demo
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
