"""``benchmarks/floor_relay.py``, the harness's bare Trio relay: it keeps its connections and
finds where each answer ends (a relay that missed an end would never answer the next)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import trio
import trio.testing
from test_bench_scale import BENCH_DIR, bench_module

HANG = 30.0  # a liveness bound: a relay that missed an answer's end never answers again
EVENTS = b"".join(b"%x\r\n%s\r\n" % (40, b"data: " + b"x" * 32 + b"\n\n") for _ in range(500))
ANSWERS = [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + EVENTS + b"0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nlast!\r\n0\r\n\r\n",
]


def upstream(listener: socket.socket, accepted: list[int]) -> None:
    """Answers each request of a connection with the next of ``ANSWERS`` (in one write)."""
    listener.settimeout(HANG)
    connection, _ = listener.accept()
    accepted.append(1)
    with connection:
        data = b""
        for answer in ANSWERS:
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            data = data.partition(b"\r\n\r\n")[2]
            connection.sendall(answer)


def test_the_floor_keeps_its_connections_and_finds_each_answers_end(tmp_path: Path) -> None:
    path = str(tmp_path / "up.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    accepted: list[int] = []
    serving = threading.Thread(target=upstream, args=(listener, accepted), daemon=True)
    serving.start()
    floor = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "floor_relay.py"), "--upstream", path],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert floor.stdout is not None
        port = int(re.search(r":(\d+)", floor.stdout.readline()).group(1))  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", port), timeout=HANG) as client:
            for answer in ANSWERS:
                client.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
                got = b""
                while len(got) < len(answer):
                    got += client.recv(65536)
                assert got == answer
    finally:
        floor.kill()
        floor.wait(HANG)
        floor.stdout.close()  # type: ignore[union-attr]
        listener.close()
    serving.join(HANG)
    assert not serving.is_alive()
    assert accepted == [1]  # one upstream connection for the client's three requests


async def test_a_client_socket_with_no_room_is_waited_for_not_dropped() -> None:
    """A client that stopped reading for a while (its socket full) gets the rest once it
    reads again; an ``os.write`` into a full socket raises rather than writing nothing."""
    floor = bench_module("floor_relay")
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    filled = 0
    try:
        while True:
            filled += os.write(ours.fileno(), b"f" * 65536)
    except BlockingIOError:
        pass  # full
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    event = b"data: " + b"x" * 4000 + b"\n\n"
    got = bytearray()
    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(floor._forward, ours.fileno(), stream, event)
            await trio.testing.wait_all_tasks_blocked()  # the write waits for room
            theirs.setblocking(False)
            while len(got) < filled + len(event):
                await trio.lowlevel.wait_readable(theirs)
                got += theirs.recv(1 << 20)
    assert bytes(got[filled:]) == event
    await stream.aclose()
    theirs.close()
