"""The context's public face: ``SharedContext`` (``open_context`` in ``_root`` makes one).

Several models as a library object, with structured concurrency. It adds
aliases, request forwarding and state listeners to the :class:`Scheduler`
(``_core._scheduler``: per-model locks, admission, loads, eviction, drain,
crashes, idle unload), and remote aliases and fallback chains (``_routing``)::

    request task ── forward() ── local alias: read hold on its model ── upstream response
                    │            (a drain timeout, a crash, a hang or shutdown ends it
                    │            with an error)
                    └─────────── remote or fallback alias: the chain (``_routing``) ──
                                 replica pool (``_replicas``) ── remote response
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import attrs

from bodhi_trio._context._endpoints import (
    ENDPOINTS,
    fill_request_params,
    required_string,
    upstream_target,
)
from bodhi_trio._context._replica_pools import ReplicaPools
from bodhi_trio._context._routing import FallbackRouter, encode_request
from bodhi_trio._context._spec import (
    limits_from,
    runnable_variant,
)
from bodhi_trio._core._slot import (
    RunningServer,
)
from bodhi_trio._core._state import (
    EventKind,
    ServerState,
)
from bodhi_trio._exceptions import BodhiError, InvalidRequestError
from bodhi_trio._llama._media_urls import refuse_fetched_media, refuse_fetched_media_in
from bodhi_trio._llama._request_fields import guard_request_fields

if TYPE_CHECKING:
    import trio

    from bodhi_trio._config._alias_store import AliasStore
    from bodhi_trio._config._aliases import Alias
    from bodhi_trio._config._settings import Settings
    from bodhi_trio._context._pulls import PullRegistry
    from bodhi_trio._context._replicas import ReplicaPool, ReplicaStatistics
    from bodhi_trio._core._address import Address
    from bodhi_trio._core._listeners import ListenerHub, ListenerStatistics, StateListener
    from bodhi_trio._core._rwlock import RWLockStatistics
    from bodhi_trio._core._scheduler import Scheduler
    from bodhi_trio._llama._logtail import LogTail
    from bodhi_trio._transport._loopback import Sender, UpstreamResponse
    from bodhi_trio._transport._remote import RemoteClients

__all__ = [
    "ENDPOINTS",
    "ContextStatistics",
    "RunningServer",
    "SharedContext",
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
        remotes: RemoteClients,
        nursery: trio.Nursery,
    ) -> None:
        self._settings = settings
        self._scheduler = scheduler
        self._sender = sender
        self._hub = hub
        self._aliases = aliases
        self._log = log
        self._pulls = pulls
        self._pools = ReplicaPools(aliases, remotes, frozenset(settings.remote_key_envs), nursery)
        self._router = FallbackRouter(
            resolve=self._aliases.get,
            local=self._send_local,
            pool_for=self.replica_pool,
            on_response=self._note_response,
        )

    # ------------------------------------------------------------------ observing

    @property
    def state(self) -> ServerState:
        """Every model's current state (:class:`ServerState`)."""
        return self._scheduler.state

    @property
    def log(self) -> LogTail:
        """The output of every llama-server child, each line after ``[alias]``."""
        return self._log

    def log_for(self, alias: str, *, made: bool = False) -> LogTail | None:
        """The output of ``alias``'s children (``None`` if it never started one; with
        ``made``, an empty log it will write to)."""
        return self._scheduler.log_for(alias, made=made)

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
        self,
        listener: StateListener,
        *,
        buffer: int = 256,
        name: str | None = None,
        kinds: Collection[EventKind] | None = None,
    ) -> Callable[[], None]:
        """Deliver every :class:`ServerEvent` (of ``kinds``, if given) to ``listener``,
        in order.

        The listener runs in its own task with its own bounded queue: a slow one
        loses events (counted), one that raises is logged; neither affects requests.

        Returns:
            A function that removes the listener.
        """
        return self._hub.add(listener, buffer=buffer, name=name, kinds=kinds)

    def statistics(self) -> ContextStatistics:
        return ContextStatistics(
            state=self.state,
            locks=self._scheduler.lock_statistics(),
            pending_loads=self._scheduler.pending_loads(),
            listeners=tuple(self._hub.statistics()),
            starts=self._scheduler.starts,
        )

    def replica_pool(self, alias: Alias) -> ReplicaPool:
        """The replica pool of remote ``alias`` (:class:`ReplicaPools`)."""
        return self._pools.pool_for(alias)

    def remote_statistics(self) -> dict[str, list[ReplicaStatistics]]:
        """Each remote alias in use: its replicas' load and health."""
        return self._pools.statistics()

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
            InvalidRequestError: A media part names an ``http(s)`` URL, which
                llama-server would fetch itself (``_llama/_media_urls``; remote
                aliases take them), or a field would make it abort
                (``_llama/_request_fields``; penalty windows are cut, not refused).
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
        if alias.remote is not None or alias.fallback:
            # A remote alias or a fallback chain (_routing): tried target by target.
            async with self._router.forward(
                alias, endpoint, request, keep_alive=keep_alive
            ) as response:
                yield response
            return
        # Generation defaults, as far as this route understands them (_endpoints).
        body = fill_request_params(endpoint, request, alias.request_params)
        async with self._send_local(alias, endpoint, body, keep_alive) as response:
            self._note_response(alias.alias, endpoint, response.status_code)
            yield response

    @asynccontextmanager
    async def _send_local(
        self, alias: Alias, endpoint: str, request: Mapping[str, Any], keep_alive: float | None
    ) -> AsyncIterator[UpstreamResponse]:
        """Send ``request`` to ``alias``'s child, loading it first: the one way a body
        reaches a local child (a fallback chain's local target comes here too)."""
        refuse_fetched_media(request)  # llama-server would fetch an http(s) image itself
        body = encode_request(guard_request_fields(request))  # fields it would abort on
        async with (
            self._scheduler.serving(alias, keep_alive=keep_alive) as slot,
            self._sender.send(slot.server.address, endpoint, body) as response,
        ):
            yield response

    def _note_response(self, alias: str, endpoint: str, status: int) -> None:
        self._scheduler.emit(EventKind.RESPONSE, alias, endpoint=endpoint, status=status)

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
        if alias.remote is not None:
            return self.state  # nothing of ours to load: its server holds the model
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
                anything loads; see :func:`upstream_target`), or a body with a media
                part llama-server would fetch from the network.
            BodhiError: As for :meth:`forward`.

        Cancellation: as for :meth:`forward`.
        """
        target = upstream_target(method, path, query, content_type)
        refuse_fetched_media_in(body)  # a chat body passed through would fetch images too
        alias = self.resolve_alias(alias_name)
        if alias.remote is not None:
            raise InvalidRequestError(
                f"{alias.alias} is a remote alias: /upstream reaches local children only",
                param="alias",
            )
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

    async def unload_when_idle(self, alias: str) -> None:
        """Unload ``alias`` once its in-flight responses ended, interrupting none (Ollama's
        ``keep_alive: 0``); returns once it is gone or after the drain timeout."""
        await self._scheduler.unload_when_idle(alias, patience=self._settings.drain_timeout_secs)

    async def set_exec_variant(self, variant: str) -> ServerState:
        """Switch the exec variant; every loaded model restarts on the new variant's
        binary with args merged again for the new variant.

        Raises:
            LlamaServerNotFoundError: No binary for ``variant`` (nothing changes).
            BodhiError: The restart failed (the variant stays switched; state stopped).
        """
        self._scheduler.check_open()
        variant = runnable_variant(self._settings, variant)
        await self._scheduler.switch_variant(variant, limits_from(self._settings, variant))
        return self.state

    async def aclose(self) -> None:
        """Stop everything: in-flight responses end with an error, the child stops.

        Returns once the child is reaped. Idempotent.

        Cancellation: the stop is shielded and bounded by the child's stop grace.
        """
        self._pulls.close()
        await self._scheduler.close()
        self._hub.close()
