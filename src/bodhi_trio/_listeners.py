"""State-listener fan-out: each listener its own bounded channel and task.

:meth:`ListenerHub.notify` never blocks and never fails: it puts the event into
every listener's channel with ``send_nowait``. A listener that is too slow loses
events (counted in its statistics, never blocking a request); a listener that
raises is logged and keeps receiving. Each listener's delivery task lives in
the context's root nursery.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import final

import attrs
import trio

from ._state import ServerEvent

__all__ = ["ListenerHub", "ListenerStatistics", "StateListener"]

logger = logging.getLogger("bodhi_trio.listeners")

StateListener = Callable[[ServerEvent], Awaitable[None]]
"""An async callable that receives each :class:`ServerEvent` in order."""


@attrs.frozen
class ListenerStatistics:
    """Delivery counters of one listener."""

    name: str
    delivered: int
    dropped: int
    failed: int
    queued: int


@attrs.define(eq=False)
class _Subscription:
    name: str
    listener: StateListener
    send: trio.MemorySendChannel[ServerEvent]
    delivered: int = 0
    dropped: int = 0
    failed: int = 0


@final
@attrs.define(eq=False)
class ListenerHub:
    """Fans :class:`ServerEvent` out to listeners. See the module docstring.

    Args:
        nursery: Where each listener's delivery task runs (the root nursery).
    """

    _nursery: trio.Nursery
    _subscriptions: list[_Subscription] = attrs.field(factory=list, init=False)

    def add(
        self, listener: StateListener, *, buffer: int = 256, name: str | None = None
    ) -> Callable[[], None]:
        """Start delivering events to ``listener``.

        Args:
            listener: Receives each event, one at a time, in order.
            buffer: Events held for a slow listener before new ones are dropped.
            name: For logs and statistics (default: the listener's qualified name).

        Returns:
            A function that removes the listener; its task ends after the events
            already queued.
        """
        send, receive = trio.open_memory_channel[ServerEvent](buffer)
        label = name or str(getattr(listener, "__qualname__", repr(listener)))
        subscription = _Subscription(label, listener, send)
        self._subscriptions.append(subscription)
        self._nursery.start_soon(self._deliver, subscription, receive, name=f"listener:{label}")

        def remove() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                send.close()

        return remove

    def notify(self, event: ServerEvent) -> None:
        """Queue ``event`` for every listener. Never blocks."""
        for subscription in self._subscriptions:
            try:
                subscription.send.send_nowait(event)
            except trio.WouldBlock:
                subscription.dropped += 1
                if subscription.dropped == 1 or subscription.dropped % 100 == 0:
                    logger.warning(
                        "listener %s is too slow: %d events dropped",
                        subscription.name,
                        subscription.dropped,
                    )
            except trio.ClosedResourceError:
                pass

    def close(self) -> None:
        """Remove every listener; their tasks end after what is queued."""
        for subscription in self._subscriptions:
            subscription.send.close()
        self._subscriptions.clear()

    def statistics(self) -> list[ListenerStatistics]:
        """Counters for each current listener."""
        return [
            ListenerStatistics(
                name=s.name,
                delivered=s.delivered,
                dropped=s.dropped,
                failed=s.failed,
                queued=s.send.statistics().current_buffer_used,
            )
            for s in self._subscriptions
        ]

    @staticmethod
    async def _deliver(
        subscription: _Subscription, receive: trio.MemoryReceiveChannel[ServerEvent]
    ) -> None:
        async with receive:
            async for event in receive:
                try:
                    await subscription.listener(event)
                except Exception:
                    subscription.failed += 1
                    logger.exception(
                        "state listener %s failed on %s", subscription.name, event.kind
                    )
                else:
                    subscription.delivered += 1
