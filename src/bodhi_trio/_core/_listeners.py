"""State-listener fan-out: each listener its own bounded channel and task.

:meth:`ListenerHub.notify` never blocks and never fails: it puts the event into
every listener's channel with ``send_nowait``. A listener that is too slow loses
events (counted in its statistics, never blocking a request). Each listener's
delivery task lives in the context's root nursery.

A listener that raises ``trio.BrokenResourceError`` or ``trio.ClosedResourceError``
says its consumer has left (a ``GET /bodhi/v1/events`` client closed its stream,
and the listener is that stream's ``send``): it is removed with one debug line,
and what was queued for it is dropped. Any other exception is a bug in the
listener: the first is logged with its traceback, later ones are counted
(``failed``) with a warning line every :data:`_FAILURE_LOG_EVERY`, and the
listener keeps receiving. Either way one listener cannot flood the log, which
hundreds of departed event clients with full queues once did (a traceback per
queued event).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import final

import attrs
import trio

from bodhi_trio._core._state import EventKind, ServerEvent

__all__ = ["ListenerHub", "ListenerStatistics", "StateListener"]

logger = logging.getLogger("bodhi_trio.listeners")

_CONSUMER_LEFT = (trio.BrokenResourceError, trio.ClosedResourceError)
_FAILURE_LOG_EVERY = 100
"""After the first failure (with traceback), a warning every this many failures."""

StateListener = Callable[[ServerEvent], Awaitable[None]]
"""An async callable that receives each :class:`ServerEvent` in order."""


@attrs.frozen
class ListenerStatistics:
    """Delivery counters of one listener.

    Attributes:
        name: The listener's name.
        delivered: Events the listener returned from normally.
        dropped: Events lost because its queue was full (too slow).
        failed: Events on which it raised (a consumer that left is no failure:
            the listener is removed instead).
        queued: Events waiting in its queue now.
    """

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
    kinds: frozenset[EventKind] | None = None  # None: every kind
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
        self,
        listener: StateListener,
        *,
        buffer: int = 256,
        name: str | None = None,
        kinds: Collection[EventKind] | None = None,
    ) -> Callable[[], None]:
        """Start delivering events to ``listener``.

        Args:
            listener: Receives each event, one at a time, in order.
            buffer: Events held for a slow listener before new ones are dropped.
            name: For logs and statistics (default: the listener's qualified name).
            kinds: Only events of these kinds (default: every kind). A listener that
                ignores :attr:`EventKind.RESPONSE` should leave it out: it comes with
                every forwarded request, and each delivery wakes the listener's task.

        Returns:
            A function that removes the listener (idempotent); its task ends after
            the events already queued, or at once if the listener reports that its
            consumer has left (see the module docstring).
        """
        send, receive = trio.open_memory_channel[ServerEvent](buffer)
        label = name or str(getattr(listener, "__qualname__", repr(listener)))
        wanted = None if kinds is None else frozenset(kinds)
        subscription = _Subscription(label, listener, send, wanted)
        self._subscriptions.append(subscription)
        self._nursery.start_soon(self._deliver, subscription, receive, name=f"listener:{label}")
        return functools.partial(self._discard, subscription)

    def notify(self, event: ServerEvent) -> None:
        """Queue ``event`` for every listener. Never blocks, never raises."""
        for subscription in tuple(self._subscriptions):
            if subscription.kinds is not None and event.kind not in subscription.kinds:
                continue
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
            except trio.BrokenResourceError:
                # Its delivery task has ended (cancelled at shutdown): nobody will read.
                self._discard(subscription)
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

    def _discard(self, subscription: _Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        subscription.send.close()

    async def _deliver(
        self, subscription: _Subscription, receive: trio.MemoryReceiveChannel[ServerEvent]
    ) -> None:
        try:
            await self._deliver_until_closed(subscription, receive)
        finally:
            # However this task ends (cancelled with the root nursery, too), stop queueing
            # for it: an event sent now would meet a closed receive side.
            self._discard(subscription)

    async def _deliver_until_closed(
        self, subscription: _Subscription, receive: trio.MemoryReceiveChannel[ServerEvent]
    ) -> None:
        async with receive:
            async for event in receive:
                try:
                    await subscription.listener(event)
                except _CONSUMER_LEFT:
                    # Every event still queued would fail the same way: stop here.
                    logger.debug(
                        "state listener %s removed: its consumer has left", subscription.name
                    )
                    return
                except Exception as exc:
                    subscription.failed += 1
                    _log_failure(subscription, event, exc)
                else:
                    subscription.delivered += 1


def _log_failure(subscription: _Subscription, event: ServerEvent, error: Exception) -> None:
    """The first failure with its traceback; then a line every ``_FAILURE_LOG_EVERY``."""
    if subscription.failed == 1:
        logger.error(
            "state listener %s failed on %s (later failures are counted, not logged each)",
            subscription.name,
            event.kind,
            exc_info=error,
        )
    elif subscription.failed % _FAILURE_LOG_EVERY == 0:
        logger.warning(
            "state listener %s has failed %d times; the last on %s: %r",
            subscription.name,
            subscription.failed,
            event.kind,
            error,
        )
