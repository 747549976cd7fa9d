"""Remote requests to plain ``http://`` servers over our own HTTP/1.1 client.

The framing of :mod:`bodhi_trio._core._http1`, keep-alive sockets per host and port,
and a watchdog for the idle timeout. Why not httpx here: it hands over one piece per
HTTP chunk, that is one SSE event and so one client write each, where our decoder
hands on everything a read brought, and it costs about half a millisecond more per
request (docs/benchmarks.md, "Remote aliases").
"""

from __future__ import annotations

import urllib.request
from collections.abc import Sequence
from typing import final
from urllib.parse import urlsplit

import attrs
import trio

from bodhi_trio._core._address import Address
from bodhi_trio._exceptions import RemoteConnectError, UpstreamError
from bodhi_trio._transport._pool import UpstreamConnection, UpstreamPool
from bodhi_trio._transport._remote_base import USER_AGENT, RemoteTimeouts, stalled
from bodhi_trio._transport._response import HTTPResponse, StaleConnection, exchange

__all__ = ["PlainClient", "PlainTarget", "proxied"]


@final
@attrs.frozen
class PlainTarget:
    """Where an ``http://`` URL's request goes over our own client."""

    host: str
    port: int
    host_header: str  # as the URL writes it: host, and the port if it gives one
    target: str  # path and query

    @classmethod
    def of(cls, url: str) -> PlainTarget | None:
        """``url``'s target, or ``None`` if it is not plain ASCII ``http://``."""
        if not url.startswith("http://") or not url.isascii():
            return None
        parts = urlsplit(url)
        if not parts.hostname or "@" in parts.netloc:
            return None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port or 80, parts.netloc, target)

    @property
    def address(self) -> Address:
        """Its host and port (where its connections are kept)."""
        return Address.tcp(self.host, self.port)

    def request(self, method: str, body: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
        """The request head and body; a header that could reframe it is refused.

        Raises:
            UpstreamError: A header's name or value holds CR, LF or NUL (an
                ``api_key_env`` variable's value can: it is not checked elsewhere).
        """
        given = {name.lower() for name, _ in headers}
        lines = [f"{method} {self.target} HTTP/1.1"]
        if "host" not in given:
            lines.append(f"Host: {self.host_header}")
        if "user-agent" not in given:
            lines.append(f"User-Agent: {USER_AGENT}")
        lines.append("Accept: */*")
        lines.append("Accept-Encoding: identity")  # relayed as it came: never compressed
        if body or method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {len(body)}")
        for name, value in headers:
            if any(c in name or c in value for c in "\r\n\0"):
                raise UpstreamError(f"header {name!r} for http://{self.host_header} is invalid")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@final
class PlainClient:
    """Our own HTTP/1.1 client for plain ``http://`` remotes: idle keep-alive connections per
    host and port, and the watchdog that ends reads past their idle timeout.

    A connection and its response are the loopback client's (:class:`UpstreamConnection`,
    :class:`HTTPResponse`), so a remote stream is relayed as a child's is: a paced token
    is one read and one write (:meth:`HTTPResponse.relay_to`). The idle timeout is kept by
    the watchdog, not by a deadline per read (a cancel scope costs more than the rest of a
    read here), from the connection's ``waiting_since``: the first wait after the last
    bytes, so a wait cut short by the relay's keep-alive goes on counting.
    """

    def __init__(self) -> None:
        self._kept = UpstreamPool()  # idle connections per host and port (only those)
        # open responses' connections, watched: the response, its URL and timeouts
        self._open: dict[UpstreamConnection, tuple[HTTPResponse, str, RemoteTimeouts]] = {}
        self._opened = trio.Event()  # wakes the watchdog when nothing was open
        self._closed = False

    async def send(
        self,
        plain: PlainTarget,
        url: str,
        body: bytes,
        headers: Sequence[tuple[str, str]],
        timeouts: RemoteTimeouts,
        method: str,
    ) -> HTTPResponse:
        """Send on a kept connection, or a new one; a kept one that the remote closed
        while idle is replaced once (:class:`StaleConnection`). Give the response to
        :meth:`release` when done with it.

        Raises:
            RemoteConnectError: Never reached it (nothing was sent).
            RemoteStalledError: No head within the idle timeout.
            UpstreamError: Any other failure.

        Cancellation: the connection is closed.
        """
        if self._closed:
            raise UpstreamError("the server is shutting down")
        request = plain.request(method, body, headers)
        address = plain.address
        connection = self._kept.take_idle(address)
        if connection is not None:
            connection.peer = url
            try:
                return await self._exchange(connection, request, url, timeouts, method)
            except StaleConnection:
                # the remote closed its idle connections: the others are likely closed too
                await self._kept.close_idle(address)
        stream = await _connect(plain, url, timeouts)
        connection = UpstreamConnection(address, stream, peer=url)
        return await self._exchange(connection, request, url, timeouts, method)

    async def _exchange(
        self,
        connection: UpstreamConnection,
        request: bytes,
        url: str,
        timeouts: RemoteTimeouts,
        method: str,
    ) -> HTTPResponse:
        try:
            with trio.fail_after(timeouts.idle):  # once per request: the head
                response = await exchange(connection, request, method)
        except trio.TooSlowError:
            await connection.aclose()
            raise stalled(url, timeouts) from None
        except BaseException:
            await connection.aclose()
            raise
        self._open[connection] = (response, url, timeouts)
        self._opened.set()
        return response

    async def release(self, response: HTTPResponse) -> None:
        """Keep the connection of a response read to its end for the next request, or close
        it. Idempotent.

        Cancellation: shielded (closing a socket does not wait).
        """
        connection = response.connection
        watched = self._open.get(connection)
        if watched is None or watched[0] is not response:
            return  # released before (its connection may carry another response now)
        del self._open[connection]
        if response.reusable and not self._closed and self._kept.give_back(connection):
            return
        await connection.aclose()

    async def serve_watchdog(self) -> None:
        """Close the connection under each read whose remote has sent nothing for its
        idle timeout. While responses are open, checks every quarter of the shortest
        timeout, at most every second (a stalled stream ends within 1.25x its timeout,
        at most 1 s late); while none is, sleeps until one opens. Runs until cancelled
        (its owner, :func:`open_remote_clients`, does at exit); never raises otherwise.
        """
        while True:
            if not self._open:
                self._opened = trio.Event()
                await self._opened.wait()
                continue
            await trio.sleep(min(1.0, min(t.idle for _, _, t in self._open.values()) / 4))
            now = trio.current_time()
            for connection, (_, url, timeouts) in list(self._open.items()):
                since = connection.waiting_since
                if since is not None and now - since >= timeouts.idle:
                    await connection.abort(stalled(url, timeouts))

    async def aclose(self) -> None:
        """Close the idle connections (open responses belong to their requests)."""
        self._closed = True
        await self._kept.aclose()


async def _connect(plain: PlainTarget, url: str, timeouts: RemoteTimeouts) -> trio.SocketStream:
    """A new connection for ``url``.

    Raises:
        RemoteConnectError: Refused, unresolvable, or not within the connect timeout.
    """
    try:
        with trio.fail_after(timeouts.connect):
            return await trio.open_tcp_stream(plain.host, plain.port)
    except trio.TooSlowError:
        raise RemoteConnectError(
            f"could not connect to {url} within {timeouts.connect:g} s (connect timeout)"
        ) from None
    except OSError as exc:
        raise RemoteConnectError(f"could not connect to {url}: {exc}") from None


def proxied() -> bool:
    """Whether the environment names a proxy for ``http://`` URLs (httpx then uses it,
    ``NO_PROXY`` applied)."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get("http") or proxies.get("all"))
