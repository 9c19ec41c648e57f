"""Small shared helpers: atomic writes, output-folder checks, git SHA, logging set-up.

Everything written through here honours the umask like ``open()``/``mkdir()`` do (``mkstemp`` and
``mkdtemp`` alone would leave 0600 files and 0700 folders).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger("emodifftalk")

# errors of the output location itself (not of the program): reported as one line naming the path
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


class OutputError(OSError):
    """The output location cannot be written (full disk, read-only, no permission)."""


def umask() -> int:
    """The process umask. Linux reports it in /proc; elsewhere it is read by setting and restoring
    it (which another thread creating a file at that instant would see as 0)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    return 0o666 & ~umask()


def _dir_mode() -> int:
    return 0o777 & ~umask()


def output_error(e: OSError, path: str | Path | None = None) -> OutputError:
    """One-line ``OutputError`` for an ``OSError`` of the output location, naming the file (or,
    when the error does not say which, the output ``path`` it happened under)."""
    reason = os.strerror(e.errno) if e.errno else str(e)
    if e.filename:
        return OutputError(e.errno, f"cannot write {e.filename}: {reason}")
    return OutputError(e.errno, f"cannot write under {path or 'the output location'}: {reason}")


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` (and parents) and prove a file can be written in it, before expensive work.

    Raises ``OutputError`` naming the folder when the disk is read-only, full or not ours.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        if e.errno in OUTPUT_ERRNOS:
            raise OutputError(e.errno, f"cannot write to {folder}: {os.strerror(e.errno)}") from None
        raise
    return folder


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_report(out: str | Path, report: dict, json_name: str, md_name: str) -> None:
    """An evaluation's report into ``out``: ``json_name`` (key-sorted JSON) and ``md_name`` (its
    ``report["table"]``), each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / json_name, json.dumps(report, indent=2, sort_keys=True))
    atomic_write_text(out / md_name, report["table"] + "\n")


def _temp_prefix(final: Path) -> str:
    """``.tmp-<name>-<host>-<pid>-``: who made a temp folder, so a later run can tell a dead one."""
    return f".tmp-{final.name}-{socket.gethostname()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


def clean_stale_temp_dirs(final: str | Path) -> list[Path]:
    """Remove ``.tmp-<final name>-<this host>-<pid>-*`` siblings whose process is gone (a killed
    run's partial outputs); folders of live processes and of other hosts are left alone."""
    final = Path(final)
    host_prefix = f".tmp-{final.name}-{socket.gethostname()}-"
    removed = []
    if not final.parent.is_dir():
        return removed
    for p in final.parent.glob(f"{glob.escape(host_prefix)}*"):
        pid_part = p.name[len(host_prefix):].split("-", 1)[0]
        if p.is_dir() and pid_part.isdigit() and not _pid_alive(int(pid_part)):
            log.warning("removing %s (partial output of an interrupted run, pid %s)", p, pid_part)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False):
    """Yield a temp directory next to ``final``; on success rename it to ``final``.

    A crash leaves only a ``.tmp-<name>-<host>-<pid>-*`` sibling (never a half-written ``final``),
    which the next ``atomic_dir`` for the same name removes once that process is gone. With
    ``overwrite=False`` an existing ``final`` is an error: we never delete finished outputs
    unless asked.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_dirs(final)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
    try:
        os.chmod(tmp, _dir_mode())  # mkdtemp makes it 0700; outputs are ordinary folders
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints and weights can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
