"""Run records of llama-server children, so a later start can kill leftovers.

The parent-death signal kills a child when bodhi-trio dies, but a record on
disk covers what that cannot: a child that was re-parented by a wrapper, or a
process group member that outlived its leader. Each running child has one JSON
file in ``BODHI_HOME/run/``; a record whose owner is gone marks a leftover.

Processes are identified by pid *and* start time (from ``/proc``), so a reused
pid is never killed by mistake.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import time
from pathlib import Path

from bodhi_trio._llama._procfs import stat_fields

__all__ = [
    "SOCKET_DIR_PREFIX",
    "SOCKET_NAME",
    "forget_child",
    "kill_leftovers",
    "record_child",
    "sweep_socket_dirs",
]

logger = logging.getLogger("bodhi_trio.leftovers")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or ``None`` if it is gone."""
    fields = stat_fields(pid)
    if fields is None or fields[0] == b"Z":  # a zombie has exited already
        return None
    return int(fields[19])


def record_child(run_dir: Path, pid: int, argv0: str, *, socket_dir: Path | None = None) -> Path:
    """Write the run record of a child that was just spawned.

    Args:
        run_dir: Where records live.
        pid: The child's pid.
        argv0: Its program, for the log.
        socket_dir: Its private socket directory, removed with a leftover child.

    Returns:
        The record's path, for :func:`forget_child`.
    """
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {
        "pid": pid,
        "start_time": _start_time(pid),
        "owner_pid": os.getpid(),
        "owner_start_time": _start_time(os.getpid()),
        "argv0": argv0,
        "socket_dir": None if socket_dir is None else str(socket_dir),
    }
    path = run_dir / f"llama-server-{pid}.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # pids and paths: ours
    with os.fdopen(fd, "w") as file:
        file.write(json.dumps(record))
    os.replace(tmp, path)
    return path


def forget_child(path: Path) -> None:
    """Remove a run record once its child is gone."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def kill_leftovers(run_dir: Path) -> list[int]:
    """SIGKILL the process groups of children whose owner is gone, and drop their records.

    Records of a live owner (another bodhi-trio using the same home) are kept.

    Returns:
        The pids that were still alive and were killed.
    """
    killed: list[int] = []
    if not run_dir.is_dir():
        return killed
    for path in sorted(run_dir.glob("llama-server-*.json")):
        try:
            record = json.loads(path.read_text())
            pid, start = int(record["pid"]), record["start_time"]
            owner, owner_start = int(record["owner_pid"]), record["owner_start_time"]
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("removing unreadable run record %s", path)
            forget_child(path)
            continue
        if owner_start is not None and _start_time(owner) == owner_start:
            continue  # its owner still runs and will stop it
        if start is not None and _start_time(pid) == start:
            logger.warning("killing leftover llama-server pid %d from an earlier run", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
        socket_dir = record.get("socket_dir")
        if isinstance(socket_dir, str) and _made_for_a_child(Path(socket_dir)):
            shutil.rmtree(socket_dir, ignore_errors=True)
        forget_child(path)
    return killed


SOCKET_DIR_PREFIX = "bodhi-trio-"
"""The prefix of a child's private socket directory (``mkdtemp``)."""
SOCKET_NAME = "llama.sock"
"""The child's socket in it: llama-server listens on a Unix socket when --host ends in .sock."""
_STALE_AFTER_SECS = 60.0
_SOCKET_DIR_NAME = re.compile(re.escape(SOCKET_DIR_PREFIX) + r"[a-z0-9_]{8}")
"""A name ``mkdtemp`` gives with our prefix (eight of its letters)."""


def _made_for_a_child(directory: Path, info: os.stat_result | None = None) -> bool:
    """Whether ``directory`` is a child's private socket directory as ``mkdtemp`` made it:
    its name, our own, mode 0700, and nothing in it but the socket. Anything else that
    begins with the prefix (a user's ``/tmp/bodhi-trio-dev`` checkout, say) is not ours to
    remove."""
    if _SOCKET_DIR_NAME.fullmatch(directory.name) is None:
        return False
    try:
        info = directory.lstat() if info is None else info
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return False
        if stat.S_IMODE(info.st_mode) != 0o700:
            return False
        return set(os.listdir(directory)) <= {SOCKET_NAME}
    except OSError:
        return False


def _listening(socket_path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``socket_path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(socket_path))
        except OSError:
            return False
        return True


def sweep_socket_dirs(
    root: Path | None = None, *, min_age: float = _STALE_AFTER_SECS
) -> list[Path]:
    """Remove the private socket directories of children that are gone.

    A run record covers a child whose parent died; a child started without one (library
    use without ``run_dir``) leaves its directory behind when its parent is killed. A
    directory is removed only if it is ours (our uid, our prefix), older than ``min_age``
    (a child that is starting has not bound its socket yet) and nothing listens on its
    socket: another bodhi-trio's live children are never touched.

    Returns:
        The directories removed.
    """
    folder = Path(tempfile.gettempdir()) if root is None else root
    removed: list[Path] = []
    now = time.time()
    try:
        candidates = list(folder.glob(SOCKET_DIR_PREFIX + "*"))
    except OSError:
        return removed
    for directory in candidates:
        try:
            info = directory.lstat()
        except OSError:
            continue
        if not _made_for_a_child(directory, info):
            continue
        if now - info.st_mtime < min_age or _listening(directory / SOCKET_NAME):
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    if removed:
        logger.info("removed %d stale child socket directories", len(removed))
    return removed
