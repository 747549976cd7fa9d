"""The HTTP server: Hypercorn's HTTP/1.1 connections behind our own accept loop.

Why not ``hypercorn.trio.serve``: its accept loop (``trio.serve_listeners``) takes
every connection the kernel offers. Idle sockets cost a client nothing, so enough
of them used up the open-files limit and ``accept`` failed with EMFILE for as long
as they stayed; nobody else got in. Here connections are counted where they are
accepted. At ``max_connections`` a new one takes the place of the connection idle the
longest (waiting for a request, or for the rest of a head sent slowly), which is
closed as its keep-alive timeout would close it: idle sockets cannot keep anyone out.
With none idle, it takes the place of one whose client has taken nothing of a write for
:data:`STALLED_FOR` seconds (dropped as the write timeout would drop it later): clients
that ask and never read cannot either. Only when every connection is busy with a request,
and its client reading, is a new one answered with a 503
envelope (``too_many_connections``, ``Retry-After``, ``Connection: close``) and
closed; the server takes connections again as soon as any ends. Counting in the ASGI
app would be too late: an idle connection never becomes a request.

Everything else follows ``hypercorn.trio.run.worker_serve`` (0.18): the ASGI
lifespan around it all; on shutdown, stop accepting, tell connections
(``context.terminated``: no keep-alive reuse) and give them
``config.graceful_timeout`` before they are cancelled. A connection itself is run by
:class:`~bodhi_trio._http._connection.Connection`.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, final

import attrs
import trio
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from bodhi_trio._exceptions import ListenError
from bodhi_trio._http._connection import (
    DEFAULT_WRITE_TIMEOUT,
    Connection,
    ConnectionsByAge,
    error_body,
)

if TYPE_CHECKING:
    import socket

    from hypercorn.config import Config

__all__ = ["ConnectionGate", "serve_http"]

logger = logging.getLogger("bodhi_trio.http")

# accept() errors that mean "out of descriptors or memory now", not "listener broken".
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_RETRY_SECS = 0.1
_MAX_REFUSING = 32
"""Refusals being written at once; beyond that a connection is closed without a word,
so refusing can never use more descriptors than this."""
_MAX_CLOSING_IDLE = 32
"""Connections admitted over the cap while as many idle ones close to make room."""
_LISTEN_ADVICE = {
    errno.EADDRINUSE: " (another program listens there: choose a port with --port or BODHI_PORT)",
    errno.EADDRNOTAVAIL: " (not an address of this machine: choose one with --host or BODHI_HOST)",
    errno.EACCES: " (ports below 1024 need privileges: choose another with --port)",
}
STALLED_FOR = 5.0
"""At the cap with nothing idle, seconds a client may take nothing of a write before its
connection makes room for a new one: a reader of a stream never waits that long, one that
asks and never reads (the write timeout is a minute) holds a place no longer."""
_REFUSAL_LINGER_SECS = 1.0
_WARN_EVERY_SECS = 10.0
_RETRY_AFTER_SECS = 1


@final
@attrs.define(eq=False)
class ConnectionGate:
    """Counts open connections against the cap.

    Attributes:
        limit: The most connections served at once.
        open: Connections being served now.
        refusing: Refusals being written now.
        refused: Connections refused since the start.
        accept_failures: ``accept`` calls that failed for lack of descriptors or memory.
        idle: The open connections waiting for a request, idle the longest first.
        closed_idle: Idle connections closed to let a new one in, since the start.
        stalled: The open connections whose write waits for the client to take it, the
            one waiting the longest first.
        stalled_for: How long a write must have waited before its connection may be
            dropped to let a new one in (when none is idle).
        dropped_stalled: Connections dropped so, since the start.
    """

    limit: int
    open: int = 0
    refusing: int = 0
    refused: int = 0
    accept_failures: int = 0
    idle: ConnectionsByAge = attrs.field(factory=ConnectionsByAge)
    closed_idle: int = 0
    stalled: ConnectionsByAge = attrs.field(factory=ConnectionsByAge)
    stalled_for: float = STALLED_FOR
    dropped_stalled: int = 0
    _last_warning: dict[str, float] = attrs.field(factory=dict, init=False)

    def refusal(self) -> bytes:
        """The complete 503 answer for a connection over the cap."""
        body = error_body(
            f"too many connections: at most {self.limit} are served at once"
            " (BODHI_MAX_CONNECTIONS); retry shortly",
            "service_unavailable",
            "too_many_connections",
        )
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            f"retry-after: {_RETRY_AFTER_SECS}\r\n"
            "connection: close\r\n\r\n"
        )
        return head.encode() + body

    def make_room(self) -> bool:
        """Close the connection idle the longest, or else drop the one whose client has
        taken nothing of a write for :attr:`stalled_for` seconds or more, if there is one
        and not too many are closing already; whether one was (its place is free once it
        has closed)."""
        if self.open >= self.limit + _MAX_CLOSING_IDLE:
            return False
        while (oldest := self.idle.oldest()) is not None:
            if oldest.close_if_idle():
                self.closed_idle += 1
                return True
            self.idle.mark(oldest, False)  # closing already: not a place to free
        while (stuck := self.stalled.oldest()) is not None:
            dropped = stuck.close_if_stalled(self.stalled_for)
            if dropped is None:  # its write is over: not a place to free
                self.stalled.mark(stuck, False)
                continue
            if dropped:
                self.dropped_stalled += 1
            return dropped  # False: the longest wait is still short
        return False

    def warning_due(self, topic: str) -> bool:
        """Whether to log about ``topic`` now: a flood must not flood the log, so once
        every few seconds."""
        now = trio.current_time()
        if now - self._last_warning.get(topic, float("-inf")) < _WARN_EVERY_SECS:
            return False
        self._last_warning[topic] = now
        return True


@final
@attrs.define(eq=False)
class _Slot:
    """One connection's place under the cap; released once, by whoever closes first."""

    gate: ConnectionGate
    held: bool = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.gate.open -= 1


