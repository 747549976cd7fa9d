"""Remote requests to plain ``http://`` servers over our own HTTP/1.1 client.

The framing of :mod:`bodhi_trio._core._http1`, keep-alive sockets per host and port,
and a watchdog for the idle timeout. Why not httpx here: it hands over one piece per
HTTP chunk, that is one SSE event and so one client write each, where our decoder
hands on everything a read brought, and it costs about half a millisecond more per
request (docs/benchmarks.md, "Remote aliases").
"""

from __future__ import annotations

import collections
import urllib.request
from collections.abc import Mapping, Sequence
from typing import final
from urllib.parse import urlsplit

import attrs
import trio

from bodhi_trio._core._http1 import BodyDecoder, FramingError, ResponseHead, split_head
from bodhi_trio._exceptions import RemoteConnectError, UpstreamError
from bodhi_trio._transport._remote_base import USER_AGENT, RemoteTimeouts, stalled

__all__ = ["PlainClient", "PlainTarget", "proxied"]

_RECEIVE_BYTES = 65536
_MAX_IDLE_PER_ORIGIN = 64


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
    def key(self) -> tuple[str, int]:
        return (self.host, self.port)

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


class _StaleConnection(Exception):
    """A reused keep-alive connection closed before any byte of an answer: retry on a
    fresh one (the remote closed it while idle); once it answered, never."""


@final
@attrs.define(eq=False)
class _PlainResponse:
    """A response over our own HTTP/1.1 client whose head has arrived.

    Reads happen in the iterating task; a read cancelled (the relay's keep-alive
    deadline) loses no byte, so no reader task is needed. The idle timeout is kept by
    the client's watchdog, not by a deadline per read (a cancel scope costs more than
    the rest of a read here: ~15 µs per event of a paced stream), from the first wait
    after the last bytes: a wait cancelled and taken up again (the keep-alive) goes on
    counting. Closing it before the end closes the connection; a body read to its end
    gives the connection back for reuse.
    """

    _head: ResponseHead
    _stream: trio.SocketStream
    _pending: bytes  # body bytes that came with the head
    _url: str
    _timeouts: RemoteTimeouts
    _client: PlainClient
    _key: tuple[str, int]
    _body: BodyDecoder = attrs.field(init=False)
    _closed: bool = False
    silent_since: float | None = None  # the remote has sent nothing since (Trio clock)
    reading: bool = False  # a read waits for bytes right now
    stalled: bool = False  # the watchdog closed the connection under that read

    def __attrs_post_init__(self) -> None:
        self._body = BodyDecoder(self._head, self._pending)

    @property
    def status_code(self) -> int:
        return self._head.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._head.headers

    @property
    def idle_timeout(self) -> float:
        return self._timeouts.idle

    def __aiter__(self) -> _PlainResponse:
        return self

    async def __anext__(self) -> bytes:
        """The next piece: what the last read brought, framing removed.

        Raises:
            RemoteStalledError: Nothing came for the idle timeout.
            UpstreamError: The connection broke, or the framing was malformed.

        Cancellation: safe; no received byte is lost, iterating again goes on.
        """
        body = self._body
        while not body.complete:
            data, self._pending = self._pending, b""
            if not data:
                data = await self._receive()
                if not data:
                    try:
                        body.at_eof()  # the body ran until the connection closed
                    except FramingError:
                        broke = f"the connection to {self._url} broke mid-body"
                        raise UpstreamError(broke) from None
                    break
            try:
                payload = body.feed(data)
            except FramingError as exc:
                raise UpstreamError(f"{self._url} sent a malformed body: {exc}") from None
            if payload:
                return payload
        raise StopAsyncIteration

    async def _receive(self) -> bytes:
        if self._closed:
            raise UpstreamError(f"the response from {self._url} was closed")
        if self.silent_since is None:
            self.silent_since = trio.current_time()
        self.reading = True
        try:
            data = await self._stream.receive_some(_RECEIVE_BYTES)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self.stalled:
                raise stalled(self._url, self._timeouts) from None
            raise UpstreamError(f"the connection to {self._url} broke: {exc!r}") from None
        finally:
            self.reading = False
        self.silent_since = None
        return data

    async def aread(self) -> bytes:
        return b"".join([piece async for piece in self])

    async def abort_stalled(self) -> None:
        """Close the connection under a read that waited too long (the watchdog's)."""
        self.stalled = True
        await trio.aclose_forcefully(self._stream)

    async def aclose(self) -> None:
        """Give the connection back (body read to its end) or close it. Idempotent.

        Cancellation: shielded (closing a socket does not wait).
        """
        if self._closed:
            return
        self._closed = True
        self._client.unwatch(self)
        # (reusable only once complete: read to its end)
        if self._body.reusable and self._client.give_back(self._key, self._stream):
            return
        await _close(self._stream)


