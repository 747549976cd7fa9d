"""One llama-server child run as a task of the root nursery, for the scheduler."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from bodhi_trio._core._groups import reraise_unwrapped, sole_exception
from bodhi_trio._exceptions import LlamaServerExitedError

if TYPE_CHECKING:
    from bodhi_trio._core._slot import Launcher, RunningServer
    from bodhi_trio._llama._child import LaunchSpec
    from bodhi_trio._llama._logtail import LogTail

__all__ = ["supervise_child"]

logger = logging.getLogger("bodhi_trio.context")


async def supervise_child(
    launcher: Launcher,
    spec: LaunchSpec,
    log: LogTail,
    on_crash: Callable[[LlamaServerExitedError], None],
    *,
    task_status: trio.TaskStatus[tuple[RunningServer, trio.CancelScope, trio.Event]],
) -> None:
    """Start a child with ``launcher`` and supervise it until it is stopped or exits.

    Hands back the server, the scope whose cancellation stops it, and an event set
    once it is reaped. A failure before the child is ready is raised (to the load
    that started it); an exit after that is reported to ``on_crash``.

    Cancellation: cancelling the scope handed back is how the child is stopped; the
    task ends once the child is reaped.
    """
    scope, finished = trio.CancelScope(), trio.Event()
    started = False
    try:
        with scope:
            async with trio.open_nursery() as supervision:
                server = await supervision.start(launcher, spec, log)
                started = True
                task_status.started((server, scope, finished))
    except BaseExceptionGroup as group:
        error = sole_exception(group)
        if error is None or not started or not isinstance(error, Exception):
            reraise_unwrapped(error or group)
        if isinstance(error, LlamaServerExitedError):
            on_crash(error)
        else:
            logger.error("llama-server supervision failed", exc_info=error)
            on_crash(LlamaServerExitedError(-1, [repr(error)]))
    finally:
        finished.set()
