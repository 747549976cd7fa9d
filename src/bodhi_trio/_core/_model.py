"""One model's place in the context: its lock, its child, its readers, its timers.

A :class:`ModelSlot` exists from the moment a load of its alias is admitted
until the model is stopped (an eviction, a stop, an idle unload) or its end is
reported (a crash, a hang or a failed start stay visible, with their error, until
the alias loads again). Everything about one model lives here, so a request for a
loaded model never waits for another model's load, swap or drain: it touches
only its own slot's lock.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import attrs
import trio

from bodhi_trio._core._rwlock import RWLock
from bodhi_trio._core._state import ModelState, SlotStatus

if TYPE_CHECKING:
    from bodhi_trio._config._aliases import Alias
    from bodhi_trio._core._slot import Slot
    from bodhi_trio._exceptions import BodhiError
    from bodhi_trio._llama._logtail import LogTail

__all__ = ["ModelSlot"]

# Statuses of a model that holds (or is about to hold) a child: they count against
# BODHI_MAX_LOADED_MODELS and the memory budget.
RESIDENT = frozenset({SlotStatus.LOADING, SlotStatus.READY, SlotStatus.STOPPING})


@attrs.define(eq=False)
class ModelSlot:
    """One model (see the module docstring). Owned and mutated by the scheduler only.

    Attributes:
        alias: The alias it serves.
        log: Its child's output (its own ring and file, mirrored into the combined one).
        keep_alive: Seconds of idleness before it is unloaded (negative: never). The alias's
            own (or the default) until a request overrides it (:meth:`set_keep_alive`).
        lock: Writer-preferring: responses hold the read side, load/stop/evict the write.
        status: Where it is in its lifecycle.
        child: The running child, once started.
        readers: The cancel scopes of the responses holding it.
        in_flight: How many responses hold it.
        memory: Bytes it is counted for: the estimate, then the child's measured RSS.
        error: Why its last run ended badly, if it did.
        idle_since: Trio time in_flight last dropped to 0.
        keep_alive_changed: Set when a request changes the keep-alive (a fresh event
            after each): the idle unloader's due time moved.
        idle_scope: Its idle unloader's scope (cancelled when it stops).
        since: Wall-clock time of the last status change.
        last_used: Wall-clock time a response last began or ended (the LRU order).
    """

    alias: Alias
    log: LogTail
    keep_alive: float
    lock: RWLock = attrs.field(factory=RWLock)
    status: SlotStatus = SlotStatus.LOADING
    child: Slot | None = None
    readers: set[trio.CancelScope] = attrs.field(factory=set)
    in_flight: int = 0
    memory: int | None = None
    error: str | None = None
    interruption: BodhiError | None = None
    idle_since: float = attrs.field(factory=trio.current_time)
    keep_alive_changed: trio.Event = attrs.field(factory=trio.Event)
    idle_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    since: float = attrs.field(factory=time.time)
    last_used: float = attrs.field(factory=time.time)

    @property
    def name(self) -> str:
        return self.alias.alias

    @property
    def resident(self) -> bool:
        """Whether it holds, or is about to hold, a child (it counts against the limits)."""
        return self.status in RESIDENT

    @property
    def ready(self) -> bool:
        return self.status is SlotStatus.READY and self.child is not None

    def set_status(self, status: SlotStatus, *, error: str | None = None) -> None:
        if status is not self.status:
            self.since = time.time()
        self.status = status
        self.error = error

    def interrupt(self, error: BodhiError) -> None:
        """End every response holding it with ``error`` (the first reason given wins)."""
        if self.interruption is None:
            self.interruption = error
        for reader in self.readers:
            reader.cancel()

    def set_keep_alive(self, seconds: float) -> None:
        """A request's keep-alive (negative: never unload); wakes the idle unloader if it
        changed."""
        if seconds != self.keep_alive:
            self.keep_alive = seconds
            self.keep_alive_changed.set()
            self.keep_alive_changed = trio.Event()

    def count_reader(self, delta: int) -> None:
        self.in_flight += delta
        self.last_used = time.time()
        if self.in_flight == 0:
            self.idle_since = trio.current_time()

    def snapshot(self, *, queued: int) -> ModelState:
        expires_at = None
        if self.ready and self.in_flight == 0 and self.keep_alive >= 0:
            expires_at = self.last_used + self.keep_alive
        return ModelState(
            alias=self.name,
            status=self.status,
            pid=self.child.server.pid if self.child is not None and self.ready else None,
            in_flight=self.in_flight,
            queued=queued,
            since=self.since,
            last_used=self.last_used,
            expires_at=expires_at,
            memory=self.memory if self.resident else None,
            error=self.error,
            keep_alive=self.keep_alive,
        )
