"""SIGTERM stops a command the way Ctrl-C does: its worker processes go too.

Why: Ctrl-C sends SIGINT to the whole process group, so ``synth --workers`` pool workers and the
demo's per-stage training processes stop with the command. SIGTERM (``kill PID``, a job
scheduler, a container stop) reaches only the main process; by default it dies on the spot and
its ``multiprocessing`` children (spawned, not forked, so they do not share its fate) go on
working for minutes. ``sigterm_as_interrupt`` turns that SIGTERM into ``Terminated``, a
``KeyboardInterrupt``, so every ``finally``/``except BaseException`` that stops a pool on Ctrl-C
(``stop_process_pool``, the stage pool's ``stop_processes``, ``ray.shutdown``, ``atomic_dir``'s clean-up)
runs for it as well; the CLI then stops any ``multiprocessing`` child still alive
(``stop_children``) and exits with one line and status 143 (130 for Ctrl-C).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading

TIMEOUT_S = 5.0  # a child that ignores SIGTERM this long gets SIGKILL


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (raised in the main thread by ``sigterm_as_interrupt``)."""


def _repeated(signum, frame):
    """A second SIGTERM must not break off the clean-up the first one started (SIGKILL still ends
    it). A Python handler, not SIG_IGN: processes started meanwhile would inherit SIG_IGN."""


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, _repeated)
    raise Terminated("SIGTERM")


def installed() -> bool:
    """Whether SIGTERM currently raises ``Terminated``."""
    return signal.getsignal(signal.SIGTERM) is _raise_terminated


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises ``Terminated`` in the main thread; the previous handler is
    restored afterwards (``cli.main`` may be called in-process, by tests). A no-op off the main
    thread, where Python cannot install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def keep_sigterm_handler():
    """Undo a library's own SIGTERM handler set inside the block when ours was installed (``ray.init``
    sets one that calls ``sys.exit``, which would skip the CLI's clean-up and message)."""
    ours = installed()
    try:
        yield
    finally:
        if ours and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_terminated)


def stop_processes(procs, timeout: float = TIMEOUT_S) -> None:
    """SIGTERM each ``multiprocessing`` process of ``procs`` still alive, SIGKILL after ``timeout``."""
    procs = [p for p in procs if p.is_alive()]
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()


def stop_children(timeout: float = TIMEOUT_S) -> None:
    """SIGTERM every ``multiprocessing`` child of this process still alive, SIGKILL after ``timeout``."""
    stop_processes(multiprocessing.active_children(), timeout)


def stop_process_pool(pool, timeout: float = TIMEOUT_S) -> None:
    """Cancel a ``ProcessPoolExecutor``'s pending work and stop its workers now. (Leaving its ``with``
    block on an exception would instead wait for every submitted task to finish.)"""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # cleared by shutdown()
    pool.shutdown(wait=False, cancel_futures=True)
    stop_processes(procs, timeout)
