"""The parts of the server slot: what is loaded, what is loading, who waits.

Types shared by the scheduler, the context and their tests. The core knows an
alias and a launch spec only as values it hands on: it never builds one (the
context's spec builder does) and never imports their layers at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import attrs
import trio

if TYPE_CHECKING:
    from bodhi_trio._config._aliases import Alias
    from bodhi_trio._core._address import Address
    from bodhi_trio._core._model import ModelSlot
    from bodhi_trio._exceptions import BodhiError
    from bodhi_trio._llama._child import LaunchSpec
    from bodhi_trio._llama._logtail import LogTail

__all__ = [
    "Launcher",
    "PendingLoad",
    "RunningServer",
    "Slot",
    "SpecBuilder",
    "Ticket",
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


SpecBuilder: TypeAlias = "Callable[[Alias, str], LaunchSpec]"
"""Builds the launch spec for an alias and a variant.

Alias lookups and spec building touch the disk for well under a millisecond
(a YAML file, a few ``stat``/``readlink`` calls), so they run inline: a worker
thread hop would cost more than it saves.
"""


@attrs.define(eq=False)
class Slot:
    """A model's running child and the means to stop it."""

    alias: Alias
    variant: str
    spec: LaunchSpec
    server: RunningServer
    scope: trio.CancelScope  # cancelling it stops the child
    finished: trio.Event  # set once the child task has ended (child reaped)
    watch: trio.CancelScope = attrs.field(factory=trio.CancelScope)  # its health watch


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
    model: ModelSlot | None = None  # the model it loads, once admitted
