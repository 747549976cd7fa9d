"""Requests to the llama-server child: HTTP/1.1 over loopback, keep-alive pooled.

Why not httpx here: its body iterators are async generators nested three deep;
when a client leaves mid-stream (our everyday case), the inner ones are left to
the garbage collector, and its per-chunk overhead is far above what relaying
thousands of events a second allows. This client does one thing: send a request
(a JSON POST, or for a pass-through any method, target and content type) to a loopback
llama-server and hand back the response body as it arrives (chunked framing removed by
:mod:`bodhi_trio._core._http1`), keeping idle connections for reuse in an
:class:`UpstreamPool` (:mod:`._pool`).

Closing a response before its end closes the connection, which is how
llama-server learns that the client left and stops generating.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Protocol, final

import attrs
import trio

from bodhi_trio._exceptions import UpstreamError
from bodhi_trio._transport._pool import UpstreamPool
from bodhi_trio._transport._response import ChunkSink, HTTPResponse, StaleConnection, exchange
from bodhi_trio._transport._whole import uncharged

if TYPE_CHECKING:
    from bodhi_trio._core._address import Address

__all__ = [
    "JSON",
    "ChunkSink",
    "HTTPResponse",
    "PooledSender",
    "Probe",
    "Sender",
    "UpstreamPool",
    "UpstreamResponse",
    "probe",
    "send_upstream",
]


JSON = "application/json"
"""The content type of the bodies the context sends (every route but a pass-through)."""


class UpstreamResponse(Protocol):
    """What the context hands its callers: status, headers, and the body as bytes chunks."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def aread(self) -> bytes: ...


class Sender(Protocol):
    """How the context talks to a server: :class:`PooledSender` for real, fakes in tests."""

    def send(
        self,
        address: Address,
        path: str,
        body: bytes,
        *,
        method: str = "POST",
        content_type: str | None = JSON,
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send ``body`` and yield the response (see :func:`send_upstream`)."""
        ...

    async def close_idle(self, address: Address) -> None:
        """Close idle connections to a server that is about to stop."""
        ...

    async def probe(self, address: Address, path: str, *, within: float) -> Probe | None:
        """One ``GET`` on a fresh connection (see :func:`probe`)."""
        ...

    def waiting_since(self, address: Address) -> float | None:
        """When the longest current wait for bytes from ``address`` began (Trio clock)."""
        ...

    async def abort_waiting(self, address: Address, *, since_before: float, reason: str) -> int:
        """End the requests to ``address`` that have waited for bytes since before
        ``since_before``: each raises :class:`UpstreamError` with ``reason``."""
        ...


@attrs.frozen
class Probe:
    """The answer to :func:`probe`: status and whole body."""

    status: int
    body: bytes


def _request_bytes(
    method: str, address: Address, path: str, body: bytes, content_type: str | None
) -> bytes:
    """The request head and body. ``method``, ``path`` and ``content_type`` are the
    caller's to check (the context's pass-through does: no CR, LF or other control
    character reaches the request line or a header)."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {address.host_header}",
        f"Content-Length: {len(body)}",
    ]
    if body and content_type:
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _exchange(
    pool: UpstreamPool,
    address: Address,
    path: str,
    body: bytes,
    *,
    fresh: bool,
    method: str,
    content_type: str | None,
) -> HTTPResponse:
    connection = await pool.check_out(address, fresh=fresh)
    try:
        return await exchange(
            connection, _request_bytes(method, address, path, body, content_type), method
        )
    except BaseException:
        await pool.discard(connection)
        raise


@asynccontextmanager
async def send_upstream(
    pool: UpstreamPool,
    address: Address,
    path: str,
    body: bytes,
    *,
    method: str = "POST",
    content_type: str | None = JSON,
) -> AsyncIterator[HTTPResponse]:
    """Send ``body`` (empty for none) to ``path`` at ``address`` and yield once the
    response head arrives.

    ``path`` is the request target (``/v1/models?x=1``); ``content_type`` is sent with
    a non-empty body (``None``: no such header). All three go into the request as
    they are: callers pass only checked values.

    A reused keep-alive connection that fails before any response (llama-server
    closed it while idle) is replaced once by a fresh one.

    Raises:
        UpstreamError: llama-server could not be reached or broke the connection.

    Cancellation: leaving the block before the body ended (cancellation, an
    error, a client that left) closes the connection at once, so llama-server
    stops generating. A body read to its end returns the connection to the pool.
    """
    try:
        response = await _exchange(
            pool, address, path, body, fresh=False, method=method, content_type=content_type
        )
    except StaleConnection:
        response = await _exchange(
            pool, address, path, body, fresh=True, method=method, content_type=content_type
        )
    try:
        yield response
    finally:
        if not (response.reusable and pool.give_back(response.connection)):
            await pool.discard(response.connection)


async def probe(address: Address, path: str, *, within: float) -> Probe | None:
    """One ``GET path`` on a fresh connection, read whole ``within`` seconds.

    Returns:
        The answer, or ``None`` if nothing (or nothing complete) came back in time.

    Cancellation: safe; the connection is closed.
    """
    with trio.move_on_after(within):
        try:
            async with (
                UpstreamPool() as pool,
                send_upstream(pool, address, path, b"", method="GET") as response,
            ):
                with uncharged():  # the server's own read: never a request's to fail
                    return Probe(response.status_code, await response.aread())
        except UpstreamError:
            return None
    return None


@final
@attrs.define(eq=False)
class PooledSender:
    """The real :class:`Sender`: :func:`send_upstream` over one :class:`UpstreamPool`."""

    pool: UpstreamPool

    def send(
        self,
        address: Address,
        path: str,
        body: bytes,
        *,
        method: str = "POST",
        content_type: str | None = JSON,
    ) -> AbstractAsyncContextManager[HTTPResponse]:
        return send_upstream(
            self.pool, address, path, body, method=method, content_type=content_type
        )

    async def close_idle(self, address: Address) -> None:
        await self.pool.close_idle(address)

    async def probe(self, address: Address, path: str, *, within: float) -> Probe | None:
        return await probe(address, path, within=within)

    def waiting_since(self, address: Address) -> float | None:
        return self.pool.waiting_since(address)

    async def abort_waiting(self, address: Address, *, since_before: float, reason: str) -> int:
        return await self.pool.abort_waiting(address, since_before=since_before, reason=reason)
