"""A response over our own HTTP/1.1 client whose head has arrived, and how its body is read
or relayed.

:func:`exchange` sends a request on an :class:`~._pool.UpstreamConnection` and hands back
an :class:`HTTPResponse` once its head is in: what
:func:`~bodhi_trio._transport._loopback.send_upstream` yields for a llama-server child and
:class:`~bodhi_trio._transport._remote_plain.PlainClient` for a plain ``http://`` remote.
Iterate it for the body as it arrives (chunked framing removed by
:mod:`bodhi_trio._core._http1`), or let it write itself to a :class:`ChunkSink`
(:meth:`HTTPResponse.relay_to`, the relay's way: a paced token is one read and one write).
"""

from __future__ import annotations

import collections
import os
from typing import TYPE_CHECKING, Protocol, final

import attrs
import trio

from bodhi_trio._core._http1 import BodyDecoder, FramingError, ResponseHead, split_head
from bodhi_trio._exceptions import UpstreamError
from bodhi_trio._transport._pool import PACED_WAIT, RECEIVE_BYTES, UpstreamConnection
from bodhi_trio._transport._relay_hub import CannotPark
from bodhi_trio._transport._whole import read_whole

if TYPE_CHECKING:
    from bodhi_trio._transport._relay_hub import RelayHub

__all__ = ["HEAD_BYTES", "ChunkSink", "HTTPResponse", "StaleConnection", "exchange"]

HEAD_BYTES = 4096
"""Most bytes read at a time until a response's head is whole (the body's reads then take
up to :data:`RECEIVE_BYTES`). A fast stream's events queue behind its head; one read of
them all copies every one of them out of the socket before the first can go on, and keeps
copying while the server writes more (measured: 55 KB in one read that took 1.4 ms)."""


class ChunkSink(Protocol):
    """Where :meth:`HTTPResponse.relay_to` writes a body: the client's side of a relay, a
    response whose own body is chunked (the server's body writer)."""

    async def __call__(self, payload: bytes, /) -> None:
        """Write ``payload`` (framed by the sink), whole; never cut by a cancellation."""
        ...

    def write_chunk_now(self, chunks: bytes, payload: bytes, fd: int = -1, /) -> bytes | None:
        """Take ``chunks``, one or more whole chunks of chunked framing whose payload is
        ``payload``, if the sink can at once, and write them (or what the sink makes of
        the payload) as far as the socket takes it: to ``fd``, a copy of :meth:`fileno`
        the relay hub holds, if given. Returns what is left to write (``b""``: nothing;
        :meth:`write_rest` writes the rest), or None: nothing taken (the sink cannot take
        framed chunks now: the payload goes to ``__call__``)."""
        ...

    def fileno(self) -> int:
        """The socket :meth:`write_chunk_now` writes to, for the relay hub to copy; -1 if
        it cannot write chunks now (the hub then leaves the stream to relay itself)."""
        ...

    async def write_rest(self, rest: bytes, /) -> None:
        """Write the ``rest`` of a chunk :meth:`write_chunk_now` began; never cut."""
        ...


