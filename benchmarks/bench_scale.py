"""The ``scale`` suite: hundreds of paced streams, as a GPU server sends them (issue 17).

A GPU box serving 256 users sends each of them about 50 tokens/s: 12,800 small events a second,
each a wake-up of the proxy. One bodhi-trio serves the fake upstream (``fake_upstream.py``,
alias ``bench:fake``); every stream asks the fake for one event every ``PACE`` s
(``bench_token_delay``: a fixed schedule, so a stream gets exactly 1/PACE events/s whatever a
send costs) and streams of ``TOKENS`` tokens. Arms:

- ``direct``: the client straight to the fake child's Unix socket, the same process and socket
  bodhi-trio relays from: every "added" figure of ``bodhi-trio`` is over this arm;
- ``bodhi-trio``: through bodhi-trio;
- ``trio-floor`` (``1 x 50/s`` and ``256 x 50/s``): ``floor_relay.py``, a bare Trio relay of
  the same socket (per event a wait, a read and a write, nothing else), pinned as bodhi-trio
  is: the floor of any relay on Trio, so that what bodhi-trio costs above it is its own;
- ``direct-tcp`` and ``remote`` (``256 x 50/s`` only): a twin of the child on a TCP port,
  straight and through a remote alias of bodhi-trio's (its own HTTP/1.1 client); ``remote``'s
  added figures are over ``direct-tcp``.

Scenarios (``SCENARIOS``): 1, 64 and 256 streams whose phases are spread (worker ``i`` of ``N``
starts ``i * RAMP / N`` s after the start: each event is a wake-up of its own); 256 streams *in
step* (``bench_token_align``: the fake sends every stream's next event at the same clock ticks,
as a batch step of a GPU server gives every sequence its token at once); and 1,024 idle streams
(one event every ``IDLE_PACE`` s), opened before the run and held through it, while 64 streams
run at 50/s.

Every rate counts only the window after the ramp (``warmup``): offered events/s is N streams *
the fake's schedule (E events per stream, PACE apart: E / ((E - 1) PACE) each), delivered is
what the client received; the CPU of the arm's process (``direct``: the fake itself;
the proxies: bodhi-trio's own pid, not the child), of the fake and of the client (this
process) over the same window, as % of a core and µs per delivered event; the inter-event gap
p50/p99 at the client (between reads of a stream that brought events) and the lag behind the
fake's schedule (see :mod:`bodhi_trio._bench._client`), TTFT, errors, RSS.

On 2 cores or more, bodhi-trio, the floor relay and this process (the client) are pinned to
core 0 and the fake child and its twin to core 1 (``sched_setaffinity`` on every thread, as
``taskset -a``); recorded in the suite's ``pinning``. The fake alone on its core keeps its
schedule whatever the arm, as a GPU server would: what an arm changes (a relay in between,
its wake-ups) happens on core 0, where the client then competes with the relay, against the
relay's figures, not for them. With the client beside the fake instead (``client_core=
"load"``, the layout before session 25), each arm's reads moved the fake's schedule, and the
added gap measured that core more than the relay (docs/benchmarks.md). Other work on the
machine is not pinned: the load average is recorded around the suite.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio
from bench_procs import (
    CHILD_URL,
    FAKE,
    cpu_between,
    cpu_reading,
    pin,
    rss_mib,
    running_bodhi,
    running_fake,
    running_floor,
    threads,
)
from bench_suites import Arm, drain

from bodhi_trio._bench._client import BenchConfig, BenchResult, _get_json, _target, run_bench
from bodhi_trio._bench._load import BenchLoad

__all__ = ["IDLE_PACE", "PACE", "SCENARIOS", "TOKENS", "ScaleScenario", "scale_suite"]

PACE = 0.02  # s between a stream's events: 50 events/s, a GPU server's pace per user
TOKENS = 200  # per stream: 204 events (role, 200 tokens, finish, usage, [DONE]), ~4 s
EVENTS = TOKENS + 4
RAMP = 2.0  # s over which the workers' first requests are spread, not counted
WINDOW = 8.0  # s counted after the ramp (a quick run: 3)
IDLE_PACE = 10.0  # s between an idle stream's events
IDLE_TOKENS = 1000  # an idle stream never ends within a run
IDLE_RAMP = 1.0  # s over which the idle streams are opened
REMOTE_ALIAS = "bench:remote"
PROXY_CORE, LOAD_CORE = 0, 1
CLIENT_CORES = {"proxy": PROXY_CORE, "load": LOAD_CORE}  # where the client may go, by name
MAX_PRECISE = 80  # threads: at most this many are read one by one for their CPU time


@attrs.frozen
class ScaleScenario:
    """``streams`` paced streams (plus ``idle`` ones held open), for ``rounds`` rounds of a
    full run (a quick run: at most its ``--rounds``)."""

    name: str
    key: str  # for run.py --scale-scenarios
    streams: int
    rounds: int
    idle: int = 0
    in_step: bool = False
    arms: tuple[str, ...] = ("direct", "bodhi-trio")

    @property
    def offered(self) -> float:
        """Events/s the fake sends: ``streams`` * EVENTS / ((EVENTS - 1) * PACE)."""
        return self.streams * EVENTS / ((EVENTS - 1) * PACE)


SCENARIOS = (
    ScaleScenario("1 x 50/s", "1", 1, 3, arms=("direct", "trio-floor", "bodhi-trio")),
    ScaleScenario("64 x 50/s", "64", 64, 2),
    ScaleScenario(
        "256 x 50/s",
        "256",
        256,
        3,
        arms=("direct", "trio-floor", "bodhi-trio", "direct-tcp", "remote"),
    ),
    ScaleScenario("256 x 50/s, in step", "256-step", 256, 2, in_step=True),
    ScaleScenario("1024 idle + 64 x 50/s", "idle", 64, 2, idle=1024),
)


Reading = tuple[float, dict[int, float] | None]


async def _sample(
    at: float, pids: dict[str, int], precise: dict[str, bool], out: dict[str, Reading]
) -> None:
    """At ``at`` (trio's clock): a CPU reading of each of ``pids`` (taken as ``precise``
    says: see ``cpu_reading``), and the time."""
    await trio.sleep_until(at)
    now = time.perf_counter()
    for name, pid in pids.items():
        out[name] = (now, cpu_reading(pid, precise[name]))


def _rate(first: Reading, last: Reading) -> float | None:
    """CPU seconds per second between two readings."""
    cpu = cpu_between(first[1], last[1])
    return None if cpu is None or last[0] <= first[0] else cpu / (last[0] - first[0])


async def _hold_idle(arm: Arm, n: int, nursery: trio.Nursery) -> tuple[BenchLoad, float]:
    """``n`` idle streams (one event every IDLE_PACE s), started in ``nursery``; returns once
    every one has its first event, with the seconds that took."""
    config = BenchConfig(
        base_url=arm.base_url,
        model=arm.model,
        concurrency=n,
        duration=3600,
        max_tokens=IDLE_TOKENS,
        unix_socket=arm.unix_socket,
        timeout=600,
        extra_body={"bench_token_delay": IDLE_PACE},
    )
    load = BenchLoad(config, *_target(config))
    started = time.monotonic()
    for i in range(n):  # over a second: all at once overflows the listen backlogs (SYN retries)
        nursery.start_soon(load.worker, i * IDLE_RAMP / n)
    with trio.fail_after(120):
        # each stream's role chunk comes at once; a counter of the load's, polled
        while load.totals.events < n:  # noqa: ASYNC110
            await trio.sleep(0.05)
    return load, time.monotonic() - started


async def _upstream_active(arm: Arm) -> int | None:
    assert arm.upstream_url is not None
    with contextlib.suppress(OSError, ValueError, trio.TooSlowError):
        stats = await _get_json(f"{arm.upstream_url}/bench/stats", arm.upstream_socket)
        if isinstance(stats, dict) and isinstance(stats.get("active"), int):
            return int(stats["active"])
    return None


async def _measure(
    arm: Arm, scenario: ScaleScenario, seconds: float, upstream_pid: int
) -> dict[str, Any]:
    extra: dict[str, object] = {"bench_token_delay": PACE}
    if scenario.in_step:
        extra["bench_token_align"] = True
    config = BenchConfig(
        base_url=arm.base_url,
        model=arm.model,
        concurrency=scenario.streams,
        duration=RAMP + seconds,
        max_tokens=TOKENS,
        unix_socket=arm.unix_socket,
        timeout=60,
        extra_body=extra,
        ramp=RAMP if scenario.streams > 1 else 0.0,
        warmup=RAMP,
        pace=PACE,
    )
    pids = {"proxy": arm.pid or upstream_pid, "upstream": upstream_pid}
    # to the nanosecond unless a process has too many threads to read each one (the fake
    # has one per connection): decided once, so that both readings are taken the same way
    streams = scenario.streams + scenario.idle
    precise = {name: threads(pid) + streams <= MAX_PRECISE for name, pid in pids.items()}
    first: dict[str, Reading] = {}
    last: dict[str, Reading] = {}
    row: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        idle: BenchLoad | None = None
        if scenario.idle:
            idle, row["idle_open_s"] = await _hold_idle(arm, scenario.idle, nursery)
            row["idle_upstream_active"] = await _upstream_active(arm)
        start = trio.current_time()
        nursery.start_soon(_sample, start + RAMP, pids, precise, first)
        # just before the end: the workers' cancellation (and the proxy's cleanup) left out
        nursery.start_soon(_sample, start + RAMP + seconds - 0.005, pids, precise, last)
        result: BenchResult = await run_bench(config)
        row["rss_mib"] = rss_mib(arm.pid) if arm.pid else None  # idle streams still open
        if idle is not None:
            row["idle_errors"] = sum(idle.totals.errors.values())
            row["idle_error_samples"] = list(idle.totals.samples)
        nursery.cancel_scope.cancel()
    row.update(result.to_dict())
    if idle is not None:
        row["errors"] += row["idle_errors"]
    delivered = result.events_per_s
    for name in pids:
        pct = _rate(first[name], last[name]) if name in first and name in last else None
        row[f"{name}_cpu_pct"] = None if pct is None else pct * 100
        per_event = None if pct is None or not delivered else pct / delivered * 1e6
        row[f"{name}_us_per_event"] = per_event
    row["cpu_pct"], row["cpu_us_per_event"] = row["proxy_cpu_pct"], row["proxy_us_per_event"]
    client = result.client_cpu_s
    window = result.window_s
    row["client_cpu_pct"] = None if client is None or not window else client / window * 100
    row["client_us_per_event"] = (
        None if client is None or not result.window_events else client / result.window_events * 1e6
    )
    return row


def _recorded(
    arm: Arm, scenario: ScaleScenario, seconds: float, upstream_pid: int, r: int, rounds: int
) -> dict[str, Any]:
    row: dict[str, Any] = {"suite": "scale", "round": r, "scenario": scenario.name}
    row |= {"arm": arm.name, "streams": scenario.streams, "idle": scenario.idle}
    row["offered_events_per_s"] = scenario.offered
    row |= trio.run(_measure, arm, scenario, seconds, upstream_pid)
    row["delivered_ratio"] = row["events_per_s"] / scenario.offered
    row["drain_s"] = waited = drain(arm)
    print(
        f"[scale] round {r + 1}/{rounds} {scenario.name:>22} {arm.name:>10}:"
        f" {row['events_per_s']:>8,.0f} of {scenario.offered:,.0f} ev/s"
        f"  cpu {_fmt(row['cpu_pct'], '{:.0f}')}% {_fmt(row['cpu_us_per_event'], '{:.1f}')} µs/ev"
        f"  gap p99 {_fmt(row['gap_p99_ms'], '{:.2f}')}"
        f" lag p99 {_fmt(row['lag_p99_ms'], '{:.2f}')} ms"
        f"  TTFT {_fmt(row['ttft_p50_ms'], '{:.1f}')} ms"
        f"  client {_fmt(row['client_cpu_pct'], '{:.0f}')}%"
        f"  fake {_fmt(row['upstream_cpu_pct'], '{:.0f}')}%  errors {row['errors']}"
        f"  idle again after {'?' if waited is None else f'{waited:.2f}'} s",
        flush=True,
    )
    return row


def _fmt(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


@contextlib.contextmanager
def _pinned(
    proxies: dict[str, int],
    load: dict[str, int],
    wanted: bool = True,
    client_core: int = PROXY_CORE,
) -> Iterator[dict[str, list[int]] | None]:
    """``proxies`` (name → pid: bodhi-trio, the floor relay) on PROXY_CORE; ``load`` (the
    fakes) on LOAD_CORE; this process (the client) on ``client_core``, and back where it was
    on leaving. Yields what was pinned where (None: nothing, below 2 cores or unless
    ``wanted``)."""
    if not wanted or (os.cpu_count() or 1) < 2:
        yield None
        return
    mine = os.sched_getaffinity(0)
    try:
        where = {k: (p, PROXY_CORE) for k, p in proxies.items()}
        where |= {k: (p, LOAD_CORE) for k, p in load.items()}
        where["client (the harness)"] = (os.getpid(), client_core)
        yield {name: [core] for name, (pid, core) in where.items() if pin(pid, {core})}
    finally:
        pin(os.getpid(), mine)


def scale_suite(
    workdir: Path,
    quick: bool,
    rounds: int,
    pinning: bool = True,
    only: list[str] | None = None,
    client_core: str = "proxy",
) -> dict[str, Any]:
    """Paced streams at scale: arms direct / trio-floor / bodhi-trio (/ direct-tcp / remote).

    ``pinning``: as the module says (else the scheduler places everything); ``only``: these
    scenarios (by key); ``client_core``: the client beside the ``"proxy"`` or the ``"load"``
    (:data:`CLIENT_CORES`)."""
    seconds = 3.0 if quick else WINDOW
    with running_bodhi(workdir, "scale", {"bench:fake": []}, FAKE) as bodhi:
        state = bodhi.load("bench:fake")
        child = bodhi.child(state["pid"])
        sock = child.socket
        direct = Arm("direct", f"{CHILD_URL}/v1", "bench:fake", None, CHILD_URL, state["pid"])
        direct = attrs.evolve(direct, unix_socket=sock, upstream_socket=sock)
        relay = Arm("bodhi-trio", f"{bodhi.url}/v1", "bench:fake", None, CHILD_URL, bodhi.pid)
        relay = attrs.evolve(relay, upstream_socket=sock)
        with contextlib.ExitStack() as stack:
            twin, twin_pid = stack.enter_context(running_fake(child.argv, workdir / "scale-twin"))
            remote = {"base_url": f"{twin}/v1", "model": "bench:fake"}
            bodhi.create_alias({"alias": REMOTE_ALIAS, "remote": remote})
            arms = [
                (direct, state["pid"]),
                (relay, state["pid"]),
                (Arm("direct-tcp", f"{twin}/v1", "bench:fake", None, twin, twin_pid), twin_pid),
                (Arm("remote", f"{bodhi.url}/v1", REMOTE_ALIAS, None, twin, bodhi.pid), twin_pid),
            ]
            proxies = {"bodhi-trio": bodhi.pid}
            if sock is not None:  # a bare Trio relay of the child's socket (floor_relay.py)
                floor, proxies["trio-floor"] = stack.enter_context(
                    running_floor(sock, workdir / "scale-floor")
                )
                floor_arm = Arm("trio-floor", f"{floor}/v1", "bench:fake", None, CHILD_URL)
                floor_arm = attrs.evolve(floor_arm, pid=proxies["trio-floor"], upstream_socket=sock)
                arms.insert(1, (floor_arm, state["pid"]))
            fakes = {"fake child": state["pid"], "its TCP twin": twin_pid}
            with _pinned(proxies, fakes, pinning, CLIENT_CORES[client_core]) as pinned:
                for arm, _pid in arms:  # warm-up, not recorded: threads, connections, caches
                    trio.run(_measure, arm, ScaleScenario("warm-up", "", 64, 1), 1.0, _pid)
                    drain(arm)
                rows: list[dict[str, Any]] = []
                for scenario in SCENARIOS:
                    if only is not None and scenario.key not in only:
                        continue
                    mine = [a for a in arms if a[0].name in scenario.arms]
                    n = min(rounds, scenario.rounds)
                    for r in range(n):
                        for arm, pid in mine[r % len(mine) :] + mine[: r % len(mine)]:
                            rows.append(_recorded(arm, scenario, seconds, pid, r, n))
        now = bodhi.api("/bodhi/v1/state", timeout=10)
        same = any(m.get("pid") == state["pid"] for m in now.get("models", []))
        return {
            "runs": rows,
            "pace_s": PACE,
            "idle_pace_s": IDLE_PACE,
            "tokens": TOKENS,
            "events_per_stream": EVENTS,
            "ramp_s": RAMP,
            "window_s": seconds,
            "pinning": pinned,
            "remote_alias": REMOTE_ALIAS,
            "same_child_throughout": same,
            "bodhi_rss_end_mib": bodhi.rss_mib(),
        }
