"""The completion routes' requests answered in the connection's own task (issue 17).

Through Hypercorn a request costs, before the app sees it, h11's parse and state machine,
an ``HTTPStream``, a memory channel and a task for the app; and the response's head and
end go through the stream's state machine and h11's again. On a completion's path to its
first byte that is about a third of the server's own time. A request that
:func:`~._simple_request.parse_simple_request` takes whole from one read is answered
here instead, by the same ASGI app, in the connection's task:

- The app gets the scope Hypercorn would give it (``HTTPStream``'s), the body as one
  ``http.request`` message, and then ``http.disconnect`` when the client leaves (or at
  once, after the answer): while the app runs, :meth:`FastExchange.receive` is the one
  reading the socket. The first bytes of a request sent meanwhile are kept, and, as h11
  pauses, nothing more is read until the response ends; then they are read next.
- The response's head is written as Hypercorn and h11 write it, byte for byte (h11's
  framing and ``Connection`` rules, Hypercorn's ``date`` and ``server`` headers and its
  keep-alive request limit); a body is chunked unless the app gave its length, and a
  relay writes its chunks itself (:class:`~._chunk_writer.ChunkWriter`), as on the
  usual path.
- Afterwards the connection is idle again (h11 never saw the request, so it still is),
  or closed: when the client or the app asked, the response did not end, the app failed
  (a 500 if it sent nothing, unless the client had left), or the server is shutting down.

Anything else, and any request while the connection is not idle, goes through Hypercorn
unchanged. Cancellation: as for the app's task under Hypercorn (the connection's end, or
shutdown's deadline, cancels the app).
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any, final

import trio
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol.http_stream import ASGIHTTPState

from bodhi_trio._core._http1 import FIELD_NAME

if TYPE_CHECKING:
    from hypercorn.config import Config

    from bodhi_trio._http._simple_request import SimpleRequest

__all__ = ["FastExchange", "response_head"]

_REQUEST, _RESPONSE, _CLOSED = ASGIHTTPState.REQUEST, ASGIHTTPState.RESPONSE, ASGIHTTPState.CLOSED
_MAX_READ = 64 * 1024
"""One read of what a client sends while its response is under way (the next request,
sent early: read once, then no more until the response ends, as h11 pauses)."""
_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")  # h11's field-value
_NO_BODY = frozenset({204, 304})
_ASGI = {"spec_version": "2.1", "version": "3.0"}
_HEADS_KEPT = 64


@final
class _Heads:
    """What every head repeats, worked out once: Hypercorn's ``date`` and ``server``
    headers once a second (the date has a second's resolution), and the heads of the
    last few distinct responses (a completion's stream has one head, but for its date).
    """

    def __init__(self) -> None:
        self._config: Config | None = None
        self._second = -1
        self._standard: tuple[tuple[bytes, bytes], ...] = ()
        self._heads: dict[
            tuple[int, tuple[tuple[bytes, bytes], ...], bool],
            tuple[bytes, bool, int | None, bool],
        ] = {}

    def standard(self, config: Config) -> list[tuple[bytes, bytes]]:
        """``config.response_headers("h11")``, computed at most once a second."""
        second = int(time.time())
        if second != self._second or config is not self._config:
            self._standard = tuple(config.response_headers("h11"))
            self._config, self._second = config, second
        return list(self._standard)

    def head(
        self, status: int, headers: list[tuple[bytes, bytes]], *, close: bool
    ) -> tuple[bytes, bool, int | None, bool]:
        """:func:`response_head`, of a response seen lately if it was."""
        key = (status, tuple(headers), close)
        found = self._heads.get(key)
        if found is None:
            found = response_head(status, headers, close=close)  # raises before it is kept
            if len(self._heads) >= _HEADS_KEPT:
                self._heads.clear()
            self._heads[key] = found
        return found


_HEADS = _Heads()


def response_head(
    status: int, headers: list[tuple[bytes, bytes]], *, close: bool
) -> tuple[bytes, bool, int | None, bool]:
    """The head h11 writes for this response to an HTTP/1.1 ``POST``.

    Args:
        status: The status code (200-999).
        headers: The app's headers and Hypercorn's, as Hypercorn hands them to h11.
        close: The request asked to close the connection.

    Returns:
        The head's bytes; whether the body is chunked; its length if declared (``0`` for
        a status without a body); whether the connection closes after it.

    Raises:
        ValueError: What h11 would refuse: a status out of range, a header it cannot
            write, ``Transfer-Encoding`` or a bad ``Content-Length`` from the app.
    """
    if not 200 <= status < 1000:
        raise ValueError(f"status {status} cannot be sent here")
    named: list[tuple[bytes, bytes, bytes]] = []  # (as given, lowercased, value)
    length: int | None = None
    keeps_alive = True
    for raw_name, value in headers:
        if not FIELD_NAME.fullmatch(raw_name) or not _VALUE.fullmatch(value):
            raise ValueError(f"header {raw_name!r} cannot be written")
        name = raw_name.lower()
        if name == b"transfer-encoding":
            raise ValueError("Transfer-Encoding from the app is not supported here")
        if name == b"content-length":
            if length is not None or not value.isdigit():
                raise ValueError("a bad Content-Length")
            length = int(value)
        elif name == b"connection" and b"close" in _tokens(value):
            keeps_alive = False
        named.append((raw_name, name, value))
    chunked = False
    if status in _NO_BODY:
        length = 0
    elif length is None:  # h11: a body of unknown length to HTTP/1.1 is chunked
        chunked = True
        named.append((b"Transfer-Encoding", b"transfer-encoding", b"chunked"))
    if close:  # h11 makes sure the head says so
        tokens = {
            token for _, name, value in named if name == b"connection" for token in _tokens(value)
        }
        tokens.discard(b"keep-alive")
        tokens.add(b"close")
        named = [item for item in named if item[1] != b"connection"]
        named.extend((b"Connection", b"connection", token) for token in sorted(tokens))
    lines = [b"HTTP/1.1 %d \r\n" % status]
    lines.extend(b"%s: %s\r\n" % (raw, value) for raw, name, value in named if name == b"host")
    lines.extend(b"%s: %s\r\n" % (raw, value) for raw, name, value in named if name != b"host")
    lines.append(b"\r\n")
    return b"".join(lines), chunked, None if chunked else length, close or not keeps_alive


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip() for token in value.lower().split(b",") if token.strip()]


@final
class FastExchange:
    """One request answered on the fast path (see the module docstring).

    ``closed`` and ``state`` are what :class:`~._chunk_writer.ChunkWriter` reads of
    Hypercorn's ``HTTPStream``; :meth:`send` is the app's ``send``.

    Args:
        protocol: The connection's protocol (its ``send``, ``config``, ``owner``).
        request: The request.
    """

    def __init__(self, protocol: Any, request: SimpleRequest) -> None:
        self.closed = False
        self.state = _REQUEST
        self.owner = protocol.owner
        self._protocol = protocol
        self._request = request
        self._body_given = False
        self._chunked = False
        self._left: int | None = None
        self._close_after = request.close
        self._pending = bytearray()
        self._watch = trio.CancelScope()
        self._left_event = trio.Event()  # the client left (or the connection closed)
        self._watching = False
        self._done = False
        self._bodiless = False

    def frames_chunks(self) -> bool:
        """The head is out and the body is chunked: a relay writes its chunks itself."""
        return self._chunked and self.state is _RESPONSE

    def scope(self) -> dict[str, Any]:
        """The ASGI scope ``HTTPStream`` would give the app for this request."""
        protocol, target = self._protocol, self._request.target
        return {
            "type": "http",
            "http_version": "1.1",
            "asgi": dict(_ASGI),
            "method": "POST",
            "scheme": "http",
            "path": target.decode("ascii"),
            "raw_path": target,
            "query_string": b"",
            "root_path": protocol.config.root_path,
            "headers": self._request.headers,
            "client": protocol.client,
            "server": protocol.server,
            "state": protocol.connection_state.copy(),
            "extensions": {},
        }

    async def run(self, app: Any) -> bytes:
        """Answer the request with ``app`` (Hypercorn's wrapper of ours), then leave the
        connection idle or closed (module docstring).

        Returns:
            What the client sent meanwhile, to be read next (empty once closed).
        """
        protocol = self._protocol
        await protocol.send(Updated(idle=False))
        protocol.keep_alive_requests += 1
        await protocol.context.mark_request()
        config: Config = protocol.config
        try:
            await app(
                self.scope(), self.receive, self.send, trio.to_thread.run_sync, trio.from_thread.run
            )
        except trio.Cancelled:
            raise
        except BaseExceptionGroup as group:  # as Hypercorn's app task: logged, then a 500
            if group.split(trio.Cancelled)[1] is None:
                raise
            await config.log.exception("Error in ASGI Framework")
        except Exception:
            await config.log.exception("Error in ASGI Framework")
        finally:
            self._done = True
            self._watch.cancel()
            with trio.CancelScope(shield=True):
                await self._finish()
        return b"" if self.closed else bytes(self._pending)

    async def _finish(self) -> None:
        protocol = self._protocol
        if self.state is _REQUEST and not self.closed:  # the app never answered
            headers = [(b"content-length", b"0"), (b"connection", b"close")]
            headers.extend(self._hypercorn_headers())
            head = response_head(500, headers, close=self._request.close)[0]
            self.state = _CLOSED
            self._close_after = True
            await protocol.send(RawData(data=head))
        if (
            self.closed
            or self.state is not _CLOSED
            or self._close_after
            or protocol.context.terminated.is_set()
        ):
            self.closed = True
            await protocol.send(Closed())
        else:
            await protocol.send(Updated(idle=True))

    def _hypercorn_headers(self) -> list[tuple[bytes, bytes]]:
        """What Hypercorn adds to every head: ``date``, ``server``, and ``connection:
        close`` once the connection served its most requests."""
        protocol = self._protocol
        headers = _HEADS.standard(protocol.config)
        if protocol.keep_alive_requests >= protocol.config.keep_alive_max_requests:
            headers.append((b"connection", b"close"))
        return headers

    def connection_closed(self) -> None:
        """The connection closed under the response (its protocol got ``Closed``): the
        app hears that its client left."""
        self.closed = True
        self._left_event.set()
        self._watch.cancel()

    def receive_nowait(self) -> dict[str, Any]:
        """The body, if :meth:`receive` has not given it yet.

        Raises:
            trio.WouldBlock: It has: what comes next is only ever waited for.
        """
        if self._body_given:
            raise trio.WouldBlock
        self._body_given = True
        return {"type": "http.request", "body": self._request.body, "more_body": False}

    async def receive(self) -> dict[str, Any]:
        """The body, then ``http.disconnect`` once the client leaves.

        Cancellation: at any point; bytes read by then are kept.
        """
        if not self._body_given:
            return self.receive_nowait()
        if self._done or self.state is _CLOSED or self.closed:
            # as Hypercorn says once a response ended, or the client left; still a
            # checkpoint: a caller that asks again and again never spins the loop
            await trio.lowlevel.checkpoint()
            return {"type": "http.disconnect"}
        if self._watching:  # one reader of the socket; others wait for what it sees
            await self._left_event.wait()
            return {"type": "http.disconnect"}
        self._watching = True
        try:
            with trio.CancelScope() as self._watch:
                await self._watch_client()
        finally:
            self._watching = False
        if not self._left_event.is_set():  # set unless the response ended (then cancelled)
            await self._left_event.wait()
        return {"type": "http.disconnect"}  # at once: it waited (its caller stops a relay)

    async def _watch_client(self) -> None:
        """Read the socket until the client leaves (EOF, reset, closed), or until it sent
        the start of its next request: then, as h11 pauses, nothing more is read until
        the response ends (a client that leaves after that is seen then)."""
        owner = self.owner
        while not self.closed:
            fd = owner.stream.socket.fileno()
            if fd < 0:
                break
            try:
                await trio.lowlevel.wait_readable(fd)
                # The socket may have closed, and its number been reused, while this task
                # waited to run: never read another connection's bytes.
                if owner.closed or owner.stream.socket.fileno() != fd:
                    break
                data = os.read(fd, _MAX_READ)
            except BlockingIOError:
                continue
            except (OSError, trio.ClosedResourceError):
                break
            if not data:
                break
            self._pending += data
            await trio.sleep_forever()  # until the response ends (this is cancelled)
        # Gone: its answer is dropped, as Hypercorn drops a closed stream's (no 500).
        self.closed = True
        self._left_event.set()

    async def send(self, message: dict[str, Any]) -> None:
        """The app's ``send``: the head, the body's pieces and its end, as h11 frames them.

        Raises:
            ValueError: A message out of order, or a head or body h11 would refuse.
        """
        if self.closed:
            return
        kind = message["type"]
        protocol = self._protocol
        if kind == "http.response.start" and self.state is _REQUEST:
            headers = [
                (bytes(name).strip(), bytes(value).strip())
                for name, value in message.get("headers", [])
            ]
            headers.extend(self._hypercorn_headers())
            head, self._chunked, self._left, close = _HEADS.head(
                int(message["status"]), headers, close=self._request.close
            )
            self._close_after = self._close_after or close
            self._bodiless = int(message["status"]) in _NO_BODY
            self.state = _RESPONSE
            await protocol.send(RawData(data=head))
        elif kind == "http.response.body" and self.state is _RESPONSE:
            # Hypercorn drops the body of a status that has none
            data = b"" if self._bodiless else bytes(message.get("body", b""))
            more = message.get("more_body", False)
            if self._chunked:
                out = b"%x\r\n%s\r\n" % (len(data), data) if data else b""
                if not more:
                    out += b"0\r\n\r\n"
            else:
                left = (self._left or 0) - len(data)
                if left < 0 or (left and not more):
                    self._close_after = True
                    raise ValueError("the body does not match its Content-Length")
                self._left, out = left, data
            if not more:
                self.state = _CLOSED
            if out:
                await protocol.send(RawData(data=out))
        else:
            raise ValueError(f"unexpected ASGI message {kind!r} in state {self.state}")
