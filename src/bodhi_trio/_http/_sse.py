"""Server-Sent Events: framing, keep-alive, events we generate, and request scopes.

- :class:`DirectStream` frames events we generate (state events, followed
  logs): the seed's DirectSse / DirectEvent. Relayed completions (the seed's
  RawSSE / ``fwd_sse``) are :mod:`._relay`'s.
- :func:`request_scope` is one HTTP request's lifetime: the bodies it must close
  at its end.

Streams send ``: keep-alive`` after ``BODHI_SSE_KEEPALIVE_SECS`` without bytes,
and a failure after the headers is one ``data: {"error": ...}`` event, then the
end. They are async iterators with ``aclose()`` (not async generators): Quart
calls ``aclose()`` when it is done with a body, and nothing is left to the GC.
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

from bodhi_trio._exceptions import BodhiError

__all__ = [
    "KEEPALIVE",
    "SSE_HEADERS",
    "DirectStream",
    "close_with_request",
    "error_event",
    "keepalive_interval",
    "request_scope",
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


def keepalive_interval(keepalive: float) -> float:
    """Seconds to wait for bytes before a keep-alive; ``BODHI_SSE_KEEPALIVE_SECS`` 0 is never."""
    return keepalive if keepalive > 0 else math.inf


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
        with trio.move_on_after(keepalive_interval(self.keepalive)) as idle:
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
