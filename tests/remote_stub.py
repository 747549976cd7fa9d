"""A scripted OpenAI-compatible remote for the remote-alias tests: plain trio, HTTP/1.1.

Each request is answered by the stub's current :class:`Script` (one per stub; a test
changes it between requests): a status with a body, an SSE stream of given events
with a pause between them, a stall before the head or in the middle of the body.
Every request is recorded (method, target, headers, body). With ``ssl_context`` it
serves HTTPS. Connections are closed after each answer (``Connection: close``), so a
test can count requests per stub exactly.
"""

from __future__ import annotations

import functools
import gzip
import json
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio


@attrs.define
class Script:
    """How the stub answers. ``events``: SSE data payloads (a 200 stream, ``[DONE]``
    appended); else ``status`` with ``body``. ``stall_before_head``/``stall_after``:
    seconds to wait before the head / after that many events (then the rest)."""

    status: int = 200
    body: bytes = b'{"object":"chat.completion","choices":[]}'
    headers: Sequence[tuple[str, str]] = ()
    events: Sequence[str] | None = None
    pause: float = 0.0
    stall_before_head: float = 0.0
    stall_after: int | None = None
    stall_for: float = 0.0
    gzip: bool = False  # compress a JSON body when the request accepts gzip
    before_head: bytes = b""  # sent as it is before the head (informational heads, say)


@attrs.frozen
class Transport:
    """How a test's stubs listen (``ssl_context``: HTTPS) and what the aliases to them
    add (``fields``, a ``ca_bundle``): the ``transport`` fixture (tests/conftest.py)."""

    ssl_context: ssl.SSLContext | None
    fields: dict[str, Any]


@attrs.define
class Recorded:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def sse_bytes(events: Sequence[str]) -> bytes:
    """What a stub sends for ``events`` (the bytes a relay must pass on unchanged)."""
    return b"".join(f"data: {e}\n\n".encode() for e in [*events, "[DONE]"])


@attrs.define(eq=False)
class RemoteStub:
    port: int = 0
    script: Script = attrs.field(factory=Script)
    requests: list[Recorded] = attrs.field(factory=list)
    ssl_context: ssl.SSLContext | None = None
    disconnected: trio.Event = attrs.field(factory=trio.Event)  # a client left mid-answer
    _arrived: trio.Event = attrs.field(factory=trio.Event)  # set (and renewed) per request

    # Keep-alive: answer without "Connection: close" and read the next request on the
    # same connection (``connections`` counts them); ``close_idle`` then closes each
    # connection once its answer is sent, as a server whose idle timeout ran out would.
    keep_alive: bool = False
    close_idle: bool = False
    connections: int = 0

    _serving: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _stopped: trio.Event = attrs.field(factory=trio.Event)

    async def _serve(self, port: int, *, task_status: trio.TaskStatus[int]) -> None:
        try:
            with self._serving:
                async with trio.open_nursery() as nursery:
                    listeners = await nursery.start(
                        functools.partial(trio.serve_tcp, self._handle, port, host="127.0.0.1")
                    )
                    task_status.started(listeners[0].socket.getsockname()[1])
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Close the listener and every connection, now (the block can stay open)."""
        self._serving.cancel()
        await self._stopped.wait()

    async def wait_for(self, predicate: Callable[[list[Recorded]], bool]) -> None:
        """Until ``predicate(requests)`` holds (the caller bounds the wait)."""
        while not predicate(self.requests):
            await self._arrived.wait()

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = "localhost" if self.ssl_context is not None else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}/v1"

    async def _handle(self, stream: trio.abc.Stream) -> None:
        if self.ssl_context is not None:
            stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
        try:
            async with stream:
                self.connections += 1
                while True:
                    request = await _read_request(stream)
                    if request is None:
                        return
                    self.requests.append(request)
                    self._arrived.set()
                    self._arrived = trio.Event()
                    await self._answer(stream, self.script, request)
                    if not self.keep_alive or self.close_idle:
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            self.disconnected.set()

    @property
    def _connection_header(self) -> str:
        return "" if self.keep_alive else "Connection: close\r\n"

    async def _stall(self, stream: trio.abc.Stream, seconds: float) -> bool:
        """Wait ``seconds`` unless the client leaves first (then ``disconnected`` is set and
        this says so): a client that closes its connection is seen at once."""
        with trio.move_on_after(seconds):
            while await stream.receive_some(65536):
                pass
            self.disconnected.set()
            return True
        return False

    async def _answer(self, stream: trio.abc.Stream, script: Script, request: Recorded) -> None:
        if script.stall_before_head and await self._stall(stream, script.stall_before_head):
            return
        extra = "".join(f"{name}: {value}\r\n" for name, value in script.headers)
        if script.events is None:
            body = script.body
            if script.gzip and "gzip" in request.headers.get("accept-encoding", ""):
                body = gzip.compress(body)
                extra += "Content-Encoding: gzip\r\n"
            if not any(name.lower() == "content-type" for name, _ in script.headers):
                extra = "Content-Type: application/json\r\n" + extra
            head = (
                f"HTTP/1.1 {script.status:03d} X\r\n{extra}"
                f"Content-Length: {len(body)}\r\n{self._connection_header}\r\n"
            )
            await stream.send_all(script.before_head + head.encode() + body)
            return
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            f"{extra}Transfer-Encoding: chunked\r\n{self._connection_header}\r\n"
        )
        await stream.send_all(script.before_head + head.encode())
        for index, event in enumerate([*script.events, "[DONE]"]):
            if script.stall_after is not None and index == script.stall_after:
                if await self._stall(stream, script.stall_for):
                    return
            elif index and script.pause and await self._stall(stream, script.pause):
                return
            data = f"data: {event}\n\n".encode()
            await stream.send_all(b"%x\r\n%s\r\n" % (len(data), data))
        await stream.send_all(b"0\r\n\r\n")


async def _read_request(stream: trio.abc.Stream) -> Recorded | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        body += chunk
    return Recorded(method, target, headers, body)


@asynccontextmanager
async def remote_stub(
    script: Script | None = None, *, ssl_context: ssl.SSLContext | None = None, port: int = 0
) -> AsyncIterator[RemoteStub]:
    """A stub listening on 127.0.0.1 (``port``, or a free one) until the block exits or
    :meth:`RemoteStub.stop`; then its listener and every connection close (a client then
    sees a refusal)."""
    stub = RemoteStub(script=script or Script(), ssl_context=ssl_context)
    async with trio.open_nursery() as nursery:
        stub.port = await nursery.start(stub._serve, port)
        try:
            yield stub
        finally:
            nursery.cancel_scope.cancel()
