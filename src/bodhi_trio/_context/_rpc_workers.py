"""The RPC workers a server starts: one supervised ``rpc-server`` per ``BODHI_RPC_WORKERS`` entry.

An alias's ``--rpc 127.0.0.1:50052,...`` spreads its model's layers over these
workers (llama.cpp's RPC backend). Each worker logs to
``BODHI_HOME/logs/rpc-worker-<port>.log``.

A worker that fails to start makes :func:`open_rpc_workers` fail: a server that
silently ran without the workers its aliases name would fail every load of
those aliases instead. A worker that exits later is restarted, after a delay
that doubles on each quick failure (llama-server children using it fail with it
and are reloaded on the next request, reconnecting to the new worker).

Cancellation: leaving the block, by cancellation or otherwise, stops every
worker (SIGTERM to its process group, the stop grace, then SIGKILL), shielded
and bounded, before it returns.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import attrs
import trio

from bodhi_trio._core._groups import reraise_unwrapped
from bodhi_trio._exceptions import RpcWorkerError
from bodhi_trio._llama._rpc_worker import RpcWorker, serve_rpc_worker
from bodhi_trio._llama._runtime import find_rpc_server

if TYPE_CHECKING:
    from bodhi_trio._config._settings import Settings
    from bodhi_trio._llama._rpc_endpoints import RpcEndpoint

__all__ = ["open_rpc_workers", "rpc_worker_log"]

logger = logging.getLogger("bodhi_trio.rpc_workers")

_FIRST_RESTART_DELAY = 1.0
_MAX_RESTART_DELAY = 60.0
# A worker that ran this long before it exited counts as having worked: the next
# restart waits the first delay again.
_STABLE_AFTER = 300.0


def rpc_worker_log(settings: Settings, port: int) -> Path:
    """The log file of the worker on ``port``."""
    return settings.logs_dir / f"rpc-worker-{port}.log"


@asynccontextmanager
async def open_rpc_workers(
    settings: Settings, *, on_start: Callable[[RpcWorker], None] | None = None
) -> AsyncIterator[tuple[RpcWorker, ...]]:
    """Start every worker of ``settings.rpc_workers``; stop them all when the block exits.

    Args:
        settings: Its ``rpc_workers``, logs and run directories and stop grace are used.
        on_start: Called with each worker whenever it (re)starts.

    Yields:
        The workers as first started, in the order of the setting; empty if there are
        none. (A worker that exits is restarted: its pid then differs from this one.)

    Raises:
        RpcServerNotFoundError: Workers are configured but no ``rpc-server`` is installed.
        RpcWorkerError: A worker did not start; the workers started before it are
            stopped first.
    """
    if not settings.rpc_workers:
        yield ()
        return
    binary = find_rpc_server(settings.exec_variant)
    try:
        async with trio.open_nursery() as nursery:
            workers: list[RpcWorker] = []
            for endpoint in settings.rpc_workers:
                run = functools.partial(_keep_running, binary, endpoint, settings, on_start)
                workers.append(await nursery.start(run))
            try:
                yield tuple(workers)
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The workers' tasks raise only before they report started, and nursery.start
        # hands that back unwrapped: a group here wraps what the caller's block raised.
        if len(group.exceptions) != 1:
            raise
        reraise_unwrapped(group.exceptions[0])


@attrs.define
class _FirstStart:
    """Passes the first start on to the caller's ``nursery.start``; later starts are ours."""

    outer: trio.TaskStatus[RpcWorker]
    on_start: Callable[[RpcWorker], None] | None
    reported: bool = False

    def started(self, value: RpcWorker | None = None) -> None:
        assert value is not None  # serve_rpc_worker always reports its worker
        if not self.reported:
            self.reported = True
            self.outer.started(value)
        if self.on_start is not None:
            self.on_start(value)


async def _keep_running(
    binary: Path,
    endpoint: RpcEndpoint,
    settings: Settings,
    on_start: Callable[[RpcWorker], None] | None,
    *,
    task_status: trio.TaskStatus[RpcWorker] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    first = _FirstStart(task_status, on_start)
    delay = _FIRST_RESTART_DELAY
    while True:
        began = trio.current_time()
        try:
            await serve_rpc_worker(
                binary,
                endpoint.host,
                endpoint.port,
                log=rpc_worker_log(settings, endpoint.port),
                threads=None,
                stop_grace=settings.stop_grace_secs,
                run_dir=settings.run_dir,
                env=settings.child_base_environment(),
                task_status=first,
            )
        except RpcWorkerError as exc:
            if not first.reported:
                raise
            if trio.current_time() - began >= _STABLE_AFTER:
                delay = _FIRST_RESTART_DELAY
            logger.error("RPC worker %s: %s; restarting in %g s", endpoint, exc.message, delay)
        await trio.sleep(delay)  # a back-off, not a synchronisation: nothing to wait on
        delay = min(delay * 2, _MAX_RESTART_DELAY)
