"""The body of a streamed completion: llama-server's bytes written to the client.

:class:`RelayBody` is the third party of a :class:`~bodhi_trio._http._relay.Relay` (the module
docstring there says who does what): iterated once the headers are sent, it sends keep-alive
comments while the model still loads, then reads the upstream response itself and returns
each piece as it arrives; given the request's body writer, it writes the pieces itself,
from a task of its own after the first (:meth:`RelayBody._pump`, :meth:`RelayBody._splice`).
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, final

import attrs
import trio

from bodhi_trio._exceptions import BodhiError
from bodhi_trio._http._chunk_writer import ChunkWriter, TranslatingChunkWriter
from bodhi_trio._http._sse import KEEPALIVE, keepalive_interval
from bodhi_trio._http._usage import note_usage
from bodhi_trio._transport._loopback import HTTPResponse

if TYPE_CHECKING:
    from bodhi_trio._http._relay import Relay
    from bodhi_trio._transport._relay_hub import RelayHub

__all__ = ["RelayBody"]

logger = logging.getLogger("bodhi_trio.relay")

# How long the body waits for the producer to let go of the slot after the last
# byte (it returns the connection to the pool or closes it: bounded by the close).
_RELEASE_WAIT = 5.0


@final
@attrs.define(eq=False)
class RelayBody:
    """The body of a streamed completion (see the module docstring).

    Args:
        relay: The shared state.
        prime: Start with a ``: keep-alive`` (the early answer while the model loads).
        writer: The request's body writer (``request_body_writer``), or one that
            translates each piece (Ollama's): the pieces are then written with it, not
            returned (only the owed error event is). It must not be cut by a cancellation.
        hub: Where a spliced response's paced tokens are relayed (:meth:`_splice`), if
            the server runs one.
    """

    relay: Relay
    prime: bool = False
    writer: Callable[[bytes], Awaitable[None]] | None = None
    hub: RelayHub | None = None
    _pieces: AsyncIterator[bytes] | None = None
    # the last pieces, where the usage and timings are (read once, at the end)
    _recent: collections.deque[bytes] = attrs.field(factory=lambda: collections.deque(maxlen=3))
    _read_error: BodhiError | None = None
    _write_error: Exception | None = None  # a failure of the writer _pump was given
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

        The first piece is written from the request's task; the rest from a task of its
        own, whose wake-ups resume 6 coroutine frames instead of the request's 16 (see
        :meth:`_splice`). A response of our own client written to one of our connections
        goes :meth:`_splice`'s way.

        Cancellation (the client left): raised from the read (out of the nursery, inside a
        ``BaseExceptionGroup``: catch it only as the cancel scope does); the route then
        closes the body.

        Raises:
            Exception: What ``write`` raised (the translating writers' own failures), as
                it is: kept by :meth:`_write_pieces`, not left to the nursery's group.
        """
        if isinstance(pieces, HTTPResponse) and isinstance(
            write, ChunkWriter | TranslatingChunkWriter
        ):
            await self._splice(pieces, write)
            return
        if await self._write_pieces(pieces, write, first_only=True):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_pieces, pieces, write)
        if self._write_error is not None:
            raise self._write_error

    async def _write_pieces(
        self,
        pieces: AsyncIterator[bytes],
        write: Callable[[bytes], Awaitable[None]],
        *,
        first_only: bool = False,
    ) -> bool:
        """:meth:`_pump`'s loop: returns ``False`` once the body ended or broke (a failure
        of ``write`` kept in ``_write_error``), ``True`` after the first piece if
        ``first_only``.

        One cancel scope serves the reads of a whole interval: its deadline is the last
        write's time plus the interval, and only when it fires is the time looked at
        again (a piece came meanwhile: a new scope to that piece's deadline; none: a
        keep-alive). Moving a deadline per read cost ten times the clock read that
        replaces it. The scope can only fire in a read, since ``write`` never yields to
        a cancellation, and a cancelled read loses no byte.
        """
        interval = keepalive_interval(self.relay.keepalive)
        now = trio.lowlevel.current_clock().current_time  # one call, not trio.current_time's three
        written = now()
        try:
            while True:
                with trio.CancelScope(deadline=written + interval):
                    while True:
                        piece = await self._next_piece(pieces)
                        if piece is None:
                            return False
                        await write(piece)
                        if first_only:
                            return True
                        written = now()
                if now() - written < interval:
                    continue  # not silent for a whole interval: wait on
                if not self._mid_event:  # a comment inside an event would corrupt it
                    await write(KEEPALIVE)
                written = now()
        except Exception as exc:  # the writer's (a read error is kept by _next_piece)
            self._write_error = exc
            return False

    async def _splice(
        self, response: HTTPResponse, writer: ChunkWriter | TranslatingChunkWriter
    ) -> None:
        """:meth:`_pump` for a llama-server response written to one of our connections:
        what came with its head is written at once, then the response writes itself
        (:meth:`HTTPResponse.relay_to`, a read and a write per token; its paced tokens by
        the ``hub``, if given) in a task of its own.

        That task is this relay's alone and ends with the body: it exists because every
        wake-up of a task resumes each coroutine frame between the task's root and the
        wait, and the request's task waits under the server's, the app's and the route's
        frames (16 in all, against 6 in a task of its own: measured, ~4 µs a token at
        256 streams). The bytes that came with the head (a stream's first event, as a
        rule) are written before it starts, so its first scheduling never delays them.

        Cancellation (the client left): raised from the read, in both tasks (out of the
        nursery, inside a ``BaseExceptionGroup``); the route then closes the body.
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

    async def _relay_rest(
        self, response: HTTPResponse, writer: ChunkWriter | TranslatingChunkWriter
    ) -> None:
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
                    await response.relay_to(writer, self.hub)
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
