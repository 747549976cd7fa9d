"""The console's log lines, written by a thread of their own.

A log line written where it is made is a write to stderr from whatever made it: for
``serve``, the event loop, once per request (the access line) and per model event.
When nobody reads stderr for a while (a pipe whose reader is busy or stopped, a terminal
paused with Ctrl-S, a log collector falling behind), its buffer fills after ~64 KiB and
that write blocks: the event loop with it, and every stream on the server stops until the
reader comes back. Here such a line is put on a bounded queue instead (a few
microseconds, never a wait) and :class:`LogWriter`'s thread formats and writes it. A full
queue drops the line and counts it; the next line written says how many were dropped.

A line that can go out at once is written where it is made all the same: when nothing
is queued, stderr is a file, a pipe or a socket that takes a short line without waiting
(the kernel says so), and the line is short. Handing every line to the thread cost each
request more than the write: the thread's wake-up, and the interpreter's lock taken from
the event loop while the next request came in (measured on two vCPUs, one access line per
request: 11-24% of a short request's CPU; docs/benchmarks.md, session 23).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import select
import stat
import sys
import threading
import time
from typing import TextIO, final

__all__ = ["FLUSH_TIMEOUT", "INLINE_CHARS", "MAX_QUEUED_LINES", "LogWriter"]

MAX_QUEUED_LINES = 10_000
"""Lines waiting for the writer before new ones are dropped (about 2 MiB of access lines)."""

FLUSH_TIMEOUT = 5.0
"""Seconds :meth:`LogWriter.flush` and :meth:`LogWriter.close` wait for queued lines."""

INLINE_CHARS = 400
"""Longest line written where it is made. A pipe that has room takes one page (4 KiB)
without waiting, and a character may take up to 10 bytes (``\\U0001f600`` on an ASCII
stderr): a longer line goes to the thread."""

_STOP = object()  # put on the queue by close(): the writer ends after the lines before it


@final
class LogWriter(logging.Handler):
    """A handler that hands each record to its thread, which writes it to ``stream``
    (stderr by default) with this handler's formatter and filters already applied.

    A record is queued as it is (its message made in the thread: the arguments
    bodhi-trio logs are strings and numbers, never changed after), or with its line when
    :meth:`emit` made that already and found it too long to write in place.

    Args:
        stream: Where the lines go (``sys.stderr`` when ``None``, looked up per line, as
            ``logging.StreamHandler`` does not: a test's captured stderr is honoured).
        max_queued: Lines waiting before new ones are dropped.
    """

    def __init__(self, stream: TextIO | None = None, max_queued: int = MAX_QUEUED_LINES) -> None:
        super().__init__()
        self._stream = stream
        self._queue: queue.Queue[object] = queue.Queue(max_queued)
        self._drops = itertools.count(1)  # next() is atomic: emit runs in any thread
        self._dropped = 0
        self._reported = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="bodhi-trio-log", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Lines dropped so far because the queue was full."""
        return self._dropped

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` now if the stream takes it without waiting and nothing is
        queued before it; else queue it for the thread, or drop it (counted) if the queue
        is full. (``logging`` calls this with the handler's lock held: one emit at a time.)
        """
        item: logging.LogRecord | tuple[str, logging.LogRecord] = record
        # nothing queued and the thread not writing: a line written here keeps its place
        if not self._queue.unfinished_tasks:
            stream = self._current_stream()
            if _takes_a_line_now(stream):
                try:
                    line = self.format(record)
                except Exception:
                    self.handleError(record)
                    return
                if len(line) <= INLINE_CHARS:
                    self._write_line(stream, line, record)
                    return
                item = (line, record)  # the thread writes it as it is, not made again
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._dropped = next(self._drops)

    def flush(self) -> None:
        """:meth:`wait_written`, at most :data:`FLUSH_TIMEOUT` seconds (``logging`` calls
        this at the interpreter's exit)."""
        self.wait_written(FLUSH_TIMEOUT)

    def wait_written(self, timeout: float) -> bool:
        """Wait until every line queued by now is written, at most ``timeout`` seconds
        (a stderr that nobody reads would hold it forever); whether they were. After
        :meth:`close`: wait for the thread to end."""
        if self._closing:  # the thread's last item is the stop: wait for it to end
            self._thread.join(timeout)
            return not self._thread.is_alive()
        done = threading.Event()
        deadline = time.monotonic() + timeout
        try:  # behind the lines queued by now (waiting for room if the queue is full)
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Write what is queued (at most :data:`FLUSH_TIMEOUT` seconds), then stop the
        thread (one still stuck in a write is a daemon: it ends with the process)."""
        if not self._closing:
            self.wait_written(FLUSH_TIMEOUT)
            self._closing = True
            with contextlib.suppress(queue.Full):  # full: the thread is stuck in a write
                self._queue.put_nowait(_STOP)
        super().close()

    def _current_stream(self) -> TextIO:
        return sys.stderr if self._stream is None else self._stream

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                if isinstance(item, tuple):
                    line, record = item
                    self._write_line(self._current_stream(), line, record)
                    continue
                assert isinstance(item, logging.LogRecord)
                self._write(item)
            finally:  # emit writes in place again once nothing is left unfinished
                self._queue.task_done()

    def _write(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._write_line(self._current_stream(), line, record)

    def _write_line(self, stream: TextIO, line: str, record: logging.LogRecord) -> None:
        try:
            dropped = self._dropped
            if dropped != self._reported:
                stream.write(
                    f"[bodhi-trio] {dropped - self._reported} log lines dropped:"
                    " stderr was not read fast enough\n"
                )
                self._reported = dropped
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _takes_a_line_now(stream: TextIO) -> bool:
    """Whether a write of a short line to ``stream`` returns without waiting: a stream with
    no file behind it (written in memory), a regular file (the kernel never makes its writer
    wait for a reader), or a pipe or socket the kernel says has room now. A terminal (it
    may be paused), another device, or a stream whose file cannot be asked: no.
    """
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both: a stream in memory
        return True
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    if stat.S_ISREG(mode):
        return True
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(0))
