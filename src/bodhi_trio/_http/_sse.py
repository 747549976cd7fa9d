"""Server-Sent Events: framing, keep-alive, and the events we generate.

:class:`DirectStream` frames events we generate (state events, followed logs);
relayed completions are :mod:`._relay`'s, which uses the framing helpers here.
Closing a body its request never iterated is :mod:`._request_scope`'s job.

Streams send ``: keep-alive`` after ``BODHI_SSE_KEEPALIVE_SECS`` without bytes,
and a failure after the headers is one ``data: {"error": ...}`` event, then the
end. They are async iterators with ``aclose()`` (not async generators): Quart
calls ``aclose()`` when it is done with a body, and nothing is left to the GC.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, final

import attrs
import trio

from bodhi_trio._exceptions import BodhiError

__all__ = [
    "KEEPALIVE",
    "SSE_HEADERS",
    "DirectStream",
    "anthropic_error_event",
    "error_event",
    "keepalive_interval",
    "sse_event",
]

KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS: Mapping[str, str] = {
    # The charset matters: without it Python's requests decodes the stream as Latin-1.
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

_T = TypeVar("_T")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_event(payload: str | bytes) -> bytes:
    """One event: a ``data:`` line per payload line, then a blank line."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    # SSE ends a line at CR, LF or CRLF: split on all three, or a CR would start a new field.
    return "".join(f"data: {line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


def compact_json(value: object) -> str:
    """``value`` as JSON without optional whitespace, as every body and event we send is."""
    return json.dumps(value, separators=(",", ":"))


def error_event(error: BodhiError | Mapping[str, Any]) -> bytes:
    """The one ``data: {"error": ...}`` event that ends a failed stream."""
    body = error.to_envelope() if isinstance(error, BodhiError) else {"error": dict(error)}
    return sse_event(compact_json(body))


def anthropic_error_event(error: BodhiError | Mapping[str, Any]) -> bytes:
    """:func:`error_event` as Anthropic's streams end: ``event: error`` and a body of
    ``"type": "error"`` (the Anthropic SDK ignores events without a name)."""
    body = error.to_envelope() if isinstance(error, BodhiError) else {"error": dict(error)}
    return b"event: error\n" + sse_event(compact_json({"type": "error", **body}))


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
