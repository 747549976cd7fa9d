"""The scheduler's published state: built when read, never missed by a waiter."""

from __future__ import annotations

import trio
import trio.testing

from bodhi_trio._core._published import PublishedState
from bodhi_trio._core._state import ServerState


def _state(used: int) -> ServerState:
    return ServerState("cpu", (), 0, used)


def _counting() -> tuple[PublishedState, list[int], list[int]]:
    source, built = [0], []

    def build() -> ServerState:
        built.append(source[0])
        return _state(source[0])

    return PublishedState(_state(0), build), source, built


def test_a_change_nobody_reads_is_never_built() -> None:
    published, source, built = _counting()
    for used in (1, 2, 3):
        source[0] = used
        published.publish()
    assert built == []
    assert published.value == _state(3)
    assert published.value == _state(3)
    assert built == [3]  # once, when read


async def test_a_waiter_sees_a_state_that_lasted_until_the_next_change() -> None:
    published, source, built = _counting()
    seen: list[ServerState] = []

    async def wait_for_one(task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        seen.append(await published.wait_value(lambda state: state.memory_used == 1))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(wait_for_one)
            source[0] = 1
            published.publish()
            source[0] = 2  # before the waiter runs again
            published.publish()
    assert seen == [_state(1)]
    assert built == [1, 2]  # built at every change while someone waited
    source[0] = 3
    published.publish()
    assert built == [1, 2]  # and lazily again once nobody does


async def test_wait_until_wakes_at_a_change() -> None:
    published, source, _built = _counting()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(published.wait_until, lambda: source[0] == 1)
            await trio.testing.wait_all_tasks_blocked()
            changed = published.changed
            source[0] = 1
            published.publish()
            assert changed.is_set()
            assert not published.changed.is_set()
