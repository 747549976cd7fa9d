"""What the server slot is doing, and the events listeners receive.

:class:`ServerState` is a snapshot (``GET /bodhi/v1/state``); :class:`ServerEvent`
is one change, in the order it happened (``GET /bodhi/v1/events`` and in-process
listeners). :func:`choose_strategy` decides, as a pure function, what a request
for an alias needs done to the slot.
"""

from __future__ import annotations

import enum
import time

import attrs

__all__ = [
    "EventKind",
    "ModelLoadStrategy",
    "ServerEvent",
    "ServerState",
    "SlotStatus",
    "choose_strategy",
]


class SlotStatus(enum.StrEnum):
    """The lifecycle of the one model slot."""

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
    # llama-server's response head arrived, for any of the three endpoints (embeddings
    # too). The wire value keeps its first name: clients of GET /bodhi/v1/events match it.
    RESPONSE = "chat_completions"


class ModelLoadStrategy(enum.StrEnum):
    """What a request for an alias needs done to the slot."""

    CONTINUE = "continue"  # that alias is loaded: forward
    DROP_AND_LOAD = "drop_and_load"  # another alias is loaded: swap
    LOAD = "load"  # nothing is loaded: load


def choose_strategy(loaded_alias: str | None, requested_alias: str) -> ModelLoadStrategy:
    """The strategy for a request, given what is loaded (``None``: nothing usable)."""
    if loaded_alias is None:
        return ModelLoadStrategy.LOAD
    if loaded_alias == requested_alias:
        return ModelLoadStrategy.CONTINUE
    return ModelLoadStrategy.DROP_AND_LOAD


@attrs.frozen
class ServerState:
    """A snapshot of the slot.

    Attributes:
        status: The slot's lifecycle state.
        alias: The alias loaded or loading, else ``None``.
        variant: The exec variant in use.
        pid: The llama-server pid while one runs.
        port: Always ``None``: children listen on a private Unix socket, not a port.
        in_flight: Responses holding the slot right now.
        since: Wall-clock time the status last changed.
        error: Why the last start failed or the child crashed, if it did.
    """

    status: SlotStatus
    alias: str | None
    variant: str
    pid: int | None = None
    port: int | None = None
    in_flight: int = 0
    since: float = attrs.field(factory=time.time)
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        """The JSON shape of ``GET /bodhi/v1/state``."""
        return {
            "state": self.status.value,
            "alias": self.alias,
            "variant": self.variant,
            "pid": self.pid,
            "port": self.port,
            "in_flight": self.in_flight,
            "since": self.since,
            "error": self.error,
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
