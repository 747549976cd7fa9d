"""A writer-preferring readers/writer lock for Trio.

Trio has no RW lock (python-trio/trio#528). This one is built on
:class:`trio.Condition`, whose lock is only ever held for a few synchronous
lines, so every release can be shielded and still finish at once.

- Readers share. A waiting writer blocks new readers (writer preference), so a
  swap is not starved by a steady stream of requests.
- A writer cancelled while waiting withdraws, and the readers it was blocking go on.
- A read hold is a counter, not owned by a task: it may be released by another
  task than the one that took it (a load task hands holds to the requests that
  waited for it, see :meth:`WriteHold.downgrade`).
- Not reentrant; a reader must never ask for the write side.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import final

import attrs
import trio

__all__ = ["RWLock", "RWLockStatistics", "WriteHold"]


@attrs.frozen
class RWLockStatistics:
    """A snapshot of a :class:`RWLock`.

    Attributes:
        readers: Read holds currently taken.
        writer: Whether the write side is held.
        writers_waiting: Writers queued for the write side.
        readers_waiting: Tasks queued for a read hold.
    """

    readers: int
    writer: bool
    writers_waiting: int
    readers_waiting: int


@final
@attrs.define(eq=False)
class WriteHold:
    """The write side, as held inside :meth:`RWLock.write`."""

    _lock: RWLock
    downgraded: bool = False

    async def downgrade(self, readers: int = 1) -> None:
        """Turn the write hold into ``readers`` read holds (0: none), atomically.

        No other writer can get in between. The caller becomes responsible for
        releasing each read hold with :meth:`RWLock.release_read`; leaving the
        ``write()`` block then releases nothing more.
        """
        if self.downgraded:
            raise RuntimeError("already downgraded")
        await self._lock._downgrade(readers)
        self.downgraded = True


@final
@attrs.define(eq=False)
class RWLock:
    """Writer-preferring readers/writer lock. See the module docstring."""

    _cond: trio.Condition = attrs.field(factory=trio.Condition, init=False)
    _readers: int = attrs.field(default=0, init=False)
    _writer: bool = attrs.field(default=False, init=False)
    _writers_waiting: int = attrs.field(default=0, init=False)
    _readers_waiting: int = attrs.field(default=0, init=False)

    async def acquire_read(self) -> None:
        """Take a read hold, waiting while a writer holds or waits for the lock.

        Uncontended (no writer, none waiting, nobody inside the condition's lock) it
        only checks for cancellation and takes the hold: no yield, which on a busy event
        loop would cost each request a round of every other task on its way.

        Cancellation: safe; nothing is held if it raises.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # never yields unless cancelled
        if not (self._writer or self._writers_waiting or self._cond.locked()):
            self._readers += 1
            return
        async with self._cond:
            self._readers_waiting += 1
            try:
                while self._writer or self._writers_waiting:
                    await self._cond.wait()
            finally:
                self._readers_waiting -= 1
            self._readers += 1

    async def release_read(self) -> None:
        """Give back one read hold. Shielded: it always completes, at once (without a
        yield when nobody is inside the condition's lock)."""
        try:
            self._cond.acquire_nowait()
        except trio.WouldBlock:
            with trio.CancelScope(shield=True):
                async with self._cond:
                    self._release_read_locked()
            return
        try:
            self._release_read_locked()
        finally:
            self._cond.release()

    def _release_read_locked(self) -> None:
        if self._readers <= 0:
            raise RuntimeError("release_read without a read hold")
        self._readers -= 1
        if self._readers == 0:
            self._cond.notify_all()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        """Hold the read side for the block (for tests and diagnostics).

        The scheduler does not use it: its read holds are granted by a write hold's
        downgrade or released on paths a block cannot express, so it calls
        :meth:`acquire_read` and :meth:`release_read` itself.
        """
        await self.acquire_read()
        try:
            yield
        finally:
            await self.release_read()

    @asynccontextmanager
    async def write(
        self,
        *,
        patience: float = math.inf,
        on_impatience: Callable[[], None] | None = None,
    ) -> AsyncIterator[WriteHold]:
        """Hold the write side for the block.

        Args:
            patience: Seconds to wait for the readers to leave before calling
                ``on_impatience`` once (the drain timeout); waiting then goes on.
            on_impatience: Called with the lock's state unchanged, typically to
                cancel the readers that are still in.

        Cancellation: while waiting, the writer withdraws and blocked readers go on.
        """
        async with self._cond:
            self._writers_waiting += 1
            try:
                with trio.move_on_after(patience) as waited:
                    while self._writer or self._readers:
                        await self._cond.wait()
                if waited.cancelled_caught:
                    if on_impatience is not None:
                        on_impatience()
                    while self._writer or self._readers:
                        await self._cond.wait()
            finally:
                self._writers_waiting -= 1
                self._cond.notify_all()  # if we withdrew, the readers we blocked may go
            self._writer = True
        hold = WriteHold(self)
        try:
            yield hold
        finally:
            if not hold.downgraded:
                await self.release_write()

    def try_acquire_write(self) -> bool:
        """Take the write side only if it is free right now (no reader, no writer,
        none waiting); never waits. Release it with :meth:`release_write`."""
        try:
            self._cond.acquire_nowait()
        except trio.WouldBlock:
            return False
        try:
            if self._writer or self._readers or self._writers_waiting:
                return False
            self._writer = True
            return True
        finally:
            self._cond.release()

    async def release_write(self) -> None:
        """Give back a write side taken with :meth:`try_acquire_write`. Shielded."""
        with trio.CancelScope(shield=True):
            async with self._cond:
                if not self._writer:
                    raise RuntimeError("release_write without the write hold")
                self._writer = False
                self._cond.notify_all()

    async def _downgrade(self, readers: int) -> None:
        with trio.CancelScope(shield=True):
            async with self._cond:
                if not self._writer:
                    raise RuntimeError("downgrade without the write hold")
                self._writer = False
                self._readers += readers
                self._cond.notify_all()  # queued writers re-check; readers may join

    def statistics(self) -> RWLockStatistics:
        """The lock's current state."""
        return RWLockStatistics(
            readers=self._readers,
            writer=self._writer,
            writers_waiting=self._writers_waiting,
            readers_waiting=self._readers_waiting,
        )
