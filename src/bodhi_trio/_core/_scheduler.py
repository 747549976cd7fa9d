"""The slot scheduler: the RW lock, loads, swaps, drain, crashes and idle unload.

Who owns what (all long-lived tasks live in the context's root nursery)::

    root nursery
        ├── child task        serve_llama_server(spec)   (one at a time; cancel = stop)
        ├── child watch       health and stalled reads of the loaded child (_watch.py)
        ├── load tasks        one per alias being loaded (single flight; outlive their waiters)
        ├── idle unloader     BODHI_KEEP_ALIVE_SECS after the last response
        └── listener tasks    (ListenerHub) one per state listener

The RW lock guards the slot. A response holds the read side until its last
byte or until its client leaves (:meth:`SlotScheduler.serving`). Load, swap,
stop, variant change and idle unload take the write side; they wait for
in-flight responses up to the drain timeout, then cancel the rest, which end
with :class:`ResponseInterruptedError`.

A request for an alias that is not loaded joins (or starts) that alias's load
task and waits for it without holding the lock. When the load is done, the task
turns its write hold into one read hold for every request still waiting
(:meth:`WriteHold.downgrade`), so those requests are served before any other
swap can get in; every other request re-checks what is loaded once it holds
the lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import attrs
import trio
import trio_util

from bodhi_trio._core._idle import run_idle_unloader
from bodhi_trio._core._rwlock import RWLock, RWLockStatistics
from bodhi_trio._core._slot import (
    Launcher,
    PendingLoad,
    Slot,
    SpecBuilder,
    Ticket,
)
from bodhi_trio._core._state import (
    EventKind,
    ModelLoadStrategy,
    ServerEvent,
    ServerState,
    SlotStatus,
    choose_strategy,
)
from bodhi_trio._core._supervision import supervise_child
from bodhi_trio._core._watch import watch_child
from bodhi_trio._exceptions import (
    BodhiError,
    LlamaServerExitedError,
    ResponseInterruptedError,
    UnavailableError,
)

if TYPE_CHECKING:
    from bodhi_trio._config._aliases import Alias
    from bodhi_trio._config._settings import Settings
    from bodhi_trio._core._address import Address
    from bodhi_trio._core._listeners import ListenerHub
    from bodhi_trio._llama._logtail import LogTail
    from bodhi_trio._transport._loopback import Sender

__all__ = ["SlotScheduler"]

logger = logging.getLogger("bodhi_trio.context")

_SHUTDOWN_BOUND = 30.0
_READERS_LEAVE_BOUND = 1.0


@final
class SlotScheduler:
    """The one model slot: what is loaded, who holds it, loads, swaps, crashes, idle unload.

    Internal to :class:`SharedContext`, which adds aliases, requests and listeners.
    """

    def __init__(
        self,
        settings: Settings,
        nursery: trio.Nursery,
        sender: Sender,
        hub: ListenerHub,
        *,
        launcher: Launcher,
        spec_builder: SpecBuilder,
        log: LogTail,
    ) -> None:
        self._settings = settings
        self._nursery = nursery
        self._sender = sender
        self._hub = hub
        self._launcher = launcher
        self._build_spec = spec_builder
        self._log = log
        self._lock = RWLock()
        self._variant = settings.exec_variant
        self._slot: Slot | None = None
        self._pending: dict[str, PendingLoad] = {}
        self._readers: set[trio.CancelScope] = set()
        self._state = trio_util.AsyncValue(ServerState(SlotStatus.STOPPED, None, self._variant))
        self._seq = 0
        self._starts = 0
        self._closed = False
        # Idle tracking: `_activity` bumps on every read hold taken or given back.
        self._activity = 0
        self._idle_since = trio.current_time()
        self._changed = trio.Event()

    @property
    def state(self) -> ServerState:
        """The slot's current :class:`ServerState`."""
        state: ServerState = self._state.value
        return state

    @property
    def variant(self) -> str:
        return self._variant

    @property
    def starts(self) -> int:
        """How many children were started."""
        return self._starts

    def pending_loads(self) -> tuple[str, ...]:
        return tuple(self._pending)

    def lock_statistics(self) -> RWLockStatistics:
        return self._lock.statistics()

    async def wait_state(self, predicate: Callable[[ServerState], bool]) -> ServerState:
        """Wait until ``predicate(state)`` holds and return that state. Cancellation: safe."""
        state: ServerState = await self._state.wait_value(predicate)
        return state

    @property
    def child_address(self) -> Address | None:
        """The usable loaded child's address, if any."""
        slot = self._slot
        return slot.server.address if slot is not None and slot.usable else None

    def is_loaded(self) -> bool:
        """Whether a usable llama-server is loaded (a crashed one is not)."""
        return self._slot is not None and self._slot.usable

    async def stop(self) -> None:
        """Stop the loaded model, draining in-flight responses first (drain timeout)."""
        self.check_open()
        async with self._write("stop requested"):
            await self._stop_locked()

    async def switch_variant(self, variant: str) -> None:
        """Make ``variant`` current; restart a loaded model on it (write side, drained).

        Switching to the current variant changes nothing.
        """
        self.check_open()
        if variant == self._variant:
            return
        async with self._write(f"variant change to {variant}"):
            previous = self._variant
            self._variant = variant
            self._publish(variant=variant)
            self.emit(EventKind.VARIANT, None, previous=previous)
            slot = self._slot
            if slot is not None:
                await self._stop_locked()
                await self._start_locked(slot.alias)

    # ------------------------------------------------------------------ the read side

    @asynccontextmanager
    async def serving(self, alias: Alias) -> AsyncIterator[Slot]:
        """Hold the read side on a slot serving ``alias`` for the block."""
        slot = await self._hold_read_for(alias)
        reader = trio.CancelScope()
        self._readers.add(reader)
        self._count_reader(+1)
        try:
            with reader:
                yield slot
        finally:
            self._readers.discard(reader)
            await self._lock.release_read()
            # Count the reader out only once its hold is back: whoever sees in_flight
            # drop to 0 (the idle unloader) can then take the write side at once.
            self._count_reader(-1)
        if reader.cancelled_caught:
            raise slot.interruption or ResponseInterruptedError("the response was interrupted")

    async def _hold_read_for(self, alias: Alias) -> Slot:
        """Take a read hold on a usable slot serving ``alias``, loading it if needed."""
        while True:
            self.check_open()
            await self._lock.acquire_read()
            slot = self._slot
            loaded = slot.alias.alias if slot is not None and slot.usable else None
            if choose_strategy(loaded, alias.alias) is ModelLoadStrategy.CONTINUE:
                assert slot is not None
                return slot
            await self._lock.release_read()
            pending = self._pending.get(alias.alias)
            if pending is None:
                pending = self._start_load(alias)
            ticket = Ticket()
            pending.tickets.append(ticket)
            try:
                await pending.done.wait()
            except BaseException:
                if ticket.granted:
                    await self._lock.release_read()
                ticket.abandoned = True
                raise
            if pending.error is not None:
                if ticket.granted:  # the load finished, then close() marked it failed
                    await self._lock.release_read()
                raise pending.error
            if not ticket.granted:
                continue
            slot = self._slot
            if slot is not None and slot.usable and slot.alias.alias == alias.alias:
                return slot
            await self._lock.release_read()  # it crashed between the grant and now: again

    def _count_reader(self, delta: int) -> None:
        in_flight = self.state.in_flight + delta
        self._activity += 1
        if in_flight == 0:
            self._idle_since = trio.current_time()
        self._publish(in_flight=in_flight)

    # ------------------------------------------------------------------ the write side

    @asynccontextmanager
    async def _write(self, reason: str) -> AsyncIterator[Any]:
        """Hold the write side; readers still in after the drain timeout are cancelled."""

        def interrupt() -> None:
            self._interrupt_readers(
                ResponseInterruptedError(
                    f"{reason}: the response outlasted the drain timeout"
                    f" ({self._settings.drain_timeout_secs:g} s) and was ended"
                )
            )

        async with self._lock.write(
            patience=self._settings.drain_timeout_secs, on_impatience=interrupt
        ) as hold:
            yield hold

    def _interrupt_readers(self, error: BodhiError) -> None:
        if self._slot is not None and self._slot.interruption is None:
            self._slot.interruption = error
        for reader in self._readers:
            reader.cancel()

    def _start_load(self, alias: Alias) -> PendingLoad:
        pending = PendingLoad(alias)
        self._pending[alias.alias] = pending
        self._nursery.start_soon(self._load_task, pending, name=f"load:{alias.alias}")
        return pending

    async def _load_task(self, pending: PendingLoad) -> None:
        """Load ``pending.alias`` and hand read holds to the requests waiting for it."""
        name = pending.alias.alias
        try:
            async with self._write(f"swap to {name}") as hold:
                slot = self._slot
                if slot is None or not slot.usable or slot.alias.alias != name:
                    await self._stop_locked()
                    await self._start_locked(pending.alias)
                del self._pending[name]  # later requests take the normal path
                tickets = [t for t in pending.tickets if not t.abandoned]
                await hold.downgrade(len(tickets))
                for ticket in tickets:
                    if ticket.abandoned:  # its request left while we downgraded
                        await self._lock.release_read()
                    else:
                        ticket.granted = True
        except BodhiError as exc:
            pending.error = exc
        except Exception as exc:
            logger.exception("loading %s failed unexpectedly", name)
            pending.error = BodhiError(f"loading {name!r} failed: {exc!r}")
        finally:
            if self._pending.get(name) is pending:
                del self._pending[name]
            pending.done.set()

    async def _start_locked(self, alias: Alias) -> None:
        """Start the child for ``alias`` (write side held, slot empty)."""
        variant = self._variant
        self._publish(status=SlotStatus.LOADING, alias=alias.alias, pid=None, port=None, error=None)
        self.emit(EventKind.LOADING, alias.alias)
        try:
            spec = self._build_spec(alias, variant)
            server, scope, finished = await self._nursery.start(
                supervise_child,
                self._launcher,
                spec,
                self._log,
                self._on_crash,
                name=f"llama-server:{alias.alias}",
            )
        except BodhiError as exc:
            self._publish(status=SlotStatus.STOPPED, alias=None, error=exc.message)
            self.emit(EventKind.STOP, alias.alias, error=exc.message, code=exc.code)
            raise
        slot = Slot(alias, variant, spec, server, scope, finished)
        self._slot = slot
        self._starts += 1
        self._publish(status=SlotStatus.READY, pid=server.pid, port=None)
        self.emit(EventKind.START, alias.alias, pid=server.pid)
        timeout = self._settings.upstream_idle_timeout_secs
        if timeout > 0:
            self._nursery.start_soon(
                watch_child,
                slot,
                self._sender,
                timeout,
                self._on_hung,
                name=f"watch:{alias.alias}",
            )

    async def _stop_locked(self) -> None:
        """Stop the child, if any (write side held, so no reader is in)."""
        slot = self._slot
        if slot is not None:
            await self._stop_slot(slot)

    async def _stop_slot(self, slot: Slot) -> None:
        """Empty the slot and stop its child; returns once the child is reaped.

        Shielded, and bounded by the child's stop grace (TERM, grace, KILL, reap).
        """
        if self._slot is slot:
            self._slot = None
        if slot.usable:
            self._publish(status=SlotStatus.STOPPING)
        slot.usable = False
        slot.watch.cancel()
        with trio.CancelScope(shield=True):
            # Idle keep-alive connections would hold llama-server's HTTP threads (and
            # so its exit) until its keep-alive timeout.
            await self._sender.close_idle(slot.server.address)
            slot.scope.cancel()
            await slot.finished.wait()
        if self.state.status is SlotStatus.STOPPING:
            self._publish(status=SlotStatus.STOPPED, alias=None, pid=None, port=None)
            self.emit(EventKind.STOP, slot.alias.alias, pid=slot.server.pid)

    def _on_crash(self, error: LlamaServerExitedError) -> None:
        slot = self._slot
        if slot is None or not slot.usable:
            return
        logger.error("%s", error.message)
        self._interrupt_readers(
            ResponseInterruptedError(f"llama-server crashed (exit code {error.returncode})")
        )
        slot.usable = False
        slot.watch.cancel()
        self._slot = None
        self._publish(status=SlotStatus.CRASHED, pid=None, port=None, error=error.message)
        self.emit(
            EventKind.CRASHED,
            slot.alias.alias,
            pid=slot.server.pid,
            returncode=error.returncode,
            log_tail=list(error.log_tail),
        )

    def _on_hung(self, slot: Slot, message: str) -> None:
        """The watch found ``slot``'s child unresponsive: end its responses, kill it.

        The child task then reaps it; the next request for the alias loads a fresh one.
        """
        if self._slot is not slot or not slot.usable:
            return
        logger.error("%s", message)
        self._interrupt_readers(ResponseInterruptedError(message))
        slot.usable = False
        self._slot = None
        slot.server.kill()  # SIGKILL: a stopped or wedged process ignores SIGTERM
        slot.scope.cancel()
        self._publish(status=SlotStatus.HUNG, pid=None, port=None, error=message)
        self.emit(EventKind.HUNG, slot.alias.alias, pid=slot.server.pid, error=message)

    # ------------------------------------------------------------------ idle unload

    async def run_idle_unloader(self) -> None:
        """Unload the model ``BODHI_KEEP_ALIVE_SECS`` after its last response ended
        (see :func:`._idle.run_idle_unloader`)."""
        await run_idle_unloader(self)

    async def _wait_changed_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    # ------------------------------------------------------------------ plumbing

    def _publish(self, **changes: Any) -> None:
        current = self.state
        if "status" in changes and changes["status"] is not current.status:
            changes["since"] = time.time()
        self._state.value = attrs.evolve(current, **changes)
        self._changed.set()
        self._changed = trio.Event()

    def emit(self, kind: EventKind, alias: str | None, **detail: object) -> None:
        self._seq += 1
        self._hub.notify(ServerEvent(kind, alias, self._variant, dict(detail), self._seq))

    def check_open(self) -> None:
        if self._closed:
            raise UnavailableError("bodhi-trio is shutting down", retry_after=5)

    async def close(self) -> None:
        """Stop everything: in-flight responses end with an error, the child stops.

        Returns once the child is reaped. Idempotent.

        Cancellation: the stop is shielded and bounded by the child's stop grace.
        """
        if self._closed:
            return
        self._closed = True
        self._interrupt_readers(ResponseInterruptedError("bodhi-trio is shutting down"))
        for pending in self._pending.values():
            pending.error = UnavailableError("bodhi-trio is shutting down", retry_after=5)
        with trio.move_on_after(_SHUTDOWN_BOUND, shield=True):
            # Let the interrupted responses close their upstream connections first:
            # llama-server exits at once on SIGTERM only when none is open.
            with trio.move_on_after(_READERS_LEAVE_BOUND):
                await self.wait_state(lambda state: state.in_flight == 0)
            if self._slot is not None:
                await self._stop_slot(self._slot)
