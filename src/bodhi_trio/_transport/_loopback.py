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

from bodhi_trio._core._http1 import FramingError, ResponseHead, split_head
from bodhi_trio._exceptions import UpstreamError
from bodhi_trio._transport._pool import UpstreamConnection, UpstreamPool
from bodhi_trio._transport._response import ChunkSink, HTTPResponse

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


class _StaleConnection(Exception):
    """A reused keep-alive connection failed before any byte of a response: safe to retry
    (llama-server closed it while idle). Once it answered anything, a retry could run the
    generation twice."""


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


async def _read_head(connection: UpstreamConnection) -> tuple[ResponseHead, bytes]:
    """The first final (non-1xx) response head, and the body bytes that came with it."""
    data = b""
    try:
        while (found := split_head(data)) is None:
            more = await connection.receive()
            if not more:
                raise UpstreamError("llama-server closed the connection before answering")
            data += more
    except FramingError as exc:
        raise UpstreamError(f"llama-server sent a malformed response: {exc}") from exc
    return found


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
        try:
            request = _request_bytes(method, address, path, body, content_type)
            await connection.send(request)
        except (OSError, trio.BrokenResourceError) as exc:
            raise UpstreamError(f"llama-server connection broke: {exc!r}") from exc
        head, rest = await _read_head(connection)
        if method == "HEAD":  # its Content-Length describes a body that never comes
            head = attrs.evolve(head, length=0, chunked=False)
    except UpstreamError as exc:
        await pool.discard(connection)
        if connection.reused and not connection.answered and connection.abort_reason is None:
            raise _StaleConnection from exc
        raise
    except BaseException:
        await pool.discard(connection)
        raise
    return HTTPResponse(head, connection, rest)


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
    except _StaleConnection:
        response = await _exchange(
            pool, address, path, body, fresh=True, method=method, content_type=content_type
        )
    try:
        yield response
    finally:
        if not (response._body.reusable and pool.give_back(response._connection)):
            await pool.discard(response._connection)


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
