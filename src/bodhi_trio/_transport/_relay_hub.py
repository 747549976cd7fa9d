"""One thread that relays the paced tokens of every spliced stream whose bytes are ready.

A relayed stream of a model sends one token per read, and a read that wakes a Trio task
pays Trio's whole round for it: the run loop's ``epoll_wait``, the socket armed again
(Trio registers each wait with ``EPOLLONESHOT``: one ``epoll_ctl`` per token), the task
rescheduled and its coroutine frames resumed. That round is most of what a paced token
costs a Trio relay (measured: twice what the read and the write cost on their own). So
the tokens go past the run loop: a stream's task parks its sockets here
(:meth:`RelayHub.relay`), and the hub's thread, which waits in an epoll of its own
(registered once, level-triggered), reads every ready socket and writes each token
straight to its client (:meth:`HTTPResponse.relay_read
<bodhi_trio._transport._response.HTTPResponse.relay_read>`, the same step the stream's own
loop takes). Only what is not a run of whole chunks (one, as a rule) the client takes at
once (a chunk split across reads, the end, a client that is not keeping up, an error)
wakes the stream's task, which does it the usual way and parks again.

The thread never touches a socket number the run loop owns: a parked stream gives the hub
copies of its two sockets (``os.dup``), which the hub closes when the stream leaves. A
socket the run loop closes meanwhile stays the same socket for the hub until then, and a
number the kernel hands to a new connection is never the hub's: a token can go to its own
client or nowhere, never to another. One lock orders the thread's step for a stream
against the run loop taking the stream out (a cancellation, the upstream closing, the hub
stopping), so a stream is the thread's or its task's, never both.

A parked stream's task stays cancellable (its keep-alive deadline, the client leaving):
the cancellation takes it out of the hub, and nothing the hub read is lost, since the hub
only ever hands a read on by waking the task, and a task whose wake-up is on its way is not
cancelled out of its wait. When the hub stops (shutdown), every parked stream goes on with
its own loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from typing import TYPE_CHECKING, final

import attrs
import trio

from bodhi_trio._transport._pool import RECEIVE_BYTES

if TYPE_CHECKING:
    from bodhi_trio._transport._response import ChunkSink, HTTPResponse

__all__ = ["TAKES_AFTER", "CannotPark", "RelayHub", "RelayHubStatistics"]

logger = logging.getLogger("bodhi_trio.relay")

_BATCH = 256
"""Ready sockets taken per ``epoll_wait`` at most; the rest come in the next."""

TAKES_AFTER = 4
"""Paced tokens in a row a stream's own loop writes whole before the stream parks here. A
fast stream's read that had to wait once looks paced; were it parked then, its next read
(several events at once) would go to the thread and straight back, a wake-up of each side
for nothing (measured: 25k parks in one run of the fake suite, 95% of them such)."""

_STOP_WAIT = 5.0
"""Seconds the hub's task waits for its thread to stop. Never reached: the thread's sockets
are non-blocking, so a step never waits; the bound is there all the same."""


class CannotPark(Exception):
    """The stream's sockets cannot be copied for the hub (no file descriptors left, or the
    client's connection closed): the stream relays itself."""


@attrs.frozen
class RelayHubStatistics:
    """What :meth:`RelayHub.statistics` reports.

    Attributes:
        parked: Streams waiting in the hub now.
        relayed: Tokens it wrote whole, ever (each without waking its stream's task).
    """

    parked: int
    relayed: int


@attrs.define(eq=False)
class _Parked:
    """A stream's task waiting in the hub, the hub's copies of its sockets, and what woke
    it."""

    task: trio.lowlevel.Task
    response: HTTPResponse
    sink: ChunkSink
    source: int  # the hub's copy of the upstream socket (its key in the hub)
    target: int  # the hub's copy of the client's socket
    rest: bytes | None = None
    error: BaseException | None = None


