"""Keep-alive connections to llama-server children, per address (and, with only
:meth:`UpstreamPool.take_idle` and :meth:`UpstreamPool.give_back`, the plain remote
client's kept connections per host and port).

A connection is checked out for one request and then either given back for reuse
(its response was read to the end) or discarded (anything else). The pool also
knows which connections carry a request right now and since when each has waited
for bytes, so the stall watchdog can end reads that wait too long.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, final

import attrs
import trio

from bodhi_trio._exceptions import UpstreamError

if TYPE_CHECKING:
    from bodhi_trio._core._address import Address

__all__ = ["PACED_WAIT", "RECEIVE_BYTES", "UpstreamConnection", "UpstreamPool"]

RECEIVE_BYTES = 65536
_CLOSE_TIMEOUT = 2.0
_CONNECT_TIMEOUT = 10.0
_MAX_IDLE_PER_SERVER = 64
PACED_WAIT = 0.0001
"""A read that waited longer than this (0.1 ms) for its bytes marks the stream as paced."""


@attrs.define(eq=False)
class UpstreamConnection:
    """One connection of our own HTTP/1.1 client (to a llama-server child, or to a plain
    ``http://`` remote), and what its pool and watchdog need to know of it.

    Attributes:
        address: Where it goes.
        stream: The socket.
        peer: Who is at the other end, as an error names it: llama-server, or a remote
            request's URL.
        reused: It carried a request before this one.
        answered: The server sent bytes on it since the last request.
        waiting_since: While a read waits for the server, since when it has had no
            bytes (Trio clock): the wait's start, or an earlier wait's that was cut short
            (a keep-alive); a watchdog reads it instead of a timer per read, which the
            relay's hot path cannot afford.
        abort_error: What its reader raises, if it was closed under that reader.
        paced: Its last read waited for bytes (over 0.1 ms): the next one waits
            for them first, without a read that would find nothing (a paced stream's
            every read).
    """

    address: Address
    stream: trio.SocketStream
    peer: str = "llama-server"
    reused: bool = False
    answered: bool = False
    waiting_since: float | None = None
    abort_error: UpstreamError | None = None
    paced: bool = False
    closed: bool = False
    """Set before its socket is closed (only :meth:`aclose` closes it): a number read from
    ``fileno()`` before is then stale."""
    on_close: Callable[[], None] | None = None
    """Called as :meth:`aclose` begins: a reader that waits where Trio cannot see it (parked
    in the :class:`~bodhi_trio._transport._relay_hub.RelayHub`) is woken to find it closed."""
    clock: trio.abc.Clock = attrs.field(factory=trio.lowlevel.current_clock, init=False)
    """The run's clock (a test's ``MockClock`` too): ``clock.current_time()`` is one call
    where ``trio.current_time()`` makes three, on a path taken per token."""

    async def receive(self, max_bytes: int = RECEIVE_BYTES) -> bytes:
        """The next bytes from the server, at most ``max_bytes``; ``b""`` when it closed the
        connection.

        ``SocketStream.receive_some`` without its layers: a token of a paced stream is one
        read, and the stream's conflict detector and the socket's generic retry helper cost
        more than the read itself. The same rules: a checkpoint first (cancellable), a wait
        only when nothing is there, and a yield (not cancellable) when something was. After
        a read that had to wait (:attr:`paced`), the next one waits first (the wait is the
        checkpoint): its read-first would only find nothing, one failed syscall per token.

        Raises:
            UpstreamError: The connection broke, or was aborted (``abort_error``).
        """
        now = self.clock.current_time
        started = now()
        if self.waiting_since is None:  # a wait cut short (a keep-alive) goes on counting
            self.waiting_since = started
        sock = self.stream.socket
        try:
            if self.closed:
                raise self.closed_error()
            if not self.paced:
                await trio.lowlevel.checkpoint_if_cancelled()
                try:
                    # fileno() is -1 once closed: a read then fails, never reads another socket
                    data = os.read(sock.fileno(), max_bytes)
                except BlockingIOError:
                    self.paced = True
                else:
                    self.waiting_since = None
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    self.answered = self.answered or bool(data)
                    return data
            while True:
                fd = sock.fileno()
                if fd < 0:  # closed (the producer left): Trio's wait would refuse -1
                    raise self.closed_error()
                await trio.lowlevel.wait_readable(fd)  # a checkpoint: cancellable
                try:
                    data = os.read(sock.fileno(), max_bytes)
                except BlockingIOError:  # a spurious wake-up
                    continue
                # Paced if the bytes kept it waiting (a token's pace); ones that were there
                # at once (a fast stream on a busy loop) are read first next time.
                self.waiting_since = None
                self.paced = now() - started > PACED_WAIT
                self.answered = self.answered or bool(data)
                return data
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.waiting_since = None
            raise self.broken(exc) from exc

    def broken(self, exc: BaseException) -> UpstreamError:
        """What a read or write that failed with ``exc`` raises: the abort's error, if it
        was aborted."""
        if self.abort_error is not None:
            return self.abort_error
        if isinstance(exc, trio.ClosedResourceError):  # closed on our side: says so itself
            return UpstreamError(str(exc))
        return UpstreamError(f"the connection to {self.peer} broke: {exc!r}")

    def closed_error(self) -> trio.ClosedResourceError:
        """What a read on it once it is closed meets (:meth:`broken` then says why)."""
        return trio.ClosedResourceError(f"the connection to {self.peer} was closed")

    @property
    def stale(self) -> bool:
        """It failed as a kept connection the server closed while idle: reused, and no
        byte of an answer came and nobody aborted it (a retry on a fresh one is safe;
        once the server answered anything, a retry could run the request twice)."""
        return self.reused and not self.answered and self.abort_error is None

    async def send(self, data: bytes) -> None:
        """Write a request to the server: at once when the socket takes it whole (a
        request is small), else the rest as ``SocketStream.send_all`` writes it.

        A checkpoint first (cancellable), but no yield after a write that went out at
        once: the next step, the wait for the answer, yields anyway, and on a busy
        event loop every yield on a request's way costs it a whole round of the others.

        Raises:
            OSError: The connection broke, or the socket was closed (``EBADF``).
            trio.BrokenResourceError: The same, seen by ``send_all``.

        Cancellation: before the first byte, nothing was sent; during ``send_all``, part
        of the request may have been (the caller must not reuse the connection then).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            # fileno() is -1 once the socket is closed: a write then fails (EBADF)
            sent = os.write(self.stream.socket.fileno(), data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            await self.stream.send_all(data[sent:])

    async def abort(self, error: UpstreamError) -> None:
        """Close it under a reader's feet: the reader's :meth:`receive` raises ``error``."""
        self.abort_error = error
        await self.aclose()

    async def aclose(self) -> None:
        """Close the socket (shielded, and bounded in time)."""
        self.closed = True
        on_close = self.on_close  # read once: the relay hub's thread may clear it meanwhile
        if on_close is not None:
            on_close()
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await self.stream.aclose()


@final
@attrs.define(eq=False)
class UpstreamPool:
    """Keep-alive connections to llama-server children, per address.

    Call :meth:`aclose` (or use it with ``async with``) to close idle connections.
    """

    _idle: dict[Address, collections.deque[UpstreamConnection]] = attrs.field(
        factory=dict, init=False
    )
    # Connections carrying a request right now, for the stall watchdog.
    _busy: dict[Address, set[UpstreamConnection]] = attrs.field(factory=dict, init=False)

    async def __aenter__(self) -> UpstreamPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def check_out(self, address: Address, *, fresh: bool) -> UpstreamConnection:
        """A connection for one request: an idle one, or (``fresh``, or none idle) a new one.

        Raises:
            UpstreamError: A new connection could not be made.
        """
        connection = None if fresh else self.take_idle(address)
        if connection is None:
            try:
                with trio.fail_after(_CONNECT_TIMEOUT):
                    stream = await address.connect()
            except (OSError, trio.TooSlowError) as exc:
                raise UpstreamError(f"cannot connect to llama-server at {address}: {exc}") from exc
            connection = UpstreamConnection(address, stream)
        self._busy.setdefault(address, set()).add(connection)
        return connection

    def take_idle(self, address: Address) -> UpstreamConnection | None:
        """A kept connection to ``address``, now marked reused; ``None`` if none is kept."""
        idle = self._idle.get(address)
        if not idle:
            return None
        connection = idle.pop()
        connection.reused, connection.answered = True, False
        return connection

    def _release(self, connection: UpstreamConnection) -> None:
        busy = self._busy.get(connection.address)
        if busy is not None:
            busy.discard(connection)
            if not busy:
                del self._busy[connection.address]

    def give_back(self, connection: UpstreamConnection) -> bool:
        """Keep a connection whose response ended for reuse; ``False`` if it must be closed."""
        self._release(connection)
        idle = self._idle.setdefault(connection.address, collections.deque())
        if len(idle) >= _MAX_IDLE_PER_SERVER:
            return False
        idle.append(connection)
        return True

    async def discard(self, connection: UpstreamConnection) -> None:
        """Close a checked-out connection that cannot be reused."""
        self._release(connection)
        await connection.aclose()

    async def close_idle(self, address: Address) -> None:
        """Close the idle connections to one server (before stopping it: llama-server's
        HTTP threads would otherwise sit on them until its keep-alive timeout)."""
        for connection in self._idle.pop(address, ()):
            await connection.aclose()

    def idle_count(self, address: Address) -> int:
        """How many idle connections to ``address`` are kept (for tests and diagnostics)."""
        return len(self._idle.get(address, ()))

    def waiting_since(self, address: Address) -> float | None:
        """When the longest current wait for bytes from ``address`` began, or ``None``."""
        starts = [c.waiting_since for c in self._busy.get(address, ())]
        return min((t for t in starts if t is not None), default=None)

    async def abort_waiting(self, address: Address, *, since_before: float, reason: str) -> int:
        """End every request to ``address`` whose read has waited since before
        ``since_before``; its reader gets :class:`UpstreamError` with ``reason``.

        Returns:
            How many were ended.
        """
        stalled = [
            c
            for c in self._busy.get(address, ())
            # read once: the relay hub's thread may clear it meanwhile
            if (since := c.waiting_since) is not None and since < since_before
        ]
        for connection in stalled:
            await connection.abort(UpstreamError(reason))
        return len(stalled)

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.aclose()
