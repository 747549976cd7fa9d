"""The body writer of a relayed response on one of our connections.

:func:`~bodhi_trio._http._connection.body_writer` gives it for the ``send`` Hypercorn
handed the app: it frames each piece of the body as a chunk and writes it to the client's
socket itself, past the ASGI message and Hypercorn's stream state machine (the module
docstring of :mod:`~bodhi_trio._http._connection` says why, and when it may), and takes a
whole chunk framed as llama-server sent it (:meth:`ChunkWriter.write_chunk_now`, the
transport's ``ChunkSink``), so that a token of a paced stream is one read and one write.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, final

from hypercorn.protocol.http_stream import ASGIHTTPState

if TYPE_CHECKING:
    from bodhi_trio._http._connection import Connection

__all__ = ["BodyWriter", "BytesCounter", "ChunkWriter", "TranslatingChunkWriter"]

_RESPONSE = ASGIHTTPState.RESPONSE

BodyWriter = Callable[[bytes], Awaitable[None]]


class ResponseState(Protocol):
    """What the writer reads of the response's stream: Hypercorn's ``HTTPStream``, or the
    fast path's :class:`~bodhi_trio._http._fast_path.FastExchange`."""

    closed: bool
    state: ASGIHTTPState


class BytesCounter(Protocol):
    """Counts a response's body bytes (the request's record)."""

    first_byte: float | None
    body_bytes: int

    def sent(self, size: int) -> None:
        """``size`` bytes went out (the first ones set ``first_byte``)."""


@final
class ChunkWriter:
    """Writes the body pieces of the response on ``stream`` to ``connection``'s socket as
    chunks, once the response's chunked body has begun (``frames_chunks``) and while the
    stream is open; otherwise with ``send_message``, the ASGI way (which counts what it
    sends). ``counter`` counts the payload bytes of each piece written here.

    Never cut by a cancellation: a piece is written whole, or the connection is closed.
    """

    __slots__ = (
        "_chunked",
        "_connection",
        "_counter",
        "_fd",
        "_frames_chunks",
        "_send",
        "_stream",
    )

    def __init__(
        self,
        connection: Connection,
        stream: ResponseState,
        frames_chunks: Callable[[], bool],
        send_message: BodyWriter,
        counter: BytesCounter,
    ) -> None:
        self._connection = connection
        self._stream = stream
        self._frames_chunks = frames_chunks
        self._send = send_message
        self._counter = counter
        # h11's side of a response whose chunked body began stays so until the response
        # ends, which goes through the stream (its state, closed): asked once.
        self._chunked = False
        # valid while the connection is not closed (it says so before it closes)
        self._fd: int = connection.stream.socket.fileno()

    def _framed_here(self) -> bool:
        stream = self._stream
        if stream.closed or stream.state is not _RESPONSE:
            return False
        if not self._chunked:
            self._chunked = self._frames_chunks()
        return self._chunked

    async def __call__(self, data: bytes) -> None:
        """Write ``data``, one piece of the body."""
        if data and self._framed_here():  # an empty chunk would read as the body's end
            self._counter.sent(len(data))
            await self._connection.write_whole(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            await self._send(data)

    def fileno(self) -> int:
        """The client's socket, for the relay hub to copy; -1 if chunks are not written
        here (the response does not frame them, or it ended) or the connection is closing:
        the hub then leaves the stream to relay itself."""
        if self._connection.closed or not self._framed_here():
            return -1
        return self._fd

    def write_chunk_now(self, chunks: bytes, payload: bytes, fd: int = -1) -> bytes | None:
        """Write ``chunks`` (whole chunks carrying ``payload``) as they are, as far as the
        socket takes them at once: to ``fd`` (the relay hub's copy of the socket, in the
        hub's thread) if given. Returns what is left of them (``b""``: nothing;
        :meth:`write_rest` writes the rest), or None when chunks are not written here
        (``__call__`` then)."""
        stream = self._stream  # takes_chunks() inlined: this runs per token
        framed = self._chunked and not stream.closed and stream.state is _RESPONSE
        if not framed and not self._framed_here():
            return None
        return self.write_framed_now(chunks, len(payload), fd)

    def takes_chunks(self) -> bool:
        """Whether :meth:`write_framed_now` may write now (the response frames chunks here
        and is open)."""
        return self._framed_here()

    def write_framed_now(self, chunk: bytes, size: int, fd: int = -1) -> bytes:
        """:meth:`write_chunk_now` once :meth:`takes_chunks` said yes: ``chunk`` (``size``
        payload bytes) counted and written as far as the socket takes it at once; returns
        the rest."""
        counter = self._counter
        if counter.first_byte is None:
            counter.sent(size)
        else:  # sent(), inlined
            counter.body_bytes += size
        connection = self._connection
        if connection.writing or connection.closed:  # after the write under way; or closed
            return chunk
        try:
            sent = os.write(fd if fd >= 0 else self._fd, chunk)
        except OSError:  # full, or broken: write_rest finds out which (and closes)
            return chunk
        return chunk[sent:]

    async def write_rest(self, rest: bytes) -> None:
        """Write the ``rest`` of a chunk :meth:`write_chunk_now` began."""
        await self._connection.write_whole(rest)


@final
class TranslatingChunkWriter:
    """A :class:`ChunkWriter` for a body that changes form on its way (Ollama's NDJSON made
    of llama-server's events): each piece of the upstream body is written as what
    ``translate`` makes of it, one chunk, or not at all when that is nothing.

    It is a ``ChunkSink`` as the writer is, so a translated stream is spliced and its paced
    tokens relayed by the relay hub like any other: ``translate`` then runs in the hub's
    thread, one piece at a time, never at once with the stream's own task (the hub holds
    a stream or its task does). It must be plain computation: no Trio, no waiting, nothing
    shared with another stream.

    Never cut by a cancellation, as the writer is not.
    """

    __slots__ = ("_translate", "_writer")

    def __init__(self, writer: ChunkWriter, translate: Callable[[bytes], bytes]) -> None:
        self._writer = writer
        self._translate = translate

    async def __call__(self, data: bytes) -> None:
        """Write what ``data``, a piece of the upstream body, translates to."""
        if translated := self._translate(data):
            await self._writer(translated)

    def fileno(self) -> int:
        """The writer's :meth:`ChunkWriter.fileno`."""
        return self._writer.fileno()

    def write_chunk_now(self, chunks: bytes, payload: bytes, fd: int = -1) -> bytes | None:
        """Translate ``payload`` (of the whole chunks ``chunks``) and write the result,
        one chunk, as far as the socket takes it at once (to ``fd`` if given). Returns the
        rest of that chunk (``b""``: all written, or nothing to write), or None, nothing
        translated, when the writer does not write chunks now."""
        writer = self._writer
        if not writer.takes_chunks():
            return None
        translated = self._translate(payload)
        if not translated:
            return b""
        size = len(translated)
        return writer.write_framed_now(b"%x\r\n%s\r\n" % (size, translated), size, fd)

    async def write_rest(self, rest: bytes) -> None:
        """Write the ``rest`` of a chunk :meth:`write_chunk_now` began."""
        await self._writer.write_rest(rest)
