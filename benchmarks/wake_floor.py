#!/usr/bin/env python3
"""What one wake-up costs a relay's thread at a real model's pace, before it does anything.

A process (the "model") sends a small event every ``--interval`` seconds to a socket; a
thread waits for it in an epoll of its own, reads it and writes it on to a second socket
(a Unix socket pair, or a TCP loopback connection, as bodhi-trio's clients use), whose
other end a third process drains. The thread's own CPU time (``CLOCK_THREAD_CPUTIME_ID``)
divided by its wake-ups is the floor of any relay written that way: bodhi-trio's relay hub
does exactly this per paced token, plus its own work (docs/benchmarks.md, issue 17,
session 22). With a C compiler (``cc``) the same loop in C runs too, as the floor of a
relay in C.

    python benchmarks/wake_floor.py [--interval 0.01] [--count 300] [--rounds 3]

Nothing here is part of bodhi-trio; it needs only the standard library.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

EVENT = b'data: {"choices":[{"delta":{"content":" token"}}]}\n\n'

_C_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
/* argv: source fd, sink fd. Prints the thread CPU µs per wake-up. */
int main(int argc, char **argv) {
    int source = atoi(argv[1]), sink = atoi(argv[2]), wakes = 0;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = source}, ready[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, source, &ev);
    struct timespec a, b;
    char buf[65536];
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    for (;;) {
        epoll_wait(ep, ready, 64, -1);
        ssize_t got = read(source, buf, sizeof buf);
        if (got <= 0) break;
        if (write(sink, buf, got) != got) return 1;
        wakes++;
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / wakes);
    return 0;
}
"""


def _sink_pair(kind: str) -> tuple[socket.socket, socket.socket]:
    """(the relay's end, the drain's end)."""
    if kind == "unix":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ours, theirs


def _model(fd: int, interval: float, count: int) -> subprocess.Popen[bytes]:
    """A process that sends ``count`` events to ``fd``, ``interval`` apart."""
    code = (
        "import os, sys, time\n"
        "fd, interval, count = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])\n"
        "for _ in range(count):\n"
        "    time.sleep(interval)\n"
        f"    os.write(fd, {EVENT!r})\n"
    )
    argv = [sys.executable, "-c", code, str(fd), str(interval), str(count)]
    return subprocess.Popen(argv, pass_fds=[fd])


def _drain(fd: int) -> subprocess.Popen[bytes]:
    """A process that reads ``fd`` to its end."""
    code = "import os, sys\nwhile os.read(int(sys.argv[1]), 65536): pass\n"
    return subprocess.Popen([sys.executable, "-c", code, str(fd)], pass_fds=[fd])


def _python_relay(source: int, sink: int) -> float:
    """Relay ``source`` to ``sink`` from a thread until the end; thread CPU µs per wake."""
    result: list[float] = []

    def run() -> None:
        epoll = select.epoll()
        epoll.register(source, select.EPOLLIN)
        wakes, started = 0, time.thread_time_ns()
        while True:
            epoll.poll(-1, 64)
            data = os.read(source, 65536)
            if not data:
                break
            os.write(sink, data)
            wakes += 1
        result.append((time.thread_time_ns() - started) / 1e3 / max(wakes, 1))
        epoll.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]


def one(language: str, kind: str, interval: float, count: int, binary: Path | None) -> float:
    """One run: the relay in ``language`` writing to a ``kind`` socket."""
    source, model_end = socket.socketpair()
    relay_end, drain_end = _sink_pair(kind)
    model, drain = _model(model_end.fileno(), interval, count), _drain(drain_end.fileno())
    model_end.close()
    drain_end.close()
    try:
        if language == "python":
            return _python_relay(source.fileno(), relay_end.fileno())
        assert binary is not None
        fds = [source.fileno(), relay_end.fileno()]
        out = subprocess.run(
            [str(binary), *map(str, fds)], pass_fds=fds, capture_output=True, check=True
        )
        return float(out.stdout)
    finally:
        source.close()
        relay_end.close()
        model.wait()
        drain.wait()


def _compiled(workdir: Path) -> Path | None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source, binary = workdir / "wake.c", workdir / "wake"
    source.write_text(_C_SOURCE)
    subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.01, help="s between events")
    parser.add_argument("--count", type=int, default=300, help="events per run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        binary = _compiled(Path(workdir))
        languages = ["python"] + (["c"] if binary else [])
        print(f"one event every {args.interval * 1e3:g} ms, {args.count} per run")
        for kind in ("unix", "tcp"):
            for language in languages:
                runs = [
                    one(language, kind, args.interval, args.count, binary)
                    for _ in range(args.rounds)
                ]
                shown = " ".join(f"{run:.1f}" for run in runs)
                print(
                    f"{language:>6} -> {kind:<4}: {sorted(runs)[len(runs) // 2]:6.1f} µs"
                    f" CPU per wake-up (runs: {shown})"
                )


if __name__ == "__main__":
    main()
