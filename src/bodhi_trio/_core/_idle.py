"""Idle unload: a model stops its keep-alive after its last response ended.

One task per resident model, in the root nursery, cancelled (``idle_scope``) when
the model stops for any other reason. It sleeps until the unload is due (its keep-alive
after in_flight last dropped to 0) and looks again then: a request that came and went
meanwhile moved the due time, one still in flight makes it wait for the model to be
unused. So a busy model's requests never wake it; only a request that changes the
keep-alive does (a negative one never unloads; 0 unloads right after the request).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from bodhi_trio._core._model import ModelSlot
    from bodhi_trio._core._scheduler import Scheduler

__all__ = ["run_idle_unloader"]

_IDLE_RETRY = 0.05


async def run_idle_unloader(scheduler: Scheduler, model: ModelSlot) -> None:
    """Unload ``model`` its keep-alive after its last response ended.

    Never while it loads or has a response in flight or waiting, and never racing a
    start: it takes the write side only if it is free at that very moment, and only
    if no response ended since the unload became due.

    Cancellation: the way it ends when the model stops otherwise.
    """

    def unused() -> bool:
        return model.in_flight == 0 and not scheduler.waiting(model.name)

    with model.idle_scope:
        while True:
            await scheduler.wait_until(unused)
            keep_alive = model.keep_alive if model.keep_alive >= 0 else math.inf
            due = model.idle_since + keep_alive
            if trio.current_time() < due:
                with trio.move_on_at(due):
                    await model.keep_alive_changed.wait()
                continue
            if not model.ready:
                await scheduler.changed.wait()
                continue
            if not model.lock.try_acquire_write():
                # A load, stop or handover holds it. Their ends publish a change; a bare
                # lock release does not, hence the short bound on the wait.
                with trio.move_on_after(_IDLE_RETRY):
                    await scheduler.changed.wait()
                continue
            try:
                await scheduler.stop_model(model, f"idle for {model.keep_alive:g} s")
            finally:
                await model.lock.release_write()
            return
