"""The server slot with a fake server factory and a fake upstream, on a virtual clock.

No real I/O here: the launcher is a fake whose "load" takes virtual time, and
llama-server's HTTP side is an ``httpx.MockTransport`` whose streams tick on the
same virtual clock. The real llama-server version of the key cases is in
``test_context_llama.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._settings import load_settings
from bodhi_trio._context._root import open_context
from bodhi_trio._core._state import (
    EventKind,
    ServerEvent,
    SlotStatus,
)
from bodhi_trio._exceptions import (
    AliasNotFoundError,
    ResponseInterruptedError,
    StartupError,
)
from fake_context import FakeLauncher, fake_binary, harness, newest, spec_builder


async def test_fifty_concurrent_requests_start_one_child(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path) as h:
        served: list[int] = []

        async def one() -> None:
            served.append((await h.chat("a"))["served_by"])

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(one)
        assert len(h.launcher.starts) == 1
        assert served == [h.launcher.starts[0].pid] * 50
        assert h.slot.status is SlotStatus.READY
        assert h.slot.in_flight == 0


async def test_request_params_fill_gaps(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path) as h:
        AliasStore(tmp_path / "aliases").put(
            Alias.from_dict(
                {"alias": "a", "repo": "org/repo", "filename": "a.gguf",
                 "request_params": {"temperature": 0.2, "max_tokens": 7}},
                source="test",
            )
        )  # fmt: skip
        sent = (await h.chat("a", temperature=0.9))["request"]
        assert sent["temperature"] == 0.9
        assert sent["max_tokens"] == 7
        assert sent["model"] == "a"


async def test_unknown_alias_is_404_and_loads_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path) as h:
        with pytest.raises(AliasNotFoundError):
            await h.chat("nope")
        assert h.launcher.starts == []


async def test_readers_share_the_slot(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path) as h:
        await h.ctx.load("a")
        peak = 0

        async def watch() -> None:
            nonlocal peak
            state = await h.ctx.wait_state(lambda s: s.in_flight == 3)
            peak = state.in_flight

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for _ in range(3):
                nursery.start_soon(h.stream, "a", 10, 0.1)
        assert peak == 3
        assert len(h.launcher.starts) == 1


async def test_swap_waits_for_streams_and_blocks_new_readers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path) as h:
        await h.ctx.load("a")
        results: dict[str, Any] = {}

        async def long_a() -> None:
            results["long_a"] = await h.stream("a", 20, 0.5)  # 10 s
            results["long_a_done"] = trio.current_time()

        async def swap_to_b() -> None:
            results["b"] = await h.chat("b")
            results["b_done"] = trio.current_time()

        async def late_a() -> None:
            results["late_a"] = await h.chat("a")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_a)
            await h.ctx.wait_state(lambda s: s.in_flight == 1)
            nursery.start_soon(swap_to_b)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(late_a)  # arrives while the swap waits: queued behind it
            await trio.testing.wait_all_tasks_blocked()
            assert h.ctx.statistics().locks["a"].writers_waiting == 1
        a1, b1, a2 = h.launcher.starts
        assert (a1.alias, b1.alias, a2.alias) == ("a", "b", "a")
        assert results["long_a"][-1] == b"data: [DONE]\n\n"  # not cut: the swap waited
        assert results["b_done"] >= results["long_a_done"]
        assert results["b"]["served_by"] == b1.pid
        assert results["late_a"]["served_by"] == a2.pid
        assert h.launcher.max_alive == 1


async def test_drain_timeout_ends_stragglers_with_an_error(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_DRAIN_TIMEOUT_SECS="2") as h:
        await h.ctx.load("a")
        outcome: dict[str, Any] = {}

        async def long_a() -> None:
            try:
                await h.stream("a", 100, 0.5)  # 50 s: outlasts the 2 s drain
            except ResponseInterruptedError as exc:
                outcome["error"] = exc
                outcome["at"] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_a)
            await h.ctx.wait_state(lambda s: s.in_flight == 1)
            asked = trio.current_time()
            outcome["b"] = await h.chat("b")
        assert "drain timeout" in outcome["error"].message
        assert outcome["at"] - asked == pytest.approx(2, abs=0.01)
        assert outcome["b"]["served_by"] == h.launcher.starts[1].pid


async def test_crash_ends_streams_and_next_request_reloads(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path) as h:
        await h.ctx.load("a")
        first = h.launcher.starts[0]
        outcome: dict[str, Any] = {}

        async def streaming() -> None:
            with pytest.raises(ResponseInterruptedError, match="crashed") as caught:
                await h.stream("a", 100, 0.5)
            outcome["error"] = caught.value

        async with trio.open_nursery() as nursery:
            nursery.start_soon(streaming)
            await h.ctx.wait_state(lambda s: s.in_flight == 1)
            first.crash.set()
        assert h.slot.status is SlotStatus.CRASHED
        assert not h.ctx.is_loaded()
        assert "exited unexpectedly with code 3" in (h.slot.error or "")
        reply = await h.chat("a")
        assert len(h.launcher.starts) == 2
        assert reply["served_by"] == h.launcher.starts[1].pid
        await trio.testing.wait_all_tasks_blocked()
        crashed = [e for e in h.events if e.kind is EventKind.CRASHED]
        assert crashed[0].detail["returncode"] == 3


async def test_failed_load_reaches_every_waiter_and_next_request_retries(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    launcher = FakeLauncher(fail_aliases={"a"})
    async with harness(tmp_path, launcher=launcher) as h:
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await h.chat("a")
            except StartupError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
        assert len(errors) == 5
        assert len({id(e) for e in errors}) == 1  # one load, one error
        assert h.slot.status is SlotStatus.STOPPED
        assert "failed to load" in (h.slot.error or "")
        launcher.fail_aliases.clear()
        assert (await h.chat("a"))["served_by"] == launcher.starts[0].pid


async def test_waiter_leaving_does_not_cancel_the_load(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path) as h:
        with trio.move_on_after(0.5):  # the load takes 1 s
            await h.chat("a")
        assert h.slot.status is SlotStatus.LOADING
        await h.ctx.wait_state(lambda s: newest(s).status is SlotStatus.READY)
        await trio.testing.wait_all_tasks_blocked()
        assert h.ctx.statistics().locks["a"].readers == 0  # no hold for the request that left
        assert len(h.launcher.starts) == 1


@pytest.mark.parametrize(
    ("keep_alive", "expect_stopped_after"),
    [("0", 0.0), ("5", 5.0), ("-1", None)],
)
async def test_keep_alive(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    keep_alive: str,
    expect_stopped_after: float | None,
) -> None:
    async with harness(tmp_path, BODHI_KEEP_ALIVE_SECS=keep_alive) as h:
        await h.chat("a")
        ended = trio.current_time()
        with trio.move_on_after(3600):
            await h.ctx.wait_state(lambda s: newest(s).status is SlotStatus.STOPPED)
        if expect_stopped_after is None:
            assert h.slot.status is SlotStatus.READY
        else:
            assert h.slot.status is SlotStatus.STOPPED
            assert trio.current_time() - ended == pytest.approx(expect_stopped_after, abs=0.01)
            await trio.testing.wait_all_tasks_blocked()  # listeners run in their own tasks
            assert h.kinds()[-1] == ("stop", "a")
            assert (await h.chat("a"))["served_by"] == h.launcher.starts[1].pid


async def test_long_stream_is_not_cut_by_a_shorter_keep_alive(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_KEEP_ALIVE_SECS="2") as h:
        chunks = await h.stream("a", 20, 0.5)  # 10 s
        assert chunks[-1] == b"data: [DONE]\n\n"
        assert len(chunks) == 21
        assert h.slot.status is SlotStatus.READY  # counted from the end: 2 s from now
        ended = trio.current_time()
        await h.ctx.wait_state(lambda s: newest(s).status is SlotStatus.STOPPED)
        assert trio.current_time() - ended == pytest.approx(2, abs=0.01)


async def test_idle_countdown_restarts_with_each_response(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_KEEP_ALIVE_SECS="5") as h:
        for _ in range(4):
            await h.chat("a")
            await trio.sleep(4)  # virtual: less than the keep-alive each time
        assert h.slot.status is SlotStatus.READY
        assert len(h.launcher.starts) == 1


async def test_variant_switch_restarts_with_new_binary_and_args(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    cuda = fake_binary(tmp_path / "llama-server-cuda")
    async with harness(tmp_path, BODHI_LLAMA_SERVER_CUDA=cuda) as h:
        await h.ctx.load("a")
        state = await h.ctx.set_exec_variant("cuda")
        assert state.variant == "cuda"
        assert state.status_of("a") is SlotStatus.READY
        before, after = h.launcher.starts
        assert before.variant == "cpu"
        assert after.variant == "cuda"
        assert after.args == ("--variant-arg-cuda", "--ctx-a")
        await trio.testing.wait_all_tasks_blocked()
        assert ("variant", None) in h.kinds()


async def test_the_default_memory_budget_follows_the_variant(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Unset, the budget is 80% of the machine's memory on cpu and none on the others: a
    switch takes the new variant's, and the reloaded model is admitted under it."""
    cuda = fake_binary(tmp_path / "llama-server-cuda")
    async with harness(tmp_path, BODHI_LLAMA_SERVER_CUDA=cuda) as h:
        on_cpu = h.ctx.settings.memory_budget_bytes("cpu")
        assert on_cpu is not None  # this machine's memory is known (Linux)
        await h.ctx.load("a")
        assert h.ctx.state.memory_budget == on_cpu
        state = await h.ctx.set_exec_variant("cuda")
        assert state.memory_budget is None
        assert state.status_of("a") is SlotStatus.READY
        state = await h.ctx.set_exec_variant("cpu")
        assert state.memory_budget == on_cpu
    async with harness(
        tmp_path / "set", BODHI_MEMORY_BUDGET="2GiB", BODHI_LLAMA_SERVER_CUDA=cuda
    ) as h:
        state = await h.ctx.set_exec_variant("cuda")  # set: the same on every variant
        assert state.memory_budget == 2 * 2**30


