#!/usr/bin/env python3
"""A remote alias's transport, measured alone: httpx vs our loopback client, same fake.

    python benchmarks/remote_transport.py [--rounds 5] [--tokens 1000] [--requests 20]

Starts ``fake_upstream.py`` on a free TCP port of 127.0.0.1 and reads its streams in this
process through each client in turn, rounds interleaved (every round runs every client on
every shape, the order of the clients rotated):

- ``remote``: :class:`bodhi_trio._transport._remote.RemoteClients`, exactly as a remote
  alias reads a body (for a plain ``http://`` URL: its own HTTP/1.1 client);
- ``httpx``: an ``httpx.AsyncClient`` as ``RemoteClients`` sets one up for HTTPS, its
  ``Response.stream`` iterated directly (what a remote alias did before, and still does
  over HTTPS, less the reader task that hands each piece over a channel);
- ``httpcore``: httpx's own connection pool without httpx on top, to tell httpx's layers
  from httpcore and h11 underneath;
- ``loopback``: :func:`bodhi_trio._transport._loopback.send_upstream` over
  ``Address.tcp`` (the client local aliases use, over TCP instead of a Unix socket).

Shapes: ``unpaced`` (the fake writes the events back to back), ``paced`` (200 µs apart:
one event per read), ``short`` (1-token requests: the per-request cost) and ``leave``
(read 10 events of a 5,000-token stream, then close: what a client that leaves costs).
Prints, per client and shape, the medians over the rounds of: this process's CPU per
event (per request for ``short``/``leave``), events/s, and how many pieces the iterator
handed out per event (each piece is one client write in the relay). Nothing here is
written to the committed results; docs/benchmarks.md quotes a run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpcore
import httpx
import trio
from bench_procs import FAKE, running_fake

from bodhi_trio._core._address import Address
from bodhi_trio._transport._loopback import UpstreamPool, send_upstream
from bodhi_trio._transport._remote import RemoteClients, RemoteTimeouts, open_remote_clients

__all__ = ["main"]

PATH = "/v1/chat/completions"
TIMEOUTS = RemoteTimeouts(connect=5.0, idle=30.0)
Pieces = Callable[[bytes], AbstractAsyncContextManager[AsyncIterator[bytes]]]


def _body(tokens: int, delay: float | None) -> bytes:
    request: dict[str, object] = {
        "model": "x",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": tokens,
        "ignore_eos": True,
    }
    if delay is not None:
        request["bench_token_delay"] = delay
    return json.dumps(request).encode()


def _remote(clients: RemoteClients, url: str) -> Pieces:
    @asynccontextmanager
    async def open_(body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        headers = [("Content-Type", "application/json")]
        async with clients.send(url + PATH, body, headers=headers, timeouts=TIMEOUTS) as r:
            assert r.status_code == 200
            yield aiter(r)

    return open_


def _httpx(client: httpx.AsyncClient, url: str) -> Pieces:
    @asynccontextmanager
    async def open_(body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        headers = [("Content-Type", "application/json")]
        request = client.build_request("POST", url + PATH, content=body, headers=headers)
        response = await client.send(request, stream=True)
        try:
            assert response.status_code == 200
            stream = response.stream
            assert isinstance(stream, httpx.AsyncByteStream)
            yield aiter(stream)
        finally:
            await response.aclose()

    return open_


def _httpcore(pool: httpcore.AsyncConnectionPool, url: str) -> Pieces:
    @asynccontextmanager
    async def open_(body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        headers = [(b"Content-Type", b"application/json")]
        async with pool.stream("POST", url + PATH, headers=headers, content=body) as r:
            assert r.status == 200
            yield r.aiter_stream()

    return open_


def _loopback(pool: UpstreamPool, address: Address) -> Pieces:
    @asynccontextmanager
    async def open_(body: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        async with send_upstream(pool, address, PATH, body) as r:
            assert r.status_code == 200
            yield aiter(r)

    return open_


async def _measure(
    pieces: Pieces, body: bytes, requests: int, leave_after: int | None
) -> tuple[int, int, float, float]:
    """(events, pieces, wall s, CPU s) over ``requests`` sequential requests."""
    events = count = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(requests):
        seen = 0
        async with pieces(body) as response:
            async for piece in response:
                count += 1
                seen += piece.count(b"data: ")
                if leave_after is not None and seen >= leave_after:
                    break
        events += seen
    return events, count, time.perf_counter() - wall, time.process_time() - cpu


SHAPES: dict[str, tuple[int | None, float | None, int | None]] = {
    # name: (tokens (None: --tokens), pace, leave after this many events)
    "unpaced": (None, None, None),
    "paced": (None, 0.0002, None),
    "short": (1, None, None),
    "leave": (5000, None, 10),
}


async def run(url: str, rounds: int, tokens: int, requests: int) -> None:
    port = int(url.rsplit(":", 1)[1])
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with (
        open_remote_clients() as clients,
        UpstreamPool() as pool,
        httpx.AsyncClient(headers={"Accept-Encoding": "identity"}, limits=limits) as client,
        httpcore.AsyncConnectionPool(max_keepalive_connections=64) as core,
    ):
        variants: dict[str, Pieces] = {
            "remote": _remote(clients, url),
            "httpx": _httpx(client, url),
            "httpcore": _httpcore(core, url),
            "loopback": _loopback(pool, Address.tcp("127.0.0.1", port)),
        }
        names = list(variants)
        for r in range(-1, rounds):  # round -1 warms every client up
            order = names[r % len(names) :] + names[: r % len(names)]
            for shape, (n, pace, leave) in SHAPES.items():
                body = _body(n or tokens, pace)
                many = requests * (10 if shape in ("short", "leave") else 1)
                for name in order:
                    events, count, wall, cpu = await _measure(variants[name], body, many, leave)
                    if r < 0:
                        continue
                    per = many if shape in ("short", "leave") else events
                    results.setdefault((shape, name), []).append(
                        (cpu * 1e6 / per, events / wall, count / events)
                    )
    print(f"{'shape':8} {'client':9} {'CPU µs':>10} {'events/s':>10} {'pieces/event':>13}")
    for (shape, name), rows in results.items():
        cpu, rate, per = (statistics.median(col) for col in zip(*rows, strict=True))
        unit = "/request" if shape in ("short", "leave") else "/event"
        print(f"{shape:8} {name:9} {cpu:10.1f} {rate:10,.0f} {per:13.3f}  (CPU {unit})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20, help="per round, client and shape")
    args = parser.parse_args()
    with running_fake([str(FAKE)], Path(tempfile.mkdtemp(prefix="bodhi-remote-"))) as (url, _):
        trio.run(run, url, args.rounds, args.tokens, args.requests)


if __name__ == "__main__":
    main()
