"""Faults under load (issue 6): a child killed under 64 streams, and what follows."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import httpx
import pytest
import trio

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from httpserver import one_model, running_server
from paths import FAKE_LLAMA_SERVER
from procs import is_alive
from streams import ONE_ERROR_EVENT_LAST, streams_in_flight

FAKE = str(FAKE_LLAMA_SERVER)

pytestmark = pytest.mark.reliability


async def test_child_sigkilled_under_64_streams(tmp_path: Path, hub_cache: Path) -> None:
    slow = Alias("slow:1", DEMO_REPO, DEMO_FILENAME,
                 context_params=("--fake-tokens 100000 --fake-token-delay 0.01",))  # fmt: skip
    body = json.dumps({"model": "slow:1", "messages": [{"role": "user", "content": "x"}],
                       "stream": True, "max_tokens": 100000}).encode()  # fmt: skip
    with trio.fail_after(60):
        async with (
            running_server(tmp_path, hub_cache, aliases=(slow,), BODHI_LLAMA_SERVER=FAKE) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            async with streams_in_flight(server.url, body, 64) as streams:
                child = one_model((await client.get("/bodhi/v1/state")).json())["pid"]
                os.kill(child, signal.SIGKILL)
            state = one_model((await client.get("/bodhi/v1/state")).json())
            again = await client.post(
                "/v1/chat/completions",
                json={"model": "slow:1", "messages": [{"role": "user", "content": "x"}],
                      "max_tokens": 3},
            )  # fmt: skip
            new_child = one_model((await client.get("/bodhi/v1/state")).json())["pid"]
    assert streams.outcomes == [ONE_ERROR_EVENT_LAST] * 64
    assert state["state"] == "crashed"
    assert "-9" in state["error"]
    assert again.status_code == 200
    assert new_child != child
    assert not is_alive(child)


@pytest.mark.llama
async def test_model_file_deleted_while_loaded(tmp_path: Path) -> None:
    from bodhi_trio._config._demo import DEMO_ALIAS, ensure_demo_model

    private_hub = tmp_path / "hub"
    model = ensure_demo_model(private_hub)
    chat = {"model": DEMO_ALIAS, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
    with trio.fail_after(60):
        async with (
            running_server(tmp_path / "home", private_hub) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
            model.path.resolve().unlink()  # the blob behind the snapshot symlink
            running = await client.post("/v1/chat/completions", json=chat)
            await client.post("/bodhi/v1/server/stop")
            reload = await client.post("/v1/chat/completions", json=chat)
            state = one_model((await client.get("/bodhi/v1/state")).json())
    assert running.status_code == 200  # the loaded model is unaffected
    assert reload.status_code == 404
    assert reload.json()["error"]["code"] == "model_file_not_found"
    assert state["state"] == "stopped"


async def test_alias_directory_unwritable_is_a_clear_error(tmp_path: Path, hub_cache: Path) -> None:
    alias = {"alias": "x:1", "repo": "org/repo", "filename": "x.gguf"}
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            aliases = tmp_path / "aliases"
            for entry in aliases.iterdir():
                entry.unlink()
            aliases.rmdir()
            aliases.write_text("not a directory")  # root ignores modes; this fails for all
            response = await client.post("/bodhi/v1/aliases", json=alias)
    assert response.status_code == 400
    error = response.json()["error"]
    assert str(aliases) in error["message"]
    assert "Traceback" not in error["message"]
    assert aliases.read_text() == "not a directory"


async def test_a_client_that_stops_reading_does_not_hold_the_slot(
    tmp_path: Path, hub_cache: Path
) -> None:
    """It blocks the write of its own stream, not a swap: the drain timeout frees the slot."""
    fast = Alias("fast:1", DEMO_REPO, DEMO_FILENAME, context_params=("--fake-tokens 2000000",))
    other = Alias("other:1", DEMO_REPO, DEMO_FILENAME, context_params=("--fake-tokens 3",))
    body = json.dumps({"model": "fast:1", "messages": [{"role": "user", "content": "x"}],
                       "stream": True, "max_tokens": 2000000}).encode()  # fmt: skip
    with trio.fail_after(60):
        async with (
            running_server(tmp_path, hub_cache, aliases=(fast, other), BODHI_LLAMA_SERVER=FAKE,
                           BODHI_DRAIN_TIMEOUT_SECS="1", BODHI_MAX_LOADED_MODELS="1") as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):  # fmt: skip
            host, port = server.url.removeprefix("http://").split(":")
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect((host, int(port)))
            async with trio.SocketStream(sock) as stalled:
                head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                await stalled.send_all(head.encode() + body)
                assert b" 200 " in await stalled.receive_some(4096)
                # ...and never reads again: the buffers fill and bodhi-trio's write blocks.
                request = {"model": "other:1", "messages": [{"role": "user", "content": "x"}]}
                with trio.fail_after(15):  # drain timeout 1 s, then the swap
                    swap = await client.post("/v1/chat/completions", json=request)
                assert swap.status_code == 200
                state = one_model((await client.get("/bodhi/v1/state")).json())
                assert (state["alias"], state["state"]) == ("other:1", "ready")


FAST = Alias("fast:1", DEMO_REPO, DEMO_FILENAME, context_params=("--fake-tokens 2000000",))
FAST_BODY = json.dumps({"model": "fast:1", "messages": [{"role": "user", "content": "x"}],
                        "stream": True, "max_tokens": 2000000}).encode()  # fmt: skip


async def stalled_stream(url: str) -> trio.SocketStream:
    """A streamed completion whose client reads its head and never reads again (a small
    receive buffer: bodhi-trio's writes soon block)."""
    host, port = url.removeprefix("http://").split(":")
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    stalled = trio.SocketStream(sock)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(FAST_BODY)}\r\n\r\n"
    await stalled.send_all(head.encode() + FAST_BODY)
    assert b" 200 " in await stalled.receive_some(4096)
    return stalled


