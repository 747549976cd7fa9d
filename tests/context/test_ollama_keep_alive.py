"""A request's own keep-alive (Ollama's ``keep_alive``), on a virtual clock: it applies to
its model from that request on, until a later request sets another; a request without
one restores the alias's default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing

from bodhi_trio._core._state import SlotStatus
from fake_context import Harness, harness, newest

CHAT = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}


async def chat(h: Harness, keep_alive: float | None) -> None:
    async with h.ctx.forward("/v1/chat/completions", CHAT, keep_alive=keep_alive) as response:
        json.loads(await response.aread())


async def stopped_after(h: Harness) -> float:
    """Virtual seconds from now until the model is unloaded."""
    start = trio.current_time()
    await h.ctx.wait_state(lambda s: newest(s).status is SlotStatus.STOPPED)
    return trio.current_time() - start


async def test_zero_unloads_right_after_the_request(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_KEEP_ALIVE_SECS="-1") as h:
        await chat(h, 0.0)
        assert await stopped_after(h) == pytest.approx(0, abs=0.01)
        assert h.launcher.alive == {}


async def test_an_override_lasts_until_a_request_without_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_KEEP_ALIVE_SECS="100") as h:
        await chat(h, 5.0)
        assert newest(h.ctx.state).keep_alive == 5.0
        assert await stopped_after(h) == pytest.approx(5, abs=0.01)
        await chat(h, 5.0)
        await trio.sleep(1)
        await chat(h, None)  # the default again
        assert newest(h.ctx.state).keep_alive == 100
        assert await stopped_after(h) == pytest.approx(100, abs=0.01)


async def test_negative_keeps_it_until_a_later_request_says_otherwise(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_KEEP_ALIVE_SECS="2") as h:
        await chat(h, -1.0)
        await trio.sleep(3600)
        assert newest(h.ctx.state).status is SlotStatus.READY
        assert newest(h.ctx.state).expires_at is None
        await chat(h, 1.5)  # the idle unloader kept watching
        assert await stopped_after(h) == pytest.approx(1.5, abs=0.01)
        assert len(h.launcher.starts) == 1


async def test_an_alias_kept_forever_by_default_obeys_a_request(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_KEEP_ALIVE_SECS="-1") as h:
        await chat(h, None)
        await trio.sleep(3600)
        assert newest(h.ctx.state).status is SlotStatus.READY
        await chat(h, 30.0)
        assert await stopped_after(h) == pytest.approx(30, abs=0.01)


async def test_a_load_with_zero_loads_then_unloads(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_KEEP_ALIVE_SECS="-1") as h:
        state = await h.ctx.load("a", keep_alive=0)
        assert state.status_of("a") is SlotStatus.READY
        assert await stopped_after(h) == pytest.approx(0, abs=0.01)
        assert len(h.launcher.starts) == 1


async def test_a_stream_in_flight_is_not_cut_by_a_zero_override(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path, BODHI_KEEP_ALIVE_SECS="-1") as h:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.stream, "a", 20, 0.5)  # loads (1 s), then 10 s
            await trio.sleep(2)  # streaming: its hold set the default keep-alive (never)
            await chat(h, 0.0)  # ends while the stream goes on; the last word on keep-alive
            await trio.sleep(1)
            assert newest(h.ctx.state).status is SlotStatus.READY
        ended = trio.current_time()
        await h.ctx.wait_state(lambda s: newest(s).status is SlotStatus.STOPPED)
        assert trio.current_time() - ended == pytest.approx(0, abs=0.01)


async def test_unload_when_idle_waits_for_responses_in_flight_and_cuts_none(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Ollama's empty request with ``keep_alive: 0``: the model goes once its in-flight
    responses ended; another client's response in flight is not interrupted (an admin's
    stop would drain it, then cut it)."""
    async with harness(tmp_path, BODHI_KEEP_ALIVE_SECS="-1", BODHI_DRAIN_TIMEOUT_SECS="5") as h:
        await chat(h, None)  # loaded, kept for ever
        async with trio.open_nursery() as nursery:
            async with h.ctx.forward("/v1/chat/completions", CHAT) as response:
                nursery.start_soon(h.ctx.unload_when_idle, "a")
                await trio.sleep(60)  # far past the drain timeout: nothing is cut
                assert newest(h.ctx.state).status is SlotStatus.READY
                assert json.loads(await response.aread())  # whole
            assert await stopped_after(h) == pytest.approx(0, abs=0.01)  # then it went
        assert h.launcher.alive == {}
        await h.ctx.unload_when_idle("a")  # not loaded: nothing to do
