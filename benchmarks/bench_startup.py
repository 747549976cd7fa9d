"""The swap and memory suites.

- **swap**: one bodhi-trio serving the real llama-server, two aliases on the demo model
  (``bench:a``, ``bench:b``). Requests alternate A, B, A, B, ... (each one swaps the model);
  per request: the time to the first content event, and the child's own spawn-to-ready time
  for that start, from ``[bodhi-trio] ready on unix:PATH after X s`` in
  ``GET /bodhi/v1/server/logs`` (each start has its own socket PATH: the one whose
  ``spawned pid N`` line has the pid in ``GET /bodhi/v1/state``). Their difference is the
  swap overhead (it includes stopping
  the previous child). The same for cold starts (``POST /bodhi/v1/server/stop`` before each
  request), and warm requests (the alias already loaded) for reference.
- **memory**: one bodhi-trio on the fake upstream, started once to place the demo model
  (its RSS then apart) and again on the same home. Its RSS after startup and one completed
  request, and its CPU while it then idles with the model loaded (:data:`IDLE_CPU_SECS`);
  then with 1,000 open idle streams (alias ``bench:idle``, whose fake child waits an hour
  after the role chunk), held by a raw Trio client, read once ``in_flight`` is 1,000.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from bench_procs import (
    CHILD_URL,
    FAKE,
    Bodhi,
    child_starts,
    cpu_between,
    cpu_reading,
    http_json,
    running_bodhi,
)
from bench_suites import Arm, Scenario, run_one

__all__ = ["memory_suite", "swap_suite"]


def _ready_seconds(bodhi: Bodhi, pid: int) -> float | None:
    """The spawn-to-ready time of the newest start of child ``pid``: the ``ready on
    unix:PATH`` line whose socket PATH that start was given (see ``child_starts``)."""
    for start in reversed(child_starts(bodhi.logs(1000))):
        if start.pid == pid:
            return start.ready_s
    return None


def _first_token(bodhi: Bodhi, alias: str) -> dict[str, Any]:
    """One streamed request of 5 tokens; its TTFT and the start behind it."""
    arm = Arm("bodhi-trio", f"{bodhi.url}/v1", alias)
    result = run_one(arm, Scenario("swap", 1, 5, requests=1), timeout=120.0)
    state = bodhi.state()
    row: dict[str, Any] = {"alias": alias, "ttft_ms": result.ttft_p50_ms}
    row.update(pid=state.get("pid"), errors=result.errors, samples=result.error_samples)
    if state.get("alias") != alias or state.get("pid") is None:
        row["errors"] += 1
        row["samples"].append(f"state after the request: {state}")
        return row
    ready = _ready_seconds(bodhi, state["pid"])
    row["ready_ms"] = None if ready is None else ready * 1e3
    if result.ttft_p50_ms is not None and ready is not None:
        row["overhead_ms"] = result.ttft_p50_ms - ready * 1e3
    return row


def swap_suite(workdir: Path, quick: bool) -> dict[str, Any]:
    each = 10 if quick else 20
    aliases: dict[str, list[str]] = {"bench:a": [], "bench:b": []}
    rows: list[dict[str, Any]] = []
    with running_bodhi(workdir, "swap", aliases) as bodhi:
        bodhi.load("bench:b")
        for kind in ("warm", "swap", "cold"):
            for i in range(2 * each if kind != "warm" else each):
                alias = "bench:b" if kind == "warm" or i % 2 else "bench:a"
                if kind == "cold":
                    bodhi.stop_model()
                before = bodhi.state().get("pid")
                row = {"kind": kind, "i": i, **_first_token(bodhi, alias)}
                if kind != "warm" and row.get("pid") == before:
                    row["errors"] += 1
                    row["samples"].append("no new child was started")
                if kind == "warm":
                    row.pop("overhead_ms", None)
                    row.pop("ready_ms", None)
                rows.append(row)
                overhead = row.get("overhead_ms")
                print(
                    f"[swap] {kind} {i + 1:>2} {alias}: TTFT {row['ttft_ms'] or 0:8.1f} ms"
                    f"  child ready {row.get('ready_ms') or 0:7.1f} ms"
                    f"  overhead {'-' if overhead is None else f'{overhead:.1f}'} ms"
                    f"  errors {row['errors']}",
                    flush=True,
                )
    return {"runs": rows, "per_kind": each}


async def _hold_streams(bodhi: Bodhi, alias: str, n: int, child_socket: str) -> dict[str, Any]:
    """Open ``n`` streams, wait until bodhi-trio counts them, read its RSS, close them all,
    wait until ``in_flight`` is 0 again. Bounded: 120 s to open, 60 s to drain."""
    parts = urlsplit(bodhi.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = json.dumps(
        {
            "model": alias,
            "stream": True,
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    release, all_tried = trio.Event(), trio.Event()
    limiter = trio.CapacityLimiter(50)  # Hypercorn's listen backlog is 100
    opened: list[trio.SocketStream] = []
    failures: list[str] = []
    out: dict[str, Any] = {"streams": n}

    async def open_one() -> trio.SocketStream | None:
        async with limiter:
            try:
                with trio.fail_after(60):
                    stream = await trio.open_tcp_stream(host, port)
                    await stream.send_all(request)
                    head = b""
                    while b"\r\n\r\n" not in head and len(head) < 65536:
                        data = await stream.receive_some(65536)
                        if not data:
                            raise OSError("closed before the response head")
                        head += data
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                failures.append(repr(exc))
                return None
        if not head.startswith(b"HTTP/1.1 200"):
            failures.append(head[:80].decode("latin-1"))
            stream.socket.close()
            return None
        opened.append(stream)
        return stream

    async def one() -> None:
        try:
            stream = await open_one()
        finally:
            if len(opened) + len(failures) >= n:
                all_tried.set()
        if stream is not None:
            try:
                await release.wait()
            finally:
                stream.socket.close()

    async def state() -> dict[str, Any]:
        return await trio.to_thread.run_sync(bodhi.state)

    def child_stats() -> object:
        return http_json(f"{CHILD_URL}/bench/stats", unix_socket=child_socket)

    async def wait_in_flight(want: int, limit: float) -> float | None:
        started = time.monotonic()
        for _ in range(int(limit / 0.1)):
            if (await state()).get("in_flight") == want:
                return time.monotonic() - started
            await trio.sleep(0.1)
        return None

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
        with trio.move_on_after(120):
            await all_tried.wait()
        out["open_s"] = time.monotonic() - started
        out["opened"], out["failures"] = len(opened), failures[:5]
        out["failed"] = len(failures)
        out["counted_after_s"] = await wait_in_flight(n, 60)
        await trio.sleep(2)  # let allocations settle
        out["rss_streams_mib"] = bodhi.rss_mib()
        out["in_flight_at_peak"] = (await state()).get("in_flight")
        stats = await trio.to_thread.run_sync(child_stats)
        out["upstream_active_at_peak"] = stats.get("active") if isinstance(stats, dict) else None
        release.set()
    closed_at = time.monotonic()
    out["in_flight_zero_after_s"] = await wait_in_flight(0, 60)
    for _ in range(300):  # 30 s
        stats = await trio.to_thread.run_sync(child_stats)
        if isinstance(stats, dict) and stats.get("active") == 0:
            out["upstream_closed_after_s"] = time.monotonic() - closed_at
            break
        await trio.sleep(0.1)
    return out


IDLE_CPU_SECS = 16.0
"""How long the memory suite reads bodhi-trio's CPU while it idles with a model loaded: three
of its child watch's rounds (a health check, and the child's RSS, every 5 s)."""


def _idle_cpu(pid: int) -> float | None:
    """``pid``'s CPU over :data:`IDLE_CPU_SECS` with nothing asked of it, in µs a second."""
    before, start = cpu_reading(pid), time.monotonic()
    time.sleep(IDLE_CPU_SECS)
    used = cpu_between(before, cpu_reading(pid))
    return None if used is None else used / (time.monotonic() - start) * 1e6


