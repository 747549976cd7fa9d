#!/usr/bin/env python3
"""The server's CPU per request, by kind of request, for one or more source trees side by side.

Starts one ``bodhi-trio serve`` per source tree (``--src``, each with ``PYTHONPATH`` set to it;
by default this checkout's ``src``), each relaying its own fake upstream
(``fake_upstream.py``, the fake suite's), and sends each kind of request back to back on
keep-alive connections from one blocking client. The CPU is the server's, every thread's
(``/proc/PID/task/*/schedstat``, nanoseconds), read before and after each kind's requests;
rounds rotate the servers' order, and the table gives each kind's median over the rounds.
Some kernels account a thread's CPU a scheduler tick at a time (4 ms on this machine's): a
kind needs hundreds of requests per round for a figure to mean anything.

A request's CPU moves far less from one run to the next than its latency does on a small
machine (where the three processes run decides most of that): a change's cost or saving per
request shows here when an added-TTFT comparison is lost in the noise (docs/benchmarks.md,
issue 17, session 23). Linux only.

    python benchmarks/request_cpu.py [--src OLD/src --src NEW/src] [--requests 1000] [--rounds 3]

Needs bodhi-trio importable from each tree (its dependencies from the running venv).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import tempfile
from pathlib import Path

from bench_procs import FAKE, Bodhi, running_bodhi

HERE = Path(__file__).resolve().parent
ALIAS = "bench:fake"
PER_CONNECTION = 500
"""Requests per keep-alive connection (Hypercorn closes one after 1,000)."""


def _request(method: str, path: str, body: object = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    if body is None:
        return head + b"\r\n"
    data = json.dumps(body).encode()
    return head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(data),
        data,
    )


def _chat(tokens: int, stream: bool) -> dict[str, object]:
    messages = [{"role": "user", "content": "hi"}]
    return {"model": ALIAS, "messages": messages, "max_tokens": tokens, "stream": stream}


KINDS: dict[str, bytes] = {
    "GET /ping": _request("GET", "/ping"),
    "GET /v1/models": _request("GET", "/v1/models"),
    "chat, 1 token": _request("POST", "/v1/chat/completions", _chat(1, False)),
    "chat, 1 token, streamed": _request("POST", "/v1/chat/completions", _chat(1, True)),
    "chat, 100 tokens, streamed": _request("POST", "/v1/chat/completions", _chat(100, True)),
    "Ollama chat, 1 token, streamed": _request(
        "POST",
        "/api/chat",
        {"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        | {"options": {"num_predict": 1}},
    ),
}
"""Each kind's request, as the client sends it (it never changes)."""


def cpu_ns(pid: int) -> dict[str, int]:
    """The CPU time of each thread of ``pid`` so far, by thread id."""
    times: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # ended meanwhile
            times[tid] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return times


def cpu_between(before: dict[str, int], after: dict[str, int]) -> int:
    """The CPU the threads spent between two readings of :func:`cpu_ns`. A thread that ended
    meanwhile (an idle worker of Trio's thread cache leaves after a while) is not in
    ``after``: what it spent since ``before`` is lost (its total must not count against
    the others); a thread started meanwhile counts from zero."""
    return sum(spent - before.get(tid, 0) for tid, spent in after.items())


def _read_response(sock: socket.socket, data: bytes) -> bytes:
    """Read one response on ``sock`` (``data``: what was read past the last one); returns
    what came after it. Raises RuntimeError unless it is a 200 that ended."""
    while b"\r\n\r\n" not in data:
        data += _receive(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"answered {head[:200]!r}")
    fields = head.lower()
    if b"\r\ntransfer-encoding: chunked" in fields:
        while not (rest.endswith(b"\r\n0\r\n\r\n") or rest == b"0\r\n\r\n"):
            rest = rest[-16:] + _receive(sock)  # never pipelined: the end is the last read
        return b""
    length = int(fields.split(b"\r\ncontent-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(rest) < length:
        rest += _receive(sock)
    return rest[length:]


def _receive(sock: socket.socket) -> bytes:
    data = sock.recv(262144)
    if not data:
        raise RuntimeError("the server closed the connection")
    return data


def send(address: tuple[str, int], request: bytes, count: int) -> None:
    """``count`` requests, back to back, a new connection every :data:`PER_CONNECTION`."""
    sent = 0
    while sent < count:
        with socket.create_connection(address, timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rest = b""
            for _ in range(min(PER_CONNECTION, count - sent)):
                sock.sendall(request)
                rest = _read_response(sock, rest)
                sent += 1


def cpu_per_request(bodhi: Bodhi, request: bytes, count: int) -> float:
    """The server's CPU in µs per request over ``count`` of ``request``."""
    host, port = bodhi.url.removeprefix("http://").rsplit(":", 1)
    before = cpu_ns(bodhi.pid)
    send((host, int(port)), request, count)
    return cpu_between(before, cpu_ns(bodhi.pid)) / count / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", action="append", help="a tree's src (repeatable)")
    parser.add_argument("--requests", type=int, default=1000, help="per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--kind", action="append", choices=list(KINDS), help="only this kind (repeatable)"
    )
    args = parser.parse_args()
    sources = args.src or [str(HERE.parent / "src")]
    kinds = {kind: KINDS[kind] for kind in args.kind} if args.kind else KINDS
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        servers: list[tuple[str, Bodhi]] = []
        for n, src in enumerate(sources):
            server = running_bodhi(Path(scratch), f"s{n}", {ALIAS: []}, FAKE, pythonpath=src)
            bodhi = stack.enter_context(server)
            bodhi.load(ALIAS)
            for request in kinds.values():  # warm: the code's first run is not measured
                cpu_per_request(bodhi, request, 20)
            servers.append((src, bodhi))
        for round_ in range(args.rounds):
            order = servers[round_ % len(servers) :] + servers[: round_ % len(servers)]
            for src, bodhi in order:
                for kind, request in kinds.items():
                    per_request = cpu_per_request(bodhi, request, args.requests)
                    results.setdefault((kind, src), []).append(per_request)
                    print(f"round {round_ + 1}: {kind}: {src}: {per_request:.0f} µs", flush=True)
    print()
    print("| request (µs of server CPU per request, median) | " + " | ".join(sources) + " |")
    print("|---|" + "---:|" * len(sources))
    for kind in kinds:
        cells = [f"{statistics.median(results[kind, src]):.0f}" for src in sources]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
