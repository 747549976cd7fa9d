"""Idle unload: a model stops its keep-alive after its last response ended.

One task per resident model, in the root nursery, cancelled (``idle_scope``) when
the model stops for any other reason. The keep-alive is read each time the model
becomes idle: a request may have changed it (a negative one never unloads).
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
    if nothing happened since the idle period began.

    Cancellation: the way it ends when the model stops otherwise.
    """

    def unused() -> bool:
        return model.in_flight == 0 and not scheduler.waiting(model.name)

    with model.idle_scope:
        while True:
            await scheduler.wait_until(unused)
            activity = model.activity

            def active_since(seen: int = activity) -> bool:
                return model.activity != seen

            # Never (negative): wait for activity all the same; the request that comes
            # may set a keep-alive that does expire.
            keep_alive = model.keep_alive if model.keep_alive >= 0 else math.inf
            with trio.move_on_at(model.idle_since + keep_alive):
                await scheduler.wait_until(active_since)
                continue
            if model.activity != activity or not model.ready:
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
