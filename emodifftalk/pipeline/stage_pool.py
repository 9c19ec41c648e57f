"""Run the demo's independent training stages side by side, one process each.

Why: Speech-to-AU, the motion model and Text-to-AU only read the packed shards and never each
other, and each runs best on ONE thread on a small machine (``threads.py``). Run one after the
other they leave a core idle for the whole training phase. Run as parallel processes — all three
by default, ``cores // jobs`` threads each (at least one) — the phase takes about
max(sum of the stages / cores, the longest stage): three single-threaded processes on two cores
share them without the spinning that two OpenMP threads in one process suffer. Each stage's
output (progress bars, logs) goes to ``RUNS/<stage>.log``; this process prints one status line
every ``STATUS_EVERY_S`` and the stage's log tail when it fails.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import shutil
import time
from pathlib import Path

import torch

from emodifftalk.config import Config, config_from_dict
from emodifftalk.interrupt import stop_processes
from emodifftalk.pipeline.demo import reuse_earlier_output
from emodifftalk.threads import apply_threads, usable_cores
from emodifftalk.train.loop import run_training
from emodifftalk.train.task import get_task
from emodifftalk.train.tasks.text2au import train_text2au

log = logging.getLogger(__name__)

STATUS_EVERY_S = 30.0
MAX_JOBS = 3  # the demo has three training stages
STOP_TIMEOUT_S = 10.0  # a stage that ignores SIGTERM this long gets SIGKILL


def _train_stage(name: str, cfg: Config, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    if name == "text2au":  # its own loop (frozen encoder, head ensemble), not the shared trainer
        train_text2au(cfg, out)
        return
    run_training(get_task(name, cfg), out)


def _stage_process(name: str, cfg_dict: dict, out: str, log_path: str, threads: int,
                   train_stage=_train_stage) -> None:
    """Entry point of one stage's process: its output to ``log_path``; a failure exits non-zero."""
    with open(log_path, "w", buffering=1) as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        logging.basicConfig(stream=sink, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        apply_threads(threads)
        try:
            train_stage(name, config_from_dict(cfg_dict), Path(out))
        except BaseException:
            log.exception("stage %s failed", name)  # the traceback lands in the stage's log
            raise


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def default_jobs(n_stages: int) -> int:
    """Every stage at once (at most ``MAX_JOBS``): single-threaded stages time-share the cores."""
    return max(1, min(n_stages, MAX_JOBS))


def run_training_stages(exports: dict[str, Path], cfg: Config, runs: Path, skip: set[str] = frozenset(),
                        jobs: int | None = None, train_stage=_train_stage) -> dict[str, float]:
    """Train every stage of ``exports`` (name → its export dir, longest stage first) into
    ``runs/<name>``; stages in ``skip`` must already have their export. Returns seconds per stage
    (wall time of its process) and ``train_wall`` (the whole phase). The first stage that fails
    stops the others and raises. ``train_stage(name, cfg, out)`` runs one stage in its process
    (a module-level function, so that ``spawn`` can pickle it)."""
    for name in skip & exports.keys():
        reuse_earlier_output(name, exports[name] / "model.safetensors")
    todo = [name for name in exports if name not in skip]
    if not todo:
        return {}
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    jobs = default_jobs(len(todo)) if jobs is None else int(jobs)
    # one thread per lane on a small machine; never more than this process was given (--threads)
    threads = max(1, min(torch.get_num_threads(), usable_cores() // jobs))
    runs.mkdir(parents=True, exist_ok=True)
    logs = {name: runs / f"{name}.log" for name in todo}
    print(f"[demo] training {', '.join(todo)}: {jobs} at a time, {threads} thread(s) each; "
          f"logs in {runs}/<stage>.log", flush=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    ctx = mp.get_context("spawn")
    waiting = list(todo)
    running: dict[str, tuple[mp.Process, float]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                name = waiting.pop(0)
                proc = ctx.Process(target=_stage_process, name=f"demo-{name}", args=(
                    name, cfg.to_dict(), str(runs / name), str(logs[name]), threads, train_stage))
                proc.start()
                running[name] = (proc, time.perf_counter())
            ended = mp_connection.wait([proc.sentinel for proc, _ in running.values()], timeout=STATUS_EVERY_S)
            for name, (proc, started) in list(running.items()):
                if proc.sentinel not in ended:
                    continue
                proc.join()  # its sentinel closes a moment before the process is reaped
                del running[name]
                if proc.exitcode != 0:  # the finally below stops the stages still running
                    raise RuntimeError(f"demo stage {name} failed (exit code {proc.exitcode})\n"
                                       f"--- last lines of {logs[name]} ---\n{_log_tail(logs[name])}")
                timings[name] = round(time.perf_counter() - started, 1)
                print(f"[demo] {name} done in {timings[name]:.1f} s", flush=True)
            if running and not ended:  # one line per quiet STATUS_EVERY_S
                print(f"[demo] {time.perf_counter() - t_start:.0f} s: running {', '.join(running)}; "
                      f"finished {', '.join(timings) or '-'}", flush=True)
    finally:
        # a sibling failed, or Ctrl-C / SIGTERM: no orphan keeps training
        stop_processes((proc for proc, _ in running.values()), timeout=STOP_TIMEOUT_S)
    timings["train_wall"] = round(time.perf_counter() - t_start, 1)
    return timings
