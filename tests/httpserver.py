"""Run ``serve()`` on port 0 inside a test, with real Hypercorn."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
from hypercorn.config import Config

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_ALIAS, DEMO_FILENAME, DEMO_REPO, ensure_demo_model
from bodhi_trio._config._settings import load_settings
from bodhi_trio._core._address import Address
from bodhi_trio._http._serve import serve
from bodhi_trio._http._server import serve_http


@attrs.define
class RunningServer:
    url: str
    home: Path
    stop: trio.Event


@asynccontextmanager
async def running_server(
    home: Path,
    hub_cache: Path,
    *,
    aliases: tuple[Alias, ...] = (),
    shutdown_grace: float = 2.0,
    **env: str,
) -> AsyncIterator[RunningServer]:
    """Serve on 127.0.0.1:0 with the demo alias (plus ``aliases``); stop on exit."""
    settings = load_settings(
        home=home,
        env={
            "HF_HUB_CACHE": str(hub_cache),
            "BODHI_PORT": "0",
            "BODHI_KEEP_ALIVE_SECS": "-1",
            **env,
        },
    )
    ensure_demo_model(hub_cache)
    store = AliasStore(settings.aliases_dir)
    store.put(Alias(DEMO_ALIAS, DEMO_REPO, DEMO_FILENAME, context_params=("--ctx-size 2048",)))
    for alias in aliases:
        store.put(alias)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            lambda task_status: serve(
                settings,
                shutdown_trigger=stop.wait,
                shutdown_grace=shutdown_grace,
                task_status=task_status,
            )
        )
        try:
            yield RunningServer(url, home, stop)
        finally:
            stop.set()


_READY = re.compile(r"\[bodhi-trio\] ready on unix:(\S+) after ")


async def child_address(url: str, **headers: str) -> Address:
    """The newest child's Unix socket, from the server's log ring (it has no TCP port)."""
    async with httpx.AsyncClient(headers=headers) as client:
        lines = (await client.get(url + "/bodhi/v1/server/logs?lines=1000")).json()["lines"]
    for line in reversed(lines):
        if match := _READY.search(line):
            return Address.unix(match.group(1))
    raise AssertionError(f"no ready line in the child's log: {lines[-5:]}")


def one_model(state: dict[str, Any], alias: str | None = None) -> dict[str, Any]:
    """From ``GET /bodhi/v1/state``: ``alias``'s entry, or (``None``) the newest one; a
    stopped placeholder when there is none."""
    models = [m for m in state["models"] if alias is None or m["alias"] == alias]
    if not models:
        return {"alias": None, "state": "stopped", "pid": None, "in_flight": 0, "error": None}
    entry: dict[str, Any] = max(models, key=lambda m: m["since"])
    return entry


async def answer_lifespan(receive: Any, send: Any) -> None:
    """A bare ASGI app's side of Hypercorn's lifespan: started, then stopped."""
    while (await receive())["type"] == "lifespan.startup":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


@asynccontextmanager
async def serving_asgi(app: Any, **options: Any) -> AsyncIterator[int]:
    """Serve the ASGI ``app`` with ``serve_http`` on 127.0.0.1:0 (``options`` are its
    keyword arguments; ``max_connections`` 10 unless given); yield the port; shut down
    on leaving."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.keep_alive_timeout = options.pop("keep_alive_timeout", 75)
    options.setdefault("max_connections", 10)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def serve_app(task_status: trio.TaskStatus[list[str]]) -> None:
            await serve_http(
                app, config, shutdown_trigger=stop.wait, task_status=task_status, **options
            )

        binds: list[str] = await nursery.start(serve_app)
        yield int(binds[0].rsplit(":", 1)[1])
        stop.set()
