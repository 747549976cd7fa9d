"""``bodhi-trio serve --demo`` as a real process: startup, SIGTERM with streams open."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from bodhi_trio._core._address import Address
from bodhi_trio._transport._loopback import UpstreamPool, send_upstream
from httpserver import one_model
from procs import is_alive, listening_url, serve_env, start_serve

pytestmark = pytest.mark.llama

SHUTDOWN_GRACE = 2.0  # bodhi_trio._http._serve.SHUTDOWN_GRACE
# liveness bound on the exit after SIGTERM: the streams never end on their own (10M
# tokens each), so a shutdown that does not cut them at the grace never exits; the
# margin is for a loaded 2-core machine, not a claim about how fast the exit is.
SHUTDOWN_BOUND = SHUTDOWN_GRACE + 20


def bodhi(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bodhi_trio", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


async def test_sigterm_with_sixteen_streams_open(tmp_path: Path) -> None:
    env = serve_env(tmp_path)
    bodhi(
        "alias", "create", "demo:long",
        "--repo", "bodhi-trio/tiny-random-llama", "--filename", "tiny-random-llama.gguf",
        "--context-param", "--parallel 16 --ctx-size 8192 --context-shift",
        env=env,
    )  # fmt: skip
    request = json.dumps(
        {
            "model": "demo:long",
            "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 10_000_000,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    with start_serve(tmp_path / "home", env, "--demo") as process:
        try:
            with trio.fail_after(60):  # the thread is let go; the finally's kill ends it
                url = await listening_url(process)
            port = int(url.rsplit(":", 1)[1])
            outcomes: list[str] = []
            streaming = 0
            all_streaming = trio.Event()

            async def client(pool: UpstreamPool) -> None:
                nonlocal streaming
                async with send_upstream(
                    pool, Address.tcp("127.0.0.1", port), "/v1/chat/completions", request
                ) as r:
                    body = b""
                    counted = False
                    async for chunk in r:
                        body += chunk
                        if not counted:
                            counted = True
                            streaming += 1
                            if streaming == 16:
                                all_streaming.set()
                        await trio.sleep(0.01)  # a slowish reader
                if r.status_code != 200:
                    outcomes.append(f"status {r.status_code}")
                elif b'data: {"error"' in body:
                    outcomes.append("error event")
                else:
                    outcomes.append("other end")

            with trio.fail_after(60):
                async with UpstreamPool() as pool, trio.open_nursery() as nursery:
                    for _ in range(16):
                        nursery.start_soon(client, pool)
                    await all_streaming.wait()
                    async with httpx.AsyncClient() as probe:
                        child = one_model((await probe.get(url + "/bodhi/v1/state")).json())["pid"]
                    assert is_alive(child)
                    process.send_signal(signal.SIGTERM)
                    # A thread's wait cannot be cancelled: it gets the bound itself
                    # (subprocess.TimeoutExpired fails the test).
                    code = await trio.to_thread.run_sync(process.wait, SHUTDOWN_BOUND)
            assert code == 0, process.stderr and process.stderr.read()
            assert outcomes == ["error event"] * 16  # every stream ended, with an error event
            assert not is_alive(child)
        finally:
            if process.poll() is None:
                process.kill()


async def test_json_log_lines_for_log_shippers(tmp_path: Path) -> None:
    """``--log-format json``: every console line is one JSON object; a request's has its
    method, path, status and timings as fields."""
    env = serve_env(tmp_path)
    with start_serve(tmp_path / "home", env, "--demo", "--log-format", "json") as process:
        try:
            with trio.fail_after(60):
                url = await listening_url(process)
                async with httpx.AsyncClient() as client:
                    assert (await client.get(url + "/ping")).status_code == 200
                process.send_signal(signal.SIGTERM)
                # A thread's wait cannot be cancelled: it gets the bound itself.
                _, err = await trio.to_thread.run_sync(
                    functools.partial(process.communicate, timeout=SHUTDOWN_BOUND)
                )
        finally:
            if process.poll() is None:
                process.kill()
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]  # all JSON
    pings = [line for line in lines if line.get("path") == "/ping"]
    assert len(pings) == 1, lines
    assert pings[0]["logger"] == "bodhi_trio.access"
    assert (pings[0]["method"], pings[0]["status"]) == ("GET", 200)
    assert pings[0]["duration_ms"] >= 0
    assert pings[0]["level"] == "info"
