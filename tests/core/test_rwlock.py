"""The writer-preferring RW lock (virtual clock, no I/O)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from bodhi_trio._core._rwlock import RWLock, RWLockStatistics


async def test_readers_share() -> None:
    lock = RWLock()
    both_in = trio.Event()
    inside = 0

    async def reader() -> None:
        nonlocal inside
        async with lock.read():
            inside += 1
            if inside == 2:
                both_in.set()
            await both_in.wait()

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(reader)
    assert lock.statistics() == RWLockStatistics(0, False, 0, 0)


async def test_waiting_writer_blocks_new_readers(autojump_clock: trio.testing.MockClock) -> None:
    lock = RWLock()
    order: list[str] = []
    release_first = trio.Event()

    async def first_reader() -> None:
        async with lock.read():
            order.append("r1 in")
            await release_first.wait()
        order.append("r1 out")

    async def writer() -> None:
        async with lock.write():
            order.append("w in")
            await trio.sleep(1)
        order.append("w out")

    async def late_reader() -> None:
        async with lock.read():
            order.append("r2 in")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first_reader)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(late_reader)
        await trio.testing.wait_all_tasks_blocked()
        assert lock.statistics() == RWLockStatistics(1, False, 1, 1)
        release_first.set()
    assert order == ["r1 in", "r1 out", "w in", "w out", "r2 in"]


async def test_cancelled_waiting_writer_lets_blocked_readers_go() -> None:
    lock = RWLock()
    release_first = trio.Event()
    late_in = trio.Event()

    async def first_reader() -> None:
        async with lock.read():
            await release_first.wait()

    async def late_reader() -> None:
        async with lock.read():
            late_in.set()
            await release_first.wait()

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_reader)
            await trio.testing.wait_all_tasks_blocked()
            writer_scope = trio.CancelScope()

            async def writer() -> None:
                with writer_scope:
                    async with lock.write():
                        pytest.fail("the writer must not get in while r1 holds")

            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(late_reader)
            await trio.testing.wait_all_tasks_blocked()
            assert lock.statistics().readers_waiting == 1  # blocked by the waiting writer
            writer_scope.cancel()
            await late_in.wait()  # the late reader got in beside r1
            assert lock.statistics().readers == 2
            release_first.set()


async def test_drain_patience_calls_back_once_and_keeps_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lock = RWLock()
    reader_scope = trio.CancelScope()
    impatient_at: list[float] = []

    async def reader() -> None:
        with reader_scope:
            async with lock.read():
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()

        def impatient() -> None:
            impatient_at.append(trio.current_time() - start)
            reader_scope.cancel()

        async with lock.write(patience=5, on_impatience=impatient):
            assert lock.statistics().writer
    assert impatient_at == [5]


async def test_downgrade_hands_read_holds_over_without_a_gap() -> None:
    lock = RWLock()
    other_writer_in = trio.Event()

    async def other_writer() -> None:
        async with lock.write():
            other_writer_in.set()

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            async with lock.write() as hold:
                nursery.start_soon(other_writer)
                await trio.testing.wait_all_tasks_blocked()
                await hold.downgrade(2)
            assert lock.statistics() == RWLockStatistics(2, False, 1, 0)
            await trio.testing.wait_all_tasks_blocked()
            assert not other_writer_in.is_set()  # held off by the two read holds
            await lock.release_read()
            await lock.release_read()
            await other_writer_in.wait()


async def test_downgrade_to_no_readers_releases_the_write_side_once() -> None:
    # A load whose waiters all left hands over zero read holds.
    lock = RWLock()
    with trio.fail_after(1):
        async with lock.write() as hold:
            await hold.downgrade(0)
        assert lock.statistics() == RWLockStatistics(0, False, 0, 0)
        async with lock.write():
            pass


async def test_try_acquire_write_only_when_free() -> None:
    lock = RWLock()
    async with lock.read():
        assert not lock.try_acquire_write()
    assert lock.try_acquire_write()
    assert not lock.try_acquire_write()
    await lock.release_write()
    with pytest.raises(RuntimeError):
        await lock.release_write()
    with pytest.raises(RuntimeError):
        await lock.release_read()


async def test_an_uncontended_read_hold_is_taken_and_given_back_without_a_yield() -> None:
    """On a busy event loop every yield on a request's way costs it a round of every
    other task: an uncontended read hold takes none (another task started before it has
    not run after it), and a cancelled one is refused with nothing held."""
    lock = RWLock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await lock.acquire_read()
            assert lock.statistics() == RWLockStatistics(1, False, 0, 0)
            await lock.release_read()
            assert ran == []
        assert ran == ["other"]
        with trio.CancelScope() as scope:
            scope.cancel()
            await lock.acquire_read()
        assert scope.cancelled_caught
    assert lock.statistics() == RWLockStatistics(0, False, 0, 0)