async def _refuse(stream: trio.SocketStream, gate: ConnectionGate) -> None:
    gate.refusing += 1
    try:
        with trio.move_on_after(_REFUSAL_LINGER_SECS):
            await stream.send_all(gate.refusal())
            await stream.send_eof()
            # Read until the client closes: closing with its request unread would send
            # a RST, which can destroy the 503 before the client reads it.
            while await stream.receive_some(65536):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        gate.refusing -= 1
        await trio.aclose_forcefully(stream)


async def _accept_loop(
    listener: trio.SocketListener,
    gate: ConnectionGate,
    connections: trio.Nursery,
    serve_one: Callable[[trio.SocketStream, _Slot], Awaitable[None]],
) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                # Only if something besides connections eats descriptors (the default
                # cap leaves room): back off instead of spinning.
                gate.accept_failures += 1
                if gate.warning_due("accept"):
                    logger.error("accept failed %d times, now: %s", gate.accept_failures, exc)
                await trio.sleep(_ACCEPT_RETRY_SECS)
                continue
            if gate.open < gate.limit or gate.make_room():
                gate.open += 1
                connections.start_soon(serve_one, stream, _Slot(gate))
                if gate.open > gate.limit and gate.warning_due("closing idle"):
                    logger.warning(
                        "connection limit %d reached: closing the connections idle the"
                        " longest, or whose client took nothing for %g s, to let new ones in"
                        " (%d idle and %d stalled so far)",
                        gate.limit,
                        gate.stalled_for,
                        gate.closed_idle,
                        gate.dropped_stalled,
                    )
                continue
            gate.refused += 1
            if gate.warning_due("refused"):
                logger.warning(
                    "connection limit %d reached: new connections get 503 (%d refused so far)",
                    gate.limit,
                    gate.refused,
                )
            if gate.refusing < _MAX_REFUSING:
                connections.start_soon(_refuse, stream, gate)
            else:
                await trio.aclose_forcefully(stream)


def _bound_sockets(config: Config) -> list[socket.socket]:
    """The sockets of ``config.bind``, bound.

    Raises:
        ListenError: One cannot be bound (the port is taken, or not our address).
    """
    try:
        return list(config.create_sockets().insecure_sockets)
    except OSError as error:
        where = ", ".join(config.bind)
        advice = _LISTEN_ADVICE.get(error.errno or 0, "")
        raise ListenError(f"cannot listen on {where}: {error.strerror or error}{advice}") from error


async def serve_http(
    app: Any,
    config: Config,
    *,
    max_connections: int,
    shutdown_trigger: Callable[[], Awaitable[None]],
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    stalled_for: float = STALLED_FOR,
    fast_paths: frozenset[str] = frozenset(),
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` on ``config.bind`` until ``shutdown_trigger`` returns.

    Args:
        app: The ASGI application.
        config: Hypercorn's configuration (bind, timeouts, logs; no TLS).
        max_connections: The most connections served at once; more get 503.
        shutdown_trigger: Returns when it is time to stop accepting.
        write_timeout: Seconds a client may take nothing of a response before its
            connection is closed (see :class:`Connection`).
        stalled_for: At the cap with no connection idle, a connection whose client has
            taken nothing of a write for this many seconds is dropped to let a new one in.
        fast_paths: The paths whose simple ``POST`` requests are answered in the
            connection's task (:mod:`._fast_path`); none with Hypercorn's ``server_names``,
            ``accesslog`` or ``h11_pass_raw_headers`` set, which it does not follow.
        task_status: Receives the bound URLs (``http://host:port``) once listening.
    """
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    # What the fast path does not do (Hypercorn's Host check, access log, raw header
    # names) turns it off.
    plain = not (config.server_names or config.accesslog or config.h11_pass_raw_headers)
    fast_targets = frozenset(
        path.encode("ascii") for path in fast_paths if plain and "%" not in path
    )
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)
    gate = ConnectionGate(max_connections, stalled_for=stalled_for)

    live: set[Connection] = set()

    async def serve_one(stream: trio.SocketStream, slot: _Slot) -> None:
        try:
            state = ConnectionState(lifespan_state.copy())
            connection = Connection(
                asgi,
                config,
                context,
                state,
                stream,
                slot.release,
                write_timeout=write_timeout,
                fast_targets=fast_targets,
                idle=gate.idle,
                stalled=gate.stalled,
            )
            live.add(connection)
            try:
                await connection
            finally:
                live.discard(connection)
        finally:
            slot.release()
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            listeners, binds = [], []
            for sock in _bound_sockets(config):
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            logger.debug("serving at most %d connections at once", max_connections)
            task_status.started(binds)
            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(_accept_loop, listener, gate, connections, serve_one)
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                await context.terminated.set()
                deadline = trio.current_time() + config.graceful_timeout
                connections.cancel_scope.deadline = deadline
                for connection in live:  # a write is shielded: it is bounded on its own
                    connection.drop_by(deadline)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
