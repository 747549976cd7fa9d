"""The NDJSON body of a streamed ``/api/chat`` or ``/api/generate``.

It iterates the relay's body (:class:`RelayBody`: the upstream read, the slot's
release before the end, the error owed after a failure) and turns each complete SSE
event of llama-server into Ollama objects, one JSON line each, returned as soon as the
event is whole: nothing is held back but the tail of an event still arriving. So the
guarantees are the relay's: closing this body closes the relay's, which cancels its
producer and with it the upstream request (llama-server stops generating).

An error, whether llama-server's own ``data: {"error": ...}`` event or the one the relay
owes after a failure (a crash, a drain timeout, shutdown), becomes one
``{"error": "..."}`` line, the last. Otherwise the last line is the ``done: true``
object, written once the relay has let go of the model.

Given the request's body writer, the lines are written as each piece is translated,
from the relay's own loop (``RelayBody``'s ``writer``: no Quart iteration per piece);
only the last line (or the error line the relay owes) is returned. On one of our
connections the writer translates (:class:`TranslatingChunkWriter`), so the stream is
spliced as an OpenAI stream is, and its paced tokens are translated and written by the
relay hub's thread without waking the stream's task.

Keep-alive: NDJSON has no comment line, and a JSON line a client does not expect
would be read as an answer. So the relay's keep-alive is off, and the route holds the
response headers until llama-server answered (through a load, as Ollama does); the
official client has no read timeout.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, final

import attrs

from bodhi_trio._exceptions import UpstreamError
from bodhi_trio._http._chunk_writer import ChunkWriter, TranslatingChunkWriter
from bodhi_trio._http._sse import compact_json

if TYPE_CHECKING:
    from bodhi_trio._http._ollama._responses import StreamTranslator
    from bodhi_trio._http._relay_body import RelayBody

__all__ = ["MAX_EVENT_BYTES", "NDJSON_HEADERS", "NdjsonBody", "error_line", "event_data"]

logger = logging.getLogger("bodhi_trio.ollama")

MAX_EVENT_BYTES = 1024 * 1024
"""The most an unfinished event may hold: a server that never ends its event (no blank
line) would otherwise have its bytes pile up without bound; the stream ends with an
error line instead. An event is parsed whole, which takes up to 30 times its bytes (an
event of ``{},`` alone), so the bound is kept well above llama-server's largest events
(a token with its log-probabilities: kilobytes) and well below what that costs."""

NDJSON_HEADERS: Mapping[str, str] = {
    "Content-Type": "application/x-ndjson",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def error_line(error: object) -> bytes:
    """``{"error": "<text>"}`` and a newline, from an error event's ``error`` (an OpenAI
    error object or a string)."""
    message = error.get("message") if isinstance(error, Mapping) else error
    return (compact_json({"error": str(message or "upstream error")}) + "\n").encode()


def event_data(block: bytes) -> str | None:
    """The data of one SSE event (its ``data:`` lines joined); ``None`` for a block
    without any (a comment)."""
    data = [
        line[5:].removeprefix(" ")
        for line in block.decode(errors="replace").split("\n")
        if line.startswith("data:")
    ]
    return "\n".join(data) if data else None


@final
@attrs.define(eq=False)
class NdjsonBody:
    """Ollama's NDJSON lines from a relayed llama-server stream (see the module docstring).

    Args:
        inner: The relay's body (llama-server's SSE bytes as they arrive).
        translator: Turns each chunk into Ollama objects.
        writer: The request's body writer (``request_body_writer``): the lines are then
            written as they are made, by the relay's loop.
    """

    inner: RelayBody
    translator: StreamTranslator
    writer: Callable[[bytes], Awaitable[None]] | None = None
    _buffer: bytes = b""
    _ended: bool = False

    def __attrs_post_init__(self) -> None:
        write = self.writer
        if write is None:
            return
        if isinstance(write, ChunkWriter):  # one of our connections: the relay splices it
            self.inner.writer = TranslatingChunkWriter(write, self.translate)
            return

        async def write_lines(piece: bytes) -> None:
            if lines := self.translate(piece):
                await write(lines)

        self.inner.writer = write_lines

    def __aiter__(self) -> NdjsonBody:
        return self

    def _events(self, piece: bytes) -> Iterator[str]:
        """Every whole event's data so far; the tail of an unfinished one is kept."""
        self._buffer = (self._buffer + piece).replace(b"\r\n", b"\n")
        *blocks, self._buffer = self._buffer.split(b"\n\n")
        for block in blocks:
            payload = event_data(block)
            if payload is not None and payload != "[DONE]":
                yield payload

    async def __anext__(self) -> bytes:
        """The lines of the next upstream piece that gives any, or the last line.

        Cancellation (the client left): Quart then calls :meth:`aclose`.
        """
        while not self._ended:
            try:
                piece = await self.inner.__anext__()
            except StopAsyncIteration:  # the relay let go of the model
                return self._last_line()
            lines = self.translate(piece)
            if lines:
                return lines
        raise StopAsyncIteration

    def _last_line(self) -> bytes:
        """The ``done: true`` object's line, once the relay's body ended; none when an
        error line, written by the relay's loop as the stream went, was the last.

        Raises:
            StopAsyncIteration: That error line ended the stream.
        """
        if self._ended:
            raise StopAsyncIteration
        self._ended = True
        last = self.translator.last(time.perf_counter_ns())
        return (compact_json(last) + "\n").encode()

    def translate(self, piece: bytes) -> bytes:
        """The lines for the events ``piece`` completes (``b""``: none, or the stream has
        ended). Plain computation: for a stream the relay hub holds, it runs in the hub's
        thread (:class:`TranslatingChunkWriter`)."""
        return b"" if self._ended else self._lines(piece)

    def _lines(self, piece: bytes) -> bytes:
        """The lines for the events ``piece`` completes (``b""``: none); after an error
        event, its line is the last."""
        lines: list[bytes] = []
        for payload in self._events(piece):
            try:
                chunk: Any = json.loads(payload)
            except ValueError:  # an event cut short by a failure: its error follows
                logger.debug("skipped a stream event that is not JSON: %.80r", payload)
                continue
            if not isinstance(chunk, Mapping):
                continue
            if "error" in chunk:
                self._ended = True
                lines.append(error_line(chunk["error"]))
                break
            try:
                lines.extend(self.translator.lines(chunk))
            except UpstreamError as exc:  # past a bound of what the translation keeps
                self._ended = True
                lines.append(error_line(str(exc)))
                break
        if not self._ended and len(self._buffer) > MAX_EVENT_BYTES:
            self._ended = True
            self._buffer = b""
            limit = f"an event of the stream is larger than {MAX_EVENT_BYTES} bytes"
            lines.append(error_line(limit))
        return b"".join(lines)

    async def aclose(self) -> None:
        """Close the relay's body (its producer closes the upstream request). Never blocks."""
        self._ended = True
        await self.inner.aclose()