async def test_stop_then_is_loaded(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with harness(tmp_path) as h:
        assert not h.ctx.is_loaded()
        await h.ctx.load("a")
        assert h.ctx.is_loaded()
        await h.ctx.stop()
        assert not h.ctx.is_loaded()
        assert h.slot.status is SlotStatus.STOPPED
        assert h.launcher.alive == {}


async def test_listeners_get_events_in_order_and_are_isolated(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path) as h:
        failing_calls = 0
        slow_gate = trio.Event()

        async def failing(event: ServerEvent) -> None:
            nonlocal failing_calls
            failing_calls += 1
            raise RuntimeError("listener bug")

        async def blocked(event: ServerEvent) -> None:
            await slow_gate.wait()

        h.ctx.add_state_listener(failing, name="failing")
        h.ctx.add_state_listener(blocked, buffer=2, name="blocked")
        await h.chat("a")
        await h.chat("b")
        await h.ctx.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert h.kinds() == [
            ("loading", "a"), ("start", "a"), ("chat_completions", "a"),
            ("loading", "b"), ("stop", "a"), ("start", "b"), ("chat_completions", "b"),
            ("stop", "b"),
        ]  # fmt: skip
        assert [e.seq for e in h.events] == list(range(1, 9))
        assert failing_calls == 8
        stats = {s.name: s for s in h.ctx.statistics().listeners}
        assert stats["failing"].failed == 8
        assert stats["blocked"].dropped == 8 - 1 - 2  # one in its hands, two queued
        assert stats["recorder"].dropped == 0


async def test_context_exit_stops_the_child_and_ends_streams(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    launcher = FakeLauncher()
    errors: list[BaseException] = []
    async with (
        trio.open_nursery() as requests,  # request tasks outlive the context
        harness(tmp_path, launcher=launcher) as h,
    ):
        await h.ctx.load("a")

        async def streaming() -> None:
            try:
                await h.stream("a", 100, 0.5)
            except ResponseInterruptedError as exc:
                errors.append(exc)

        requests.start_soon(streaming)
        await h.ctx.wait_state(lambda s: s.in_flight == 1)
    assert launcher.alive == {}
    assert [str(e) for e in errors] == ["bodhi-trio is shutting down"]


async def test_errors_in_the_block_come_out_unwrapped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(AliasNotFoundError):
        async with harness(tmp_path) as h:
            await h.chat("nope")
    with pytest.raises(ZeroDivisionError):
        async with harness(tmp_path / "2"):
            _ = 1 / 0


async def test_an_error_from_the_block_keeps_its_own_context(tmp_path: Path) -> None:
    """The caller's exception comes out of open_context as raised, chain included."""
    settings = load_settings(home=tmp_path, env={"BODHI_KEEP_ALIVE_SECS": "-1"})

    async def fail_inside() -> None:
        async with open_context(settings, launcher=FakeLauncher(), spec_builder=spec_builder):
            try:
                raise KeyError("inner")
            except KeyError:
                raise ValueError("outer")  # noqa: B904 - the implicit chain is the point

    with pytest.raises(ValueError, match="outer") as caught:
        await fail_inside()
    assert isinstance(caught.value.__context__, KeyError)
    assert not caught.value.__suppress_context__
    assert caught.value.__cause__ is None
