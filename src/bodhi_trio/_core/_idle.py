"""Idle unload: stop the loaded model ``BODHI_KEEP_ALIVE_SECS`` after its last response.

The scheduler's own task, split out of ``_scheduler`` for size; it reads the
scheduler's idle bookkeeping (``_activity``, ``_idle_since``) and takes its lock.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from bodhi_trio._core._scheduler import SlotScheduler

__all__ = ["run_idle_unloader"]

logger = logging.getLogger("bodhi_trio.context")

_IDLE_RETRY = 0.05


async def run_idle_unloader(scheduler: SlotScheduler) -> None:
    """Unload the model ``BODHI_KEEP_ALIVE_SECS`` after its last response ended.

    Never while loading or with a response in flight, and never racing a
    start: the unload takes the write side only if it is free at that very
    moment, and only if nothing happened since the idle period began.
    """
    keep_alive = scheduler._settings.keep_alive_secs
    if keep_alive < 0:
        return
    while True:
        await scheduler._wait_changed_until(
            lambda: (
                scheduler._slot is not None
                and scheduler._slot.usable
                and not scheduler.state.in_flight
            )
        )
        activity = scheduler._activity
        slot = scheduler._slot

        def active_since(seen: int = activity) -> bool:
            return scheduler._activity != seen

        with trio.move_on_at(scheduler._idle_since + keep_alive):
            await scheduler._wait_changed_until(active_since)
            continue
        if scheduler._activity != activity or scheduler._slot is not slot:
            continue
        if not scheduler._lock.try_acquire_write():
            # A load, stop or handover holds it. Their ends publish a state change;
            # a bare lock release does not, hence the short bound on the wait.
            with trio.move_on_after(_IDLE_RETRY):
                await scheduler._changed.wait()
            continue
        try:
            logger.info("unloading %s after %s s idle", slot and slot.alias.alias, keep_alive)
            await scheduler._stop_locked()
        finally:
            await scheduler._lock.release_write()
