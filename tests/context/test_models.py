"""Several models at once, on a virtual clock: admission, LRU eviction, memory, queues,
per-model timers, and crash isolation (the real-server cases are in tests/http)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
import trio.testing

from bodhi_trio._core._state import SlotStatus
from bodhi_trio._exceptions import (
    InsufficientMemoryError,
    ResponseInterruptedError,
    ServerBusyError,
)
from fake_context import Harness, fake_binary, harness

MiB = 2**20


async def test_two_aliases_alternated_stay_resident(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_MAX_LOADED_MODELS="2") as h:
        served = [(await h.chat(alias))["served_by"] for alias in ("a", "b") * 50]
        assert len(h.launcher.starts) == 2
        assert len(h.launcher.alive) == 2
        a, b = h.launcher.starts
        assert served == [a.pid, b.pid] * 50
        state = h.ctx.state
        assert [(m.alias, m.status) for m in state.models] == [
            ("a", SlotStatus.READY),
            ("b", SlotStatus.READY),
        ]


async def test_a_third_alias_evicts_the_least_recently_used_idle_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_MAX_LOADED_MODELS="2") as h:
        await h.chat("a")
        await h.chat("b")
        await h.chat("a")  # b is now the least recently used
        await h.chat("c")
        alive = {server.alias for server in h.launcher.alive.values()}
        assert alive == {"a", "c"}
        assert h.ctx.state.model("b") is None
        assert ("stop", "b") in h.kinds()


async def test_an_idle_model_is_evicted_before_a_busier_older_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_MAX_LOADED_MODELS="2") as h:
        await h.chat("a")
        await h.chat("b")
        async with trio.open_nursery() as nursery:
            # a is older but streams: b (idle) must go, and a's stream is never touched.
            nursery.start_soon(h.stream, "a", 20, 0.5)
            await h.ctx.wait_state(lambda s: s.in_flight == 1)
            result = await h.chat("c")
        assert {s.alias for s in h.launcher.alive.values()} == {"a", "c"}
        assert result["served_by"] == h.launcher.starts[-1].pid


@pytest.mark.parametrize(
    ("a_seconds", "b_seconds", "goes", "stays"),
    [(10, 20, "a", "b"), (40, 5, "b", "a")],
    ids=["the least recently used drains first", "another becomes idle first"],
)
async def test_with_every_model_busy_a_load_waits_for_one_to_become_idle(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    a_seconds: int,
    b_seconds: int,
    goes: str,
    stays: str,
) -> None:
    """SPEC §10: with none idle, the load waits for one to become idle, and no stream is
    cut. The least recently used one (a) was drained whatever happened: when another
    model went idle first, a's stream was still cut at the drain timeout (the probe: a
    request for a third alias, even one its client left at once, cut a busy stream)."""
    async with harness(tmp_path, BODHI_MAX_LOADED_MODELS="2") as h:
        await h.chat("a")
        await h.chat("b")
        done: dict[str, float] = {}

        async def stream(alias: str, seconds: int) -> None:
            chunks = await h.stream(alias, seconds * 2, 0.5)
            assert chunks[-1] == b"data: [DONE]\n\n"  # drained, never cut
            done[alias] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, "a", a_seconds)  # a is the least recently used
            await h.ctx.wait_state(lambda s: s.in_flight == 1)
            nursery.start_soon(stream, "b", b_seconds)
            await h.ctx.wait_state(lambda s: s.in_flight == 2)
            await h.chat("c")
            done["c"] = trio.current_time()
        assert done[goes] <= done["c"] < done[stays]
        assert {s.alias for s in h.launcher.alive.values()} == {stays, "c"}


async def test_a_budget_for_one_model_swaps_them(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    estimates = {"a": 600 * MiB, "b": 600 * MiB}
    async with harness(tmp_path, estimates=estimates, BODHI_MEMORY_BUDGET=str(1000 * MiB)) as h:
        await h.chat("a")
        assert h.ctx.state.memory_used == 600 * MiB
        await h.chat("b")
        assert [s.alias for s in h.launcher.alive.values()] == ["b"]
        assert h.ctx.state.memory_budget == 1000 * MiB


async def test_a_model_larger_than_the_budget_is_refused_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    estimates = {"a": 100 * MiB, "b": 2000 * MiB}
    async with harness(tmp_path, estimates=estimates, BODHI_MEMORY_BUDGET=str(1000 * MiB)) as h:
        await h.chat("a")
        started = trio.current_time()
        with pytest.raises(InsufficientMemoryError, match="budget") as caught:
            await h.chat("b")
        assert trio.current_time() == started  # no load, no wait
        assert caught.value.status == 503
        assert "2,000 MiB" in caught.value.message
        assert [s.alias for s in h.launcher.alive.values()] == ["a"]  # untouched


async def test_the_queue_bound_answers_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_MAX_QUEUE="4") as h:
        await h.chat("a")
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(h.stream, "a", 10, 1.0)
            await h.ctx.wait_state(lambda s: s.in_flight == 4)
            started = trio.current_time()
            with pytest.raises(ServerBusyError) as caught:
                await h.chat("a")
            assert trio.current_time() == started
            assert (caught.value.status, caught.value.code) == (429, "server_busy")
            assert caught.value.retry_after >= 1
            assert (await h.chat("b"))["served_by"]  # another model is not affected
        assert h.ctx.state.in_flight == 0


async def test_requests_waiting_for_a_load_count_against_the_queue(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_MAX_QUEUE="2") as h:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.chat, "a")
            nursery.start_soon(h.chat, "a")
            await trio.testing.wait_all_tasks_blocked()
            assert h.ctx.state.model("a") is not None
            with pytest.raises(ServerBusyError):
                await h.chat("a")
        assert len(h.launcher.starts) == 1


async def test_a_crash_ends_only_that_models_streams(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_MAX_LOADED_MODELS="2") as h:
        await h.chat("a")
        await h.chat("b")
        outcomes: dict[str, str] = {}

        async def stream(alias: str) -> None:
            try:
                chunks = await h.stream(alias, 20, 0.5)
            except ResponseInterruptedError as exc:
                outcomes[alias] = f"interrupted: {exc.message}"
            else:
                outcomes[alias] = chunks[-1].decode()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, "a")
            nursery.start_soon(stream, "b")
            await h.ctx.wait_state(lambda s: s.in_flight == 2)
            a = next(s for s in h.launcher.starts if s.alias == "a")
            a.crash.set()
        assert outcomes["a"].startswith("interrupted: llama-server crashed")
        assert outcomes["b"] == "data: [DONE]\n\n"
        assert h.ctx.state.status_of("a") is SlotStatus.CRASHED
        assert h.ctx.state.status_of("b") is SlotStatus.READY
        assert (await h.chat("a"))["served_by"] != a.pid  # reloaded


async def test_each_model_has_its_own_idle_timer(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_MAX_LOADED_MODELS="2", BODHI_KEEP_ALIVE_SECS="10") as h:
        await h.chat("a")
        await trio.sleep(6)
        await h.chat("b")
        await trio.sleep(5)  # a: 11 s idle, b: 5 s
        assert h.ctx.state.model("a") is None
        assert h.ctx.state.status_of("b") is SlotStatus.READY
        await trio.sleep(6)
        assert h.ctx.state.models == ()
        assert h.launcher.alive == {}


async def test_requests_that_keep_the_keep_alive_do_not_wake_the_idle_unloader(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """It sleeps until the unload is due: a request costs it no task step (it used to
    take two: at the request's start and end); the unload still comes on time."""
    steps: list[str] = []

    class _Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            steps.append(task.name)

    instrument = _Steps()
    async with harness(tmp_path, BODHI_KEEP_ALIVE_SECS="300") as h:
        await h.chat("a")
        await trio.testing.wait_all_tasks_blocked()  # the unloader started and sleeps
        trio.lowlevel.add_instrument(instrument)
        try:
            for _ in range(20):
                await h.chat("a")
                await trio.sleep(10)
            assert steps.count("idle:a") == 0
            assert h.ctx.state.status_of("a") is SlotStatus.READY
            await trio.sleep(300 - 10 - 1)  # 299 s after the last request ended
            assert h.ctx.state.status_of("a") is SlotStatus.READY
            await trio.sleep(2)
            assert h.ctx.state.model("a") is None
            assert "idle:a" in steps  # the name counted is the unloader's task: it unloaded
        finally:
            trio.lowlevel.remove_instrument(instrument)


async def test_a_cancelled_waiter_leaves_no_hold_on_either_model(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_MAX_LOADED_MODELS="1") as h:
        await h.chat("a")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.stream, "a", 10, 1.0)
            await h.ctx.wait_state(lambda s: s.in_flight == 1)
            with trio.move_on_after(2):  # b waits for a to drain (10 s): give up
                await h.chat("b")
        # The load outlives the request that started it: b comes up once a drained.
        await h.ctx.wait_state(lambda s: s.status_of("b") is SlotStatus.READY)
        await trio.testing.wait_all_tasks_blocked()
        locks = h.ctx.statistics().locks
        assert all(lock.readers == 0 and not lock.writer for lock in locks.values())
        assert h.ctx.state.in_flight == 0
        assert all(m.queued == 0 for m in h.ctx.state.models)