@final
class RelayHub:
    """Relays the paced tokens of parked streams from one thread (see the module docstring).

    Run :meth:`serve` in a nursery that outlives the streams (``await nursery.start(hub.serve)``);
    until it runs, and after it stops, :attr:`serving` is false and streams relay themselves.

    Args:
        takes_after: Paced tokens in a row a stream writes whole by itself before it parks
            here (:data:`TAKES_AFTER`).
    """

    def __init__(self, *, takes_after: int = TAKES_AFTER) -> None:
        self.takes_after = takes_after
        self._epoll: select.epoll | None = None  # while serve() runs
        self._lock = threading.Lock()
        self._parked: dict[int, _Parked] = {}
        self._serving = False
        self._relayed = 0
        self._stopping = False
        self._idle_waiters: list[trio.Event] = []
        self._doorbell = -1  # the write end of the pipe that wakes the thread
        self._stopped: trio.Event | None = None  # set once the thread stopped

    @property
    def serving(self) -> bool:
        """Whether streams can park here now."""
        return self._serving

    def statistics(self) -> RelayHubStatistics:
        """How many streams are parked now, and how many tokens the hub relayed."""
        return RelayHubStatistics(parked=len(self._parked), relayed=self._relayed)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the hub's thread until cancelled. Never raises: it runs beside every stream's
        producer, and a failure of its own (a bug) would take them all down; it is logged,
        and the hub stops.

        Cancellation (and a stop): the thread is stopped and waited for (shielded, at most
        :data:`_STOP_WAIT`), every parked stream is woken to go on by itself, and the epoll
        is closed; nothing read is lost (a read is handed on before the thread waits again).
        """
        self._epoll = epoll = select.epoll()
        bell_in, self._doorbell = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        epoll.register(bell_in, select.EPOLLIN)
        self._stopped = stopped = trio.Event()
        thread = threading.Thread(
            target=self._run,
            args=(epoll, trio.lowlevel.current_trio_token(), bell_in, stopped),
            name="bodhi-trio relay hub",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the streams relay themselves
            logger.exception("the relay hub could not start; each stream relays itself")
            stopped.set()
        else:
            self._serving = True
        task_status.started()
        try:
            await stopped.wait()  # only if the thread failed
        finally:
            self._serving = False
            with trio.CancelScope(shield=True):
                self._stopping = True
                self._ring()
                with trio.move_on_after(_STOP_WAIT):
                    await stopped.wait()
            if not stopped.is_set():  # a step that blocked, which cannot happen
                logger.error("the relay hub's thread did not stop in %g s", _STOP_WAIT)
            # free once the thread stopped; never waited for: a thread stuck in a step holds it
            if self._lock.acquire(blocking=False):
                try:
                    left = [
                        parked for parked in list(self._parked.values()) if self._forget(parked)
                    ]
                finally:
                    self._lock.release()
                for parked in left:
                    trio.lowlevel.reschedule(parked.task)
            if stopped.is_set():  # else the thread keeps its files
                self._epoll = None
                os.close(self._doorbell)
                self._doorbell = -1  # a number another file may be given next
                os.close(bell_in)
                epoll.close()

    async def relay(self, response: HTTPResponse, sink: ChunkSink, fd: int) -> bytes | None:
        """Park ``response`` (its connection's socket is ``fd``) until the hub cannot relay
        its next read alone. Returns what :meth:`HTTPResponse.relay_read` returned for that
        read (None: nothing written, the read is the response's to go on with; the rest of
        a chunk to write; ``b""``: written whole, but the stream is no longer paced), or
        None if the hub stopped.

        Raises:
            CannotPark: The sockets could not be copied; nothing was read.
            OSError: The read failed.
            trio.ClosedResourceError: The connection was closed meanwhile.

        Cancellation: the stream leaves the hub; no byte is lost.
        """
        source, target = _copies(fd, sink.fileno())
        parked = _Parked(trio.lowlevel.current_task(), response, sink, source, target)
        connection = response.connection
        with self._lock:  # the thread steps in once it is let go
            try:
                if self._epoll is None:  # not serving: the caller asks serving first
                    raise OSError("the relay hub is not serving")
                self._epoll.register(source, select.EPOLLIN)
            except OSError as exc:
                _close_copies(source, target)
                raise CannotPark(str(exc)) from exc
            self._parked[source] = parked
            connection.on_close = lambda: self._closed(parked, connection.closed_error())
            connection.waiting_since = response.handed_at

        def leave(_: object) -> trio.lowlevel.Abort:
            with self._lock:
                if self._forget(parked):
                    return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED  # the thread's wake-up is on its way

        await trio.lowlevel.wait_task_rescheduled(leave)
        if parked.error is not None:
            raise parked.error
        return parked.rest

    async def wait_idle(self) -> None:
        """Return once the hub's thread waits with nothing to read, or has stopped, every
        stream it woke before then rescheduled (for tests: what ``wait_all_tasks_blocked``
        is for tasks). Returns at once if the thread is not running.

        Cancellation: safe; nothing changes.
        """
        stopped = self._stopped
        if stopped is None or stopped.is_set():
            return
        idle = trio.Event()
        self._idle_waiters.append(idle)
        self._ring()
        await idle.wait()

    def _run(
        self,
        epoll: select.epoll,
        token: trio.lowlevel.TrioToken,
        bell_in: int,
        stopped: trio.Event,
    ) -> None:
        """The thread: each ready socket read and its token written, or its task woken."""
        poll, lock, parked_at = epoll.poll, self._lock, self._parked.get
        try:
            while not self._stopping:
                ready = poll(-1, _BATCH)
                woken: list[_Parked] = []
                try:
                    for fd, _ in ready:
                        if fd == bell_in:
                            os.read(bell_in, 4096)
                            continue
                        with lock:
                            parked = parked_at(fd)
                            if parked is not None and not self._step(parked):
                                woken.append(parked)  # first: woken whatever _forget meets
                                self._forget(parked)
                finally:
                    if woken:
                        token.run_sync_soon(_reschedule, woken)
                if (waiting := len(self._idle_waiters)) and not poll(0, 1):
                    # those who rang before this look; a later one rang again
                    token.run_sync_soon(self._wake_idle_waiters, waiting)
        except trio.RunFinishedError:
            return
        except Exception:
            logger.exception("the relay hub failed; each stream relays itself from now on")
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._thread_stopped, stopped)

    def _step(self, parked: _Parked) -> bool:
        """One ready read of ``parked`` (the lock held). Returns whether it stays parked;
        if not, what wakes its task is in ``rest`` or ``error``."""
        try:
            data = os.read(parked.source, RECEIVE_BYTES)
        except BlockingIOError:  # a spurious wake-up
            return True
        except OSError as exc:
            parked.error = exc
            return False
        response = parked.response
        try:
            rest = response.relay_read(data, parked.sink, parked.target)
        except Exception as exc:  # the task raises it as its own loop would
            parked.error = exc
            return False
        if rest == b"":
            self._relayed += 1
            connection = response.connection
            if connection.paced:  # written whole: stay parked
                connection.waiting_since = response.handed_at
                return True
        parked.rest = rest
        return False

    def _closed(self, parked: _Parked, error: BaseException) -> None:
        """The upstream connection of ``parked`` is closing (in the run loop): its task wakes
        with ``error``, unless the thread woke it already."""
        with self._lock:
            if not self._forget(parked):
                return
        parked.error = error
        trio.lowlevel.reschedule(parked.task)

    def _forget(self, parked: _Parked) -> bool:
        """Take ``parked`` out of the hub and close the hub's copies of its sockets (the lock
        held). Returns False if it was out already."""
        source = parked.source
        if self._parked.get(source) is not parked:
            return False
        del self._parked[source]
        connection = parked.response.connection
        connection.on_close = None
        connection.waiting_since = None
        # our own numbers, registered: nothing here can fail, and nothing may be left open
        epoll = self._epoll  # open while any stream is parked (serve forgets them first)
        if epoll is not None:
            with contextlib.suppress(OSError):
                epoll.unregister(source)
        _close_copies(source, parked.target)
        return True

    def _ring(self) -> None:
        """Wake the thread from its wait (to stop, or to say when it is idle)."""
        with contextlib.suppress(OSError):  # full: a wake-up is waiting already
            os.write(self._doorbell, b"\0")

    def _thread_stopped(self, stopped: trio.Event) -> None:
        stopped.set()
        self._wake_idle_waiters(len(self._idle_waiters))

    def _wake_idle_waiters(self, count: int) -> None:
        """Wake the first ``count`` waiters of :meth:`wait_idle` (in the run loop)."""
        waiters, self._idle_waiters = self._idle_waiters[:count], self._idle_waiters[count:]
        for idle in waiters:
            idle.set()


def _copies(upstream: int, client: int) -> tuple[int, int]:
    """The hub's own copies of the two sockets of a stream.

    Raises:
        CannotPark: Either could not be copied.
    """
    if upstream < 0 or client < 0:
        raise CannotPark("a socket is closed")
    try:
        source = os.dup(upstream)
    except OSError as exc:
        raise CannotPark(str(exc)) from exc
    try:
        return source, os.dup(client)
    except OSError as exc:
        _close_copies(source)
        raise CannotPark(str(exc)) from exc


def _close_copies(*copies: int) -> None:
    """Close copies made by :func:`_copies`: only the hub has them, so a failure (there is
    none for an open descriptor) leaves nothing to do."""
    for fd in copies:
        with contextlib.suppress(OSError):
            os.close(fd)


def _reschedule(woken: list[_Parked]) -> None:
    """Wake the tasks of streams the thread handed back (in the run loop)."""
    for parked in woken:
        trio.lowlevel.reschedule(parked.task)
