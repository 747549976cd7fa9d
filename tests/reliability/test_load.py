"""Load and slow clients (issue 6): counts of fds, tasks and memory return to baseline.

The server runs in this process (real Hypercorn on port 0), so its file
descriptors, Trio tasks and RSS can be counted directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
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

pytestmark = pytest.mark.reliability

FAKE = str(FAKE_LLAMA_SERVER)
LOAD_SECONDS = float(os.environ.get("BODHI_LOAD_SECONDS", "30"))
STREAMS = 256


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def trio_tasks() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return count(root)


async def hammer(url: str, model: str, seconds: float, streams: int, max_tokens: int) -> list[str]:
    """``streams`` clients, each streaming request after request for ``seconds`` (at least one)."""
    port = int(url.rsplit(":", 1)[1])
    request = {"model": model, "messages": [{"role": "user", "content": "x"}],
               "stream": True, "max_tokens": max_tokens, "ignore_eos": True}  # fmt: skip
    body = json.dumps(request).encode()
    problems: list[str] = []
    done = 0

    async def client(pool: UpstreamPool) -> None:
        # Request after request until the window ends, and at least one each: on a
        # slow machine the run takes longer instead of proving nothing.
        nonlocal done
        until = trio.current_time() + seconds
        mine = 0
        while mine == 0 or trio.current_time() < until:
            async with send_upstream(
                pool, Address.tcp("127.0.0.1", port), "/v1/chat/completions", body
            ) as r:
                received = await r.aread()
            if r.status_code != 200 or not received.endswith(b"data: [DONE]\n\n"):
                problems.append(f"{r.status_code}: {received[-120:]!r}")
            mine += 1
            done += 1

    async with UpstreamPool() as pool, trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(client, pool)
    if done == 0:
        problems.append("no request completed")
    return problems


@pytest.mark.parametrize("upstream", ["fake", pytest.param("llama", marks=pytest.mark.llama)])
async def test_256_streams_then_back_to_baseline(
    tmp_path: Path, hub_cache: Path, upstream: str
) -> None:
    env = {"BODHI_LLAMA_SERVER": FAKE} if upstream == "fake" else {}
    params = "--fake-tokens 1000000" if upstream == "fake" else "--parallel 8 --ctx-size 4096"
    alias = Alias("load:1", DEMO_REPO, DEMO_FILENAME, context_params=(params,))
    with trio.fail_after(LOAD_SECONDS + 120):
        async with running_server(
            tmp_path, hub_cache, aliases=(alias,), shutdown_grace=2.0, **env
        ) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                await client.post("/bodhi/v1/server/load", json={"alias": "load:1"})
                warm = await hammer(server.url, "load:1", 0.5, 4, 5)  # connections, caches
                assert warm == []
                before = (open_fds(), trio_tasks(), rss_mib())
                problems = await hammer(server.url, "load:1", LOAD_SECONDS, STREAMS, 20)
                state = one_model((await client.get("/bodhi/v1/state")).json())
            # The server finishes what the leaving clients abandoned at its own pace (the
            # machine was saturated): wait for the work to drain, then count.
            with trio.fail_after(30):
                while trio_tasks() > before[1]:  # noqa: ASYNC110 - a count, no event for it
                    await trio.sleep(0.05)
            after = (open_fds(), trio_tasks(), rss_mib())
    assert problems == []
    assert state["in_flight"] == 0
    assert state["state"] == "ready"
    # Idle keep-alive connections to the child may stay pooled (at most 64); nothing else.
    assert after[0] <= before[0] + 64, f"fds {before[0]} -> {after[0]}"
    assert after[1] <= before[1], f"trio tasks {before[1]} -> {after[1]}"
    assert after[2] < before[2] + 64, f"RSS {before[2]:.1f} -> {after[2]:.1f} MiB"


async def test_a_slow_reader_does_not_hold_up_the_others(tmp_path: Path, hub_cache: Path) -> None:
    alias = Alias("load:1", DEMO_REPO, DEMO_FILENAME, context_params=("--fake-tokens 1000000",))
    body = json.dumps({"model": "load:1", "messages": [{"role": "user", "content": "x"}],
                       "stream": True, "max_tokens": 1_000_000}).encode()  # fmt: skip
    with trio.fail_after(120):
        async with running_server(
            tmp_path, hub_cache, aliases=(alias,), BODHI_LLAMA_SERVER=FAKE
        ) as server:
            port = int(server.url.rsplit(":", 1)[1])
            slow = socket.socket()
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # backpressure quickly
            slow.connect(("127.0.0.1", port))
            slow.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            try:
                slow.setblocking(False)
                baseline = rss_mib()
                read_slowly = 0
                for _ in range(5):  # 1 byte a second, while the others stream
                    await trio.sleep(1)
                    with contextlib.suppress(BlockingIOError):
                        read_slowly += len(slow.recv(1))
                    problems = await hammer(server.url, "load:1", 0.2, 8, 200)
                    assert problems == []
                grown = rss_mib() - baseline
            finally:
                slow.close()
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                with trio.fail_after(30):  # liveness bound: a response that never ends
                    while one_model((await client.get("/bodhi/v1/state")).json())["in_flight"]:  # noqa: ASYNC110
                        await trio.sleep(0.05)
    assert read_slowly == 5
    assert grown < 32, f"memory grew {grown:.1f} MiB behind one slow reader"
