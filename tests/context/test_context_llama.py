"""The server slot with the real llama-server on the demo model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from bodhi_trio._config._settings import load_settings
from bodhi_trio._context._open import SharedContext
from bodhi_trio._context._root import open_context
from bodhi_trio._core._state import EventKind, ServerEvent, SlotStatus
from bodhi_trio._exceptions import ResponseInterruptedError
from procs import child_client, is_alive

pytestmark = pytest.mark.llama

ARGS = ("--ctx-size 4096", "--threads 1", "--parallel 2", "--context-shift")


@asynccontextmanager
async def real_context(
    tmp_path: Path, hub_cache: Path, demo_model_path: Path, **env: str
) -> AsyncIterator[SharedContext]:
    settings = load_settings(
        home=tmp_path,
        # One model at a time: these are the one-slot swap rules on the real server.
        env={
            "HF_HUB_CACHE": str(hub_cache),
            "BODHI_KEEP_ALIVE_SECS": "-1",
            "BODHI_MAX_LOADED_MODELS": "1",
            **env,
        },
    )
    store = AliasStore(settings.aliases_dir)
    for name in ("tiny:a", "tiny:b"):
        store.create(Alias(name, DEMO_REPO, DEMO_FILENAME, context_params=ARGS))
    async with open_context(settings) as ctx:
        yield ctx


def chat(alias: str, tokens: int) -> dict[str, object]:
    return {
        "model": alias,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
    }


async def test_swaps_a_b_a_with_streams_in_flight(
    tmp_path: Path, hub_cache: Path, demo_model_path: Path
) -> None:
    starts: list[int] = []
    violations: list[str] = []

    async def one_child_at_a_time(event: ServerEvent) -> None:
        # No assert in here: the hub catches and logs a listener's exceptions, so a
        # failed check would vanish. Record, and assert after the run.
        if event.kind is EventKind.START:
            pid = event.detail["pid"]
            if not isinstance(pid, int):
                violations.append(f"START without an int pid: {event.detail}")
                return
            violations.extend(f"{old} alive at start of {pid}" for old in starts if is_alive(old))
            starts.append(pid)

    outcomes: list[str] = []

    async def stream(ctx: SharedContext, alias: str, slow: bool) -> None:
        body = b""
        try:
            request = chat(alias, 3000 if slow else 600)
            async with ctx.forward("/v1/chat/completions", request) as response:
                async for chunk in response:
                    body += chunk
                    if slow:
                        await trio.sleep(0.05)  # a slow client: outlasts the drain timeout
        except ResponseInterruptedError:
            outcomes.append(f"{alias}: interrupted with an error")
            return
        assert body.endswith(b"data: [DONE]\n\n"), "a stream ended without [DONE] or an error"
        outcomes.append(f"{alias}: complete")

    with trio.fail_after(120):
        async with real_context(
            tmp_path, hub_cache, demo_model_path, BODHI_DRAIN_TIMEOUT_SECS="0.3"
        ) as ctx:
            ctx.add_state_listener(one_child_at_a_time)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream, ctx, "tiny:a", True)
                await ctx.wait_state(lambda s: s.in_flight == 1)
                nursery.start_soon(stream, ctx, "tiny:b", False)
                await ctx.wait_state(
                    lambda s: s.status_of("tiny:b") is SlotStatus.READY and s.in_flight == 1
                )
                nursery.start_soon(stream, ctx, "tiny:a", False)
            assert ctx.statistics().starts == 3
        await trio.testing.wait_all_tasks_blocked()
    assert len(starts) == 3
    assert violations == []
    # The slow reader outlasts the 0.3 s drain: it must end with an error. The others
    # usually complete, but on a loaded machine may outlast the drain too; either way
    # no stream is ever cut silently (`stream` asserts [DONE] or an error).
    assert "tiny:a: interrupted with an error" in outcomes
    assert len(outcomes) == 3
    assert not any(is_alive(pid) for pid in starts)


async def any_slot_processing(probe: httpx.AsyncClient) -> bool:
    return any(slot["is_processing"] for slot in (await probe.get("/slots")).json())


async def test_cancelled_stream_stops_generation(
    tmp_path: Path, hub_cache: Path, demo_model_path: Path
) -> None:
    # Unstopped, this generation runs for minutes: context shift keeps the context from
    # filling, and a million tokens take the demo model ~400 s. The 10 s bound below is a
    # liveness bound far from that, not a timing claim.
    with trio.fail_after(120):  # liveness bound for the whole test
        async with real_context(tmp_path, hub_cache, demo_model_path) as ctx:
            await ctx.load("tiny:a")
            address = ctx.child_address("tiny:a")
            assert address is not None
            with trio.CancelScope() as client:
                endless = chat("tiny:a", 1_000_000)
                async with ctx.forward("/v1/chat/completions", endless) as response:
                    received = 0
                    async for _chunk in response:
                        received += 1
                        if received == 20:
                            client.cancel()  # the client leaves mid-stream
            assert received == 20
            async with child_client(address) as probe:
                with trio.fail_after(10):  # liveness bound: unstopped, it runs ~400 s
                    while await any_slot_processing(probe):  # noqa: ASYNC110 - only pollable
                        await trio.sleep(0.01)
            assert ctx.state.in_flight == 0
