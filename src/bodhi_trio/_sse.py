"""Server-Sent Events: framing, keep-alive, and the two kinds of streams we send.

- :class:`RelayStream` forwards llama-server's SSE bytes unchanged (the seed's
  RawSSE / ``fwd_sse``). A producer task in the server's nursery runs the
  upstream request and puts items into a small channel; the response body only
  reads that channel. So the producer never raises into Quart's frames (its
  errors are items), the read hold lives in the producer, and a client that
  leaves cancels the producer, which closes the upstream connection at once.
- :class:`DirectStream` frames events we generate (state events, followed
  logs): the seed's DirectSse / DirectEvent.

Both send ``: keep-alive`` after ``BODHI_SSE_KEEPALIVE_SECS`` without bytes, and
a failure after the headers is one ``data: {"error": ...}`` event, then the end.
Both are async iterators with ``aclose()`` (not async generators): Quart calls
``aclose()`` when it is done with a body, and nothing is left to the GC.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Generic, Protocol, TypeVar, final

import attrs
import trio

from ._exceptions import BodhiError

__all__ = [
    "KEEPALIVE",
    "close_with_request",
    "request_scope",
    "SSE_HEADERS",
    "DirectStream",
    "RelayFailure",
    "RelayHead",
    "RelayItem",
    "RelayStream",
    "error_event",
    "sse_event",
]

logger = logging.getLogger("bodhi_trio.sse")

KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS: Mapping[str, str] = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

_T = TypeVar("_T")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class _Closeable(Protocol):
    async def aclose(self) -> None: ...


_request_bodies: contextvars.ContextVar[list[_Closeable] | None] = contextvars.ContextVar(
    "bodhi_trio_request_bodies", default=None
)


def close_with_request(body: _Closeable) -> None:
    """Make sure ``body`` is closed when its HTTP request ends, however it ends.

    A client can leave after the route returned a streaming body but before the
    framework began to iterate it; the framework then never closes the body, and
    its producer would wait forever. :func:`request_scope` closes it instead.
    """
    bodies = _request_bodies.get()
    if bodies is not None:
        bodies.append(body)


@asynccontextmanager
async def request_scope() -> AsyncIterator[None]:
    """One HTTP request's lifetime: bodies registered inside are closed at its end.

    Tasks the request spawns inherit the list (context variables are copied into
    child tasks, and the list object is shared).
    """
    bodies: list[_Closeable] = []
    token = _request_bodies.set(bodies)
    try:
        yield
    finally:
        _request_bodies.reset(token)
        with trio.CancelScope(shield=True):
            for body in bodies:
                await body.aclose()  # idempotent, never blocks


def sse_event(payload: str | bytes) -> bytes:
    """One event: a ``data:`` line per payload line, then a blank line."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    # SSE ends a line at CR, LF or CRLF: split on all three, or a CR would start a new field.
    return "".join(f"data: {line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


def error_event(error: BodhiError | Mapping[str, Any]) -> bytes:
    """The one ``data: {"error": ...}`` event that ends a failed stream."""
    body = error.to_envelope() if isinstance(error, BodhiError) else {"error": dict(error)}
    return sse_event(json.dumps(body, separators=(",", ":")))


@attrs.frozen
class RelayHead:
    """llama-server's status and headers, the first item of a relay."""

    status: int
    headers: Mapping[str, str]


@attrs.frozen
class RelayFailure:
    """The relay failed; the consumer reports ``error`` and ends."""

    error: BodhiError


RelayItem = RelayHead | bytes | RelayFailure


def _interval(keepalive: float) -> float:
    return keepalive if keepalive > 0 else math.inf


@final
@attrs.define(eq=False)
class RelayStream:
    """The body of a streamed completion: upstream bytes, keep-alives, or one error.

    Args:
        receive: Items from the producer (see the module docstring).
        producer: Cancel scope of the producer task; cancelled when the body ends.
        keepalive: Seconds without bytes before a ``: keep-alive`` comment (0: off).
        head_sent: Whether the status line already answered llama-server's (else the
            client got an early 200 while the model loaded, and a non-200 answer
            must become an error event).
        prime: Send a ``: keep-alive`` first (the early answer while loading).
    """

    receive: trio.MemoryReceiveChannel[RelayItem]
    producer: trio.CancelScope
    keepalive: float
    head_sent: bool
    prime: bool = False
    _failed_head: RelayHead | None = None
    _error_body: list[bytes] = attrs.field(factory=list)
    _held: RelayItem | None = None
    _done: bool = False

    def __aiter__(self) -> RelayStream:
        return self

    async def __anext__(self) -> bytes:
        if self.prime:
            self.prime = False
            return KEEPALIVE
        while not self._done:
            try:
                item = await self._next_item()
            except trio.EndOfChannel:
                return self._finish()
            if item is None:
                return KEEPALIVE
            if isinstance(item, bytes):
                if self._failed_head is None:
                    return self._with_queued_bytes(item)
                self._error_body.append(item)
            elif isinstance(item, RelayHead):
                if not self.head_sent and item.status != 200:
                    self._failed_head = item
                self.head_sent = True
            else:
                self._done = True
                return error_event(item.error)
        raise StopAsyncIteration

    async def _next_item(self) -> RelayItem | None:
        """The next item; ``None`` after the keep-alive interval without one.

        The timer (a cancel scope) is only armed when nothing is queued: while
        bytes flow, an item costs no scope and no deadline bookkeeping.
        """
        if self._held is not None:
            item, self._held = self._held, None
            return item
        try:
            return self.receive.receive_nowait()
        except trio.WouldBlock:
            pass
        with trio.move_on_after(_interval(self.keepalive)):
            return await self.receive.receive()
        return None

    def _with_queued_bytes(self, first: bytes) -> bytes:
        """``first`` plus every chunk already queued behind it: one write, not many."""
        parts = [first]
        while True:
            try:
                item = self.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if not isinstance(item, bytes):
                self._held = item
                break
            parts.append(item)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _finish(self) -> bytes:
        """End of the producer's items: the last error event, if any is owed."""
        self._done = True
        if self._failed_head is None:
            raise StopAsyncIteration
        body = b"".join(self._error_body)
        try:
            upstream = json.loads(body)
            error = upstream["error"] if isinstance(upstream.get("error"), dict) else upstream
        except (ValueError, AttributeError):
            error = {"message": body.decode(errors="replace")}
        error.setdefault("type", "upstream_error")
        error.setdefault("code", self._failed_head.status)
        return error_event(error)

    async def aclose(self) -> None:
        """Stop the producer (closing the upstream request) and drop what is queued."""
        self._done = True
        self.producer.cancel()
        self.receive.close()


@final
@attrs.define(eq=False)
class DirectStream(Generic[_T]):
    """An SSE body of events we generate, one ``data:`` event per item.

    Args:
        receive: The items.
        render: Turns an item into the event's payload text.
        keepalive: Seconds without an item before ``: keep-alive`` (0: off).
        on_close: Called once when the body ends (e.g. to remove a listener).
    """

    receive: trio.MemoryReceiveChannel[_T]
    render: Callable[[_T], str]
    keepalive: float
    on_close: Callable[[], None] | None = None
    _closed: bool = False

    def __aiter__(self) -> DirectStream[_T]:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        with trio.move_on_after(_interval(self.keepalive)) as idle:
            try:
                item = await self.receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                await self.aclose()
                raise StopAsyncIteration from None
        if idle.cancelled_caught:
            return KEEPALIVE
        return sse_event(self.render(item))

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.receive.close()
            if self.on_close is not None:
                self.on_close()
