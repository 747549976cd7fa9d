"""A fake launcher, a fake upstream and a harness: the context on a virtual clock.

No real I/O: the launcher's "load" takes virtual time, and llama-server's HTTP side
is a fake sender whose streams tick on the same virtual clock.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._settings import load_settings
from bodhi_trio._context._open import SharedContext
from bodhi_trio._context._root import open_context
from bodhi_trio._core._address import Address
from bodhi_trio._core._state import (
    ModelState,
    ServerEvent,
    ServerState,
    SlotStatus,
)
from bodhi_trio._exceptions import (
    LlamaServerExitedError,
    StartupError,
    UpstreamError,
)
from bodhi_trio._llama._child import LaunchSpec
from bodhi_trio._llama._logtail import LogTail
from bodhi_trio._transport._loopback import Probe


@attrs.define
class FakeServer:
    pid: int
    alias: str
    variant: str
    args: tuple[str, ...]
    crash: trio.Event = attrs.field(factory=trio.Event)
    killed: bool = False

    @property
    def base_url(self) -> str:
        return f"http://fake-{self.pid}"

    @property
    def address(self) -> Address:
        return Address.unix(f"/fake/{self.pid}.sock")

    def kill(self) -> None:
        self.killed = True
        self.crash.set()


@attrs.define(eq=False)
class FakeLauncher:
    """Starts fake servers: a load takes ``load_seconds`` of virtual time."""

    load_seconds: float = 1.0
    fail_aliases: set[str] = attrs.field(factory=set)
    starts: list[FakeServer] = attrs.field(factory=list)
    alive: dict[str, FakeServer] = attrs.field(factory=dict)  # base_url -> server
    max_alive: int = 0
    _pids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1000))

    async def __call__(
        self, spec: LaunchSpec, log: LogTail | None = None, *, task_status: Any = None
    ) -> None:
        pid = next(self._pids)
        await trio.sleep(self.load_seconds)
        if spec.alias in self.fail_aliases:
            raise StartupError(f"fake {spec.alias} failed to load", log_tail=["boom"])
        server = FakeServer(pid, spec.alias, spec.variant, spec.server_args)
        self.starts.append(server)
        self.alive[server.base_url] = server
        self.max_alive = max(self.max_alive, len(self.alive))
        try:
            task_status.started(server)
            await server.crash.wait()
            raise LlamaServerExitedError(3, ["fake crash"])
        finally:
            del self.alive[server.base_url]


@attrs.define(eq=False)
class FakeResponse:
    """llama-server's answer: JSON, or ``events`` SSE events one every ``interval`` s."""

    status_code: int
    headers: dict[str, str]
    body: bytes = b""
    events: int = 0
    interval: float = 0.0

    _sent: int = 0
    _done: bool = False

    def __aiter__(self) -> FakeResponse:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        if self.body:
            self._done = True
            return self.body
        if self._sent < self.events:
            await trio.sleep(self.interval)
            self._sent += 1
            return b'data: {"n": %d}\n\n' % (self._sent - 1)
        self._done = True
        return b"data: [DONE]\n\n"

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self])


@attrs.define(eq=False)
class FakeSender:
    """llama-server's HTTP side: only a live fake answers; the body says how long to stream."""

    launcher: FakeLauncher
    closed_idle: list[Address] = attrs.field(factory=list)

    def _server(self, address: Address) -> FakeServer | None:
        pid = Path(str(address.unix_socket)).stem
        return self.launcher.alive.get(f"http://fake-{pid}")

    @asynccontextmanager
    async def send(
        self,
        address: Address,
        path: str,
        body: bytes,
        *,
        method: str = "POST",
        content_type: str | None = "application/json",
    ) -> AsyncIterator[FakeResponse]:
        server = self._server(address)
        if server is None:
            raise UpstreamError(f"cannot connect to llama-server at {address}")
        if method != "POST" or content_type != "application/json":  # a pass-through: echo it
            echo = {"method": method, "path": path, "content_type": content_type,
                    "body": body.decode("latin-1")}  # fmt: skip
            reply = json.dumps(echo).encode()
            yield FakeResponse(200, {"content-type": "application/json"}, body=reply)
            return
        request = json.loads(body)
        if request.get("stream"):
            yield FakeResponse(
                200,
                {"content-type": "text/event-stream"},
                events=request.get("events", 3),
                interval=request.get("interval", 0.1),
            )
        else:
            reply = json.dumps({"served_by": server.pid, "request": request}).encode()
            yield FakeResponse(200, {"content-type": "application/json"}, body=reply)

    async def close_idle(self, address: Address) -> None:
        self.closed_idle.append(address)

    async def probe(self, address: Address, path: str, *, within: float) -> Probe | None:
        server = self._server(address)
        if server is None or server.killed:
            return None
        return Probe(200, b'{"status": "ok"}' if path == "/health" else b"[]")

    def waiting_since(self, address: Address) -> float | None:
        return None

    async def abort_waiting(self, address: Address, *, since_before: float, reason: str) -> int:
        return 0


