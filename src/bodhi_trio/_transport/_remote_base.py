"""What both remote clients share: their timeouts, the response they hand back, the
stall error's words."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import attrs
import httpx

from bodhi_trio._exceptions import RemoteStalledError

__all__ = ["USER_AGENT", "RemoteResponse", "RemoteTimeouts", "stalled"]

USER_AGENT = "bodhi-trio"


@attrs.frozen
class RemoteTimeouts:
    """``connect``: the handshake; ``idle``: each wait for bytes (never a total)."""

    connect: float
    idle: float

    def for_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect, read=self.idle, write=self.idle, pool=self.connect
        )


class RemoteResponse(Protocol):
    """What :meth:`RemoteClients.send` yields: a response whose head has arrived.

    Iterate it for the body as it comes: each piece is what one read brought
    (chunked framing removed, nothing else changed). A failure while reading raises
    :class:`UpstreamError`.
    """

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def aread(self) -> bytes: ...


def stalled(url: str, timeouts: RemoteTimeouts) -> RemoteStalledError:
    return RemoteStalledError(
        f"{url} sent nothing for {timeouts.idle:g} s (the alias's idle_timeout_secs)"
    )
