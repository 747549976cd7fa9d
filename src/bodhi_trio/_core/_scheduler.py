"""The scheduler: several models at once, each with its own lock, child and timers.

Who owns what (all long-lived tasks live in the context's root nursery)::

    root nursery
        ├── child tasks       one per resident model: supervise_child → serve_llama_server
        ├── child watches     one per resident model: health, stalled reads, measured RSS
        ├── idle unloaders    one per resident model: its keep-alive after its last response
        ├── load tasks        one per alias being loaded (single flight; outlive their waiters)
        └── listener tasks    (ListenerHub) one per state listener

Each model (:class:`ModelSlot`) has its own writer-preferring RW lock. A response
holds the read side of its model until its last byte or until its client leaves
(:meth:`Scheduler.serving`); load, eviction, stop, variant change and idle unload
take that model's write side, waiting for its in-flight responses up to the drain
timeout, then ending the rest with :class:`ResponseInterruptedError`. A request
for a loaded model touches only that model's lock.

Admission decides who loads (:mod:`._admission`): at most ``max_loaded`` models
and the memory budget; to make room the least recently used idle model is
evicted; if none is idle, the load waits (one admission at a time, in order) for
one to become idle, up to the drain timeout, then evicts the least recently used
anyway. Each model admits at most ``max_queue`` requests (in flight or waiting);
the next gets :class:`ServerBusyError` at once.

A request for an alias that is not loaded joins (or starts) that alias's load
task and waits without holding any lock. When the child is ready, the task turns
its write hold into one read hold per waiting request (:meth:`WriteHold.downgrade`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, final

import trio

from bodhi_trio._core._admission import Admission, Limits
from bodhi_trio._core._children import start_load
from bodhi_trio._core._published import PublishedState
from bodhi_trio._core._slot import PendingLoad, Slot, Ticket
from bodhi_trio._core._state import EventKind, ServerEvent, ServerState, SlotStatus
from bodhi_trio._exceptions import (
    ResponseInterruptedError,
    ServerBusyError,
    UnavailableError,
)

if TYPE_CHECKING:
    from bodhi_trio._config._aliases import Alias
    from bodhi_trio._core._address import Address
    from bodhi_trio._core._listeners import ListenerHub
    from bodhi_trio._core._model import ModelSlot
    from bodhi_trio._core._rwlock import RWLockStatistics
    from bodhi_trio._core._slot import Launcher, SpecBuilder
    from bodhi_trio._llama._child import LaunchSpec
    from bodhi_trio._llama._logtail import LogTail
    from bodhi_trio._transport._loopback import Sender

__all__ = ["Limits", "Scheduler"]

logger = logging.getLogger("bodhi_trio.context")

_SHUTDOWN_BOUND = 30.0
_READERS_LEAVE_BOUND = 1.0


@final
class Scheduler:
    """Every model of one context: loads, admission, eviction, crashes, idle unload.

    Internal to :class:`SharedContext`, which adds aliases, requests and listeners.
    """

    def __init__(
        self,
        limits: Limits,
        variant: str,
        nursery: trio.Nursery,
        sender: Sender,
        hub: ListenerHub,
        *,
        launcher: Launcher,
        spec_builder: SpecBuilder,
        log_for: Callable[[str], LogTail],
        estimate: Callable[[LaunchSpec], Awaitable[int | None]] | None = None,
        measure: Callable[[int], int | None] | None = None,
    ) -> None:
        self._limits = limits
        self._variant = variant
        self._nursery = nursery
        self._sender = sender
        self._hub = hub
        self._launcher = launcher
        self._build_spec = spec_builder
        self._new_log = log_for
        self._estimate = estimate
        self._measure = measure
        self._models: dict[str, ModelSlot] = {}
        self._logs: dict[str, LogTail] = {}
        self._pending: dict[str, PendingLoad] = {}
        self._admitted: dict[str, int] = {}  # requests per alias: in flight or waiting
        self._admission = Admission(self)
        self._state = PublishedState(
            ServerState(variant, (), limits.memory_budget, 0), self._current_state
        )
        self._seq = 0
        self._starts = 0
        self._closed = False

    # ------------------------------------------------------------------ observing

    @property
    def state(self) -> ServerState:
        return self._state.value

    @property
    def variant(self) -> str:
        return self._variant

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def starts(self) -> int:
        """How many children were started."""
        return self._starts

    def pending_loads(self) -> tuple[str, ...]:
        return tuple(self._pending)

    def lock_statistics(self) -> dict[str, RWLockStatistics]:
        return {name: model.lock.statistics() for name, model in self._models.items()}

    async def wait_state(self, predicate: Callable[[ServerState], bool]) -> ServerState:
        """Wait until ``predicate(state)`` holds and return that state. Cancellation: safe."""
        return await self._state.wait_value(predicate)

    def child_address(self, alias: str | None = None) -> Address | None:
        """The address of ``alias``'s ready child (``None``: of the only ready one)."""
        ready = [m for m in self._models.values() if m.ready]
        if alias is not None:
            ready = [m for m in ready if m.name == alias]
        if len(ready) != 1 or ready[0].child is None:
            return None
        return ready[0].child.server.address

    def is_loaded(self, alias: str | None = None) -> bool:
        """Whether ``alias`` (``None``: any model) has a usable child."""
        return any(m.ready for m in self._models.values() if alias is None or m.name == alias)

    def log_for(self, alias: str, *, made: bool = False) -> LogTail | None:
        """The output of ``alias``'s children, if it ever started one; with ``made``, made
        now if not (empty until it starts one: the log a follower waits on)."""
        return self._log_for(alias) if made else self._logs.get(alias)

    # ------------------------------------------------------------------ control

    async def stop(self, alias: str | None = None) -> None:
        """Stop ``alias`` (``None``: every model), draining in-flight responses first."""
        self.check_open()
        for model in list(self._models.values()):
            if alias is not None and model.name != alias:
                continue
            if model.resident:
                await self.evict(model, "stop requested", patience=self._limits.drain_timeout)
            elif self._models.get(model.name) is model:
                del self._models[model.name]  # a crashed or failed entry: forget it
                self._publish()

    async def switch_variant(self, variant: str, limits: Limits) -> None:
        """Make ``variant`` current, with its ``limits`` (a memory budget can depend on the
        variant); every loaded model restarts on it (drained first) and is admitted again
        under them.

        Raises:
            BodhiError: A restart failed, or the model no longer fits (the variant stays
                switched; that model is stopped).
        """
        self.check_open()
        if variant == self._variant:
            return
        async with self._admission.turn():
            previous, self._variant = self._variant, variant
            self._limits = limits
            self._publish()
            self.emit(EventKind.VARIANT, None, previous=previous)
            loaded = [m for m in self._models.values() if m.resident]
            for model in loaded:
                reason = f"variant change to {variant}"
                await self.evict(model, reason, patience=self._limits.drain_timeout)
        loads = [self._pending.get(m.name) or self._start_load(m.alias) for m in loaded]
        for pending in loads:
            await pending.done.wait()
        for pending in loads:
            if pending.error is not None:
                raise pending.error

    # ------------------------------------------------------------------ the read side

    @asynccontextmanager
    async def serving(
        self, alias: Alias, *, keep_alive: float | None = None
    ) -> AsyncIterator[Slot]:
        """Hold the read side of ``alias``'s model for the block, loading it if needed.

        Args:
            alias: The model's alias.
            keep_alive: Seconds the model stays loaded once idle after this request
                (negative: never; 0: unloaded right after it). It stays in force for the
                model until a later request sets another; ``None`` restores the alias's
                own (or ``BODHI_KEEP_ALIVE_SECS``), as Ollama's server default does.

        Raises:
            ServerBusyError: ``max_queue`` requests for it are admitted already (429).
            BodhiError: Its load failed, or (:class:`ResponseInterruptedError`) the block
                was interrupted by a drain timeout, a crash, a hang or shutdown.
        """
        name = alias.alias
        admitted = self._admitted.get(name, 0)
        if admitted >= self._limits.max_queue:
            raise ServerBusyError(
                f"{name!r} has {admitted} requests in flight or waiting (BODHI_MAX_QUEUE);"
                " retry shortly",
                retry_after=1,
            )
        self._admitted[name] = admitted + 1
        try:
            model = await self._hold_read_for(alias)
            # Set while holding it: the idle unloader reads it once in_flight drops to 0.
            model.set_keep_alive(self._keep_alive_for(alias) if keep_alive is None else keep_alive)
            reader = trio.CancelScope()
            model.readers.add(reader)
            model.count_reader(+1)
            self._publish()
            try:
                with reader:
                    assert model.child is not None
                    yield model.child
            finally:
                model.readers.discard(reader)
                await model.lock.release_read()
                # Count the reader out only once its hold is back: whoever sees in_flight
                # drop to 0 (an idle unloader) can then take the write side at once.
                model.count_reader(-1)
        finally:
            left = self._admitted[name] - 1
            if left:
                self._admitted[name] = left
            else:
                del self._admitted[name]
            self._publish()
        if reader.cancelled_caught:
            raise model.interruption or ResponseInterruptedError("the response was interrupted")

    def waiting(self, name: str) -> int:
        """Requests admitted for ``name`` that do not hold it yet."""
        model = self._models.get(name)
        in_flight = model.in_flight if model is not None else 0
        return self._admitted.get(name, 0) - in_flight

    async def _hold_read_for(self, alias: Alias) -> ModelSlot:
        """A read hold on a ready model serving ``alias``, loading it if needed."""
        name = alias.alias
        while True:
            self.check_open()
            model = self._models.get(name)
            if model is not None and model.ready:
                await model.lock.acquire_read()
                if model.ready and self._models.get(name) is model:
                    return model
                await model.lock.release_read()  # it stopped while we queued: again
                continue
            pending = self._pending.get(name) or self._start_load(alias)
            ticket = Ticket()
            pending.tickets.append(ticket)
            try:
                await pending.done.wait()
            except BaseException:
                if ticket.granted and pending.model is not None:
                    await pending.model.lock.release_read()
                ticket.abandoned = True
                raise
            granted = pending.model if ticket.granted else None
            if pending.error is not None:
                if granted is not None:  # the load finished, then close() marked it failed
                    await granted.lock.release_read()
                raise pending.error
            if granted is None:
                continue
            if granted.ready and self._models.get(name) is granted:
                return granted
            await granted.lock.release_read()  # it crashed between the grant and now

    # ------------------------------------------------------------------ loads

    def _start_load(self, alias: Alias) -> PendingLoad:
        return start_load(self, alias)

    # ------------------------------------------------------------------ the write side

    async def evict(self, model: ModelSlot, reason: str, *, patience: float) -> None:
        """Stop ``model`` under its write side: in-flight responses get ``patience``
        seconds, then end with an error. Shielded once the write side is held."""

        def interrupt() -> None:
            model.interrupt(
                ResponseInterruptedError(
                    f"{reason}: the response outlasted the drain timeout"
                    f" ({self._limits.drain_timeout:g} s) and was ended"
                )
            )

        async with model.lock.write(patience=patience, on_impatience=interrupt):
            await self.stop_model(model, reason)

    async def stop_model(self, model: ModelSlot, reason: str) -> None:
        """Stop ``model``'s child and forget it (its write side held). Shielded, bounded
        by the child's stop grace (TERM, grace, KILL, reap)."""
        child = model.child
        if self._models.get(model.name) is not model or child is None or not model.resident:
            return
        model.set_status(SlotStatus.STOPPING)
        child.watch.cancel()
        model.idle_scope.cancel()
        self._publish()
        with trio.CancelScope(shield=True):
            # Idle keep-alive connections would hold llama-server's HTTP threads (and
            # so its exit) until its keep-alive timeout.
            await self._sender.close_idle(child.server.address)
            child.scope.cancel()
            await child.finished.wait()
        if self._models.get(model.name) is model:
            del self._models[model.name]
        model.set_status(SlotStatus.STOPPED)
        self._publish()
        self.emit(EventKind.STOP, model.name, pid=child.server.pid, reason=reason)
        logger.debug("stopped %s (%s)", model.name, reason)  # the console's line: the event's

    async def unload_when_idle(self, name: str, *, patience: float) -> None:
        """Make ``name`` unload once its in-flight responses ended (keep-alive 0: the idle
        unloader's way; none is interrupted, and a later request's keep-alive overrides
        it); return once it is gone, or after ``patience`` seconds. Not loaded: nothing.
        """
        model = self._models.get(name)
        if model is None or not model.resident:
            return
        model.set_keep_alive(0)
        with trio.move_on_after(patience):
            await self.wait_until(lambda: self._models.get(name) is not model)

    # ------------------------------------------------------------------ waiting

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, checking it at every published change."""
        await self._state.wait_until(predicate)

    # ------------------------------------------------------------------ plumbing

    def models(self) -> list[ModelSlot]:
        return list(self._models.values())

    def _log_for(self, name: str) -> LogTail:
        log = self._logs.get(name)
        if log is None:
            log = self._logs[name] = self._new_log(name)
        return log

    def _keep_alive_for(self, alias: Alias) -> float:
        own = alias.keep_alive_secs
        return own if own is not None else self._limits.keep_alive

    @property
    def changed(self) -> trio.Event:
        """Set at the next published change (a fresh event after each)."""
        return self._state.changed

    def _publish(self) -> None:
        self._state.publish()

    def _current_state(self) -> ServerState:
        snapshots = tuple(
            model.snapshot(queued=self.waiting(name))
            for name, model in sorted(self._models.items())
        )
        used = sum(m.memory or 0 for m in self._models.values() if m.resident)
        return ServerState(self._variant, snapshots, self._limits.memory_budget, used)

    def emit(self, kind: EventKind, alias: str | None, **detail: object) -> None:
        self._seq += 1
        self._hub.notify(ServerEvent(kind, alias, self._variant, dict(detail), self._seq))

    def check_open(self) -> None:
        if self._closed:
            raise UnavailableError("bodhi-trio is shutting down", retry_after=5)

    async def close(self) -> None:
        """Stop everything: in-flight responses end with an error, every child stops.

        Returns once every child is reaped. Idempotent.

        Cancellation: the stop is shielded and bounded by the children's stop grace.
        """
        if self._closed:
            return
        self._closed = True
        for model in self._models.values():
            model.interrupt(ResponseInterruptedError("bodhi-trio is shutting down"))
        for pending in self._pending.values():
            pending.error = UnavailableError("bodhi-trio is shutting down", retry_after=5)
        with trio.move_on_after(_SHUTDOWN_BOUND, shield=True):
            # Let the interrupted responses close their upstream connections first:
            # llama-server exits at once on SIGTERM only when none is open.
            with trio.move_on_after(_READERS_LEAVE_BOUND):
                await self.wait_state(lambda state: state.in_flight == 0)
            async with trio.open_nursery() as stopping:
                for model in list(self._models.values()):
                    stopping.start_soon(self.stop_model, model, "shutdown")