def newest(state: ServerState) -> ModelState:
    """The newest model entry, or a stopped placeholder when there is none."""
    models = sorted(state.models, key=lambda m: m.since)
    return models[-1] if models else ModelState("", SlotStatus.STOPPED)


@attrs.define(eq=False)
class Harness:
    ctx: SharedContext
    launcher: FakeLauncher
    events: list[ServerEvent]

    async def chat(self, alias: str, **body: Any) -> dict[str, Any]:
        request = {"model": alias, "messages": [{"role": "user", "content": "hi"}], **body}
        async with self.ctx.forward("/v1/chat/completions", request) as response:
            result: dict[str, Any] = json.loads(await response.aread())
            return result

    async def stream(self, alias: str, events: int, interval: float) -> list[bytes]:
        request = {"model": alias, "stream": True, "events": events, "interval": interval}
        chunks = []
        async with self.ctx.forward("/v1/chat/completions", request) as response:
            async for chunk in response:
                chunks.append(chunk)
        return chunks

    @property
    def slot(self) -> ModelState:
        """The one model (these tests run with BODHI_MAX_LOADED_MODELS=1)."""
        return newest(self.ctx.state)

    def kinds(self) -> list[tuple[str, str | None]]:
        return [(e.kind.value, e.alias) for e in self.events]


def spec_builder(alias: Alias, variant: str) -> LaunchSpec:
    return LaunchSpec(
        binary=Path(f"/fake/{variant}/llama-server"),
        model=Path("/fake/model.gguf"),
        alias=alias.alias,
        server_args=(f"--variant-arg-{variant}", *alias.context_params),
        variant=variant,
    )


def fake_binary(path: Path) -> str:
    """An executable file at ``path`` (a variant's llama-server for ``runnable_variant``:
    the fake launcher never runs it); its path."""
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


@asynccontextmanager
async def harness(
    tmp_path: Path,
    *,
    launcher: FakeLauncher | None = None,
    estimates: dict[str, int] | None = None,
    aliases: tuple[str, ...] = ("a", "b", "c"),
    **env: str,
) -> AsyncIterator[Harness]:
    settings = load_settings(
        home=tmp_path,
        # One model at a time unless a test says otherwise: these are the one-slot rules
        # (swap, drain, single flight); several models are in test_models.py.
        env={
            "BODHI_KEEP_ALIVE_SECS": "-1",
            "BODHI_DRAIN_TIMEOUT_SECS": "30",
            "BODHI_MAX_LOADED_MODELS": "1",
            **env,
        },
    )
    store = AliasStore(settings.aliases_dir)
    for name in aliases:
        store.create(Alias(name, "org/repo", f"{name}.gguf", context_params=(f"--ctx-{name}",)))
    fake = launcher or FakeLauncher()
    events: list[ServerEvent] = []

    async def record(event: ServerEvent) -> None:
        events.append(event)

    async def estimate(spec: LaunchSpec) -> int | None:
        return None if estimates is None else estimates.get(spec.alias)

    async with open_context(
        settings,
        launcher=fake,
        spec_builder=spec_builder,
        sender=FakeSender(fake),
        estimate=estimate,
        measure=lambda pid: None,
    ) as ctx:
        ctx.add_state_listener(record, name="recorder")
        yield Harness(ctx, fake, events)
