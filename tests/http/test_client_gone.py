"""A client that leaves with a request queued behind a response in progress.

h11 holds a request that arrives while a response is under way (it pauses), and the
connection's reader waits, inside Hypercorn's protocol, until that response ends; it
reads nothing meanwhile. A client that then reset its connection was seen only by the
response's next write: Hypercorn told the request (its stream closed), but the reader
waited on for a recycle that never came. The connection, its socket and its place under
``BODHI_MAX_CONNECTIONS`` stayed forever: a few such clients and every new one got 503.
Served here with a bare ASGI app on 127.0.0.1:0, the connection's task watched.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from httpserver import answer_lifespan, serving_asgi

STREAM = b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
QUEUED = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
PIECE = b"x" * 64


class _StreamingApp:
    """``/stream`` sends its head and a piece, then ``later`` each time ``more`` is set,
    until the client is gone; ``/ping`` answers ``ok``."""

    def __init__(self, later: bytes = PIECE) -> None:
        self.later = later
        self.more = trio.Event()
        self.gone = trio.Event()  # the stream's request saw its client leave

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] != "/stream":
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.body", "body": PIECE, "more_body": True})
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.gone.set()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            while True:
                await self.more.wait()
                self.more = trio.Event()
                await send({"type": "http.response.body", "body": self.later, "more_body": True})


class _ConnectionTasks(trio.abc.Instrument):
    """Counts the connections' tasks that ended."""

    def __init__(self) -> None:
        self.ended = 0
        self.changed = trio.Event()

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("serve_one"):
            self.ended += 1
            self.changed.set()
            self.changed = trio.Event()


async def _leave_with_a_request_queued(port: int, reset: bool) -> trio.socket.SocketType:
    """Start a stream with a request queued behind it, read its first piece, leave."""
    client = trio.socket.socket()
    await client.connect(("127.0.0.1", port))
    await client.send(STREAM + QUEUED)
    received = b""
    while PIECE not in received:
        chunk = await client.recv(65536)
        assert chunk, received
        received += chunk
    if reset:  # SO_LINGER 0: the close sends a RST
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
    return client


async def _serve_and_watch(
    app: _StreamingApp, clients: int, reset: bool, write_timeout: float = 60.0
) -> int:
    """Serve with room for ``clients`` connections; each leaves with a request queued;
    return how many of their tasks ended. Then a new client must still be served."""
    tasks = _ConnectionTasks()
    trio.lowlevel.add_instrument(tasks)
    kept: list[trio.socket.SocketType] = []
    try:
        with trio.fail_after(10):
            async with serving_asgi(
                app, max_connections=clients, write_timeout=write_timeout
            ) as port:
                for _ in range(clients):
                    kept.append(await _leave_with_a_request_queued(port, reset))
                    app.gone = trio.Event()
                    app.more.set()  # the next write finds the client gone (or stuck)
                    await app.gone.wait()
                while tasks.ended < clients:
                    await tasks.changed.wait()
                # Every place is free again: a new client is served, not refused.
                async with await trio.open_tcp_stream("127.0.0.1", port) as fresh:
                    await fresh.send_all(QUEUED)
                    answer = await fresh.receive_some()
                assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        trio.lowlevel.remove_instrument(tasks)
        for client in kept:
            client.close()
    return tasks.ended


async def test_a_client_that_leaves_while_nothing_is_written_is_seen_at_once() -> None:
    """With a request queued the reader is paused and reads nothing: a client that closed
    while its response wrote nothing (a quiet event stream, a long answer) was seen only
    at the next write, if one ever came. The socket is watched meanwhile."""
    app = _StreamingApp()
    tasks = _ConnectionTasks()
    trio.lowlevel.add_instrument(tasks)
    try:
        with trio.fail_after(10):
            async with serving_asgi(app, max_connections=1) as port:
                client = await _leave_with_a_request_queued(port, reset=False)
                client.close()  # a plain close (FIN); nothing more is ever written
                await app.gone.wait()
                while tasks.ended < 1:
                    await tasks.changed.wait()
                async with await trio.open_tcp_stream("127.0.0.1", port) as fresh:
                    await fresh.send_all(QUEUED)
                    assert (await fresh.receive_some()).startswith(b"HTTP/1.1 200")
    finally:
        trio.lowlevel.remove_instrument(tasks)


@pytest.mark.parametrize("sent_ahead", [b"", b"GET /ping HTTP/1.1\r\nHo"], ids=["none", "part"])
async def test_a_client_still_there_keeps_its_stream(sent_ahead: bytes) -> None:
    """The watch takes nothing from the socket, and more bytes sent ahead are not a
    leaving: the stream goes on."""
    app = _StreamingApp()
    with trio.fail_after(10):
        async with (
            serving_asgi(app) as port,
            await trio.open_tcp_stream("127.0.0.1", port) as client,
        ):
            await client.send_all(STREAM + QUEUED)
            received = b""
            while PIECE not in received:
                received += await client.receive_some()
            if sent_ahead:
                await client.send_all(sent_ahead)
            await trio.testing.wait_all_tasks_blocked()  # the watch waits, or ended
            app.more.set()
            while received.count(PIECE) < 2:
                received += await client.receive_some()
            assert not app.gone.is_set()


async def test_a_reset_client_with_a_request_queued_frees_its_connection() -> None:
    assert await _serve_and_watch(_StreamingApp(), clients=3, reset=True) >= 3


async def test_a_client_dropped_for_not_reading_with_a_request_queued_frees_its_connection() -> (
    None
):
    """The write timeout closed the socket, but the reader waited on as above: its task
    (and the connection's objects) stayed, though its place was given back."""

    flood = _StreamingApp(later=b"y" * (32 << 20))  # more than the socket buffers take
    assert await _serve_and_watch(flood, clients=2, reset=False, write_timeout=0.3) >= 2


@pytest.mark.parametrize(("stalled_for", "served"), [(0.2, True), (60.0, False)])
async def test_at_the_cap_a_client_that_takes_nothing_makes_room(
    stalled_for: float, served: bool
) -> None:
    """Clients that ask and never read (here a stream into a tiny receive window) held
    their places for the whole write timeout (a minute), so as many as the cap kept
    everyone out. At the cap, with nothing idle, a connection whose client has taken
    nothing of a write for ``stalled_for`` seconds now makes room; a shorter wait not."""
    app = _StreamingApp(later=b"y" * (32 << 20))
    stuck: list[trio.socket.SocketType] = []
    with trio.fail_after(10):
        async with serving_asgi(app, max_connections=2, stalled_for=stalled_for) as port:
            try:
                for _ in range(2):
                    client = trio.socket.socket()
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    stuck.append(client)
                    await client.connect(("127.0.0.1", port))
                    await client.send(STREAM)
                    while PIECE not in await client.recv(65536):
                        pass
                    app.more.set()  # 32 MiB it will never read
                # Time passing is the scenario: both writes wait longer than 0.2 s.
                await trio.sleep(0.5)
                async with await trio.open_tcp_stream("127.0.0.1", port) as fresh:
                    await fresh.send_all(QUEUED)
                    answer = await fresh.receive_some()
            finally:
                for client in stuck:
                    client.close()
    assert answer.startswith(b"HTTP/1.1 200" if served else b"HTTP/1.1 503"), answer
