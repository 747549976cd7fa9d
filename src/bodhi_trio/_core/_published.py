"""The scheduler's state as others see it: a snapshot, and a wake-up at every change.

A change is published as a note that the snapshot is out of date; the snapshot is built
when someone reads it, or at once while someone waits for one (so no waiter misses a
state that lasted only until the next change). Every request's start and end is a change
(its model's ``in_flight``), and few of those states are ever read: building each one
cost a streamed completion tens of microseconds before its first byte.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, final

import trio
import trio_util

if TYPE_CHECKING:
    from bodhi_trio._core._state import ServerState

__all__ = ["PublishedState"]


@final
class PublishedState:
    """The latest :class:`ServerState`, built by ``build`` when it is needed.

    Args:
        initial: The state before the first change.
        build: Makes the current state (called at most once per change).
    """

    def __init__(self, initial: ServerState, build: Callable[[], ServerState]) -> None:
        self._value = trio_util.AsyncValue(initial)
        self._build = build
        self._stale = False
        self._waiters = 0
        self._changed = trio.Event()

    @property
    def value(self) -> ServerState:
        """The current state."""
        if self._stale:
            self._value.value = self._build()
            self._stale = False  # after the build: one that failed is tried again
        state: ServerState = self._value.value
        return state

    @property
    def changed(self) -> trio.Event:
        """Set at the next change (a fresh event after each)."""
        return self._changed

    def publish(self) -> None:
        """Note a change: wake whoever waits for one."""
        self._stale = True
        if self._waiters:
            self._value.value = self._build()
            self._stale = False
        self._changed.set()
        self._changed = trio.Event()

    async def wait_value(self, predicate: Callable[[ServerState], bool]) -> ServerState:
        """Wait until ``predicate(state)`` holds and return that state. Cancellation: safe."""
        self._waiters += 1
        try:
            _ = self.value  # up to date for the first look
            state: ServerState = await self._value.wait_value(predicate)
        finally:
            self._waiters -= 1
        return state

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, checking it at every change."""
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()