async def test_loads_of_models_that_fit_run_side_by_side(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_MAX_LOADED_MODELS="3") as h:
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for alias in ("a", "b", "c"):
                nursery.start_soon(h.chat, alias)
        assert trio.current_time() - started == pytest.approx(1.0)  # one load time, not three
        assert len(h.launcher.alive) == 3


async def test_stop_one_or_all(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with harness(tmp_path, BODHI_MAX_LOADED_MODELS="3") as h:
        for alias in ("a", "b", "c"):
            await h.ctx.load(alias)
        await h.ctx.stop("b")
        assert [m.alias for m in h.ctx.state.models] == ["a", "c"]
        await h.ctx.stop()
        assert h.ctx.state.models == ()
        assert h.launcher.alive == {}


async def _behind_a_switch(h: Harness, ask_b: Callable[[], Awaitable[object]]) -> None:
    """``ask_b`` while ``c``'s load holds the admission turn (``a`` drains, busy for 10 s)
    and a switch from cuda to cpu waits next in line: ``b``'s load asks under cuda and is
    let in under cpu."""
    await h.ctx.load("a")
    with trio.fail_after(120):  # virtual: a stuck turn would run it out
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.stream, "a", 20, 0.5)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(h.chat, "c")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(h.ctx.set_exec_variant, "cpu")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask_b)
        await h.chat("a")  # the turn is free again: a later load goes through


