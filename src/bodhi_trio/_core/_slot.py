"""The parts of the server slot: what is loaded, what is loading, who waits.

Types shared by :mod:`._context` and its tests; :func:`default_spec_builder`
turns an alias and a variant into a :class:`LaunchSpec`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._arg_policy import ArgPolicy
from bodhi_trio._config._hf_cache import resolve_model_file
from bodhi_trio._llama._child import LaunchSpec
from bodhi_trio._llama._runtime import find_llama_server
from bodhi_trio._llama._server_args import merge_server_args

if TYPE_CHECKING:
    from bodhi_trio._config._settings import Settings
    from bodhi_trio._core._address import Address
    from bodhi_trio._exceptions import BodhiError
    from bodhi_trio._llama._logtail import LogTail

__all__ = [
    "HandOff",
    "Launcher",
    "PendingLoad",
    "RunningServer",
    "Slot",
    "SpecBuilder",
    "Ticket",
    "default_spec_builder",
]


class RunningServer(Protocol):
    """What the context needs of a started server (:class:`LlamaServer` has it)."""

    @property
    def pid(self) -> int: ...
    @property
    def address(self) -> Address: ...
    def kill(self) -> None: ...


class Launcher(Protocol):
    """Starts a server; :func:`serve_llama_server` is the real one, tests pass fakes."""

    async def __call__(
        self, spec: LaunchSpec, log: LogTail | None = None, *, task_status: Any = ...
    ) -> Any: ...


SpecBuilder = Callable[[Alias, str], LaunchSpec]
"""Builds the launch spec for an alias and a variant.

Alias lookups and spec building touch the disk for well under a millisecond
(a YAML file, a few ``stat``/``readlink`` calls), so they run inline: a worker
thread hop would cost more than it saves.
"""


@attrs.define(eq=False)
class Slot:
    """The loaded server and the means to stop it."""

    alias: Alias
    variant: str
    spec: LaunchSpec
    server: RunningServer
    scope: trio.CancelScope  # cancelling it stops the child
    finished: trio.Event  # set once the child task has ended (child reaped)
    watch: trio.CancelScope = attrs.field(factory=trio.CancelScope)  # its health watch
    usable: bool = True
    interruption: BodhiError | None = None  # why its readers were cancelled


@attrs.define(eq=False)
class Ticket:
    """A request's place among the waiters of a load; granted = it holds a read hold."""

    granted: bool = False
    abandoned: bool = False


@attrs.define(eq=False)
class PendingLoad:
    """A load in progress (single flight: one per alias)."""

    alias: Alias
    done: trio.Event = attrs.field(factory=trio.Event)
    error: BodhiError | None = None
    tickets: list[Ticket] = attrs.field(factory=list)


@attrs.define(eq=False)
class HandOff:
    """A ``task_status`` that hands back the slot parts along with the server."""

    scope: trio.CancelScope
    finished: trio.Event
    outer: trio.TaskStatus[tuple[RunningServer, trio.CancelScope, trio.Event]]
    started_ok: bool = False

    def started(self, server: RunningServer) -> None:
        self.started_ok = True
        self.outer.started((server, self.scope, self.finished))


def default_spec_builder(settings: Settings) -> SpecBuilder:
    """The real spec builder: binary lookup, HF cache resolution and the args merge.

    Every tier of args passes the :class:`ArgPolicy` again right before the merge,
    although settings and the alias store checked them already: an alias built in
    code, or a symlink that changed since, must not reach a child either.
    """
    policy = ArgPolicy.from_settings(settings)

    def build(alias: Alias, variant: str) -> LaunchSpec:
        binary = find_llama_server(variant, settings.binary_for(variant))
        model = resolve_model_file(settings.hub_cache, alias.repo, alias.filename, alias.snapshot)
        tiers = (settings.llamacpp_args, settings.server_args_for(variant), alias.context_params)
        sources = (
            "BODHI_LLAMACPP_ARGS",
            f"BODHI_LLAMACPP_ARGS_{variant.upper()}",
            f"alias {alias.alias!r} context_params",
        )
        for items, source in zip(tiers, sources, strict=True):
            policy.check(items, source=source)
        args = merge_server_args(*tiers, sources=sources)
        return LaunchSpec(
            binary=binary,
            model=model.absolute(),
            alias=alias.alias,
            server_args=tuple(args),
            variant=variant,
            startup_timeout=settings.startup_timeout_secs,
            stop_grace=settings.stop_grace_secs,
            run_dir=settings.run_dir,
        )

    return build
