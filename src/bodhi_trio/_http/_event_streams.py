"""``GET /bodhi/v1/events``: the open event streams, bounded, each event encoded once.

Every forwarded request is an event (``chat_completions``), and every open stream gets
it: its listener's task wakes, the event is written to its client. Each stream then
costs every request of the server a delivery (measured: ~150 µs), so streams opened
without end (a key holder's, never read) would slow every request down without end:
with 2,000 of them, 329 → 3 requests a second. At most :data:`MAX_EVENT_STREAMS` are
open at once (503 beyond, ``Retry-After``), and an event's JSON is made once, not once
per stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import attrs
import trio

from bodhi_trio._core._state import ServerEvent
from bodhi_trio._exceptions import UnavailableError
from bodhi_trio._http._sse import DirectStream, compact_json

if TYPE_CHECKING:
    from bodhi_trio._context._open import SharedContext

__all__ = ["MAX_EVENT_STREAMS", "EventStreams"]

MAX_EVENT_STREAMS = 64
"""Event streams open at once, at most: a page open in a few tabs, and tools beside it."""


@final
@attrs.define(eq=False)
class EventStreams:
    """The server's open ``/bodhi/v1/events`` streams (see the module docstring).

    Args:
        ctx: Where the events come from.
        limit: Streams open at once, at most.
    """

    ctx: SharedContext
    limit: int = attrs.field(factory=lambda: MAX_EVENT_STREAMS)
    _open: int = attrs.field(default=0, init=False)
    _last: tuple[int, str] = attrs.field(default=(0, ""), init=False)  # seq from 1

    def open(self, keepalive: float) -> DirectStream[ServerEvent]:
        """A new stream of every state change from now on; closing it (``aclose``, which
        the request's end does) removes its listener and its place.

        Raises:
            UnavailableError: :attr:`limit` streams are open (503, retry later).
        """
        if self._open >= self.limit:
            raise UnavailableError(
                f"{self.limit} event streams are open, the most at once: retry later",
                retry_after=5,
            )
        send, receive = trio.open_memory_channel[ServerEvent](0)
        remove = self.ctx.add_state_listener(send.send, buffer=256, name="events-client")
        self._open += 1

        def close() -> None:  # DirectStream calls it once
            self._open -= 1
            remove()

        return DirectStream(receive, self._render, keepalive, on_close=close)

    def _render(self, event: ServerEvent) -> str:
        """The event's JSON, made once for all the streams that write it."""
        seq, text = self._last
        if event.seq != seq:
            text = compact_json(event.to_json())
            self._last = (event.seq, text)
        return text
