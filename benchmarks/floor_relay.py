#!/usr/bin/env python3
"""The floor of any relay on Trio: a wait, a read and a write per event, and nothing else.

For each client connection it reads one request, sends it on to the upstream (a Unix
socket, as bodhi-trio reaches its children, or ``host:port``) with ``Connection: close``,
and copies every byte of the answer to the client as it arrives: per event one
``wait_readable``, one read and one write on the same Trio run loop bodhi-trio uses, with
nothing parsed, checked, counted or framed, and the connection closed after the answer.
The harness runs it as the ``trio-floor`` arm of the paced scenarios: what bodhi-trio
costs per event above it is what bodhi-trio itself does; what it costs above ``direct``
(the fake alone) is what waking a Trio program per event costs on the machine.

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
_READ = 65536


async def _request(client: trio.SocketStream) -> bytes | None:
    """One whole request (head and ``Content-Length`` body), or None if the client left."""
    data = b""
    while _HEAD_END not in data:
        more = await client.receive_some(_READ)
        if not more:
            return None
        data += more
    head, _, body = data.partition(_HEAD_END)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        more = await client.receive_some(_READ)
        if not more:
            return None
        body += more
    return head + b"\r\nConnection: close" + _HEAD_END + body


async def _connect(upstream: str) -> trio.socket.SocketType:
    if upstream.startswith("/"):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(upstream)
        return sock
    host, _, port = upstream.rpartition(":")
    sock = trio.socket.socket()
    await sock.connect((host, int(port)))
    return sock


def handler(upstream: str) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """The per-connection relay to ``upstream``."""

    async def relay(client: trio.SocketStream) -> None:
        try:
            request = await _request(client)
            if request is None:
                return
            with await _connect(upstream) as up:
                view = memoryview(request)
                while view:
                    view = view[await up.send(view) :]
                source, sink = up.fileno(), client.socket.fileno()
                while True:
                    await trio.lowlevel.wait_readable(source)
                    data = os.read(source, _READ)
                    if not data:
                        return
                    sent = os.write(sink, data)
                    if sent < len(data):  # a slow client: the rest as Trio writes it
                        await client.send_all(data[sent:])
        except (OSError, trio.BrokenResourceError):
            return  # the client or the upstream left
        finally:
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
