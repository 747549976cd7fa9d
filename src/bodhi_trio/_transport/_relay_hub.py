"""One task that relays the paced tokens of every spliced stream whose bytes are ready.

A relayed stream of a model sends one token per read, and each read that wakes a task of
its own pays Trio's whole round for it: the task rescheduled, its coroutine frames resumed,
and its socket armed again in Trio's epoll (one ``epoll_ctl`` per wait). A GPU serving 256
users, or llama-server serving eight slots, writes a token to every stream at the same step,
so those wake-ups come together. :class:`RelayHub` takes them in one: a stream's task parks
its upstream socket here (:meth:`RelayHub.relay`), registered once in an epoll of the hub's
own; the hub's task waits on that epoll, and on each wake-up reads every ready socket and
writes each token straight to its client (:meth:`HTTPResponse.relay_read
<bodhi_trio._transport._response.HTTPResponse.relay_read>`, the same step the stream's own
loop takes). Only what is not a lone whole chunk the client takes at once (a split or
batched read, the end, a client that is not keeping up, an error) wakes the stream's task,
which does it the usual way and parks again.

A parked stream's task stays cancellable (its keep-alive deadline, the client leaving): the
cancellation takes it out of the hub, and nothing the hub read is lost, since the hub only
ever hands a read on by waking the task, and a woken task is no longer cancelled out of its
wait. When the hub stops (shutdown), every parked stream goes on with its own loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from typing import TYPE_CHECKING, final

import attrs
import trio

from bodhi_trio._transport._pool import RECEIVE_BYTES

if TYPE_CHECKING:
    from bodhi_trio._transport._response import ChunkSink, HTTPResponse

__all__ = ["RelayHub", "RelayHubStatistics"]

logger = logging.getLogger("bodhi_trio.relay")

_BATCH = 256
"""Ready sockets taken per wake-up at most; the rest wait for the next round (the hub
yields between rounds like any task)."""


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
    """A stream's task waiting in the hub, and what woke it."""

    task: trio.lowlevel.Task
    response: HTTPResponse
    sink: ChunkSink
    rest: bytes | None = None
    error: BaseException | None = None


@final
class RelayHub:
    """Relays the paced tokens of parked streams from one task (see the module docstring).

    Run :meth:`serve` in a nursery that outlives the streams (``await nursery.start(hub.serve)``);
    until it runs, and after it stops, :attr:`serving` is false and streams relay themselves.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._parked: dict[int, _Parked] = {}
        self._serving = False
        self._relayed = 0

    @property
    def serving(self) -> bool:
        """Whether streams can park here now."""
        return self._serving

    def statistics(self) -> RelayHubStatistics:
        """How many streams are parked now, and how many tokens the hub relayed."""
        return RelayHubStatistics(parked=len(self._parked), relayed=self._relayed)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay ready tokens until cancelled. Never raises: it runs beside every stream's
        producer, and a failure of its own (a bug) would take them all down; it is logged,
        and the hub stops.

        Cancellation (and a stop): every parked stream is woken to go on by itself, and the
        epoll is closed; nothing read is lost (a read is handed on before the hub waits
        again).
        """
        epoll_fd = self._epoll.fileno()
        self._serving = True
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll_fd)
                self._relay_ready()
        except Exception:
            logger.exception("the relay hub failed; each stream relays itself from now on")
        finally:
            self._serving = False
            for fd in list(self._parked):
                self._wake(fd)
            trio.lowlevel.notify_closing(epoll_fd)
            self._epoll.close()

    async def relay(self, response: HTTPResponse, sink: ChunkSink, fd: int) -> bytes | None:
        """Park ``response`` (its connection's socket is ``fd``) until the hub cannot relay
        its next read alone. Returns what :meth:`HTTPResponse.relay_read` returned for that
        read (None: nothing written, the read is the response's to go on with; the rest of
        a chunk to write; ``b""``: written whole, but the stream is no longer paced), or
        None if the hub stopped.

        Raises:
            OSError: The read failed.
            trio.ClosedResourceError: The connection was closed meanwhile.

        Cancellation: the stream leaves the hub; no byte is lost.
        """
        parked = _Parked(trio.lowlevel.current_task(), response, sink)
        if fd in self._parked:  # a socket closed without a word, its number reused
            self._wake(fd, error=trio.ClosedResourceError("the socket was closed"))
        self._epoll.register(fd, select.EPOLLIN)
        self._parked[fd] = parked
        connection = response.connection
        connection.on_close = lambda: self._wake(fd, error=connection.closed_error())
        connection.waiting_since = response.handed_at

        def leave(_: object) -> trio.lowlevel.Abort:
            self._forget(fd)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(leave)
        if parked.error is not None:
            raise parked.error
        return parked.rest

    def _relay_ready(self) -> None:
        """One wake-up: each ready socket read, and its token written or its task woken."""
        parked_at = self._parked.get
        for fd, _ in self._epoll.poll(0, _BATCH):
            parked = parked_at(fd)
            if parked is None:
                continue
            response = parked.response
            try:
                data = os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:  # a spurious wake-up
                continue
            except OSError as exc:
                self._wake(fd, error=exc)
                continue
            try:
                rest = response.relay_read(data, parked.sink)
            except Exception as exc:  # the task raises it as its own loop would
                self._wake(fd, error=exc)
                continue
            connection = response.connection
            if rest == b"":
                self._relayed += 1
                if connection.paced:  # written whole: stay parked
                    connection.waiting_since = response.handed_at
                    continue
            self._wake(fd, rest=rest)

    def _wake(
        self, fd: int, *, rest: bytes | None = None, error: BaseException | None = None
    ) -> None:
        """Take ``fd``'s stream out of the hub and wake its task with ``rest`` or ``error``."""
        parked = self._forget(fd)
        if parked is not None:
            parked.rest, parked.error = rest, error
            trio.lowlevel.reschedule(parked.task)

    def _forget(self, fd: int) -> _Parked | None:
        """Take ``fd``'s stream out of the hub (not waking it)."""
        parked = self._parked.pop(fd, None)
        if parked is None:
            return None
        connection = parked.response.connection
        connection.on_close = None
        connection.waiting_since = None
        # closed already (the kernel dropped it from the epoll then): nothing to undo
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)
        return parked
