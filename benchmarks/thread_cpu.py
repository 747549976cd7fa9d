#!/usr/bin/env python3
"""Each thread's CPU and wake-ups in ``bodhi-trio serve --demo`` over one streamed answer.

Starts the server, streams one answer (loading the model; not measured), then a second
one, and reads each thread's CPU time (``/proc/PID/task/TID/schedstat``) and context
switches before and after the second: per event, what the run loop and the relay hub's
thread spent. At a real model's pace (``demo:smol``, ~100 tokens/s) the stream parks in
the hub after its first tokens, so the run loop should hardly wake and the hub's thread
should wake once per token (docs/benchmarks.md, issue 17, session 22). Linux only.

    python benchmarks/thread_cpu.py [--model demo:smol] [--tokens 300]

The server is the harness's (``bench_procs.running_bodhi``: a fresh home, its output to a
file). Needs bodhi-trio and httpx importable (the ``tests`` session's venv has both).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

import httpx
from bench_procs import running_bodhi

Reading = dict[str, tuple[str, int, int, int]]  # tid: (name, voluntary, involuntary, cpu ns)


def threads(pid: int) -> Reading:
    out: Reading = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            name = Path(f"{base}/comm").read_text().strip()
            status = Path(f"{base}/status").read_text()
            cpu_ns = int(Path(f"{base}/schedstat").read_text().split()[0])
        except FileNotFoundError:  # ended meanwhile
            continue
        switches = [
            int(m.group(1)) for m in re.finditer(r"voluntary_ctxt_switches:\s+(\d+)", status)
        ]
        out[tid] = (name, switches[0], switches[1], cpu_ns)
    return out


def stream(client: httpx.Client, model: str, tokens: int) -> int:
    """One streamed chat answer of ``tokens`` tokens; the events received."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
        "max_tokens": tokens,
        "stream": True,
    }
    events = 0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            events += line.startswith("data: {")
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo:smol")
    parser.add_argument("--tokens", type=int, default=300)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as scratch,
        running_bodhi(Path(scratch), "thread-cpu", {}) as bodhi,
        httpx.Client(base_url=bodhi.url, timeout=300) as client,
    ):
        stream(client, args.model, args.tokens)  # loads the model, warms up
        before = threads(bodhi.pid)
        events = stream(client, args.model, args.tokens)
        after = threads(bodhi.pid)
    print(f"{events} events of {args.model}")
    print(
        f"{'thread':>16} {'tid':>9} {'wake-ups':>9} {'preempted':>9} {'CPU µs':>9} {'µs/event':>9}"
    )
    for tid, (name, voluntary, involuntary, cpu_ns) in sorted(after.items()):
        _, voluntary0, involuntary0, cpu_ns0 = before.get(tid, (name, 0, 0, 0))
        cpu_us = (cpu_ns - cpu_ns0) / 1e3
        if cpu_us or voluntary - voluntary0:
            print(
                f"{name:>16} {tid:>9} {voluntary - voluntary0:>9} {involuntary - involuntary0:>9}"
                f" {cpu_us:>9.0f} {cpu_us / max(events, 1):>9.1f}"
            )


if __name__ == "__main__":
    main()
