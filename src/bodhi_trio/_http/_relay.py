"""The relay of a streamed completion: llama-server's SSE bytes to the client, unchanged.

Three parties share one :class:`Relay`:

- The **producer** (:func:`relay_upstream`, a task in the server's root nursery)
  holds the slot's read side and the upstream request. It publishes
  llama-server's head (and, if that is not a 200, its whole error body), then
  waits until the body has read the response to its end, or for an
  interruption (a swap's drain timeout, a crash, shutdown): then it closes the
  upstream connection and lets go of the slot at once, even if the client is
  stuck (a client that stopped reading blocks the write, never the slot).
- The **route** waits, up to the keep-alive interval, for that head: a failure
  becomes a proper status; a slow load gets an early 200 instead.
- The **body** (:class:`RelayBody`), iterated once the headers are sent (by the
  completion route, :mod:`._completion_route`, or by Quart for the pass-through and
  the Ollama routes), sends keep-alive comments while the model still loads, then
  reads the upstream response itself and returns each piece as it arrives: one task
  from the upstream read to the client write, nothing queued in between (the relay's
  fast path). Given the request's body writer (``writer``), it writes the pieces
  itself in one loop instead (:meth:`RelayBody._pump`), with one keep-alive scope per
  interval instead of a timeout scope per read, and without the body's iteration and
  the ASGI message per piece in between. At the end it lets the producer release the
  slot, and returns the one error event a failure owes. Its ``aclose`` (the
  iterator's, or the request scope's when nobody got that far) cancels the producer,
  which closes the upstream connection, so llama-server stops generating.

The producer never raises (its errors are recorded for the body), and only the
request's task writes to the client.
"""

from __future__ import annotations

import collections
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from bodhi_trio._exceptions import BodhiError
from bodhi_trio._http._chunk_writer import ChunkWriter
from bodhi_trio._http._sse import KEEPALIVE, error_event, keepalive_interval
from bodhi_trio._http._usage import note_usage
from bodhi_trio._transport._loopback import HTTPResponse

if TYPE_CHECKING:
    from bodhi_trio._transport._loopback import UpstreamResponse

__all__ = [
    "ErrorRenderer",
    "Relay",
    "RelayBody",
    "RelayHead",
    "answered_ok",
    "relay_upstream",
    "start_relay",
]

logger = logging.getLogger("bodhi_trio.relay")

# How long the body waits for the producer to let go of the slot after the last
# byte (it returns the connection to the pool or closes it: bounded by the close).
_RELEASE_WAIT = 5.0


