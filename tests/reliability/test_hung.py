"""A child that stops answering (``kill -STOP``), and a response that waits for nothing.

The real llama-server is frozen with SIGSTOP under eight open streams; our fake
stands in only for a stream that stalls while the child says it is idle (or
busy), which the real one cannot be made to do.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
import trio

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from bodhi_trio._core._address import Address
from bodhi_trio._transport._loopback import UpstreamPool, send_upstream
from httpserver import one_model, running_server
from paths import FAKE_LLAMA_SERVER
from procs import is_alive
from streams import ONE_ERROR_EVENT_LAST, streams_in_flight

FAKE = str(FAKE_LLAMA_SERVER)

pytestmark = pytest.mark.reliability


def _events(raw: bytes) -> list[str]:
    return [e for e in raw.decode().split("\n\n") if e.startswith("data: ")]


@pytest.mark.llama
async def test_a_stopped_child_ends_every_stream_and_is_replaced(
    tmp_path: Path, hub_cache: Path
) -> None:
    long = Alias("long:1", DEMO_REPO, DEMO_FILENAME,
                 context_params=("--ctx-size 32768 --parallel 8",))  # fmt: skip
    body = json.dumps({"model": "long:1", "messages": [{"role": "user", "content": "x"}],
                       "stream": True, "max_tokens": 4000,
                       "ignore_eos": True}).encode()  # fmt: skip
    with trio.fail_after(90):  # a liveness bound: what fails here is a hang
        async with (
            running_server(tmp_path, hub_cache, aliases=(long,),
                           BODHI_UPSTREAM_IDLE_TIMEOUT_SECS="3") as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):  # fmt: skip
            async with streams_in_flight(server.url, body, 8) as streams:
                frozen = one_model((await client.get("/bodhi/v1/state")).json())["pid"]
                os.kill(frozen, signal.SIGSTOP)
                stopped_at = trio.current_time()
            ended_after = trio.current_time() - stopped_at
            state = one_model((await client.get("/bodhi/v1/state")).json())
            again = await client.post(
                "/v1/chat/completions",
                json={"model": "long:1", "messages": [{"role": "user", "content": "x"}],
                      "max_tokens": 3},
            )  # fmt: skip
            fresh = one_model((await client.get("/bodhi/v1/state")).json())
    assert streams.outcomes == [ONE_ERROR_EVENT_LAST] * 8
    assert ended_after < 10
    assert state["state"] == "hung"
    assert "health check" in state["error"]
    assert again.status_code == 200
    assert fresh["state"] == "ready"
    assert fresh["pid"] != frozen
    assert not is_alive(frozen)


async def _stream_from_stalling_fake(
    tmp_path: Path, hub_cache: Path, *extra: str, keepalive: str = "15"
) -> tuple[list[str], list[str]]:
    """Stream from a fake that stalls after 5 tokens; return the events and the child log."""
    params = f"--fake-tokens 50 --fake-stall-after 5 {' '.join(extra)}"
    stall = Alias("stall:1", DEMO_REPO, DEMO_FILENAME, context_params=(params,))
    body = json.dumps({"model": "stall:1", "messages": [{"role": "user", "content": "x"}],
                       "stream": True}).encode()  # fmt: skip
    async with (
        running_server(tmp_path, hub_cache, aliases=(stall,), BODHI_LLAMA_SERVER=FAKE,
                       BODHI_UPSTREAM_IDLE_TIMEOUT_SECS="1",
                       BODHI_SSE_KEEPALIVE_SECS=keepalive) as server,
        UpstreamPool() as pool,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):  # fmt: skip
        ours = Address.tcp("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
        received = b""
        async with send_upstream(pool, ours, "/v1/chat/completions", body) as response:
            async for chunk in response:
                received += chunk
                if b"tok4" in received and extra:
                    # Busy: the watch must leave the stream alone. Wait until it asked
                    # /slots twice (so it has seen the stall twice), then leave.
                    with trio.fail_after(20):
                        while True:
                            logs = (await client.get("/bodhi/v1/server/logs")).json()
                            if sum("slots asked" in line for line in logs["lines"]) >= 2:
                                break
                            await trio.sleep(0.1)
                    break
        logs = (await client.get("/bodhi/v1/server/logs")).json()
    return _events(received), logs["lines"]


@pytest.mark.parametrize("keepalive", ["15", "0.3"], ids=["keep-alive 15 s", "keep-alive 0.3 s"])
async def test_a_stream_stalled_on_an_idle_child_ends_with_an_error(
    tmp_path: Path, hub_cache: Path, keepalive: str
) -> None:
    # A keep-alive cuts the relay's wait for bytes short; the stall is counted across it
    # (from the last bytes), so keep-alives shorter than the timeout do not hide it.
    with trio.fail_after(30):
        events, lines = await _stream_from_stalling_fake(tmp_path, hub_cache, keepalive=keepalive)
    assert any("stalling the stream" in line for line in lines)
    assert any("slots asked" in line for line in lines)
    assert events[-1].startswith('data: {"error"')
    assert "sent nothing for 1 s" in json.loads(events[-1][len("data: ") :])["error"]["message"]
    assert sum('"content": "tok' in e for e in events) == 5


async def test_a_stream_waiting_on_a_busy_child_is_left_alone(
    tmp_path: Path, hub_cache: Path
) -> None:
    with trio.fail_after(40):
        events, lines = await _stream_from_stalling_fake(tmp_path, hub_cache, "--fake-busy")
    assert sum("slots asked" in line for line in lines) >= 2
    assert not any(e.startswith('data: {"error"') for e in events)
