"""Requests to the llama-server child: HTTP/1.1 over loopback, with h11.

Why not httpx here: its body iterators are async generators nested three deep;
when a client leaves mid-stream (our everyday case), the inner ones are left to
the garbage collector, and its per-chunk overhead is far above what relaying
thousands of events a second allows. This client does one thing: POST a JSON
body to a loopback llama-server and hand back the response body chunk by chunk,
exactly as received (chunked framing removed), keeping idle connections for reuse.

Closing a response before its end closes the connection, which is how
llama-server learns that the client left and stops generating.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, final

import attrs
import h11
import trio

from ._exceptions import UpstreamError

__all__ = [
    "H11Response",
    "PooledSender",
    "Sender",
    "UpstreamPool",
    "UpstreamResponse",
    "send_upstream",
]

_RECEIVE_BYTES = 65536
_HANDOVER_BYTES = 8192
_CLOSE_TIMEOUT = 2.0
_CONNECT_TIMEOUT = 10.0
_MAX_IDLE_PER_SERVER = 64


class UpstreamResponse(Protocol):
    """What the context hands its callers: status, headers, and the body as bytes chunks."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def aread(self) -> bytes: ...


class Sender(Protocol):
    """How the context talks to a server: :class:`PooledSender` for real, fakes in tests."""

    def send(
        self, host: str, port: int, path: str, body: bytes
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """POST ``body`` and yield the response (see :func:`send_upstream`)."""
        ...

    async def close_idle(self, host: str, port: int) -> None:
        """Close idle connections to a server that is about to stop."""
        ...


@attrs.define(eq=False)
class _Connection:
    host: str
    port: int
    stream: trio.SocketStream
    protocol: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.CLIENT))
    reused: bool = False

    async def aclose(self) -> None:
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await self.stream.aclose()