@attrs.frozen
class RelayHead:
    """llama-server's answer: status, headers, and the whole body if it is not a 200."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""


ErrorRenderer = Callable[[BodhiError | Mapping[str, Any]], bytes]
"""Turns a failure into the one SSE event that ends a stream (:func:`._sse.error_event`)."""


def answered_ok(status: int, headers: Mapping[str, str]) -> bool:
    """A completion's rule for what to stream: llama-server's 200 (else its error body)."""
    return status == 200


@final
@attrs.define(eq=False)
class Relay:
    """What the producer, the route and the body of one streamed completion share.

    Args:
        keepalive: Seconds without bytes before a ``: keep-alive`` comment (0: off).
        streams: Given llama-server's status and headers, whether the body streams
            the response (else the producer reads it whole into :attr:`head`).
        render_error: The stream's closing error event (the dialect's shape).
    """

    keepalive: float
    streams: Callable[[int, Mapping[str, str]], bool] = answered_ok
    render_error: ErrorRenderer = error_event
    producer: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    head: RelayHead | None = None
    response: UpstreamResponse | None = None  # a streamed body, for the body to read
    failure: BodhiError | None = None
    early: bool = False  # the client got its 200 before llama-server answered
    answered: trio.Event = attrs.field(factory=trio.Event)  # head or failure known
    done_reading: trio.Event = attrs.field(factory=trio.Event)  # the body is done with it
    finished: trio.Event = attrs.field(factory=trio.Event)  # the producer let go

    def owed_event(self, read_error: BodhiError | None = None) -> bytes | None:
        """The error event the stream must end with, once the producer finished.

        An interruption the producer saw (a swap, a crash, shutdown) wins over the
        broken read it caused.
        """
        if self.failure is not None:
            return self.render_error(self.failure)
        if read_error is not None:
            return self.render_error(read_error)
        head = self.head
        if head is not None and head.status != 200 and self.early:
            try:
                upstream = json.loads(head.body)
                error = upstream["error"] if isinstance(upstream.get("error"), dict) else upstream
            except (ValueError, AttributeError):
                error = {"message": head.body.decode(errors="replace")}
            error.setdefault("type", "upstream_error")
            error.setdefault("code", head.status)
            return self.render_error(error)
        return None


async def relay_upstream(
    forward: AbstractAsyncContextManager[UpstreamResponse], relay: Relay
) -> None:
    """The producer: run the upstream request and hold it while the body reads it.

    Never raises: failures are recorded in ``relay.failure`` for the body.

    Cancellation (``relay.producer``, or an interruption of the slot's read
    hold): leaving ``forward`` closes the upstream connection at once, so
    llama-server stops generating and a read the body is blocked in fails.
    """
    try:
        with relay.producer:
            async with forward as response:
                status, headers = response.status_code, response.headers
                if not relay.streams(status, headers):
                    body = await response.aread()
                    relay.head = RelayHead(status, dict(headers), body)
                    return
                relay.head = RelayHead(status, dict(headers))
                relay.response = response
                relay.answered.set()
                await relay.done_reading.wait()
    except BodhiError as exc:
        relay.failure = exc
    except Exception as exc:
        logger.exception("relaying a completion failed")
        relay.failure = BodhiError(f"internal error: {exc!r}")
    finally:
        relay.answered.set()
        relay.finished.set()


async def start_relay(
    nursery: trio.Nursery,
    forward: AbstractAsyncContextManager[UpstreamResponse],
    keepalive: float,
    *,
    wait: float,
    streams: Callable[[int, Mapping[str, str]], bool] = answered_ok,
    render_error: ErrorRenderer = error_event,
) -> Relay:
    """Start a relay's producer in ``nursery`` and wait up to ``wait`` seconds for
    llama-server's answer (its head, or a failure); the route then decides what to send.

    ``streams`` and ``render_error`` are :class:`Relay`'s.

    Cancellation (the client left while it waited): the producer is cancelled too; a
    load it started still completes.
    """
    relay = Relay(keepalive, streams=streams, render_error=render_error)
    nursery.start_soon(relay_upstream, forward, relay)
    try:
        with trio.move_on_after(wait):
            await relay.answered.wait()
    except BaseException:
        relay.producer.cancel()
        raise
    return relay


@final
@attrs.define(eq=False)
class RelayBody:
    """The body of a streamed completion (see the module docstring).

    Args:
        relay: The shared state.
        prime: Start with a ``: keep-alive`` (the early answer while the model loads).
        writer: The request's body writer (``request_body_writer``): the pieces are then
            written with it, not returned (only the owed error event is). It must not be
            cut by a cancellation. Only for a body that goes to the client unchanged.
    """

    relay: Relay
    prime: bool = False
    writer: Callable[[bytes], Awaitable[None]] | None = None
    _pieces: AsyncIterator[bytes] | None = None
    # the last pieces, where the usage and timings are (read once, at the end)
    _recent: collections.deque[bytes] = attrs.field(factory=lambda: collections.deque(maxlen=3))
    _read_error: BodhiError | None = None
    _mid_event: bool = False  # the last piece did not end with a blank line
    _ended: bool = False

    def __aiter__(self) -> RelayBody:
        return self

    async def __anext__(self) -> bytes:
        """The next piece of llama-server's body as it arrived, a keep-alive, or the
        one error event owed at the end.

        Cancellation (the client left): whoever iterates it then calls :meth:`aclose`.
        """
        if self.prime:
            self.prime = False
            return KEEPALIVE
        relay = self.relay
        interval = keepalive_interval(relay.keepalive)
        while not self._ended:
            if relay.response is not None:
                if self._pieces is None:
                    self._pieces = relay.response.__aiter__()
                    if self.writer is not None:
                        await self._pump(self._pieces, self.writer)
                        return await self._end()
                piece: bytes | None = None
                with trio.move_on_after(interval) as waiting:  # only the wait for bytes
                    piece = await self._next_piece(self._pieces)
                if not waiting.cancelled_caught:
                    return await self._end() if piece is None else piece
                if not self._mid_event:  # a comment inside an event would corrupt it
                    return KEEPALIVE
                continue
            if relay.finished.is_set():
                return await self._end()
            with trio.move_on_after(interval):  # the model is still loading
                await (relay.finished if relay.answered.is_set() else relay.answered).wait()
                continue
            return KEEPALIVE
        raise StopAsyncIteration

    async def _pump(
        self, pieces: AsyncIterator[bytes], write: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """Write every piece of llama-server's body to the client as it arrives, and a
        keep-alive after each interval without bytes, until the body ends or breaks (a
        read error is kept for :meth:`_end`).

        One cancel scope serves the reads of a whole interval: its deadline is the last
        write's time plus the interval, and only when it fires is the time looked at
        again (a piece came meanwhile: a new scope to that piece's deadline; none: a
        keep-alive). Moving a deadline per read cost ten times the clock read that
        replaces it. The scope can only fire in a read, since ``write`` never yields to
        a cancellation, and a cancelled read loses no byte.

        Cancellation (the client left): raised from the read; the route then closes the
        body.
        """
        if isinstance(pieces, HTTPResponse) and isinstance(write, ChunkWriter):
            await self._splice(pieces, write)
            return
        interval = keepalive_interval(self.relay.keepalive)
        now = trio.lowlevel.current_clock().current_time  # one call, not trio.current_time's three
        written = now()
        while True:
            with trio.CancelScope(deadline=written + interval):
                while True:
                    piece = await self._next_piece(pieces)
                    if piece is None:
                        return
                    await write(piece)
                    written = now()
            if now() - written < interval:
                continue  # not silent for a whole interval: wait on
            if not self._mid_event:  # a comment inside an event would corrupt it
                await write(KEEPALIVE)
            written = now()

    async def _splice(self, response: HTTPResponse, writer: ChunkWriter) -> None:
        """:meth:`_pump` for a llama-server response written to one of our connections:
        what came with its head is written at once, then the response writes itself
        (:meth:`HTTPResponse.relay_to`, a read and a write per token) in a task of its own.

        That task is this relay's alone and ends with the body: it exists because every
        wake-up of a task resumes each coroutine frame between the task's root and the
        wait, and the request's task waits under the server's, the app's and the route's
        frames (16 in all, against 6 in a task of its own: measured, ~4 µs a token at
        256 streams). The bytes that came with the head (a stream's first event, as a
        rule) are written before it starts, so its first scheduling never delays them.

        Cancellation (the client left): raised from the read, in both tasks; the route
        then closes the body.
        """
        try:
            await response.relay_arrived(writer)
            if not response.complete:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._relay_rest, response, writer)
        except Exception as exc:  # the framing broke (the writer raises nothing by contract)
            self._broke(exc)
        finally:
            self._recent.extend(response.tail)
            self._mid_event = self._ends_mid_event(response.tail)

    async def _relay_rest(self, response: HTTPResponse, writer: ChunkWriter) -> None:
        """The rest of :meth:`_splice`'s response, in a cancel scope that fires after an
        interval without a piece for the keep-alive. A read error is kept for :meth:`_end`.

        Cancellation (the client left): raised from the read.
        """
        interval = keepalive_interval(self.relay.keepalive)
        now = trio.lowlevel.current_clock().current_time
        kept_alive = -math.inf
        try:
            while True:
                silent_since = max(response.handed_at, kept_alive)
                with trio.CancelScope(deadline=silent_since + interval):
                    await response.relay_to(writer)
                    return
                if now() - max(response.handed_at, kept_alive) < interval:
                    continue  # a piece came meanwhile: wait on
                if not self._ends_mid_event(response.tail):
                    await writer(KEEPALIVE)
                kept_alive = now()
        except Exception as exc:  # the read broke (the writer raises nothing by contract)
            self._broke(exc)

    @staticmethod
    def _ends_mid_event(tail: collections.deque[bytes]) -> bool:
        """Whether the last piece written ended inside an event (no blank line after it)."""
        return bool(tail) and not tail[-1].endswith(b"\n\n")

    async def _next_piece(self, pieces: AsyncIterator[bytes]) -> bytes | None:
        """The next piece of llama-server's body, noted for the keep-alive rule and the
        usage; ``None`` once the body ended or broke (a read error is kept for :meth:`_end`).

        Cancellation: raised; no byte is lost (the next call goes on).
        """
        try:
            piece = await pieces.__anext__()
        except StopAsyncIteration:
            return None
        except Exception as exc:
            self._broke(exc)
            return None
        self._mid_event = not piece.endswith(b"\n\n")
        self._recent.append(piece)
        return piece

    def _broke(self, exc: Exception) -> None:
        """Keep a read error for :meth:`_end` (an unexpected one logged)."""
        if isinstance(exc, BodhiError):  # broke, or the producer was interrupted
            self._read_error = exc
            return
        logger.exception("reading a relayed completion failed", exc_info=exc)
        self._read_error = BodhiError(f"internal error: {exc!r}")

    async def _end(self) -> bytes:
        """Let the producer release the slot (so ``in_flight`` has dropped when the
        client sees the end), then the owed error event, if any."""
        self._ended = True
        relay = self.relay
        relay.done_reading.set()
        note_usage(b"".join(self._recent))
        with trio.move_on_after(_RELEASE_WAIT):
            await relay.finished.wait()
        owed = relay.owed_event(self._read_error)
        if owed is None:
            raise StopAsyncIteration
        # After a piece that ended mid-event, end that event first: glued onto its
        # last line, the error event would not be one.
        return b"\n\n" + owed if self._mid_event else owed

    async def aclose(self) -> None:
        """Stop the producer (closing the upstream request). Never blocks."""
        self._ended = True
        self.relay.producer.cancel()
