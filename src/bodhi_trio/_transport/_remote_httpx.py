"""Remote requests over httpx: HTTPS (TLS, a CA bundle) and proxied remotes.

One pooled ``httpx.AsyncClient`` per origin and CA bundle. The body is read by a
task of its own that hands each piece over a channel (:class:`HttpxResponse`):
httpx closes the connection when a read of its body is cancelled, and the relay
waits for bytes with a deadline (its keep-alive).
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import final
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from bodhi_trio._core._groups import reraise_unwrapped, sole_exception
from bodhi_trio._exceptions import RemoteConnectError, RemoteStalledError, UpstreamError
from bodhi_trio._transport._remote_base import USER_AGENT, RemoteTimeouts
from bodhi_trio._transport._whole import read_whole

__all__ = ["HttpxClients", "HttpxResponse", "map_error"]

_CLOSE_TIMEOUT = 5.0
_MAX_CA_BUNDLE = 4 * 1024 * 1024  # the whole Mozilla set is about 220 KB

logger = logging.getLogger("bodhi_trio.remote")


def _tls_reason(exc: BaseException) -> str | None:
    """The TLS failure inside ``exc``'s causes, named (``certificate verify failed``…)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            detail = seen.verify_message
            return f"certificate verify failed: {detail}" if detail else str(seen)
        if isinstance(seen, ssl.SSLError):
            return seen.reason or str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return text if "SSL" in text or "CERTIFICATE" in text.upper() else None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def map_error(exc: httpx.HTTPError, url: str, timeouts: RemoteTimeouts) -> UpstreamError:
    """An httpx failure as our error, named for a person reading it."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return RemoteConnectError(
            f"could not connect to {url} within {timeouts.connect:g} s (connect timeout)"
        )
    if isinstance(exc, httpx.ConnectError):
        tls = _tls_reason(exc)
        if tls is not None:
            return RemoteConnectError(f"TLS error connecting to {url}: {tls}")
        return RemoteConnectError(f"could not connect to {url}: {exc}")
    if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout):
        return RemoteStalledError(
            f"{url} sent nothing for {timeouts.idle:g} s (the alias's idle_timeout_secs)"
        )
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return UpstreamError(f"the connection to {url} broke: {exc or type(exc).__name__}")
    return UpstreamError(f"request to {url} failed: {type(exc).__name__}: {exc}")


@final
@attrs.define(eq=False)
class HttpxResponse:
    """A remote's response (httpx) whose head has arrived; iterate it for the body.

    Each piece is what one read brought (chunked framing removed, nothing else
    changed). A failure while reading raises :class:`UpstreamError`.

    The reads run in a task of their own (:meth:`pump`, started by
    :meth:`RemoteClients.send`) that hands each piece over a channel: httpx closes
    the connection when a read of its body is cancelled, so a consumer that waits
    with a deadline (the relay's keep-alive) would otherwise lose the stream.
    """

    _response: httpx.Response
    _url: str
    _timeouts: RemoteTimeouts
    _send: trio.MemorySendChannel[bytes | UpstreamError]
    _receive: trio.MemoryReceiveChannel[bytes | UpstreamError]

    @classmethod
    def for_response(
        cls, response: httpx.Response, url: str, timeouts: RemoteTimeouts
    ) -> HttpxResponse:
        send, receive = trio.open_memory_channel[bytes | UpstreamError](0)
        return cls(response, url, timeouts, send, receive)

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        """The next piece.

        Raises:
            UpstreamError: The read failed (stalled, broke), or the response was closed.

        Cancellation: safe; no byte is lost, iterating again goes on.
        """
        try:
            piece = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        except trio.ClosedResourceError:
            raise UpstreamError(f"the response from {self._url} was closed") from None
        if isinstance(piece, UpstreamError):
            raise piece
        return piece

    async def aread(self) -> bytes:
        return await read_whole(self, self._url)

    async def pump(self) -> None:
        """Read the body and hand it to the consumer piece by piece; never raises but
        ``Cancelled`` (a failure goes over the channel as an :class:`UpstreamError`).

        Cancellation: the connection is closed (the body was not read to its end).
        """
        stream = self._response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        pieces = stream.__aiter__()
        error: UpstreamError
        while True:
            try:
                piece = await pieces.__anext__()
            except StopAsyncIteration:
                self._send.close()
                return
            except httpx.HTTPError as exc:
                error = map_error(exc, self._url, self._timeouts)
                break
            except Exception as exc:  # h11 or TLS trouble httpx did not wrap
                error = UpstreamError(
                    f"reading from {self._url} failed: {type(exc).__name__}: {exc}"
                )
                break
            if not piece:
                continue
            try:
                await self._send.send(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._abandon(pieces)  # the consumer closed the response
                return
            except BaseException:
                await self._abandon(pieces)
                raise
        try:
            await self._send.send(error)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        self._send.close()

    async def _abandon(self, pieces: AsyncIterator[bytes]) -> None:
        """Stop reading mid-body: close the connection, then run ``pieces`` to its (failed)
        end. httpx's body iterator is a chain of async generators that closing the outer
        one would leave suspended, for the garbage collector (and a ResourceWarning).

        Cancellation: shielded and bounded.
        """
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
            await self._response.aclose()
            while True:
                try:
                    await pieces.__anext__()
                except Exception:  # StopAsyncIteration too
                    return

    async def aclose(self) -> None:
        """Close the body (and the connection, if it was not read to its end); a read
        waiting for the next piece then fails.

        Cancellation: shielded and bounded, so a departing client never leaves the
        connection half-open.
        """
        self._receive.close()
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
            await self._response.aclose()


@final
class HttpxClients:
    """One pooled ``httpx.AsyncClient`` per origin and CA bundle."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str | None], httpx.AsyncClient] = {}
        self._lock = trio.Lock()
        self._closed = False

    async def client_for(self, url: str, ca_bundle: str | None) -> httpx.AsyncClient:
        """The client for ``url``'s origin (made on first use; a CA bundle is read then).

        Raises:
            RemoteConnectError: The CA bundle cannot be read or is not PEM certificates.
        """
        key = (_origin(url), ca_bundle)
        client = self._clients.get(key)
        if client is not None:
            return client
        async with self._lock:
            if self._closed:
                raise UpstreamError("the server is shutting down")
            client = self._clients.get(key)
            if client is None:
                verify: ssl.SSLContext | bool = True
                if ca_bundle is not None:
                    verify = await trio.to_thread.run_sync(
                        _context_with, ca_bundle, abandon_on_cancel=True
                    )
                client = httpx.AsyncClient(
                    verify=verify,
                    # The body is relayed as its bytes came: never compressed.
                    headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                    follow_redirects=False,
                )
                self._clients[key] = client
        return client

    @asynccontextmanager
    async def send(
        self,
        url: str,
        body: bytes,
        *,
        headers: Sequence[tuple[str, str]],
        timeouts: RemoteTimeouts,
        ca_bundle: str | None,
        method: str,
    ) -> AsyncIterator[HttpxResponse]:
        """As :meth:`RemoteClients.send`, over httpx."""
        client = await self.client_for(url, ca_bundle)
        request = client.build_request(
            method, url, content=body, headers=list(headers), timeout=timeouts.for_httpx()
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise map_error(exc, url, timeouts) from None
        if not 100 <= response.status_code < 600:  # h11 reads any three digits
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
                await response.aclose()
            status = response.status_code
            raise UpstreamError(f"{url} answered with status {status}, not an HTTP status")
        remote = HttpxResponse.for_response(response, url, timeouts)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(remote.pump, name=f"read {url}")
                try:
                    yield remote
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # what the block raised, as it raised it
            reraise_unwrapped(_leading(group))
        finally:
            await remote.aclose()

    async def aclose(self) -> None:
        """Close every client and its connections. Idempotent.

        Cancellation: shielded and bounded.
        """
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
            for client in clients:
                await client.aclose()


def _leading(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to raise for ``group``: the sole one that is not the reader's
    cancellation, else the sole one, else the group."""
    sole = sole_exception(group)
    if sole is not None:
        return sole
    rest = group.subgroup(lambda error: not isinstance(error, trio.Cancelled))
    if rest is not None:
        return sole_exception(rest) or group
    return group


def _context_with(ca_bundle: str) -> ssl.SSLContext:
    """A TLS context trusting the CA certificates of the PEM file ``ca_bundle``.

    Whoever may write an alias chooses the path: the file is opened without blocking
    (a FIFO would hold a thread for ever), must be a regular file of at most
    :data:`_MAX_CA_BUNDLE` bytes, and every failure gives the client one message, so
    that it tells nothing about other files (what failed is logged).
    """
    try:
        fd = os.open(ca_bundle, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_CA_BUNDLE:
                raise ValueError("not a regular file of at most 4 MiB")
            pem = file.read(_MAX_CA_BUNDLE + 1).decode("ascii")
        return ssl.create_default_context(cadata=pem)
    except (OSError, ssl.SSLError, ValueError) as exc:
        logger.warning("ca_bundle %s cannot be used: %s: %s", ca_bundle, type(exc).__name__, exc)
        raise RemoteConnectError(
            f"the alias's ca_bundle {ca_bundle} is not a readable PEM file of CA certificates"
        ) from None