def memory_suite(workdir: Path, streams: int = 1000) -> dict[str, Any]:
    aliases = {"bench:fake": [], "bench:idle": ["--token-delay 3600"]}
    # The first start on a home writes the demo model, with gguf and numpy, which a server
    # that did not write it never imports: measured apart, then the server starts again on
    # the same home, as every later start of a user's server does.
    with running_bodhi(workdir, "memory", {}, FAKE) as first:
        time.sleep(1)
        out: dict[str, Any] = {"rss_first_start_mib": first.rss_mib()}
    with running_bodhi(workdir, "memory", aliases, FAKE) as bodhi:
        time.sleep(1)
        out["rss_started_mib"] = bodhi.rss_mib()
        bodhi.load("bench:fake")
        one = run_one(
            Arm("bodhi-trio", f"{bodhi.url}/v1", "bench:fake"), Scenario("one", 1, 100, requests=1)
        )
        out["first_request_errors"] = one.errors
        time.sleep(1)
        out["rss_idle_mib"] = bodhi.rss_mib()
        out["cpu_idle_us_per_s"] = _idle_cpu(bodhi.pid)
        state = bodhi.load("bench:idle")  # the fake child now waits an hour after the role chunk
        time.sleep(1)
        out["rss_before_streams_mib"] = bodhi.rss_mib()
        child = bodhi.child(state["pid"])  # its Unix socket, from bodhi-trio's log
        assert child.socket is not None
        out.update(trio.run(_hold_streams, bodhi, "bench:idle", streams, child.socket))
        time.sleep(1)
        out["rss_after_streams_mib"] = bodhi.rss_mib()
        if out["rss_streams_mib"] is not None and out["rss_before_streams_mib"] is not None:
            delta = out["rss_streams_mib"] - out["rss_before_streams_mib"]
            out["per_stream_kib"] = delta * 1024 / streams
    return out
