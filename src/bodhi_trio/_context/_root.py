"""``open_context``: the root nursery and everything long-lived that it owns.

::

    open_context ── root nursery ── child tasks, watches, idle unloaders, load tasks,
                    │               listener tasks, pull jobs, replica probes
                    ├── rpc workers (``rpc_workers``: supervised rpc-server processes)
                    ├── UpstreamPool (loopback connections to the children)
                    └── RemoteClients (remote connections, and their idle watchdog task)
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import alias_filename
from bodhi_trio._context._open import SharedContext
from bodhi_trio._context._pulls import PullRegistry
from bodhi_trio._context._rpc_workers import open_rpc_workers
from bodhi_trio._context._spec import default_spec_builder, estimate_from_gguf, limits_from
from bodhi_trio._core._groups import reraise_unwrapped, sole_exception
from bodhi_trio._core._listeners import ListenerHub
from bodhi_trio._core._scheduler import Scheduler
from bodhi_trio._llama._child import serve_llama_server
from bodhi_trio._llama._group_rss import GroupMemory
from bodhi_trio._llama._leftovers import kill_leftovers, sweep_socket_dirs
from bodhi_trio._llama._logtail import LogTail
from bodhi_trio._transport._loopback import PooledSender, Sender, UpstreamPool
from bodhi_trio._transport._remote import open_remote_clients

if TYPE_CHECKING:
    from pathlib import Path

    from bodhi_trio._config._settings import Settings
    from bodhi_trio._core._slot import Launcher, SpecBuilder
    from bodhi_trio._llama._child import LaunchSpec

__all__ = ["open_context"]


def _make_private(directory: Path) -> None:
    """Make ``directory`` (one of ``BODHI_HOME``'s) if needed, entered by its owner alone."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if directory.stat().st_mode & 0o077:
        directory.chmod(0o700)  # made by an earlier version, open to every local user


def _child_log(settings: Settings, made: list[LogTail], combined: LogTail, alias: str) -> LogTail:
    """``alias``'s children's own output: its ring and file, mirrored into ``combined``."""
    path = settings.logs_dir / f"llama-server-{alias_filename(alias).removesuffix('.yaml')}.log"
    log = LogTail(path=path, mirror=combined, mirror_prefix=f"[{alias}] ")
    made.append(log)
    return log


@asynccontextmanager
async def open_context(
    settings: Settings,
    *,
    launcher: Launcher | None = None,
    spec_builder: SpecBuilder | None = None,
    sender: Sender | None = None,
    estimate: Callable[[LaunchSpec], Awaitable[int | None]] | None = None,
    measure: Callable[[int], int | None] | None = None,
) -> AsyncIterator[SharedContext]:
    """Open a context; everything it starts is stopped when the block exits.

    Example::

        async with bodhi_trio.open_context(bodhi_trio.load_settings()) as ctx:
            async with ctx.forward("/v1/chat/completions", {"model": "demo:tiny", ...}) as r:
                async for chunk in r:
                    ...

    Args:
        settings: See :func:`load_settings`.
        launcher: Starts a server (default: the real llama-server supervisor).
        spec_builder: Builds launch specs (default: binary lookup, HF cache, args merge).
        sender: Sends requests to a server (default: keep-alive HTTP/1.1 over loopback).
        estimate: A model's memory before it loads (default: from its GGUF header).
        measure: A running child's memory by pid (default: its process group's RSS).

    Cancellation: leaving the block, by cancellation or otherwise, interrupts
    in-flight responses and stops the child (SIGTERM, grace, SIGKILL of its group)
    before returning.
    """
    for directory in (settings.logs_dir, settings.run_dir):
        _make_private(directory)  # logs can hold prompts; run records name our children
    kill_leftovers(settings.run_dir)
    sweep_socket_dirs()
    log = LogTail(path=settings.logs_dir / "llama-server.log")
    child_logs: list[LogTail] = []
    try:
        async with (
            # Entered first, left last: the children that use the workers stop before them.
            open_rpc_workers(settings),
            UpstreamPool() as pool,
            open_remote_clients() as remotes,
            trio.open_nursery() as nursery,
        ):
            real_sender = sender or PooledSender(pool)
            hub = ListenerHub(nursery)
            scheduler = Scheduler(
                limits_from(settings),
                settings.exec_variant,
                nursery,
                real_sender,
                hub,
                launcher=launcher or serve_llama_server,
                spec_builder=spec_builder or default_spec_builder(settings),
                log_for=functools.partial(_child_log, settings, child_logs, log),
                estimate=estimate
                or functools.partial(estimate_from_gguf, workers_here=settings.rpc_workers),
                measure=measure or GroupMemory(),
            )
            aliases = AliasStore.for_settings(settings)
            ctx = SharedContext(
                settings,
                scheduler,
                real_sender,
                hub,
                aliases=aliases,
                log=log,
                pulls=PullRegistry(nursery, settings.hub_cache, aliases),
                remotes=remotes,
                nursery=nursery,
            )
            try:
                yield ctx
            finally:
                await ctx.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The root nursery's tasks never raise, so a group here wraps what the
        # caller's block raised (once per nursery it left through: the root's, the
        # remote clients', the rpc workers'): hand that back as it was, not wrapped.
        sole = sole_exception(group)
        if sole is None:
            raise
        reraise_unwrapped(sole)
    finally:
        for child_log in child_logs:
            child_log.close()
        log.close()
