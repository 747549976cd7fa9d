#!/usr/bin/env python3
"""The floor of any relay on Trio: a wait, a read and a write per event, and nothing else.

For each client connection it reads a request, sends it on to the upstream (a Unix socket,
as bodhi-trio reaches its children, or ``host:port``) over a connection of its own, kept
for that client's next requests as bodhi-trio keeps its pool's, and copies every byte of
the answer to the client as it arrives: per event one ``wait_readable``, one read and one
write on the same Trio run loop bodhi-trio uses. Nothing is parsed but what finding the
answer's end takes: the head's framing once, then per read a look at its last bytes (a
chunked body's ``0`` chunk) or a count (a ``Content-Length`` body). Until the head is
through it reads 4 KiB at a time, as bodhi-trio does: one large read of a fast stream's queue
copies every event in it before the first goes on. The harness runs it as
the ``trio-floor`` arm: what bodhi-trio costs above it is what bodhi-trio itself does;
what it costs above ``direct`` (the fake alone) is what waking a Trio program per event
costs on the machine.

    python benchmarks/floor_relay.py --upstream /path/to/child.sock --port 0

prints ``listening on http://127.0.0.1:PORT``. Nothing here is part of bodhi-trio.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Awaitable, Callable

import trio

_HEAD_END = b"\r\n\r\n"
_CHUNKED_END = b"\r\n0\r\n\r\n"  # a chunked body's last bytes (no trailers)
_READ = 65536
_HEAD_READ = 4096  # until an answer's head is through: bodhi-trio's HEAD_BYTES, and why


async def _request(client: trio.SocketStream, data: bytes) -> tuple[bytes, bytes] | None:
    """One whole request (head and ``Content-Length`` body) and what came after it, from
    ``data`` and the client's next bytes; None if the client left."""
    while _HEAD_END not in data:
        more = await client.receive_some(_READ)
        if not more:
            return None
        data += more
    head, _, body = data.partition(_HEAD_END)
    size = _content_length(head) or 0
    while len(body) < size:
        more = await client.receive_some(_READ)
        if not more:
            return None
        body += more
    return head + _HEAD_END + body[:size], body[size:]


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


class _AnswerEnd:
    """Finds where an answer ends, from its head (read once) and each read's last bytes."""

    def __init__(self) -> None:
        self.head = b""
        self.chunked: bool | None = None  # None: the head is not whole yet
        self.left = -1  # a Content-Length body's bytes still to come; -1: none counted
        self.tail = b""

    def ended(self, data: bytes) -> bool:
        if self.chunked is None:
            self.head += data
            if _HEAD_END not in self.head:
                return False
            head, _, data = self.head.partition(_HEAD_END)
            self.chunked = b"transfer-encoding: chunked" in head.lower()
            length = _content_length(head)
            self.left = -1 if self.chunked or length is None else length
        if self.chunked:
            self.tail = (self.tail + data)[-len(_CHUNKED_END) :]
            return self.tail == _CHUNKED_END
        if self.left >= 0:
            self.left -= len(data)
            return self.left <= 0
        return False  # neither: the answer ends when the upstream closes


async def _connect(upstream: str) -> trio.socket.SocketType:
    if upstream.startswith("/"):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(upstream)
        return sock
    host, _, port = upstream.rpartition(":")
    sock = trio.socket.socket()
    await sock.connect((host, int(port)))
    return sock


async def _forward(sink: int, client: trio.SocketStream, data: bytes) -> None:
    """Write ``data`` to the client's socket ``sink``: at once what it takes now, the rest as
    Trio writes it (a slow client). A socket with no room at all raises instead of taking
    nothing; that is a slow client too, not one that left."""
    try:
        sent = os.write(sink, data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        await client.send_all(data[sent:])


def handler(upstream: str) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """The per-connection relay to ``upstream``."""

    async def relay(client: trio.SocketStream) -> None:
        up: trio.socket.SocketType | None = None
        pending = b""
        try:
            while (found := await _request(client, pending)) is not None:
                request, pending = found
                if up is None:
                    up = await _connect(upstream)
                view = memoryview(request)
                while view:
                    view = view[await up.send(view) :]
                source, sink = up.fileno(), client.socket.fileno()
                end = _AnswerEnd()
                while True:
                    await trio.lowlevel.wait_readable(source)
                    data = os.read(source, _READ if end.chunked is not None else _HEAD_READ)
                    if not data:
                        return  # the upstream closed: so does the client's connection
                    await _forward(sink, client, data)
                    if end.ended(data):
                        break
        except (OSError, trio.BrokenResourceError):
            return  # the client or the upstream left
        finally:
            if up is not None:
                up.close()
            await client.aclose()

    return relay


async def main(upstream: str, port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    bound = listeners[0].socket.getsockname()[1]
    print(f"listening on http://127.0.0.1:{bound}", flush=True)
    await trio.serve_listeners(handler(upstream), listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="a Unix socket path, or host:port")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    args = parser.parse_args()
    trio.run(main, args.upstream, args.port)