async def test_a_client_that_takes_nothing_is_dropped_and_lets_go_of_the_model(
    tmp_path: Path, hub_cache: Path
) -> None:
    """After BODHI_CLIENT_WRITE_TIMEOUT_SECS without taking a byte, its connection is
    closed: the response ends, the model's read hold with it (no swap needed)."""
    with trio.fail_after(60):
        async with (
            running_server(tmp_path, hub_cache, aliases=(FAST,), BODHI_LLAMA_SERVER=FAKE,
                           BODHI_CLIENT_WRITE_TIMEOUT_SECS="1") as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            await stalled_stream(server.url) as stalled,
        ):  # fmt: skip
            state = one_model((await client.get("/bodhi/v1/state")).json(), "fast:1")
            assert state["in_flight"] == 1
            with trio.fail_after(20):  # the write timeout (1 s) after the buffers fill
                while state["in_flight"]:
                    await trio.sleep(0.1)  # polling the state: it has no event to wait on
                    state = one_model((await client.get("/bodhi/v1/state")).json(), "fast:1")
            assert state["state"] == "ready"  # only the response ended
            with trio.fail_after(10):  # what was buffered, then the end (a reset, or EOF)
                await read_to_the_end(stalled)


async def read_to_the_end(stream: trio.SocketStream) -> None:
    """Read until the peer closed: EOF, or a reset (it closed with bytes unsent)."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass


async def test_shutdown_does_not_wait_for_a_client_that_takes_nothing(
    tmp_path: Path, hub_cache: Path
) -> None:
    """Every write is shielded; at shutdown the server's deadline still ends the one a
    stuck client holds (the write timeout, 60 s here, would be too late)."""
    with trio.fail_after(60):
        async with trio.open_nursery() as guard:
            stalled: trio.SocketStream | None = None

            async def unstick_after(seconds: float) -> None:
                # Without the fix shutdown waits for the stuck write forever: closing the
                # client lets it end, so that this test fails on time instead of hanging.
                await trio.sleep(seconds)
                if stalled is not None:
                    await stalled.aclose()

            async with running_server(tmp_path, hub_cache, aliases=(FAST,),
                                      BODHI_LLAMA_SERVER=FAKE) as server:  # fmt: skip
                stalled = await stalled_stream(server.url)
                guard.start_soon(unstick_after, 30)
                stopping = trio.current_time()
            stopped = trio.current_time() - stopping
            guard.cancel_scope.cancel()
            assert stalled is not None
            await stalled.aclose()
    # running_server's grace: 2 s for responses, then 1 s for connections
    assert stopped < 10
