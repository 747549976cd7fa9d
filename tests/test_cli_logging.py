"""The console's log lines written by a thread: a stderr nobody reads stops nothing."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pty
import re
import threading
from pathlib import Path

import httpx
import pytest
import trio

from bodhi_trio._cli_logging import INLINE_CHARS, LogWriter
from procs import listening_url, serve_env, start_serve

# liveness bounds, not timings: a blocked emit or server never returns at all
HANG = 30.0


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("bodhi_trio.test", logging.INFO, __file__, 1, message, None, None)


# long lines all go through the thread's queue (which alone holds more than the pipe);
# short ones are written in place while the pipe has room, then queued
@pytest.mark.parametrize("length", [4000, 100], ids=["long lines", "short lines"])
def test_a_pipe_nobody_reads_drops_lines_instead_of_blocking(length: int) -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    writer = LogWriter(stream, max_queued=100)
    line = "x" * length
    read: list[bytes] = []

    def read_all() -> None:
        with os.fdopen(read_end, "rb") as reader:
            read.append(reader.read())

    reading = threading.Thread(target=read_all)
    try:
        # 1 or 40 MB against a 64 KiB pipe: a write where the line is made would block here

        def emit_all() -> None:
            for _ in range(10_000):
                writer.emit(record(line))

        emitting = threading.Thread(target=emit_all)
        emitting.start()
        emitting.join(HANG)
        assert not emitting.is_alive()
        assert writer.dropped > 0
        assert not writer.wait_written(0.05)  # nobody reads: the wait is bounded
        reading.start()  # someone reads again: what was queued is written
        assert writer.wait_written(HANG)
        writer.emit(record("after the drops"))
        writer.close()
    finally:
        stream.close()
        reading.join(HANG)
    text = read[0]
    assert text.endswith(b"after the drops\n")
    dropped = re.findall(rb"\[bodhi-trio\] (\d+) log lines dropped", text)
    assert dropped
    assert sum(int(n) for n in dropped) == writer.dropped
    assert text.count(line.encode() + b"\n") + writer.dropped == 10_000


def test_lines_keep_their_order_and_close_writes_them_all() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream, os.fdopen(read_end) as reader:
        writer = LogWriter(stream)
        writer.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        for n in range(50):
            writer.handle(record(f"line {n}"))
        writer.close()
        # at once, while the thread may still be taking the stop off its queue
        assert writer.wait_written(HANG)
        stream.close()
        assert reader.read().splitlines() == [f"INFO line {n}" for n in range(50)]


class WriterNoting(io.TextIOWrapper):
    """A text stream that notes which threads wrote to it."""

    writers: set[str]

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        return super().write(text)


def open_stream(kind: str, tmp_path: Path, stack: contextlib.ExitStack) -> WriterNoting:
    if kind == "file":
        raw = stack.enter_context((tmp_path / "log").open("wb"))
    else:
        if kind == "pipe":
            read_end, write_end = os.pipe()
        else:  # a terminal: may be paused, so never written in place
            read_end, write_end = pty.openpty()
        stack.callback(os.close, read_end)
        raw = stack.enter_context(os.fdopen(write_end, "wb"))
    stream = WriterNoting(raw, encoding="utf-8", write_through=True)
    stream.writers = set()
    return stream


@pytest.mark.parametrize(("kind", "in_place"), [("file", True), ("pipe", True), ("pty", False)])
def test_a_short_line_is_written_in_place_when_the_stream_takes_it_now(
    kind: str, in_place: bool, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        stream = open_stream(kind, tmp_path, stack)
        writer = LogWriter(stream)
        writer.emit(record("short"))
        writer.emit(record("long " + "y" * INLINE_CHARS))  # one page of a pipe at most
        writer.close()
        stack.callback(stream.detach)  # closed by the raw file's owner
    here = threading.current_thread().name
    expected = {here, "bodhi-trio-log"} if in_place else {"bodhi-trio-log"}
    assert stream.writers == expected


class CountingFormatter(logging.Formatter):
    """Counts the lines it makes."""

    made = 0

    def format(self, record: logging.LogRecord) -> str:
        self.made += 1
        return super().format(record)


def test_a_line_too_long_for_its_place_is_made_once(tmp_path: Path) -> None:
    formatter = CountingFormatter()
    long_line = "long " + "y" * INLINE_CHARS
    with (tmp_path / "log").open("w") as stream:
        writer = LogWriter(stream)
        writer.setFormatter(formatter)
        writer.emit(record(long_line))  # made here, found too long, written by the thread
        writer.close()
    assert (tmp_path / "log").read_text() == long_line + "\n"
    assert formatter.made == 1


async def test_a_serve_whose_stderr_nobody_reads_keeps_answering(tmp_path: Path) -> None:
    env = serve_env(tmp_path)
    with start_serve(tmp_path / "home", env) as process:
        try:
            assert process.stderr is not None
            with trio.fail_after(HANG):  # the thread is let go; the finally's kill ends it
                url = await listening_url(process)
            # From here on nobody reads its stderr. Each request logs a line of ~90
            # bytes: 2,000 of them are three times the pipe's 64 KiB.
            async with httpx.AsyncClient(base_url=url) as client:
                with trio.fail_after(HANG * 4):
                    for _ in range(2_000):
                        assert (await client.get("/health")).status_code == 200
            process.terminate()
            with trio.fail_after(HANG):
                rest = await trio.to_thread.run_sync(process.stderr.read)
                assert await trio.to_thread.run_sync(process.wait) == 0
        finally:
            process.kill()
    assert rest.count(" GET /health ") == 2_000  # every line kept, none dropped
    assert "bodhi-trio stopped" in rest
