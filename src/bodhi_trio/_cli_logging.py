"""The console's log lines, written by a thread of their own.

A log line written where it is made is a write to stderr from whatever made it: for
``serve``, the event loop, once per request (the access line) and per model event.
When nobody reads stderr for a while (a pipe whose reader is busy or stopped, a terminal
paused with Ctrl-S, a log collector falling behind), its buffer fills after ~64 KiB and
that write blocks: the event loop with it, and every stream on the server stops until the
reader comes back. Here the line is put on a bounded queue instead (a few microseconds,
never a wait) and :class:`LogWriter`'s thread formats and writes it. A full queue drops
the line and counts it; the next line written says how many were dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import sys
import threading
import time
from typing import TextIO, final

__all__ = ["FLUSH_TIMEOUT", "MAX_QUEUED_LINES", "LogWriter"]

MAX_QUEUED_LINES = 10_000
"""Lines waiting for the writer before new ones are dropped (about 2 MiB of access lines)."""

FLUSH_TIMEOUT = 5.0
"""Seconds :meth:`LogWriter.flush` and :meth:`LogWriter.close` wait for queued lines."""

_STOP = object()  # put on the queue by close(): the writer ends after the lines before it


@final
class LogWriter(logging.Handler):
    """A handler that hands each record to its thread, which writes it to ``stream``
    (stderr by default) with this handler's formatter and filters already applied.

    Records are queued as they are (their message is made in the thread): the
    arguments bodhi-trio logs are strings and numbers, never changed after.

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
        """Queue ``record`` for the thread; drop it (counted) if the queue is full."""
        try:
            self._queue.put_nowait(record)
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

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            assert isinstance(item, logging.LogRecord)
            self._write(item)

    def _write(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if self._stream is None else self._stream
        try:
            dropped = self._dropped
            if dropped != self._reported:
                stream.write(
                    f"[bodhi-trio] {dropped - self._reported} log lines dropped:"
                    " stderr was not read fast enough\n"
                )
                self._reported = dropped
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)
