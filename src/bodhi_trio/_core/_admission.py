"""Admission: which models may be resident together, and who makes room.

One load is admitted at a time (a FIFO :class:`trio.Lock`, so waiting loads are
served in order); the child then starts outside that turn, so loads of models
that fit run concurrently. A model fits when, with it, at most ``max_loaded``
models are resident and the sum of their memory (estimates until loaded, then
measured RSS) stays within the budget. To make room, the least recently used
model with nothing in flight or waiting is evicted; if none is idle, the least
recently used one is: its write side is taken at once, so new requests for it
queue behind the eviction, and the load waits while its responses drain (up to
the drain timeout; the rest then end with an error), unless another model becomes
idle meanwhile, which then goes instead (the drain is given up: nothing is cut). A
model larger than the whole budget is refused at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import trio

from bodhi_trio._core._groups import reraise_unwrapped, sole_exception
from bodhi_trio._exceptions import InsufficientMemoryError

if TYPE_CHECKING:
    from bodhi_trio._core._model import ModelSlot
    from bodhi_trio._core._scheduler import Scheduler

__all__ = ["Admission", "Limits"]


@attrs.frozen
class Limits:
    """The numbers the scheduler works with (the context derives them from settings).

    Attributes:
        max_loaded: Models resident at once (``BODHI_MAX_LOADED_MODELS``).
        max_queue: Requests per model in flight or waiting (``BODHI_MAX_QUEUE``).
        memory_budget: Bytes all resident models may use together; ``None``: no limit.
        drain_timeout: Seconds a stop or eviction waits for in-flight responses.
        keep_alive: Default seconds a model stays loaded after its last response; -1 never.
        upstream_idle_timeout: Seconds of silence before a child counts as hung; 0 off.
    """

    max_loaded: int = 3
    max_queue: int = 512
    memory_budget: int | None = None
    drain_timeout: float = 300.0
    keep_alive: int = 300
    upstream_idle_timeout: float = 120.0


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


@attrs.define(eq=False)
class Admission:
    """Admission for one scheduler (see the module docstring)."""

    _scheduler: Scheduler
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold the one admission turn (FIFO). Cancellation: safe while waiting."""
        async with self._lock:
            yield

    def check_fits_alone(self, name: str, estimate: int | None) -> None:
        """Refuse at once a model that could not fit even with nothing else resident.

        Raises:
            InsufficientMemoryError: Its estimate exceeds the whole budget (503).
        """
        budget = self._scheduler.limits.memory_budget
        if budget is not None and estimate is not None and estimate > budget:
            raise InsufficientMemoryError(
                f"{name!r} needs about {_mib(estimate)} (its estimate), more than the whole"
                f" memory budget of {_mib(budget)} (BODHI_MEMORY_BUDGET)",
                retry_after=60,
            )

    def _fits(self, model: ModelSlot) -> bool:
        limits = self._scheduler.limits
        others = [m for m in self._scheduler.models() if m is not model and m.resident]
        if len(others) >= limits.max_loaded:
            return False
        if limits.memory_budget is None:
            return True
        used = sum(m.memory or 0 for m in others)
        return used + (model.memory or 0) <= limits.memory_budget

    def _victims(self, model: ModelSlot, *, idle_only: bool) -> list[ModelSlot]:
        scheduler = self._scheduler
        candidates = [
            m
            for m in scheduler.models()
            if m is not model
            and m.ready
            and (not idle_only or (m.in_flight == 0 and not scheduler.waiting(m.name)))
        ]
        return sorted(candidates, key=lambda m: m.last_used)

    async def _evict_busy(self, model: ModelSlot, victim: ModelSlot, reason: str) -> None:
        """Evict ``victim``, busy, for ``model``; but should another model become idle
        while ``victim`` drains (or room appear), give the eviction up (its queued requests
        go on) and return, for the caller to look again: that one goes instead, and
        nothing is cut. Once the write side is held, the eviction completes.

        Cancellation: as :meth:`Scheduler.evict`.
        """
        scheduler = self._scheduler

        async def evict(done: trio.CancelScope) -> None:
            await scheduler.evict(victim, reason, patience=scheduler.limits.drain_timeout)
            done.cancel()

        async def watch(done: trio.CancelScope) -> None:
            await scheduler.wait_until(
                lambda: self._fits(model) or bool(self._victims(model, idle_only=True))
            )
            done.cancel()  # only a writer still waiting withdraws (Scheduler.evict)

        try:
            async with trio.open_nursery() as race:
                race.start_soon(evict, race.cancel_scope)
                race.start_soon(watch, race.cancel_scope)
        except BaseExceptionGroup as group:  # what the eviction raised, as it raised it
            if (sole := sole_exception(group)) is None:
                raise
            reraise_unwrapped(sole)

    async def make_room(self, model: ModelSlot) -> None:
        """Evict until ``model`` fits (the admission turn held).

        Raises:
            InsufficientMemoryError: It no longer fits even alone (the budget shrank).

        Cancellation: safe; an eviction in progress completes (it is shielded).
        """
        scheduler = self._scheduler
        patience = scheduler.limits.drain_timeout
        while not self._fits(model):
            scheduler.check_open()
            # the budget may have shrunk since the load was let in (a variant switch): a
            # model over the whole of it would wait here forever, holding the turn
            self.check_fits_alone(model.name, model.memory)
            reason = f"evicted to make room for {model.name!r}"
            if idle := self._victims(model, idle_only=True):
                await scheduler.evict(idle[0], reason, patience=patience)
                continue
            if busy := self._victims(model, idle_only=False):
                # The least recently used: its write side is taken at once (requests for
                # it queue behind the eviction) and its responses get the drain timeout,
                # then end with an error; unless another model becomes idle first.
                await self._evict_busy(model, busy[0], reason)
                continue
            # Nothing evictable (the others are loading or stopping): their own
            # timeouts bound this wait.
            await scheduler.wait_until(
                lambda: self._fits(model) or bool(self._victims(model, idle_only=False))
            )
