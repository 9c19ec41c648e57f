"""SIGTERM as Ctrl-C (``emodifftalk/interrupt.py``): the CLI's one-line exit and the handler's life cycle.
The signal itself, sent to a real process with workers, is in ``tests/integration/test_sigterm.py``."""

from __future__ import annotations

import signal
import sys

import pytest

from emodifftalk import interrupt
from emodifftalk.cli import main


def test_the_handler_lives_for_the_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with interrupt.sigterm_as_interrupt():
        assert interrupt.installed()
        with pytest.raises(interrupt.Terminated):
            interrupt._raise_terminated(signal.SIGTERM, None)
        assert signal.getsignal(signal.SIGTERM) is interrupt._repeated, "a second SIGTERM must not cut the clean-up"
    assert signal.getsignal(signal.SIGTERM) is before
    assert issubclass(interrupt.Terminated, KeyboardInterrupt)  # every Ctrl-C clean-up runs for it


@pytest.mark.parametrize(("raised", "rc", "line"), [(interrupt.Terminated, 143, "stopped by SIGTERM"),
                                                    (KeyboardInterrupt, 130, "interrupted")])
def test_main_exits_with_one_line_and_the_shells_status(monkeypatch, tmp_path, capsys, raised, rc, line):
    import emodifftalk.commands.synth as synth

    stopped = []
    monkeypatch.setattr(synth, "run", lambda args: (_ for _ in ()).throw(raised()))
    monkeypatch.setattr(interrupt, "stop_children", lambda: stopped.append(True))
    assert main(["synth", "--out", str(tmp_path / "s")]) == rc
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"emodifftalk synth: {line}"
    assert stopped, "children the verb left behind are stopped"
    assert not interrupt.installed()


def test_ray_init_does_not_take_over_sigterm(monkeypatch, tmp_path):
    """``ray.init`` installs a ``sys.exit`` SIGTERM handler: under the CLI ours comes back after it;
    as a library (no handler of ours) Ray's stays."""
    ray = pytest.importorskip("ray")
    from emodifftalk.distributed import ray_jobs

    def fake_init(**kwargs):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    before = signal.getsignal(signal.SIGTERM)
    try:
        with interrupt.sigterm_as_interrupt():
            assert ray_jobs.init_ray(num_cpus=1)
            assert interrupt.installed()
        assert ray_jobs.init_ray(num_cpus=1)
        assert not interrupt.installed() and signal.getsignal(signal.SIGTERM) is not before
    finally:
        signal.signal(signal.SIGTERM, before)
