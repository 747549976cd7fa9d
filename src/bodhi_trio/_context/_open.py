"""The context's public face: ``SharedContext`` and ``open_context``.

Several models as a library object, with structured concurrency. It adds
aliases, request forwarding and state listeners to the :class:`Scheduler`
(``_core._scheduler``: per-model locks, admission, loads, eviction, drain,
crashes, idle unload)::

    open_context ── root nursery ── child tasks, watches, idle unloaders, load tasks,
                                    listener tasks, pull jobs (``_pulls``)
    request task ── forward() ── read hold on its model ── upstream response
                                 (a drain timeout, a crash, a hang or shutdown ends it
                                 with an error)
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias, alias_filename
from bodhi_trio._context._endpoints import (
    ENDPOINTS,
    fill_request_params,
    required_string,
    upstream_target,
)
from bodhi_trio._context._pulls import PullRegistry
from bodhi_trio._context._spec import (
    default_spec_builder,
    estimate_from_gguf,
    limits_from,
    runnable_variant,
)
from bodhi_trio._core._groups import reraise_unwrapped
from bodhi_trio._core._listeners import ListenerHub, ListenerStatistics, StateListener
from bodhi_trio._core._scheduler import Scheduler
from bodhi_trio._core._slot import (
    Launcher,
    RunningServer,
    SpecBuilder,
)
from bodhi_trio._core._state import (
    EventKind,
    ServerState,
)
from bodhi_trio._exceptions import BodhiError, InvalidRequestError
from bodhi_trio._llama._child import serve_llama_server
from bodhi_trio._llama._leftovers import kill_leftovers, sweep_socket_dirs
from bodhi_trio._llama._logtail import LogTail
from bodhi_trio._llama._memory import process_group_rss
from bodhi_trio._transport._loopback import PooledSender, Sender, UpstreamPool, UpstreamResponse

if TYPE_CHECKING:
    from bodhi_trio._config._settings import Settings
    from bodhi_trio._core._address import Address
    from bodhi_trio._core._rwlock import RWLockStatistics
    from bodhi_trio._llama._child import LaunchSpec

__all__ = [
    "ENDPOINTS",
    "ContextStatistics",
    "RunningServer",
    "SharedContext",
    "open_context",
    "required_string",
]


@attrs.frozen
class ContextStatistics:
    """Counters for ``/health`` and debugging."""

    state: ServerState
    locks: dict[str, RWLockStatistics]
    pending_loads: tuple[str, ...]
    listeners: tuple[ListenerStatistics, ...]
    starts: int


@final
class SharedContext:
    """Several models and their children. Create it with :func:`open_context`."""

    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        sender: Sender,
        hub: ListenerHub,
        *,
        aliases: AliasStore,
        log: LogTail,
        pulls: PullRegistry,
    ) -> None:
        self._settings = settings
        self._scheduler = scheduler
        self._sender = sender
        self._hub = hub
        self._aliases = aliases
        self._log = log
        self._pulls = pulls

    # ------------------------------------------------------------------ observing

    @property
    def state(self) -> ServerState:
        """Every model's current state (:class:`ServerState`)."""
        return self._scheduler.state

    @property
    def log(self) -> LogTail:
        """The output of every llama-server child, each line after ``[alias]``."""
        return self._log

    def log_for(self, alias: str) -> LogTail | None:
        """The output of ``alias``'s children (``None`` if it never started one)."""
        return self._scheduler.log_for(alias)

    @property
    def exec_variant(self) -> str:
        return self._scheduler.variant

    @property
    def aliases(self) -> AliasStore:
        """The alias directory this context serves."""
        return self._aliases

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def pulls(self) -> PullRegistry:
        """The model downloads this context owns (``_context._pulls``: start or join,
        watch, cancel)."""
        return self._pulls

    async def wait_state(self, predicate: Callable[[ServerState], bool]) -> ServerState:
        """Wait until ``predicate(state)`` holds and return that state.

        Cancellation: safe.
        """
        return await self._scheduler.wait_state(predicate)

    def is_loaded(self, alias: str | None = None) -> bool:
        """Whether ``alias`` (``None``: any model) has a usable child (a crashed one has not)."""
        return self._scheduler.is_loaded(alias)

    def child_address(self, alias: str | None = None) -> Address | None:
        """``alias``'s ready child's private Unix socket, for diagnostics (``None``: the
        only ready child's); ``None`` if there is no such child."""
        return self._scheduler.child_address(alias)

    def add_state_listener(
        self, listener: StateListener, *, buffer: int = 256, name: str | None = None
    ) -> Callable[[], None]:
        """Deliver every :class:`ServerEvent` to ``listener``, in order.

        The listener runs in its own task with its own bounded queue: a slow one
        loses events (counted), one that raises is logged; neither affects requests.

        Returns:
            A function that removes the listener.
        """
        return self._hub.add(listener, buffer=buffer, name=name)

    def statistics(self) -> ContextStatistics:
        return ContextStatistics(
            state=self.state,
            locks=self._scheduler.lock_statistics(),
            pending_loads=self._scheduler.pending_loads(),
            listeners=tuple(self._hub.statistics()),
            starts=self._scheduler.starts,
        )

    # ------------------------------------------------------------------ requests

    def is_alias(self, name: str) -> bool:
        """Whether ``name`` is an alias with a valid file (one ``stat``, cached parse)."""
        try:
            self._aliases.get(name)
        except BodhiError:
            return False
        return True

    def resolve_alias(self, name: object) -> Alias:
        """The alias a request's ``model`` names.

        Raises:
            InvalidRequestError: ``model`` is missing or not a string.
            AliasNotFoundError: No such alias.
            InvalidAliasError: Its file is broken.
        """
        return self._aliases.get(required_string(name, "model"))

    @asynccontextmanager
    async def forward(
        self, endpoint: str, request: Mapping[str, Any], *, keep_alive: float | None = None
    ) -> AsyncIterator[UpstreamResponse]:
        """Send ``request`` to the llama-server serving its ``model`` alias.

        Loads the model first if needed (evicting another if admission says so).
        Yields once llama-server's response headers are in; the model stays held
        (read side) until the block exits, so stream the body inside it.

        Args:
            endpoint: One of :data:`ENDPOINTS`.
            request: The request JSON; the alias's ``request_params`` fill its gaps.
            keep_alive: Seconds the model stays loaded once idle after this request
                (negative: never; 0: unloaded right after it), in force until a later
                request sets another; ``None``: the alias's ``keep_alive_secs`` or
                ``BODHI_KEEP_ALIVE_SECS`` (Ollama's per-request ``keep_alive``).

        Raises:
            BodhiError: Unknown alias (404), missing model file (404), too many
                requests for it (429 ``server_busy``), larger than the memory budget
                (503 ``insufficient_memory``), startup failure (500), llama-server
                unreachable (502), or :class:`ResponseInterruptedError` (503) when an
                eviction or stop outlasted the drain timeout, the child crashed or hung,
                or the context closed while the block ran.

        Cancellation: leaving the block early (the client left) closes the
        upstream connection at once, so llama-server stops generating. A load
        this request started still completes.
        """
        if endpoint not in ENDPOINTS:
            raise InvalidRequestError(f"unsupported endpoint {endpoint!r}")
        alias = self.resolve_alias(request.get("model"))
        # Generation defaults, as far as this route understands them (_endpoints).
        request = fill_request_params(endpoint, request, alias.request_params)
        try:
            body = json.dumps(request).encode()
        except RecursionError as exc:  # parsed fine, but too deep to encode from down here
            raise InvalidRequestError("the request body is nested too deeply") from exc
        async with (
            self._scheduler.serving(alias, keep_alive=keep_alive) as slot,
            self._sender.send(slot.server.address, endpoint, body) as response,
        ):
            self._scheduler.emit(
                EventKind.RESPONSE,
                alias.alias,
                endpoint=endpoint,
                status=response.status_code,
            )
            yield response

    async def load(self, alias_name: str, *, keep_alive: float | None = None) -> ServerState:
        """Load ``alias_name`` beside the others (as a request for it would).

        Args:
            alias_name: The alias.
            keep_alive: As for :meth:`forward` (0: unloaded right after it loaded).

        Returns:
            The state once it is loaded.

        Cancellation: the load itself still completes.
        """
        alias = self.resolve_alias(alias_name)
        async with self._scheduler.serving(alias, keep_alive=keep_alive):
            pass
        return self.state

    @asynccontextmanager
    async def upstream(
        self,
        alias_name: str,
        method: str,
        path: str,
        *,
        query: str = "",
        body: bytes = b"",
        content_type: str | None = None,
    ) -> AsyncIterator[UpstreamResponse]:
        """Pass a request through to ``alias_name``'s llama-server as it is.

        Loads the model first if needed, like :meth:`forward`, and holds it (read side)
        until the block exits. Only the method, the target, the body and its content
        type are sent (never the client's other headers, so no key of ours).

        Args:
            alias_name: The alias.
            method: One of ``UPSTREAM_METHODS`` (:mod:`._endpoints`).
            path: The path under the child, percent-decoded, without its leading ``/``.
            query: The raw query string, kept as it is.
            body: Sent unchanged.
            content_type: Sent with a non-empty body; ``None``: no such header.

        Raises:
            InvalidRequestError: A method, path, query or content type that could
                leave the child's paths or inject into the request (checked before
                anything loads; see :func:`upstream_target`).
            BodhiError: As for :meth:`forward`.

        Cancellation: as for :meth:`forward`.
        """
        target = upstream_target(method, path, query, content_type)
        alias = self.resolve_alias(alias_name)
        async with (
            self._scheduler.serving(alias) as slot,
            self._sender.send(
                slot.server.address, target, body, method=method, content_type=content_type
            ) as response,
        ):
            self._scheduler.emit(
                EventKind.RESPONSE,
                alias.alias,
                endpoint="/upstream",  # not the path: listeners need no admin key
                status=response.status_code,
            )
            yield response

    async def stop(self, alias: str | None = None) -> None:
        """Stop ``alias`` (``None``: every model), draining in-flight responses first."""
        await self._scheduler.stop(alias)

    async def set_exec_variant(self, variant: str) -> ServerState:
        """Switch the exec variant; every loaded model restarts on the new variant's
        binary with args merged again for the new variant.

        Raises:
            LlamaServerNotFoundError: No binary for ``variant`` (nothing changes).
            BodhiError: The restart failed (the variant stays switched; state stopped).
        """
        self._scheduler.check_open()
        variant = runnable_variant(self._settings, variant)
        await self._scheduler.switch_variant(variant)
        return self.state

    async def aclose(self) -> None:
        """Stop everything: in-flight responses end with an error, the child stops.

        Returns once the child is reaped. Idempotent.

        Cancellation: the stop is shielded and bounded by the child's stop grace.
        """
        self._pulls.close()
        await self._scheduler.close()
        self._hub.close()


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
    kill_leftovers(settings.run_dir)
    sweep_socket_dirs()
    log = LogTail(path=settings.logs_dir / "llama-server.log")
    child_logs: list[LogTail] = []
    try:
        async with UpstreamPool() as pool, trio.open_nursery() as nursery:
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
                estimate=estimate or estimate_from_gguf,
                measure=measure or process_group_rss,
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
            )
            try:
                yield ctx
            finally:
                await ctx.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The root nursery's tasks never raise, so a group here wraps what the
        # caller's block raised: hand that back as it was, not wrapped.
        if len(group.exceptions) != 1:
            raise
        reraise_unwrapped(group.exceptions[0])
    finally:
        for child_log in child_logs:
            child_log.close()
        log.close()
