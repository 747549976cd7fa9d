"""A model's child from load to end: one load task per alias (single flight), from
admission to the read holds handed to the requests that waited for it; and what
ends a child without a stop (a crash, a hang), and its measured memory.

Part of the scheduler, split out for size: these functions read and update the
scheduler's own bookkeeping.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import trio

from bodhi_trio._core._idle import run_idle_unloader
from bodhi_trio._core._model import ModelSlot
from bodhi_trio._core._slot import PendingLoad, Slot
from bodhi_trio._core._state import EventKind, SlotStatus
from bodhi_trio._core._supervision import supervise_child
from bodhi_trio._core._watch import watch_child
from bodhi_trio._exceptions import BodhiError, LlamaServerExitedError, ResponseInterruptedError

if TYPE_CHECKING:
    from bodhi_trio._config._aliases import Alias
    from bodhi_trio._core._scheduler import Scheduler
    from bodhi_trio._llama._child import LaunchSpec

__all__ = ["start_load"]

logger = logging.getLogger("bodhi_trio.context")


def start_load(scheduler: Scheduler, alias: Alias) -> PendingLoad:
    pending = PendingLoad(alias)
    scheduler._pending[alias.alias] = pending
    scheduler._nursery.start_soon(_load_task, scheduler, pending, name=f"load:{alias.alias}")
    return pending


async def _load_task(scheduler: Scheduler, pending: PendingLoad) -> None:
    """Admit, start and hand read holds to the requests waiting for ``pending.alias``."""
    alias = pending.alias
    name = alias.alias
    model: ModelSlot | None = None
    try:
        variant = scheduler._variant
        spec = scheduler._build_spec(alias, variant)
        estimate = await scheduler._estimate(spec) if scheduler._estimate is not None else None
        scheduler._admission.check_fits_alone(name, estimate)
        model = ModelSlot(alias, scheduler._log_for(name), scheduler._keep_alive_for(alias))
        model.memory = estimate
        pending.model = model
        async with model.lock.write() as hold:
            async with scheduler._admission.turn():
                scheduler.check_open()
                if scheduler._variant != variant:  # switched while this load waited its turn
                    spec = scheduler._build_spec(alias, scheduler._variant)
                scheduler._models[name] = model  # replaces a crashed or failed entry
                scheduler._publish()
                scheduler.emit(EventKind.LOADING, name, memory=estimate)
                await scheduler._admission.make_room(model)
            await _start_child(scheduler, model, spec)
            del scheduler._pending[name]  # later requests take the normal path
            tickets = [t for t in pending.tickets if not t.abandoned]
            await hold.downgrade(len(tickets))
            for ticket in tickets:
                if ticket.abandoned:  # its request left while we downgraded
                    await model.lock.release_read()
                else:
                    ticket.granted = True
    except BodhiError as exc:
        pending.error = exc
        _load_failed(scheduler, name, model, exc)
    except Exception as exc:
        logger.exception("loading %s failed unexpectedly", name)
        pending.error = BodhiError(f"loading {name!r} failed: {exc!r}")
        _load_failed(scheduler, name, model, pending.error)
    finally:
        if scheduler._pending.get(name) is pending:
            del scheduler._pending[name]
        pending.done.set()


def _load_failed(
    scheduler: Scheduler, alias: str, model: ModelSlot | None, error: BodhiError
) -> None:
    if model is not None and scheduler._models.get(alias) is model and not model.ready:
        model.set_status(SlotStatus.STOPPED, error=error.message)  # listed with its error
        scheduler._publish()
    scheduler.emit(EventKind.STOP, alias, error=error.message, code=error.code)


async def _start_child(scheduler: Scheduler, model: ModelSlot, spec: LaunchSpec) -> None:
    """Start ``model``'s child (its write side held) and its watch and idle timer."""
    on_crash = functools.partial(_on_crash, scheduler, model)
    started = trio.current_time()  # the load's own time: not its wait for room before
    server, scope, finished = await scheduler._nursery.start(
        supervise_child,
        scheduler._launcher,
        spec,
        model.log,
        on_crash,
        name=f"llama-server:{model.name}",
    )
    model.child = Slot(model.alias, scheduler._variant, spec, server, scope, finished)
    model.interruption = None
    model.set_status(SlotStatus.READY)
    model.count_reader(0)  # the keep-alive counts from now
    scheduler._starts += 1
    scheduler._publish()
    took = round(trio.current_time() - started, 6)
    scheduler.emit(EventKind.START, model.name, pid=server.pid, load_secs=took)
    timeout = scheduler._limits.upstream_idle_timeout
    if timeout > 0:
        scheduler._nursery.start_soon(
            watch_child,
            model.child,
            scheduler._sender,
            timeout,
            functools.partial(_on_hung, scheduler, model),
            functools.partial(_measure_memory, scheduler, model),
            name=f"watch:{model.name}",
        )
    # Even with a keep-alive of "never": a request may set another (Scheduler.serving).
    scheduler._nursery.start_soon(run_idle_unloader, scheduler, model, name=f"idle:{model.name}")


def _on_crash(scheduler: Scheduler, model: ModelSlot, error: LlamaServerExitedError) -> None:
    child = model.child
    if child is None or not model.ready:  # stopping or stopped already: not a crash
        return
    logger.debug("%s: %s", model.name, error.message)  # the console's line: the event's
    model.interrupt(
        ResponseInterruptedError(f"llama-server crashed (exit code {error.returncode})")
    )
    child.watch.cancel()
    model.idle_scope.cancel()
    model.set_status(SlotStatus.CRASHED, error=error.message)
    scheduler._publish()
    scheduler.emit(
        EventKind.CRASHED,
        model.name,
        pid=child.server.pid,
        returncode=error.returncode,
        log_tail=list(error.log_tail),
    )


def _on_hung(scheduler: Scheduler, model: ModelSlot, child: Slot, message: str) -> None:
    """The watch found the child unresponsive: end its responses, kill it.

    The child task then reaps it; the next request for the alias loads a fresh one.
    """
    if model.child is not child or not model.ready:
        return
    logger.debug("%s", message)  # the console's line: the event's
    model.interrupt(ResponseInterruptedError(message))
    model.idle_scope.cancel()
    child.server.kill()  # SIGKILL: a stopped or wedged process ignores SIGTERM
    child.scope.cancel()
    model.set_status(SlotStatus.HUNG, error=message)
    scheduler._publish()
    scheduler.emit(EventKind.HUNG, model.name, pid=child.server.pid, error=message)


def _measure_memory(scheduler: Scheduler, model: ModelSlot) -> None:
    """Count ``model`` for its child's measured RSS from now on (the watch calls it)."""
    if scheduler._measure is None or model.child is None or not model.ready:
        return
    measured = scheduler._measure(model.child.server.pid)
    if measured is not None and measured != model.memory:
        model.memory = measured
        scheduler._publish()
