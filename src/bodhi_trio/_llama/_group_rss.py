"""A running child's measured memory: the resident memory of its process group.

A child runs in its own process group (its pid is the group id), so the group's RSS
counts whatever it forked too. Resident memory includes the model file's pages the child
has mapped, which the page cache shares with any other process mapping that file.

Which processes are in a group only a look at every process in ``/proc`` tells, and that
look costs about 10 µs a process (the kernel writes each ``stat`` out): 1-5 ms on a
machine running 100-500 processes. The watch of each loaded child measures it every few
seconds, and on a paced stream of 50 tokens/s those milliseconds were a third of the
relay's own CPU per token. :class:`GroupMemory` therefore remembers a group's members and
looks at every process again only once a minute (:data:`RESCAN_SECS`); in between it reads
the members it knows (llama-server forks nothing, so that is one process: two reads).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import final

import attrs

from bodhi_trio._llama._procfs import PROC, read_small, stat_fields

__all__ = ["RESCAN_SECS", "GroupMemory", "process_group_rss"]

RESCAN_SECS = 60.0
"""How often :class:`GroupMemory` looks at every process for a group's members: a process
a child forks is counted within this long."""

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def process_group_rss(pgid: int, *, proc: Path = PROC) -> int | None:
    """The resident memory of every live process in a process group, in bytes (every
    process in ``proc`` looked at: see the module docstring for the cost).

    Args:
        pgid: The process group id (a child's pid).
        proc: The procfs mount, for tests.

    Returns:
        The sum of the members' resident set sizes, or ``None`` if the group has no live
        process (zombies do not count: they hold no memory).
    """
    return _members_rss(pgid, _numbered(proc), proc)[0]


def _numbered(proc: Path) -> list[int]:
    """The pids in ``proc`` (none if it cannot be read)."""
    try:
        return [int(entry) for entry in os.listdir(proc) if entry.isdigit()]
    except OSError:
        return []


def _members_rss(pgid: int, pids: Iterable[int], proc: Path) -> tuple[int | None, list[int]]:
    """The summed RSS of those of ``pids`` that are live members of ``pgid`` (``None`` if
    none is), and which they are."""
    total = 0
    members: list[int] = []
    for pid in pids:
        fields = stat_fields(pid, proc=proc)
        try:
            if fields is None or int(fields[2]) != pgid or fields[0] in (b"Z", b"X"):
                continue
            resident_pages = int(read_small(proc / str(pid) / "statm").split()[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked, or not ours to read
        total += resident_pages * _PAGE_SIZE
        members.append(pid)
    return (total if members else None), members


@final
@attrs.define(eq=False)
class GroupMemory:
    """:func:`process_group_rss` that remembers each group's members (see the module
    docstring): every process is looked at on a group's first measure, and again once
    :data:`RESCAN_SECS` passed since the last such look or when none of the remembered
    members is left; otherwise only the members are read.

    A group not measured for :data:`RESCAN_SECS` is forgotten (a stopped child's).

    Args:
        proc: The procfs mount, for tests.
        clock: Seconds, monotonic (for tests).
    """

    _proc: Path = attrs.field(default=PROC, kw_only=True, alias="proc")
    _clock: Callable[[], float] = attrs.field(default=time.monotonic, kw_only=True, alias="clock")
    _groups: dict[int, tuple[float, list[int]]] = attrs.field(factory=dict, init=False)
    """pgid: (when every process was last looked at, the members found then and still live)"""

    def __call__(self, pgid: int) -> int | None:
        """The resident memory of ``pgid``'s live members, in bytes, or ``None`` if it has none."""
        now = self._clock()
        self._groups = {g: k for g, k in self._groups.items() if now - k[0] < RESCAN_SECS}
        known = self._groups.get(pgid)
        if known is not None:
            scanned_at, members = known
            rss, alive = _members_rss(pgid, members, self._proc)
            if rss is not None:
                self._groups[pgid] = (scanned_at, alive)
                return rss
        rss, members = _members_rss(pgid, _numbered(self._proc), self._proc)
        if rss is None:
            self._groups.pop(pgid, None)
        else:
            self._groups[pgid] = (now, members)
        return rss
