"""The wake-up and per-thread CPU tools measure what they say (not how fast it is)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from test_bench_scale import BENCH_DIR, bench_module


def test_the_python_relay_of_wake_floor_relays_every_event_and_reports_its_cpu() -> None:
    wake_floor = bench_module("wake_floor")
    results: list[float] = []

    def measure() -> None:
        for kind in ("unix", "tcp"):
            results.append(wake_floor.one("python", kind, 0.001, 20, None))

    # a relay that missed the end of its events would never return: a bounded wait
    measuring = threading.Thread(target=measure, daemon=True)
    measuring.start()
    measuring.join(60)
    assert not measuring.is_alive()
    assert len(results) == 2
    assert all(0 < per_wake < 1_000_000 for per_wake in results)  # µs per wake-up


def test_thread_cpu_reads_every_thread_of_a_process() -> None:
    thread_cpu = bench_module("thread_cpu")
    started, stop = threading.Event(), threading.Event()

    def idle() -> None:
        started.set()
        stop.wait(30)

    other = threading.Thread(target=idle)
    other.start()
    try:
        assert started.wait(30)
        reading = thread_cpu.threads(os.getpid())
    finally:
        stop.set()
        other.join(30)
    assert str(os.getpid()) in reading  # the main thread's id is the pid
    assert str(other.native_id) in reading
    name, voluntary, involuntary, cpu_ns = reading[str(os.getpid())]
    assert name
    assert cpu_ns > 0
    assert min(voluntary, involuntary) >= 0


def test_request_cpu_gets_every_kind_answered_and_reports_its_cpu() -> None:
    # each kind's request must be answered 200 and end, or the tool stops with an error;
    # 50 of each: some kernels account a thread's CPU a scheduler tick (4 ms) at a time
    tool = [sys.executable, str(BENCH_DIR / "request_cpu.py")]
    run = subprocess.run(
        [*tool, "--requests", "50", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,  # a liveness bound: a response that never ends would hold it forever
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")][1:]
    request_cpu = bench_module("request_cpu")
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(request_cpu.KINDS)
    assert all(float(row.split(" | ")[1].rstrip(" |")) > 0 for row in rows)  # µs per request