@final
@attrs.define(eq=False)
class HTTPResponse:
    """A response whose head has arrived; the body is still to read.

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

    @property
    def connection(self) -> UpstreamConnection:
        """The connection it came on (its owner gives it back or closes it after)."""
        return self._connection

    @property
    def reusable(self) -> bool:
        """The body was read to its end and the connection may carry another request."""
        return self._body.reusable

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
            raise self._broke_off(exc) from exc
        raise StopAsyncIteration

    @property
    def complete(self) -> bool:
        """Whether the whole body has been read."""
        return self._body.complete

    async def relay_arrived(self, sink: ChunkSink) -> None:
        """Write to ``sink`` what of the body has arrived (the bytes that came with the
        head: on a stream, its first event, as a rule), without waiting for more.

        Raises:
            UpstreamError: The framing was malformed.

        Cancellation: the write is the sink's, never cut.
        """
        data, self._pending = self._pending, b""
        try:
            payload = self._body.feed(data) if data else b""
        except FramingError as exc:
            raise self._broke_off(exc) from exc
        if payload:
            self.tail.append(payload)
            await sink(payload)
            self.handed_at = self._connection.clock.current_time()

    async def relay_to(self, sink: ChunkSink, hub: RelayHub | None = None) -> None:
        """Write the body to ``sink`` as it arrives, until it ends (noting the last pieces
        in :attr:`tail` and the time in :attr:`handed_at`).

        One loop for the whole body, not an iterator per piece: on a paced stream every
        token is a read of its own, and each layer between the socket and the client
        costs per token (measured: the iterator, the connection's read and the decoder
        each cost more than the read itself at 256 streams). A paced read that holds
        exactly one whole chunk, as llama-server writes an event, goes to the sink framed
        as it came (:meth:`relay_read`; so does one that holds a run of whole chunks);
        anything else (the bytes that came with the head, a fast stream read first, a
        chunk split across reads, the end) goes the iterator's way. With a serving
        ``hub``, paced reads are the hub's (:mod:`._relay_hub`: one thread for the tokens
        of every stream, past the run loop) once this loop wrote ``hub.takes_after`` paced
        tokens whole in a row, and this loop wakes only for the rest.

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
        steady = 0  # paced tokens in a row this loop wrote whole (the hub's condition)
        while not body.complete:
            if self._pending or decoder is None or not connection.paced:
                steady = 0
                try:
                    piece = await self.__anext__()
                except StopAsyncIteration:
                    return
                tail.append(piece)
                await sink(piece)
                self.handed_at = now()
                continue
            try:
                if connection.closed or fd < 0:  # the producer left: the number may be reused
                    raise connection.closed_error()
                if hub is not None and steady >= hub.takes_after and hub.serving:
                    steady = 0  # back from the hub: the pace is to be shown again
                    try:
                        rest = await hub.relay(self, sink, fd)
                    except CannotPark:
                        hub = None  # this stream relays itself from now on
                        continue
                else:
                    connection.waiting_since = self.handed_at
                    await trio.lowlevel.wait_readable(fd)  # a checkpoint: cancellable
                    if connection.closed:  # closed meanwhile (Trio wakes a waiter it closes)
                        raise connection.closed_error()
                    rest = self.relay_read(os.read(fd, RECEIVE_BYTES), sink)
                    steady = steady + 1 if rest == b"" and connection.paced else 0
            except BlockingIOError:  # a spurious wake-up
                continue
            except (OSError, trio.ClosedResourceError) as exc:
                raise connection.broken(exc) from exc
            finally:
                connection.waiting_since = None
            if rest:
                await sink.write_rest(rest)
                self.handed_at = now()

    def relay_read(self, data: bytes, sink: ChunkSink, fd: int = -1) -> bytes | None:
        """One paced read's ``data``: written to ``sink`` framed as it came if it is one
        whole chunk, or a run of them (tokens that piled up), and the sink takes them
        framed (to ``fd``, the relay hub's copy of the sink's socket, if given); else kept
        for the iterator's way (a chunk split across reads, the end, a sink that frames
        it itself). Notes the time, whether the read was paced (it
        came over ``PACED_WAIT`` after the last piece), and the piece. For a stream
        parked in the relay hub this runs in the hub's thread: nothing here (or in the
        sink's ``write_chunk_now``) may call into Trio or wait.

        Returns:
            ``b""``: written whole. The rest of the chunk, to write with
            ``sink.write_rest``: written in part. None: not written (the next turn of the
            loop goes the iterator's way).
        """
        waited_from = self.handed_at
        connection = self._connection
        self.handed_at = arrived = connection.clock.current_time()
        connection.paced = arrived - waited_from > PACED_WAIT
        decoder = self._body.chunked
        if decoder is not None:
            start = decoder.whole_chunk(data)  # one token: the usual read
            payload = data[start:-2] if start else decoder.whole_chunks(data)
            if payload is not None:
                rest = sink.write_chunk_now(data, payload, fd)
                if rest is not None:
                    self.tail.append(payload)
                    return rest
        self._pending = data
        if not data:  # closed: the iterator's read finds it again, and says why
            connection.paced = False
        return None

    async def aread(self) -> bytes:
        """The whole body.

        Raises:
            UpstreamError: The connection broke before the body was complete, or the
                body is over :data:`~._whole.MAX_ANSWER_BYTES`.
        """
        return await read_whole(self, self._connection.peer)

    def _broke_off(self, exc: FramingError) -> UpstreamError:
        """The error for a body whose framing was malformed or cut."""
        return UpstreamError(f"the response from {self._connection.peer} broke off: {exc}")


class StaleConnection(Exception):
    """A kept connection failed before any byte of an answer (it is ``stale``): the server
    closed it while idle, and a fresh one may carry the request."""


async def exchange(connection: UpstreamConnection, request: bytes, method: str) -> HTTPResponse:
    """Send ``request`` (head and body, as :func:`~._loopback.send_upstream` or a remote's
    target makes it) on ``connection``; return once the first final response head is in.

    Raises:
        StaleConnection: The connection is :attr:`~._pool.UpstreamConnection.stale`.
        UpstreamError: The connection broke, or the server closed it or answered
            malformed, before a head.

    Cancellation: part of the request may have gone out; the caller closes the connection
    (on any exception it must).
    """
    try:
        try:
            await connection.send(request)
        except (OSError, trio.BrokenResourceError) as exc:
            raise connection.broken(exc) from exc
        data = b""
        while (found := split_head(data)) is None:
            more = await connection.receive(HEAD_BYTES)
            if not more:
                raise UpstreamError(f"{connection.peer} closed the connection before answering")
            data += more
    except FramingError as exc:
        raise UpstreamError(f"{connection.peer} sent a malformed response: {exc}") from exc
    except UpstreamError as exc:
        if connection.stale:
            raise StaleConnection from exc
        raise
    head, rest = found
    if method == "HEAD":  # its Content-Length describes a body that never comes
        head = attrs.evolve(head, length=0, chunked=False)
    return HTTPResponse(head, connection, rest)