@final
@attrs.define(eq=False)
class UpstreamPool:
    """Keep-alive connections to llama-server children, per host and port.

    Call :meth:`aclose` (or use it with ``async with``) to close idle connections.
    """

    _idle: dict[tuple[str, int], collections.deque[_Connection]] = attrs.field(
        factory=dict, init=False
    )

    async def __aenter__(self) -> UpstreamPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _connect(self, host: str, port: int, *, fresh: bool) -> _Connection:
        idle = None if fresh else self._idle.get((host, port))
        while idle:
            connection = idle.pop()
            if connection.protocol.our_state is h11.IDLE:
                connection.reused = True
                return connection
            await connection.aclose()
        try:
            with trio.fail_after(_CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise UpstreamError(f"cannot connect to llama-server at {host}:{port}: {exc}") from exc
        return _Connection(host, port, stream)

    def _give_back(self, connection: _Connection) -> bool:
        """Keep a finished connection for reuse; ``False`` if it must be closed."""
        protocol = connection.protocol
        if protocol.our_state is not h11.DONE or protocol.their_state is not h11.DONE:
            return False
        try:
            protocol.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        idle = self._idle.setdefault((connection.host, connection.port), collections.deque())
        if len(idle) >= _MAX_IDLE_PER_SERVER:
            return False
        idle.append(connection)
        return True

    async def close_idle(self, host: str, port: int) -> None:
        """Close the idle connections to one server (before stopping it: llama-server's
        HTTP threads would otherwise sit on them until its keep-alive timeout)."""
        for connection in self._idle.pop((host, port), ()):
            await connection.aclose()

    def idle_count(self, host: str, port: int) -> int:
        return len(self._idle.get((host, port), ()))

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.aclose()


@final
@attrs.define(eq=False)
class H11Response:
    """A llama-server response whose headers have arrived; the body is still to read.

    Iterate it (``async for chunk in response``) for the body bytes exactly as
    llama-server sent them, chunked framing removed; or :meth:`aread` it whole.

    Attributes:
        status_code: The HTTP status llama-server answered with.
        headers: Its response headers, lower-case names.
    """

    status_code: int
    headers: dict[str, str]
    _connection: _Connection
    _complete: bool = False

    @property
    def is_event_stream(self) -> bool:
        return self.headers.get("content-type", "").startswith("text/event-stream")

    def __aiter__(self) -> H11Response:
        return self

    async def __anext__(self) -> bytes:
        """The next body chunk: everything received so far, in one piece.

        Raises:
            UpstreamError: The connection broke before the body was complete.
        """
        if self._complete:
            raise StopAsyncIteration
        protocol = self._connection.protocol
        parts: list[bytes] = []
        size = 0
        while True:
            event = _next_event(protocol)
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
                size += len(event.data)
                if size >= _HANDOVER_BYTES:  # pass bytes on; don't parse the whole buffer first
                    break
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True
                break
            elif event is h11.NEED_DATA:
                if parts:  # hand over what we have before waiting for more
                    break
                await _receive_into(self._connection)
            elif event is h11.PAUSED:  # cannot happen before EndOfMessage; never spin
                raise UpstreamError("llama-server response ended unexpectedly")
        if not parts:
            raise StopAsyncIteration
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def aread(self) -> bytes:
        """The whole body.

        Raises:
            UpstreamError: The connection broke before the body was complete.
        """
        return b"".join([chunk async for chunk in self])


class _StaleConnection(Exception):
    """A reused keep-alive connection failed before any response: safe to retry."""


def _next_event(protocol: h11.Connection) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
    try:
        event = protocol.next_event()
    except h11.RemoteProtocolError as exc:
        raise UpstreamError(f"llama-server response broke off: {exc}") from exc
    return event


async def _receive_into(connection: _Connection) -> None:
    try:
        data = await connection.stream.receive_some(_RECEIVE_BYTES)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise UpstreamError(f"llama-server connection broke: {exc!r}") from exc
    connection.protocol.receive_data(data)  # b"" is EOF: h11 decides if that ends the body


async def _exchange(
    pool: UpstreamPool,
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    fresh: bool,
    method: str,
) -> H11Response:
    connection = await pool._connect(host, port, fresh=fresh)
    protocol = connection.protocol
    fields = [("Host", f"{host}:{port}"), ("Content-Length", str(len(body)))]
    if body:
        fields.append(("Content-Type", "application/json"))
    request = h11.Request(method=method, target=path, headers=fields)
    try:
        try:
            await connection.stream.send_all(
                protocol.send(request)
                + protocol.send(h11.Data(data=body))
                + protocol.send(h11.EndOfMessage())
            )
        except (OSError, trio.BrokenResourceError) as exc:
            raise UpstreamError(f"llama-server connection broke: {exc!r}") from exc
        while True:
            event = _next_event(protocol)
            if event is h11.NEED_DATA:
                await _receive_into(connection)
            elif isinstance(event, h11.Response):
                break
            elif not isinstance(event, h11.InformationalResponse):
                raise UpstreamError(f"llama-server sent {event!r} instead of a response")
    except UpstreamError as exc:
        await connection.aclose()
        if connection.reused:
            raise _StaleConnection from exc
        raise
    except BaseException:
        await connection.aclose()
        raise
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers
    }
    return H11Response(event.status_code, headers, connection)


@asynccontextmanager
async def send_upstream(
    pool: UpstreamPool,
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    method: str = "POST",
) -> AsyncIterator[H11Response]:
    """Send ``body`` (JSON; empty for none) to ``http://host:port/path`` and yield once
    the response headers arrive.

    A reused keep-alive connection that fails before any response (llama-server
    closed it while idle) is replaced once by a fresh one.

    Raises:
        UpstreamError: llama-server could not be reached or broke the connection.

    Cancellation: leaving the block before the body ended (cancellation, an
    error, a client that left) closes the connection at once, so llama-server
    stops generating. A body read to its end returns the connection to the pool.
    """
    try:
        response = await _exchange(pool, host, port, path, body, fresh=False, method=method)
    except _StaleConnection:
        response = await _exchange(pool, host, port, path, body, fresh=True, method=method)
    try:
        yield response
    finally:
        if not (response._complete and pool._give_back(response._connection)):
            await response._connection.aclose()


@final
@attrs.define(eq=False)
class PooledSender:
    """The real :class:`Sender`: :func:`send_upstream` over one :class:`UpstreamPool`."""

    pool: UpstreamPool

    def send(
        self, host: str, port: int, path: str, body: bytes
    ) -> AbstractAsyncContextManager[H11Response]:
        return send_upstream(self.pool, host, port, path, body)

    async def close_idle(self, host: str, port: int) -> None:
        await self.pool.close_idle(host, port)
