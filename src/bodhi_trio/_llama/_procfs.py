"""Reading a process's ``/proc`` files: what a child's measured memory and the leftover
check need, in one place."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PROC", "read_small", "stat_fields"]

PROC = Path("/proc")


def read_small(path: Path) -> bytes:
    """A small ``/proc`` file in one read: three system calls, where ``read_text`` makes nine.

    Raises:
        OSError: It cannot be opened (the process is gone, or not ours to read).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def stat_fields(pid: int, *, proc: Path = PROC) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (``state``, ``ppid``,
    ``pgrp``, ...: field 3 on, ``man 5 proc``), or ``None`` if the process is gone or its
    file unreadable."""
    try:
        stat = read_small(proc / str(pid) / "stat")
        # The command name (field 2) may hold spaces and ")": split after the last ")".
        return stat[stat.rindex(b")") + 2 :].split()
    except (OSError, ValueError):
        return None
