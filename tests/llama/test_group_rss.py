"""A child's measured memory: its process group's RSS, and the members remembered between
looks at every process."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from bodhi_trio._llama._group_rss import RESCAN_SECS, GroupMemory, process_group_rss
from procs import group_members, wait_gone

PAGE = os.sysconf("SC_PAGE_SIZE")


def add_process(proc: Path, pid: int, comm: str, state: str, pgrp: int, resident: int) -> None:
    """A process in a fake ``/proc``: its ``stat`` and ``statm``."""
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {state} 1 {pgrp} {pgrp} 0 -1")
    (proc / str(pid) / "statm").write_text(f"9999 {resident} 10 1 0 50 0\n")


def remove_process(proc: Path, pid: int) -> None:
    for name in ("stat", "statm"):
        (proc / str(pid) / name).unlink()
    (proc / str(pid)).rmdir()


def both_asleep(pgid: int) -> bool:
    """The group of ``sh -c "sleep 60 & exec sleep 60"`` is two ``sleep`` processes (the
    shell's memory, before its exec, is not what a second look finds)."""
    members = group_members(pgid)
    try:
        names = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in members]
    except OSError:
        return False
    return names == ["sleep", "sleep"]


def test_rss_parses_proc(tmp_path: Path) -> None:
    page = PAGE
    add_process(tmp_path, 100, "llama-server", "S", 100, 1000)
    add_process(tmp_path, 101, "weird) name (x", "R", 100, 20)  # the name may hold ") "
    add_process(tmp_path, 102, "zombie", "Z", 100, 0)
    add_process(tmp_path, 103, "other", "S", 7, 5000)
    (tmp_path / "104").mkdir()  # exited between listing and reading
    (tmp_path / "self").mkdir()
    assert process_group_rss(100, proc=tmp_path) == 1020 * page
    assert process_group_rss(7, proc=tmp_path) == 5000 * page
    assert process_group_rss(102, proc=tmp_path) is None
    assert process_group_rss(100, proc=tmp_path / "nowhere") is None


def vm_rss(pid: int) -> int:
    """VmRSS from /proc/<pid>/status: another source than the statm the code reads."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@asynccontextmanager
async def two_sleepers() -> AsyncIterator[int]:
    """A process group of two ``sleep`` processes (a leader that forked one); yields its id.
    Both are killed and gone on leaving."""
    leader = await trio.lowlevel.open_process(
        ["sh", "-c", "sleep 60 & exec sleep 60"], start_new_session=True
    )
    try:
        with trio.fail_after(10):  # liveness bound: the fork and the exec take milliseconds
            while not both_asleep(leader.pid):  # noqa: ASYNC110 - /proc, no event
                await trio.sleep(0.01)
        yield leader.pid
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        with trio.fail_after(10):  # liveness bound: SIGKILL is immediate
            await leader.wait()
            for pid in group_members(leader.pid):
                await wait_gone(pid)


async def test_rss_sums_the_group() -> None:
    # A group leader that forked a second process: both count.
    async with two_sleepers() as pgid:
        members = group_members(pgid)
        measured = process_group_rss(pgid)
        expected = sum(vm_rss(pid) for pid in members)
        assert measured is not None
        # A process's RSS can move by a page or two between two reads.
        assert abs(measured - expected) <= 16 * PAGE * len(members)
        assert measured > 0
    assert process_group_rss(pgid) is None


def memory_on(proc: Path) -> tuple[GroupMemory, list[float]]:
    """A GroupMemory on a fake ``/proc``, and its clock: set ``now[0]``."""
    now = [0.0]
    return GroupMemory(proc=proc, clock=lambda: now[0]), now


def test_group_memory_reads_the_members_it_knows_until_the_rescan(tmp_path: Path) -> None:
    memory, now = memory_on(tmp_path)
    add_process(tmp_path, 100, "llama-server", "S", 100, 1000)
    add_process(tmp_path, 103, "other", "S", 7, 5000)
    assert memory(100) == 1000 * PAGE
    # The member's memory grows: read each time. A process it forks is not looked for...
    (tmp_path / "100" / "statm").write_text("9999 1500 10 1 0 50 0\n")
    add_process(tmp_path, 101, "forked", "S", 100, 20)
    now[0] = RESCAN_SECS - 1
    assert memory(100) == 1500 * PAGE
    # ...until the rescan, which counts it from then on.
    now[0] = RESCAN_SECS
    assert memory(100) == 1520 * PAGE
    assert memory(100) == 1520 * PAGE
    assert process_group_rss(100, proc=tmp_path) == 1520 * PAGE


def test_group_memory_looks_again_when_no_member_it_knows_is_left(tmp_path: Path) -> None:
    memory, now = memory_on(tmp_path)
    add_process(tmp_path, 100, "leader", "S", 100, 1000)
    assert memory(100) == 1000 * PAGE
    add_process(tmp_path, 101, "forked", "S", 100, 20)
    remove_process(tmp_path, 100)  # the leader exited; what it forked lives on
    now[0] = 1.0
    assert memory(100) == 20 * PAGE
    remove_process(tmp_path, 101)
    assert memory(100) is None


def test_group_memory_forgets_a_group_no_longer_measured(tmp_path: Path) -> None:
    memory, now = memory_on(tmp_path)
    add_process(tmp_path, 100, "stopped later", "S", 100, 1000)
    add_process(tmp_path, 200, "still loaded", "S", 200, 10)
    assert memory(100) == 1000 * PAGE
    now[0] = RESCAN_SECS
    assert memory(200) == 10 * PAGE
    assert list(memory._groups) == [200]  # 100's members are not kept for ever


async def test_group_memory_agrees_with_a_look_at_every_process() -> None:
    memory = GroupMemory()
    async with two_sleepers() as pgid:
        first = memory(pgid)
        assert first is not None
        assert abs(first - (process_group_rss(pgid) or 0)) <= 16 * PAGE * 2
        assert sorted(memory._groups[pgid][1]) == sorted(group_members(pgid))
    assert memory(pgid) is None
