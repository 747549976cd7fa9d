"""Requests to the llama-server child: HTTP/1.1 over loopback, keep-alive pooled.

Why not httpx here: its body iterators are async generators nested three deep;
when a client leaves mid-stream (our everyday case), the inner ones are left to
the garbage collector, and its per-chunk overhead is far above what relaying
thousands of events a second allows. This client does one thing: send a request
(a JSON POST, or for a pass-through any method, target and content type) to a loopback
llama-server and hand back the response body as it arrives (chunked framing removed by
:mod:`bodhi_trio._core._http1`), keeping idle connections for reuse in an
:class:`UpstreamPool` (:mod:`._pool`).

Closing a response before its end closes the connection, which is how
llama-server learns that the client left and stops generating.
"""

from __future__ import annotations

import collections
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Protocol, final

import attrs
import trio

from bodhi_trio._core._http1 import BodyDecoder, FramingError, ResponseHead, split_head
from bodhi_trio._exceptions import UpstreamError
from bodhi_trio._transport._pool import (
    PACED_WAIT,
    RECEIVE_BYTES,
    UpstreamConnection,
    UpstreamPool,
)

if TYPE_CHECKING:
    from bodhi_trio._core._address import Address

__all__ = [
    "JSON",
    "ChunkSink",
    "HTTPResponse",
    "PooledSender",
    "Probe",
    "Sender",
    "UpstreamPool",
    "UpstreamResponse",
    "probe",
    "send_upstream",
]