@final
class PlainClient:
    """Our own HTTP/1.1 client for plain ``http://`` remotes: idle keep-alive sockets per
    host and port, and the watchdog that ends reads past their idle timeout."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], collections.deque[trio.SocketStream]] = {}
        self._open: set[_PlainResponse] = set()  # watched while open
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
    ) -> _PlainResponse:
        """Send on a kept connection, or a new one; a kept one that the remote closed
        while idle is replaced once (see :class:`_StaleConnection`).

        Raises:
            RemoteConnectError: Never reached it (nothing was sent).
            RemoteStalledError: No head within the idle timeout.
            UpstreamError: Any other failure.

        Cancellation: the connection is closed.
        """
        if self._closed:
            raise UpstreamError("the server is shutting down")
        request = plain.request(method, body, headers)
        idle = self._idle.get(plain.key)
        if idle:
            try:
                return await self._exchange(idle.pop(), True, request, plain, url, timeouts, method)
            except _StaleConnection:
                # the remote closed its idle connections: the others are likely closed too
                for stale in self._idle.pop(plain.key, ()):
                    await _close(stale)
        stream = await _connect(plain, url, timeouts)
        return await self._exchange(stream, False, request, plain, url, timeouts, method)

    async def _exchange(
        self,
        stream: trio.SocketStream,
        reused: bool,
        request: bytes,
        plain: PlainTarget,
        url: str,
        timeouts: RemoteTimeouts,
        method: str,
    ) -> _PlainResponse:
        data = b""
        try:
            with trio.fail_after(timeouts.idle):  # once per request: the head
                await stream.send_all(request)
                while (found := split_head(data)) is None:
                    more = await stream.receive_some(_RECEIVE_BYTES)
                    if not more:
                        if reused and not data:
                            raise _StaleConnection
                        raise UpstreamError(f"{url} closed the connection before answering")
                    data += more
        except trio.TooSlowError:
            await _close(stream)
            raise stalled(url, timeouts) from None
        except (OSError, trio.BrokenResourceError) as exc:
            await _close(stream)
            if reused and not data:
                raise _StaleConnection from exc
            raise UpstreamError(f"the connection to {url} broke: {exc!r}") from None
        except FramingError as exc:
            await _close(stream)
            raise UpstreamError(f"{url} sent a malformed response: {exc}") from None
        except BaseException:
            await _close(stream)
            raise
        head, rest = found
        if method == "HEAD":  # its Content-Length describes a body that never comes
            head = attrs.evolve(head, length=0, chunked=False)
        response = _PlainResponse(head, stream, rest, url, timeouts, self, plain.key)
        self._open.add(response)
        self._opened.set()
        return response

    def give_back(self, key: tuple[str, int], stream: trio.SocketStream) -> bool:
        """Keep a connection whose response ended; ``False`` if it must be closed."""
        idle = self._idle.setdefault(key, collections.deque())
        if self._closed or len(idle) >= _MAX_IDLE_PER_ORIGIN:
            return False
        idle.append(stream)
        return True

    def unwatch(self, response: _PlainResponse) -> None:
        self._open.discard(response)

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
            await trio.sleep(min(1.0, min(r.idle_timeout for r in self._open) / 4))
            now = trio.current_time()
            for response in list(self._open):
                since = response.silent_since
                if response.reading and since is not None and now - since >= response.idle_timeout:
                    await response.abort_stalled()

    async def aclose(self) -> None:
        """Close the idle connections (open responses belong to their requests)."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for streams in idle.values():
            for stream in streams:
                await _close(stream)


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


async def _close(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True):
        await trio.aclose_forcefully(stream)


def proxied() -> bool:
    """Whether the environment names a proxy for ``http://`` URLs (httpx then uses it,
    ``NO_PROXY`` applied)."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get("http") or proxies.get("all"))
