"""One client connection: Hypercorn's HTTP/1.1 protocol, with seven changes and a fast path.

Hypercorn 0.18's own connection handler (``hypercorn.trio.tcp_server.TCPServer``
and ``hypercorn.protocol.h11.H11Protocol``) is used as is, except:

- **HTTP/1.1 only.** Hypercorn answers an ``Upgrade: h2c`` request with 101 and a
  ``PRI * HTTP/2.0`` preface with HTTP/2, on plain TCP, by default. We serve plain
  HTTP/1.1 on loopback; a second protocol stack is only attack surface. An h2c
  upgrade is ignored (the request is answered in HTTP/1.1, as RFC 9110 §7.8
  allows) and any request line naming another version than 1.0/1.1 gets 505.
- **Both framings refused.** A request with both ``Content-Length`` and
  ``Transfer-Encoding`` (h11 would let ``Transfer-Encoding`` win) gets 400 and the
  connection is closed, as RFC 9112 §6.3 requires: such a request is the
  smuggling vector.
- **Parser errors carry the envelope.** The 400/431/501/505 answers written before a
  request reaches the app have the ``{"error": {...}}`` body every other error has
  (Hypercorn writes them with an empty body). Their messages are fixed: h11's own
  would echo the client's bytes. (Both in :mod:`._h11_strict`.)
- **``Connection: close`` closes.** Hypercorn closes the socket from the task that
  wrote the last response, and Quart-Trio cancels that task as soon as the response
  is out: the close was cut at its first checkpoint and the socket stayed open until
  the keep-alive timeout. The close is shielded here.
- **A client that takes nothing is dropped.** Hypercorn writes with a shielded
  ``send_all`` and no deadline: a client that keeps its connection open but stops
  reading (a stream object nobody iterates, a paused process) held that write, its
  request, the model's read hold and the connection's place forever, and shutdown
  waited for it. Here a write that makes no progress for ``write_timeout`` seconds
  (``BODHI_CLIENT_WRITE_TIMEOUT_SECS``, 60 by default, as nginx's ``send_timeout``)
  closes the connection, and at shutdown every write ends by the server's deadline
  (:meth:`Connection.drop_by`): the request sees its client leave.
- **A client found gone ends its connection.** A request that arrives while a response is
  under way makes h11 pause, and Hypercorn's reader then waits for that response to end,
  reading nothing. When a write found the client gone (reset, broken pipe) or dropped it,
  Hypercorn told the request, but its paused reader waited on forever: the socket and the
  connection's place stayed. Here the reader is cancelled too (:meth:`Connection.client_gone`),
  and while it is paused the socket is watched for the client's leaving
  (``_h11_protocol._ReadGate``): a response that writes nothing would not find it.
- **One keep-alive timer per connection, ended with it.** Hypercorn starts a timer
  task each time the connection turns idle and cancels it when a request comes (a
  lock and a task spawn per request), and never stops it when the connection closes:
  a closed connection's task lived on until the keep-alive timeout (75 s). Here one
  task per connection watches a deadline that requests move (no task step), and ends
  when the connection closes. At shutdown an idle connection closes at once and a
  busy one once its response is out, as with Hypercorn's.

And two shortcuts on the streaming hot path, where each token is one write
(issue 17: a GPU's hundreds of paced streams are hundreds of writes per second,
each a wake-up of its own):

- **A body chunk skips h11.** With chunked framing in force (an SSE stream: no
  ``Content-Length``) a body piece is framed here (``%x CRLF data CRLF``, what h11's
  chunked writer writes) instead of through h11's event machinery.
- **A write that fits goes out at once.** When no other write is in progress, the
  bytes are written to the socket synchronously (one ``send``: no lock, no shielded
  cancel scope, no checkpoint); only what the kernel did not take goes the usual,
  shielded, locked way. Nothing can interleave with a synchronous write, and nothing
  can cancel it half-way, which is what the lock and the shield are there for.
- **A relay writes its pieces itself.** :func:`body_writer` gives the app, for the
  ``send`` Hypercorn handed it, a writer of body pieces that frames each one and writes
  it as above, without the ASGI message, Hypercorn's stream state machine or the
  framework's body iteration in between (the relay of a streamed completion uses it).
  It never yields to a cancellation: a piece is written whole, or the connection
  is closed.

And one way around Hypercorn's request machinery altogether: a whole simple request on a
completion route, read in one piece while the connection is idle, is answered in the
connection's own task by the same app (:mod:`._fast_path`, :mod:`._simple_request`), with
the head h11 would write; anything else goes through Hypercorn as above.

These hook methods are Hypercorn internals (pinned to 0.18.0 in pyproject.toml); the
tests in ``tests/test_connections.py`` fail if an upgrade changes them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any, final

import trio
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr

from bodhi_trio._http._chunk_writer import BodyWriter
from bodhi_trio._http._h11_protocol import ConnectionProtocol, body_writer
from bodhi_trio._http._h11_strict import error_body

__all__ = [
    "DEFAULT_WRITE_TIMEOUT",
    "BodyWriter",
    "Connection",
    "ConnectionsByAge",
    "body_writer",
    "error_body",
]
"""Writes one piece of a response body whose head was sent; never cut by a cancellation."""

logger = logging.getLogger("bodhi_trio.http")

DEFAULT_WRITE_TIMEOUT = 60.0
"""Seconds a client may take nothing of a response before its connection is closed."""


@final
class ConnectionsByAge:
    """Connections in one state, the one in it the longest first: waiting for a request
    (:attr:`ConnectionGate.idle`), or for a client to take a write
    (:attr:`ConnectionGate.stalled`).

    A connection is listed last when it enters the state, so the order in which they
    entered is the order of their deadlines: a dict's insertion order keeps it, and
    marking and finding the oldest are O(1).
    """

    def __init__(self) -> None:
        self._order: dict[Connection, None] = {}

    def mark(self, connection: Connection, listed: bool) -> None:
        """``connection`` entered the state (listed last), or left it or closed (unlisted)."""
        self._order.pop(connection, None)
        if listed:
            self._order[connection] = None

    def oldest(self) -> Connection | None:
        """The connection in the state the longest, if any."""
        return next(iter(self._order), None)


@final
class Connection(TCPServer):
    """Serves one accepted plain-TCP connection (see the module docstring).

    Args:
        app, config, context, state: As for Hypercorn's ``TCPServer``.
        stream: The accepted connection.
        on_close: Called once, just before the socket is closed; a client that sees
            the connection end can count on it having run.
        write_timeout: Seconds a write may make no progress before the connection is
            closed (the client stopped reading).
        fast_targets: The paths whose simple requests are answered on the fast path
            (:mod:`._fast_path`); none by default.
        idle: Where the connection is listed while it waits for a request, so that a
            full server can close it to let a new one in (:meth:`close_if_idle`).
        stalled: Where it is listed while a write waits for the client to take it, so
            that a full server can drop it (:meth:`close_if_stalled`).
    """

    def __init__(
        self,
        app: Any,
        config: Any,
        context: Any,
        state: Any,
        stream: trio.SocketStream,
        on_close: Callable[[], None],
        *,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        fast_targets: frozenset[bytes] = frozenset(),
        idle: ConnectionsByAge | None = None,
        stalled: ConnectionsByAge | None = None,
    ) -> None:
        # Annotated as an SSLStream, but TCPServer serves plain sockets too (its non-TLS branch).
        super().__init__(app, config, context, state, stream)  # type: ignore[arg-type]
        self._on_close = on_close
        self._idle_deadline = math.inf  # when an idle connection times out; inf while busy
        self._idle_scope = trio.CancelScope()  # the keep-alive watch's current wait
        self.closed = False  # set before the socket is closed (a writer's fd is then stale)
        self.writing = 0  # Hypercorn's locked writes under way (nothing may pass them)
        self._write_timeout = write_timeout
        self._drop_at = math.inf  # shutdown's deadline for a write still waiting then
        self._write_scope: trio.CancelScope | None = None  # the write waiting now, if any
        self._fast_targets = fast_targets
        self._idle = idle
        self._stalled = stalled
        self._stalled_since = math.inf  # when the write waiting now last made progress
        self._evicted = False  # dropped to make room at the cap, not by the write timeout
        # The reader's wait: cancelled when the client is found gone by a write, since a
        # reader paused behind a queued request would not see it (see client_gone).
        self._reading = trio.CancelScope()

    async def run(self) -> None:
        # TCPServer.run without its TLS branch and with our protocol instead of
        # Hypercorn's ProtocolWrapper (which is what switches to HTTP/2).
        socket = self.stream.socket
        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                protocol = ConnectionProtocol(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                )
                protocol.owner = self
                protocol.fast_targets = self._fast_targets
                # Typed as ProtocolWrapper; TCPServer only calls initiate() and handle().
                self.protocol = protocol  # type: ignore[assignment]
                await self.protocol.initiate()
                self._set_idle(True)
                task_group.spawn(self._watch_idle)
                try:
                    with self._reading:
                        await self._read_data()
                finally:
                    self._stop_watching_idle()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        """Hypercorn's, with the synchronous write first and our keep-alive timer (see
        the module docstring)."""
        if isinstance(event, RawData):
            if self.writing:
                await self._write_locked(event.data)
            else:
                await self.write_whole(event.data)
        elif isinstance(event, Updated):
            self._set_idle(event.idle)
        else:
            await super().protocol_send(event)

    def _set_idle(self, idle: bool) -> None:
        """The connection turned idle (its timeout starts; at once at shutdown) or busy."""
        deadline = math.inf
        if idle:
            timeout = 0.0 if self.context.terminated.is_set() else self.config.keep_alive_timeout
            deadline = trio.current_time() + timeout
        self._idle_deadline = deadline
        self._idle_scope.deadline = deadline
        if self._idle is not None:
            self._idle.mark(self, idle)

    def close_if_idle(self) -> bool:
        """Close the connection now if it is waiting for a request (or for the rest of
        one's head), as its keep-alive timeout would; whether it was.

        A full server does this to the connection idle the longest when a new one comes,
        so that idle sockets, or heads sent a byte a minute, cannot keep everyone out."""
        if self.closed or self._idle_deadline == math.inf:
            return False
        self._idle_deadline = self._idle_scope.deadline = trio.current_time()
        if self._idle is not None:
            self._idle.mark(self, False)
        return True

    def close_if_stalled(self, for_at_least: float) -> bool | None:
        """Drop the connection now if a write has waited at least ``for_at_least`` seconds
        for its client to take anything, as the write timeout would later; whether it
        was (None: no write of it waits any more).

        A full server does this when no connection is idle: a client that asks and never
        reads (pipelined requests, a tiny receive window) holds its place only until then.
        """
        scope = self._write_scope
        if self.closed or scope is None:
            return None
        now = trio.current_time()
        if now - self._stalled_since < for_at_least:
            return False
        self._evicted = True
        scope.deadline = now
        if self._stalled is not None:
            self._stalled.mark(self, False)
        return True

    async def _watch_idle(self) -> None:
        """Close the connection once it was idle for the keep-alive timeout, or at
        shutdown once it is idle; return when it closed otherwise.

        Cancellation: only with the connection's task group (the connection's end).
        """
        terminated = self.context.terminated
        while not self.closed:
            if terminated.is_set() and self._idle_deadline < math.inf:
                break  # shutting down, and idle
            with trio.CancelScope(deadline=self._idle_deadline) as scope:
                self._idle_scope = scope
                if terminated.is_set():
                    await trio.sleep_forever()  # until idle (_set_idle: now) or closed
                else:
                    await terminated.wait()
            if scope.cancelled_caught and trio.current_time() >= self._idle_deadline:
                break  # idle for the keep-alive timeout
        else:
            return
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    def _stop_watching_idle(self) -> None:
        self.closed = True
        self._idle_scope.cancel()
        if self._idle is not None:
            self._idle.mark(self, False)
        if self._stalled is not None:
            self._stalled.mark(self, False)

    async def write_whole(self, data: bytes) -> None:
        """Write ``data`` to the client whole, or close the connection if it broke.

        Cancellation: none; it is shielded wherever it waits (for the kernel to take
        the rest, for another write, or to close), so a piece is never cut half-way.
        """
        sent = 0
        if not self.writing:
            try:
                # fileno() is -1 once the socket is closed: never another connection's.
                sent = os.write(self.stream.socket.fileno(), data)
            except BlockingIOError:
                pass
            except OSError:  # reset, broken pipe, closed: as Hypercorn's send_all failure
                sent = -1
            if sent == len(data):
                return
        with trio.CancelScope(shield=True):
            if sent < 0:
                await self.client_gone()
            else:  # the rest as Hypercorn writes it (locked), never cut half-way
                await self._write_locked(data[sent:])

    def drop_by(self, deadline: float) -> None:
        """Close the connection at ``deadline`` (Trio clock) if a write to its client is
        still waiting then: at shutdown, where the server's own deadline cannot end a
        write (every write is shielded)."""
        self._drop_at = min(self._drop_at, deadline)
        if self._write_scope is not None:
            self._write_scope.deadline = min(self._write_scope.deadline, deadline)

    async def _write_locked(self, data: bytes) -> None:
        """Hypercorn's write (under its send lock, shielded: never cut half-way), counted
        in :attr:`writing`, with a deadline for progress: a client that takes nothing for
        the write timeout (or until :meth:`drop_by`'s deadline) is dropped.

        Cancellation: none (shielded); it ends by the write timeout.
        """
        self.writing += 1
        try:
            with trio.CancelScope(shield=True):
                async with self.send_lock:  # its holder's write is bounded the same way
                    await self._send_all(data)
        finally:
            self.writing -= 1

    async def _send_all(self, data: bytes) -> None:
        """``data`` to the socket, each send within the write timeout; a broken, closed or
        stuck connection is handled as closed (the request sees its client leave)."""
        sock = self.stream.socket
        view = memoryview(data)
        stalled = self._stalled
        try:
            while view:
                now = trio.current_time()
                deadline = min(now + self._write_timeout, self._drop_at)
                self._stalled_since = now  # listed last: progress, or the first wait
                if stalled is not None:
                    stalled.mark(self, True)
                with trio.CancelScope(deadline=deadline) as scope:
                    self._write_scope = scope
                    sent = await sock.send(view)  # all or nothing of this call
                if scope.cancelled_caught:
                    await self._drop()
                    return
                view = view[sent:]
        except (OSError, trio.ClosedResourceError):  # reset, broken pipe, closed
            await self.client_gone()
        finally:
            self._write_scope = None
            self._stalled_since = math.inf
            if stalled is not None:
                stalled.mark(self, False)

    async def client_gone(self) -> None:
        """A write found the client gone (reset, broken pipe) or its socket closed, or the
        watch of a paused reader saw it leave: end the connection, and its request as if
        the client had left.

        Hypercorn only tells the request (``Closed``). Its reader may be paused, though:
        a request the client queued behind the one answered makes h11 pause, and the
        reader then waits inside the protocol until the response in progress has ended
        and the connection recycles, reading nothing meanwhile. With its response ended
        by ``Closed`` it never recycles: without the reader cancelled here the
        connection, its socket and its place among ``BODHI_MAX_CONNECTIONS`` would stay
        forever. Idempotent.
        """
        self._on_close()
        self.closed = True  # a writer's fd is stale from here (the socket closes next)
        self._reading.cancel()
        await self.protocol.handle(Closed())

    async def _drop(self) -> None:
        """The client took nothing for the write timeout (or shutdown's deadline came):
        close its socket, so that its request ends as if it had left and its place is free.
        """
        if trio.current_time() >= self._drop_at:
            logger.warning("shutting down: a client still not reading its response was cut off")
        elif self._evicted:
            pass  # the server counts these and says so (ConnectionGate.make_room)
        else:
            logger.warning(
                "a client took nothing of its response for %g s: its connection was closed"
                " (BODHI_CLIENT_WRITE_TIMEOUT_SECS)",
                self._write_timeout,
            )
        self._on_close()
        self.closed = True  # before the socket closes: a writer's fd is stale from here
        self._reading.cancel()  # a paused reader would not wake (see client_gone)
        await trio.aclose_forcefully(self.stream)
        await self.protocol.handle(Closed())

    async def _close(self) -> None:
        self._on_close()
        self._stop_watching_idle()
        with trio.CancelScope(shield=True):  # see "Connection: close closes" above
            await super()._close()

    async def _initiate_server_close(self) -> None:
        self._on_close()
        self.closed = True  # before the socket closes: a writer's fd is stale from here
        await super()._initiate_server_close()
