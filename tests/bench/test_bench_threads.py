"""The wake-up and per-thread CPU tools measure what they say (not how fast it is)."""

from __future__ import annotations

import os
import threading

from test_bench_scale import bench_module


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
