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
import shutil
import signal
from pathlib import Path

__all__ = ["forget_child", "kill_leftovers", "record_child"]

logger = logging.getLogger("bodhi_trio.leftovers")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or ``None`` if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited already
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
    run_dir.mkdir(parents=True, exist_ok=True)
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
    tmp.write_text(json.dumps(record))
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
        if isinstance(socket_dir, str) and Path(socket_dir).name.startswith("bodhi-trio-"):
            shutil.rmtree(socket_dir, ignore_errors=True)
        forget_child(path)
    return killed
