"""The HTTP/1.1 protocol of one of our connections: Hypercorn's, with its changes.

What changes and why is in :mod:`._connection`'s docstring; this is the protocol object
that :class:`~._connection.Connection` runs (h11's side of the connection), and
:func:`body_writer`, which lets a relay write its chunks past it.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, final

import h11
import h11._writers
import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Body
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.worker_context import EventWrapper

from bodhi_trio._http._chunk_writer import BodyWriter, BytesCounter, ChunkWriter
from bodhi_trio._http._fast_path import FastExchange
from bodhi_trio._http._h11_strict import PARSER_ERRORS, Refused, StrictH11Connection, error_body
from bodhi_trio._http._simple_request import parse_simple_request

if TYPE_CHECKING:
    from bodhi_trio._http._connection import Connection

__all__ = ["ConnectionProtocol", "body_writer"]


@final
class ConnectionProtocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol without HTTP/2 and with enveloped parser errors."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._max_head = self.config.h11_max_incomplete_size
        self.connection = StrictH11Connection(self._max_head)
        self.can_read = _ReadGate(self)

    async def _check_protocol(self, event: h11.Request) -> None:
        """No switch to HTTP/2 (see :mod:`._connection`): nothing to check."""

    # Set by Connection.run: the connection it speaks for, and the paths it answers on
    # the fast path (:mod:`._fast_path`).
    owner: Connection | None = None
    fast_targets: frozenset[bytes] = frozenset()
    fast: FastExchange | None = None

    async def handle(self, event: Event) -> None:
        """Hypercorn's, with a whole simple request on a completion route answered on the
        fast path while the connection is idle (:mod:`._fast_path`); a request the client
        sent meanwhile is read next the same way (a loop: pipelined requests never nest)."""
        if type(event) is RawData and self.fast_targets:
            data, answered = event.data, False
            while data and self._idle():
                request = parse_simple_request(data, self.fast_targets, self._max_head)
                if request is None:
                    break
                self.fast = FastExchange(self, request)
                try:
                    data = await self.fast.run(self.app)
                finally:
                    self.fast = None
                answered = True
            if not answered:
                await super().handle(event)
            elif data:  # the next request, sent early and not simple: h11's to read
                await super().handle(RawData(data=data))
            return
        if type(event) is Closed and self.fast is not None:
            self.fast.connection_closed()
            return
        await super().handle(event)

    def _idle(self) -> bool:
        connection = self.connection
        return (
            self.fast is None
            and self.stream is None
            and connection.our_state is h11.IDLE
            and connection.their_state is h11.IDLE
            and not connection.trailing_data[0]
            and not self.context.terminated.is_set()
        )

    def frames_chunks(self) -> bool:
        """The response's head is out and its body is chunked (no Content-Length)."""
        return (
            type(getattr(self.connection, "_writer", None)) is h11._writers.ChunkedWriter
            and self.connection.our_state is h11.SEND_BODY
        )

    async def stream_send(self, event: StreamEvent) -> None:
        """A body piece of a chunked response framed here, not by h11 (:mod:`._connection`)."""
        if type(event) is Body and self.frames_chunks():
            if event.data:  # an empty chunk would read as the end of the body
                await self.send(RawData(data=_chunk(event.data)))
            return
        await super().stream_send(event)

    async def _send_error_response(self, status_code: int) -> None:
        refusal = getattr(self.connection, "refusal", None)
        if isinstance(refusal, Refused):
            code, message = refusal.code, str(refusal)
        else:
            code, message = PARSER_ERRORS.get(status_code, PARSER_ERRORS[400])
        body = error_body(message, "invalid_request_error", code)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *self.config.response_headers("h11"),
        ]
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


@final
class _ReadGate(EventWrapper):
    """Hypercorn's ``can_read``: what the reader waits on while h11 holds a request the
    client sent ahead (paused), until the response under way has ended.

    Meanwhile nothing reads the socket, so a client that left would be seen only by the
    response's next write, and never if it writes nothing (a quiet event stream without
    keep-alives, a long answer that is not streamed). While the reader waits here, the
    socket is watched: its end (or a reset) with nothing more sent is the client leaving,
    handled as a write that finds it gone. More bytes sent ahead end the watch (they are
    the client's to send; its leaving is then seen as before).
    """

    def __init__(self, protocol: ConnectionProtocol) -> None:
        super().__init__()
        self._protocol = protocol

    async def wait(self) -> None:
        owner = self._protocol.owner
        if owner is None or self.is_set():
            await super().wait()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_for_leaving, owner)
            await super().wait()
            nursery.cancel_scope.cancel()


async def _watch_for_leaving(owner: Connection) -> None:
    """Until the client closes or resets its connection without sending more: then
    :meth:`~._connection.Connection.client_gone`.

    Cancellation: the watch simply ends (the reader's wait is over).
    """
    try:
        peeked = await owner.stream.socket.recv(1, socket.MSG_PEEK)
    except (OSError, trio.ClosedResourceError):  # reset, or closed under the watch
        peeked = b""
    if not peeked:
        with trio.CancelScope(shield=True):  # it cancels the reader this watch runs in
            await owner.client_gone()


def body_writer(send: Any, counter: BytesCounter) -> BodyWriter:
    """A writer of body pieces for a response whose head the app sent with ``send``.

    For the ``send`` Hypercorn gives an app on one of our connections, a
    :class:`~bodhi_trio._http._chunk_writer.ChunkWriter`: it frames a piece and writes it
    to the socket itself (module docstring); for any other ``send`` (another server, a test
    harness), it sends the ASGI message. Either way, shielded: the writer is never cut by
    a cancellation.

    Args:
        send: The ASGI ``send`` callable of the request.
        counter: Counts the payload bytes of each piece as it is written (the request's
            record), without a coroutine of its own per piece.
    """

    async def send_message(data: bytes) -> None:
        counter.sent(len(data))
        with trio.CancelScope(shield=True):
            await send({"type": "http.response.body", "body": data, "more_body": True})

    stream = getattr(send, "__self__", None)
    if type(stream) is FastExchange:
        return ChunkWriter(stream.owner, stream, stream.frames_chunks, send_message, counter)
    protocol = getattr(getattr(stream, "send", None), "__self__", None)
    if type(stream) is HTTPStream and type(protocol) is ConnectionProtocol:
        owner = protocol.owner
        assert owner is not None  # set before the first request is read
        return ChunkWriter(owner, stream, protocol.frames_chunks, send_message, counter)
    return send_message


def _chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (what h11's chunked writer writes)."""
    return b"%x\r\n%s\r\n" % (len(data), data)
