"""SIGTERM stops a command's worker processes as Ctrl-C does (``emodifftalk/interrupt.py``).

Ctrl-C signals the whole process group; ``kill PID`` (a scheduler, a container stop) reaches only
the main process, whose spawned workers used to keep working for minutes. Here the real CLI runs
``synth --workers 2`` and ``demo`` with sleeping stand-ins for the work (``_sigterm_standins.py``),
gets SIGTERM once every worker is busy, and must exit 143 with one line, leaving no process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENTRY = f"import sys; sys.path.insert(0, {str(HERE)!r}); import _sigterm_standins as s; sys.exit(s.main(sys.argv[1:]))"
GONE_WITHIN_S = 5.0


def _descendants(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:  # Linux without psutil: /proc/<pid>/task/<tid>/children
        found, todo = [], [pid]
        while todo:
            for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    kids = [int(k) for k in children.read_text().split()]
                    found += kids
                    todo += kids
        return found
    with contextlib.suppress(psutil.NoSuchProcess):
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    return []


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        import psutil
    except ImportError:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


CASES = {
    "synth": (["synth", "--out", "{tmp}/raw", "--workers", "2", "--no-progress", "synth.n_identities=3"],
              ["identity0", "identity1"]),
    "demo": (["demo", "--out", "{tmp}/demo", "--jobs", "2"], ["stage-s2au", "stage-motion"]),
}


@pytest.mark.parametrize("verb", CASES)
def test_sigterm_stops_every_worker_process(tmp_path, verb):
    args, marks = CASES[verb]
    (tmp_path / "marks").mkdir()
    env = {**os.environ, "SIGTERM_MARKS": str(tmp_path / "marks"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "output.log"  # a file, not a pipe: a surviving worker would hold a pipe open
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", ENTRY, *(a.format(tmp=tmp_path) for a in args)], env=env,
                                cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not all((tmp_path / "marks" / m).exists() for m in marks):
            assert proc.poll() is None, f"{verb} ended before its workers started:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{verb}: the workers did not start within 180 s"
            time.sleep(0.2)
        workers = _descendants(proc.pid)
        assert len(workers) >= 2, workers
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        err = log.read_text()
        end = time.monotonic() + GONE_WITHIN_S
        while any(_alive(p) for p in workers) and time.monotonic() < end:
            time.sleep(0.1)
        survivors = [p for p in workers if _alive(p)]
        assert not survivors, f"{verb}: processes {survivors} outlived SIGTERM by {GONE_WITHIN_S} s"
        assert proc.returncode == 143, f"exit status {proc.returncode}:\n{err[-3000:]}"
        assert err.strip().splitlines()[-1] == f"emodifftalk {verb}: stopped by SIGTERM", err[-3000:]
        if verb == "synth":  # the output is written atomically: nothing half-written is left
            assert not (tmp_path / "raw").exists() and not list(tmp_path.glob(".tmp-raw-*"))
    finally:
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