def _on_cuda(
    tmp_path: Path, estimates: dict[str, int] | None = None
) -> AbstractAsyncContextManager[Harness]:
    """A harness started on cuda, with a binary for cuda and for cpu."""
    binary = fake_binary(tmp_path / "llama-server")
    return harness(
        tmp_path / "home",
        estimates=estimates,
        BODHI_EXEC_VARIANT="cuda",
        BODHI_LLAMA_SERVER_CUDA=binary,
        BODHI_LLAMA_SERVER_CPU=binary,
    )


async def test_a_load_let_in_before_a_switch_shrank_the_budget_is_refused_not_stuck(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``b`` fits cuda's budget (none) when it asks, then waits for the admission turn
    behind a switch to cpu (80% of the machine): once it has the turn it no longer fits even
    alone. It gets the 503; it used to wait there forever, holding the turn from every later
    load."""
    async with _on_cuda(tmp_path, estimates={"b": 2**60}) as h:
        refused: list[InsufficientMemoryError] = []

        async def ask_b() -> None:
            try:
                await h.chat("b")
            except InsufficientMemoryError as exc:
                refused.append(exc)

        await _behind_a_switch(h, ask_b)
        assert len(refused) == 1
        assert "more than the whole memory budget" in refused[0].message
        assert h.ctx.state.variant == "cpu"
        assert h.ctx.state.memory_budget == h.ctx.settings.memory_budget_bytes("cpu")
        assert [start.variant for start in h.launcher.starts][-1] == "cpu"


async def test_a_load_that_waited_behind_a_variant_switch_starts_on_the_new_variant(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with _on_cuda(tmp_path) as h:
        await _behind_a_switch(h, lambda: h.chat("b"))
        starts = {start.alias: start.variant for start in h.launcher.starts}
        assert starts["b"] == "cpu"
        assert h.ctx.state.variant == "cpu"
