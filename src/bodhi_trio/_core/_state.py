"""What the models are doing, and the events listeners receive.

:class:`ServerState` is a snapshot of every model (``GET /bodhi/v1/state``), one
:class:`ModelState` each; :class:`ServerEvent` is one change, in the order it
happened (``GET /bodhi/v1/events`` and in-process listeners), naming its alias.
"""

from __future__ import annotations

import enum
import time

import attrs

__all__ = [
    "EventKind",
    "ModelState",
    "ServerEvent",
    "ServerState",
    "SlotStatus",
]


class SlotStatus(enum.StrEnum):
    """The lifecycle of one model."""

    STOPPED = "stopped"
    LOADING = "loading"
    READY = "ready"
    STOPPING = "stopping"
    CRASHED = "crashed"
    HUNG = "hung"  # stopped answering: killed; the next request loads it again


class EventKind(enum.StrEnum):
    """What a :class:`ServerEvent` reports."""

    LOADING = "loading"
    START = "start"
    STOP = "stop"
    CRASHED = "crashed"
    HUNG = "hung"
    VARIANT = "variant"
    # llama-server's response head arrived, for any route a request was forwarded to
    # (embeddings and the other llama-server routes too). The wire value keeps its first
    # name: clients of GET /bodhi/v1/events match it.
    RESPONSE = "chat_completions"


@attrs.frozen
class ModelState:
    """A snapshot of one model: loading, resident, or how its last run ended.

    Attributes:
        alias: The alias.
        status: Its lifecycle state.
        pid: Its llama-server pid while one runs.
        in_flight: Responses holding it right now.
        queued: Requests admitted for it and waiting (for its load or its lock).
        since: Wall-clock time the status last changed.
        last_used: Wall-clock time a response for it last began or ended.
        expires_at: Wall-clock time the idle unload is due, while it is idle.
        memory: Bytes it is counted for: the estimate until loaded, then measured.
        error: Why its last start failed or its child crashed or hung, if it did.
        keep_alive: Seconds it stays loaded once idle (negative: never); not in the JSON.
    """

    alias: str
    status: SlotStatus
    pid: int | None = None
    in_flight: int = 0
    queued: int = 0
    since: float = attrs.field(factory=time.time)
    last_used: float | None = None
    expires_at: float | None = None
    memory: int | None = None
    error: str | None = None
    keep_alive: float | None = None

    def to_json(self) -> dict[str, object]:
        """One entry of ``models`` in ``GET /bodhi/v1/state``."""
        return {
            "alias": self.alias,
            "state": self.status.value,
            "pid": self.pid,
            "port": None,  # children listen on a private Unix socket, never a port
            "in_flight": self.in_flight,
            "queued": self.queued,
            "since": self.since,
            "last_used": self.last_used,
            "expires_at": self.expires_at,
            "memory": self.memory,
            "error": self.error,
        }


@attrs.frozen
class ServerState:
    """A snapshot of every model the context knows of.

    Attributes:
        variant: The exec variant in use.
        models: One entry per model loading, resident, or ended by a failure, by alias.
        memory_budget: Bytes all resident models may use together; ``None``: no limit.
        memory_used: Bytes they are counted for now.
    """

    variant: str
    models: tuple[ModelState, ...] = ()
    memory_budget: int | None = None
    memory_used: int = 0

    def model(self, alias: str) -> ModelState | None:
        """The entry for ``alias``, if there is one."""
        return next((m for m in self.models if m.alias == alias), None)

    def status_of(self, alias: str) -> SlotStatus:
        """The status of ``alias``: ``STOPPED`` when the context has no entry for it."""
        entry = self.model(alias)
        return SlotStatus.STOPPED if entry is None else entry.status

    @property
    def in_flight(self) -> int:
        """Responses in flight over all models."""
        return sum(m.in_flight for m in self.models)

    def to_json(self) -> dict[str, object]:
        """The JSON shape of ``GET /bodhi/v1/state``."""
        return {
            "variant": self.variant,
            "memory": {"budget": self.memory_budget, "used": self.memory_used},
            "models": [m.to_json() for m in self.models],
        }


@attrs.frozen
class ServerEvent:
    """One change of the slot, delivered to listeners in order.

    Attributes:
        kind: What happened.
        alias: The alias concerned, if any.
        variant: The exec variant at the time.
        detail: Extra facts (pid, port, exit code, endpoint, error text...).
        seq: Position in the context's event sequence, from 1.
        time: Wall-clock time of the event.
    """

    kind: EventKind
    alias: str | None
    variant: str
    detail: dict[str, object] = attrs.field(factory=dict)
    seq: int = 0
    time: float = attrs.field(factory=time.time)

    def to_json(self) -> dict[str, object]:
        """The JSON shape of one ``GET /bodhi/v1/events`` data line."""
        return {
            "event": self.kind.value,
            "alias": self.alias,
            "variant": self.variant,
            "seq": self.seq,
            "time": self.time,
            **self.detail,
        }
