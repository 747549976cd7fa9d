"""Faults on the real llama-server that the fake proves elsewhere: a crash under open
streams, and idle unload on a real clock."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
import trio

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from bodhi_trio._config._settings import load_settings
from bodhi_trio._context._root import open_context
from bodhi_trio._core._state import SlotStatus
from httpserver import one_model, running_server
from procs import is_alive
from streams import ONE_ERROR_EVENT_LAST, streams_in_flight

pytestmark = [pytest.mark.llama, pytest.mark.reliability]

# Generations that outlast the test unless something ends them (context shift: the
# context never fills; a million tokens take the demo model minutes).
ENDLESS = Alias("endless:1", DEMO_REPO, DEMO_FILENAME,
                context_params=("--ctx-size 4096 --parallel 8 --context-shift",))  # fmt: skip
STREAMS = 8


async def test_real_child_sigkilled_under_open_streams(tmp_path: Path, hub_cache: Path) -> None:
    body = json.dumps({"model": ENDLESS.alias, "messages": [{"role": "user", "content": "x"}],
                       "stream": True, "max_tokens": 1_000_000,
                       "ignore_eos": True}).encode()  # fmt: skip
    with trio.fail_after(90):  # liveness bound: what fails here is a hang
        async with (
            running_server(tmp_path, hub_cache, aliases=(ENDLESS,)) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            async with streams_in_flight(server.url, body, STREAMS) as streams:
                child = one_model((await client.get("/bodhi/v1/state")).json())["pid"]
                os.kill(child, signal.SIGKILL)
            # A stream can see its connection break before the child's exit is reaped:
            # wait (bounded) for the crash to be reported rather than race it.
            with trio.fail_after(10):  # liveness bound
                state = one_model((await client.get("/bodhi/v1/state")).json())
                while state["pid"] == child:
                    await trio.sleep(0.01)  # only pollable over HTTP
                    state = one_model((await client.get("/bodhi/v1/state")).json())
            again = await client.post(
                "/v1/chat/completions",
                json={"model": ENDLESS.alias, "messages": [{"role": "user", "content": "x"}],
                      "max_tokens": 3},
            )  # fmt: skip
            fresh = one_model((await client.get("/bodhi/v1/state")).json())
    assert streams.outcomes == [ONE_ERROR_EVENT_LAST] * STREAMS
    assert state["state"] == "crashed"
    assert "-9" in state["error"]
    assert again.status_code == 200
    assert fresh["state"] == "ready"
    assert fresh["pid"] != child
    assert not is_alive(child)


async def test_real_child_unloads_after_keep_alive(
    tmp_path: Path, hub_cache: Path, demo_model_path: Path
) -> None:
    settings = load_settings(
        home=tmp_path,
        env={"HF_HUB_CACHE": str(hub_cache), "BODHI_KEEP_ALIVE_SECS": "1"},
    )
    AliasStore(settings.aliases_dir).create(
        Alias("tiny:a", DEMO_REPO, DEMO_FILENAME, context_params=("--ctx-size 512",))
    )
    request = {"model": "tiny:a", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    with trio.fail_after(60):  # liveness bound for the whole test
        async with open_context(settings) as ctx:
            async with ctx.forward("/v1/chat/completions", request) as response:
                assert response.status_code == 200
                await response.aread()
            ended_at = trio.current_time()
            loaded = ctx.state.model("tiny:a")
            assert loaded is not None
            pid = loaded.pid
            assert pid is not None
            assert loaded.status is SlotStatus.READY
            with trio.fail_after(10):  # liveness bound: keep-alive is 1 s
                stopped = await ctx.wait_state(lambda state: state.model("tiny:a") is None)
            unloaded_after = trio.current_time() - ended_at
            assert not is_alive(pid)
            async with ctx.forward("/v1/chat/completions", request) as response:
                assert response.status_code == 200
                await response.aread()
            reloaded = ctx.state.model("tiny:a")
    assert stopped.models == ()
    assert unloaded_after >= 1.0  # never before the keep-alive ran out
    assert reloaded is not None
    assert reloaded.status is SlotStatus.READY
    assert reloaded.pid != pid
