"""Process inspection helpers for tests (Linux /proc)."""

from __future__ import annotations

import os
from pathlib import Path

import trio


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


async def wait_gone(pid: int, timeout: float) -> None:
    """Wait until ``pid`` is gone or a zombie; ``trio.TooSlowError`` after ``timeout``."""
    with trio.fail_after(timeout):
        while is_alive(pid):
            await trio.sleep(0.01)