JSON = "application/json"
"""The content type of the bodies the context sends (every route but a pass-through)."""


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
        self,
        address: Address,
        path: str,
        body: bytes,
        *,
        method: str = "POST",
        content_type: str | None = JSON,
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send ``body`` and yield the response (see :func:`send_upstream`)."""
        ...

    async def close_idle(self, address: Address) -> None:
        """Close idle connections to a server that is about to stop."""
        ...

    async def probe(self, address: Address, path: str, *, within: float) -> Probe | None:
        """One ``GET`` on a fresh connection (see :func:`probe`)."""
        ...

    def waiting_since(self, address: Address) -> float | None:
        """When the longest current wait for bytes from ``address`` began (Trio clock)."""
        ...

    async def abort_waiting(self, address: Address, *, since_before: float, reason: str) -> int:
        """End the requests to ``address`` that have waited for bytes since before
        ``since_before``: each raises :class:`UpstreamError` with ``reason``."""
        ...


class ChunkSink(Protocol):
    """Where :meth:`HTTPResponse.relay_to` writes a body: the client's side of a relay, a
    response whose own body is chunked (the server's body writer)."""

    async def __call__(self, payload: bytes, /) -> None:
        """Write ``payload`` (framed by the sink), whole; never cut by a cancellation."""
        ...

    def write_chunk_now(self, chunk: bytes, size: int, /) -> int:
        """Write ``chunk``, one whole chunk of chunked framing carrying ``size`` payload
        bytes, as it is, if the sink can at once. Returns the bytes written: all of them;
        fewer (:meth:`write_rest` writes the rest); or -1, nothing (the sink cannot take
        framed chunks now: the payload goes to ``__call__``)."""
        ...

    async def write_rest(self, rest: bytes, /) -> None:
        """Write the ``rest`` of a chunk :meth:`write_chunk_now` began; never cut."""
        ...


@attrs.frozen
class Probe:
    """The answer to :func:`probe`: status and whole body."""

    status: int
    body: bytes


@final
@attrs.define(eq=False)
class HTTPResponse:
    """A llama-server response whose head has arrived; the body is still to read.

    Iterate it (``async for chunk in response``) for the body bytes as they
    arrive, framing removed, each chunk everything that one read brought; or
    :meth:`aread` it whole.

    Attributes:
        status_code: The HTTP status llama-server answered with.
        headers: Its response headers, lower-case names.
    """

    _head: ResponseHead
    _connection: UpstreamConnection
    _pending: bytes  # body bytes that arrived with the head
    _body: BodyDecoder = attrs.field(init=False)
    tail: collections.deque[bytes] = attrs.field(
        factory=lambda: collections.deque(maxlen=3), init=False
    )
    """The last pieces :meth:`relay_to` wrote (where a stream's usage is)."""
    handed_at: float = attrs.field(init=False)
    """When :meth:`relay_to` last wrote a piece (Trio clock; at first, when the head came)."""

    def __attrs_post_init__(self) -> None:
        self._body = BodyDecoder(self._head, self._pending)
        self.handed_at = self._connection.clock.current_time()

    @property
    def status_code(self) -> int:
        return self._head.status

    @property
    def headers(self) -> dict[str, str]:
        return self._head.headers

    def __aiter__(self) -> HTTPResponse:
        return self

    async def __anext__(self) -> bytes:
        """The next piece of the body: what the last read brought, framing removed.

        Raises:
            UpstreamError: The connection broke, or the framing was malformed,
                before the body was complete.

        Cancellation: safe; no received byte is lost, so iterating again goes on.
        """
        body = self._body
        try:
            while not body.complete:
                data, self._pending = self._pending, b""
                if not data:
                    data = await self._connection.receive()
                    if not data:
                        body.at_eof()  # the body ran until the connection closed
                        break
                payload = body.feed(data)
                if payload:
                    return payload
        except FramingError as exc:
            raise UpstreamError(f"llama-server response broke off: {exc}") from exc
        raise StopAsyncIteration

    async def relay_to(self, sink: ChunkSink) -> None:
        """Write the body to ``sink`` as it arrives, until it ends (noting the last pieces
        in :attr:`tail` and the time in :attr:`handed_at`).

        One loop for the whole body, not an iterator per piece: on a paced stream every
        token is a read of its own, and each layer between the socket and the client
        costs per token (measured: the iterator, the connection's read and the decoder
        each cost more than the read itself at 256 streams). A paced read that holds
        exactly one whole chunk, as llama-server writes an event, goes to the sink framed
        as it came; anything else (the bytes that came with the head, a fast stream read
        first, a chunk split across reads, the end) goes the iterator's way.

        Raises:
            UpstreamError: The connection broke or was aborted, or the framing was
                malformed, before the body was complete.

        Cancellation: safe; it can land only in a wait for bytes (every write is
        shielded), so nothing read is lost and calling it again goes on.
        """
        body, connection, tail = self._body, self._connection, self.tail
        decoder = body.chunked
        now = connection.clock.current_time
        fd = connection.stream.socket.fileno()  # valid until connection.closed
        while not body.complete:
            if self._pending or decoder is None or not connection.paced:
                try:
                    piece = await self.__anext__()
                except StopAsyncIteration:
                    return
                tail.append(piece)
                await sink(piece)
                self.handed_at = now()
                continue
            waited_from = connection.waiting_since = self.handed_at
            try:
                if connection.closed or fd < 0:  # the producer left: the number may be reused
                    raise trio.ClosedResourceError("the connection to llama-server was closed")
                await trio.lowlevel.wait_readable(fd)  # a checkpoint: cancellable
                if connection.closed:  # closed meanwhile (Trio wakes a waiter it closes)
                    raise trio.ClosedResourceError("the connection to llama-server was closed")
                data = os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:  # a spurious wake-up
                continue
            except (OSError, trio.ClosedResourceError) as exc:
                raise connection.broken(exc) from exc
            finally:
                connection.waiting_since = None
            self.handed_at = arrived = now()
            connection.paced = arrived - waited_from > PACED_WAIT
            start = decoder.whole_chunk(data)
            if not start:  # several chunks, a split one, the end: the iterator's way
                self._pending = data
                if not data:  # closed: the iterator's read finds it again, and says why
                    connection.paced = False
                continue
            tail.append(data[start:-2])
            sent = sink.write_chunk_now(data, len(data) - start - 2)
            if sent != len(data):
                if sent < 0:
                    await sink(data[start:-2])
                else:
                    await sink.write_rest(data[sent:])
                self.handed_at = now()

    async def aread(self) -> bytes:
        """The whole body.

        Raises:
            UpstreamError: The connection broke before the body was complete.
        """
        return b"".join([chunk async for chunk in self])


class _StaleConnection(Exception):
    """A reused keep-alive connection failed before any byte of a response: safe to retry
    (llama-server closed it while idle). Once it answered anything, a retry could run the
    generation twice."""


def _request_bytes(
    method: str, address: Address, path: str, body: bytes, content_type: str | None
) -> bytes:
    """The request head and body. ``method``, ``path`` and ``content_type`` are the
    caller's to check (the context's pass-through does: no CR, LF or other control
    character reaches the request line or a header)."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {address.host_header}",
        f"Content-Length: {len(body)}",
    ]
    if body and content_type:
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_head(connection: UpstreamConnection) -> tuple[ResponseHead, bytes]:
    """The first final (non-1xx) response head, and the body bytes that came with it."""
    data = b""
    try:
        while (found := split_head(data)) is None:
            more = await connection.receive()
            if not more:
                raise UpstreamError("llama-server closed the connection before answering")
            data += more
    except FramingError as exc:
        raise UpstreamError(f"llama-server sent a malformed response: {exc}") from exc
    return found


async def _exchange(
    pool: UpstreamPool,
    address: Address,
    path: str,
    body: bytes,
    *,
    fresh: bool,
    method: str,
    content_type: str | None,
) -> HTTPResponse:
    connection = await pool.check_out(address, fresh=fresh)
    try:
        try:
            request = _request_bytes(method, address, path, body, content_type)
            await connection.send(request)
        except (OSError, trio.BrokenResourceError) as exc:
            raise UpstreamError(f"llama-server connection broke: {exc!r}") from exc
        head, rest = await _read_head(connection)
        if method == "HEAD":  # its Content-Length describes a body that never comes
            head = attrs.evolve(head, length=0, chunked=False)
    except UpstreamError as exc:
        await pool.discard(connection)
        if connection.reused and not connection.answered and connection.abort_reason is None:
            raise _StaleConnection from exc
        raise
    except BaseException:
        await pool.discard(connection)
        raise
    return HTTPResponse(head, connection, rest)


@asynccontextmanager
async def send_upstream(
    pool: UpstreamPool,
    address: Address,
    path: str,
    body: bytes,
    *,
    method: str = "POST",
    content_type: str | None = JSON,
) -> AsyncIterator[HTTPResponse]:
    """Send ``body`` (empty for none) to ``path`` at ``address`` and yield once the
    response head arrives.

    ``path`` is the request target (``/v1/models?x=1``); ``content_type`` is sent with
    a non-empty body (``None``: no such header). All three go into the request as
    they are: callers pass only checked values.

    A reused keep-alive connection that fails before any response (llama-server
    closed it while idle) is replaced once by a fresh one.

    Raises:
        UpstreamError: llama-server could not be reached or broke the connection.

    Cancellation: leaving the block before the body ended (cancellation, an
    error, a client that left) closes the connection at once, so llama-server
    stops generating. A body read to its end returns the connection to the pool.
    """
    try:
        response = await _exchange(
            pool, address, path, body, fresh=False, method=method, content_type=content_type
        )
    except _StaleConnection:
        response = await _exchange(
            pool, address, path, body, fresh=True, method=method, content_type=content_type
        )
    try:
        yield response
    finally:
        if not (response._body.reusable and pool.give_back(response._connection)):
            await pool.discard(response._connection)


async def probe(address: Address, path: str, *, within: float) -> Probe | None:
    """One ``GET path`` on a fresh connection, read whole ``within`` seconds.

    Returns:
        The answer, or ``None`` if nothing (or nothing complete) came back in time.

    Cancellation: safe; the connection is closed.
    """
    with trio.move_on_after(within):
        try:
            async with (
                UpstreamPool() as pool,
                send_upstream(pool, address, path, b"", method="GET") as response,
            ):
                return Probe(response.status_code, await response.aread())
        except UpstreamError:
            return None
    return None


@final
@attrs.define(eq=False)
class PooledSender:
    """The real :class:`Sender`: :func:`send_upstream` over one :class:`UpstreamPool`."""

    pool: UpstreamPool

    def send(
        self,
        address: Address,
        path: str,
        body: bytes,
        *,
        method: str = "POST",
        content_type: str | None = JSON,
    ) -> AbstractAsyncContextManager[HTTPResponse]:
        return send_upstream(
            self.pool, address, path, body, method=method, content_type=content_type
        )

    async def close_idle(self, address: Address) -> None:
        await self.pool.close_idle(address)

    async def probe(self, address: Address, path: str, *, within: float) -> Probe | None:
        return await probe(address, path, within=within)

    def waiting_since(self, address: Address) -> float | None:
        return self.pool.waiting_since(address)

    async def abort_waiting(self, address: Address, *, since_before: float, reason: str) -> int:
        return await self.pool.abort_waiting(address, since_before=since_before, reason=reason)
