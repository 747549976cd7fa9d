"""A connection's keep-alive timer (``_connection.Connection``): one per connection,
moved by its requests, ended with it.

Hypercorn's own started a timer task each time a connection turned idle and never
stopped it when the connection closed, so a closed connection's task lived on until
the keep-alive timeout (75 s). Served here with a bare ASGI app on 127.0.0.1:0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.abc
import trio.lowlevel
from hypercorn.config import Config

from bodhi_trio._http._server import serve_http
from httpserver import answer_lifespan

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
SLOW = b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class _App:
    """Answers ``ok``; ``/slow`` sends its head, then its body once ``release`` is set."""

    def __init__(self) -> None:
        self.release = trio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/slow":
            await self.release.wait()
        await send({"type": "http.response.body", "body": b"ok"})


class _ConnectionTasks(trio.abc.Instrument):
    """Tells when a connection's task ended."""

    def __init__(self) -> None:
        self.ended = trio.Event()

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("serve_one"):
            self.ended.set()


@asynccontextmanager
async def serving(app: _App, keep_alive: float, stop: trio.Event) -> AsyncIterator[int]:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.keep_alive_timeout = keep_alive
    config.graceful_timeout = 10
    async with trio.open_nursery() as nursery:

        async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
            await serve_http(
                app, config, max_connections=10, shutdown_trigger=stop.wait, task_status=task_status
            )

        binds: list[str] = await nursery.start(serve)
        yield int(binds[0].rsplit(":", 1)[1])
        stop.set()


async def answer(stream: trio.SocketStream) -> bytes:
    """One response of ``_App`` (its chunked body ends with the last chunk)."""
    received = b""
    while not received.endswith(b"0\r\n\r\n"):
        chunk = await stream.receive_some()
        assert chunk, f"closed after {received!r}"
        received += chunk
    return received


async def until_closed(stream: trio.SocketStream) -> bytes:
    received = b""
    while chunk := await stream.receive_some():
        received += chunk
    return received


async def test_a_connection_the_client_closed_ends_at_once() -> None:
    tasks = _ConnectionTasks()
    trio.lowlevel.add_instrument(tasks)
    try:
        with trio.fail_after(10):  # the keep-alive timeout is 75 s
            async with serving(_App(), 75, trio.Event()) as port:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(REQUEST)
                await answer(stream)
                await stream.aclose()
                await tasks.ended.wait()
    finally:
        trio.lowlevel.remove_instrument(tasks)


async def test_an_idle_connection_closes_its_keep_alive_timeout_after_its_last_response() -> None:
    timeout = 0.5
    with trio.fail_after(10):
        async with serving(_App(), timeout, trio.Event()) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                for _ in range(3):
                    await stream.send_all(REQUEST)
                    await answer(stream)
                    # Time passing is the scenario: 0.9 s in all, the deadline each request
                    # moved not reached (a fixed one would have closed at 0.5 s).
                    await trio.sleep(timeout * 0.6)
                await stream.send_all(REQUEST)
                await answer(stream)
                answered = trio.current_time()
                rest = await until_closed(stream)
                closed = trio.current_time()
    assert rest == b""
    assert closed - answered >= timeout * 0.9  # trio's deadlines may fire a hair early


async def test_at_shutdown_an_idle_connection_closes_at_once_and_a_busy_one_after_its_answer() -> (
    None
):
    app, stop = _App(), trio.Event()
    with trio.fail_after(10):  # the keep-alive timeout is 75 s
        async with serving(app, 75, stop) as port:
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            busy = await trio.open_tcp_stream("127.0.0.1", port)
            async with idle, busy:
                await idle.send_all(REQUEST)
                await answer(idle)
                await busy.send_all(SLOW)
                head = await busy.receive_some()
                assert head.startswith(b"HTTP/1.1 200")
                stop.set()
                assert await until_closed(idle) == b""
                app.release.set()
                rest = await until_closed(busy)
    assert rest.endswith(b"ok\r\n0\r\n\r\n")
