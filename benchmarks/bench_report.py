"""Medians, tables, the issue-5 targets and ``benchmarks/RESULTS.md``, all from the JSON
document ``run.py`` writes: no number in RESULTS.md is typed by hand."""

from __future__ import annotations

import shlex
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import pace_report

from bodhi_trio._bench._scan import _percentile

__all__ = [
    "SCALE_METRICS",
    "check_targets",
    "check_targets_17",
    "paired_ratios",
    "remote_table",
    "render_results",
    "scale_table",
    "side_by_side_table",
    "summary",
    "throughput_table",
    "x_direct",
]

_METRICS = ["events_per_s", "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "gap_p99_ms"]
_METRICS += ["disconnect_p50_ms", "disconnect_p99_ms", "rss_mib", "cpu_us_per_event", "drain_s"]
_METRICS += ["disconnects", "disconnects_seen", "cpu_us_per_token", "cpu_pct"]
_METRICS += ["switches_per_token"]

# the scale suite's (bench_scale): rates over the window after the ramp, CPU of the arm's
# process, the fake and the client, gaps
SCALE_METRICS = ["offered_events_per_s", "events_per_s", "delivered_ratio", "cpu_pct"]
SCALE_METRICS += ["cpu_us_per_event", "upstream_cpu_pct", "client_cpu_pct", "client_us_per_event"]
SCALE_METRICS += ["gap_p50_ms", "gap_p99_ms", "lag_p50_ms", "lag_p99_ms"]
SCALE_METRICS += ["ttft_p50_ms", "ttft_p99_ms", "rss_mib"]
SCALE_METRICS += ["idle_open_s", "drain_s", "requests_done"]

Summary = dict[str, dict[str, dict[str, float | None]]]


def _median(values: list[Any]) -> float | None:
    present = [float(v) for v in values if isinstance(v, (int, float))]
    return statistics.median(present) if present else None


def _per_round(rows: list[dict[str, Any]], scenario: str, arm: str, key: str) -> dict[Any, float]:
    """round → ``arm``'s ``key`` on ``scenario``, for the rounds that have a number."""
    return {
        r.get("round"): float(r[key])
        for r in rows
        if r["scenario"] == scenario and r["arm"] == arm and isinstance(r.get(key), (int, float))
    }


def paired_ratios(
    rows: list[dict[str, Any]], scenario: str, arm: str, key: str, base: str = "direct"
) -> list[float]:
    """Each round's ``key`` of ``arm`` over ``base``'s in the same round: the two ran a few
    seconds apart, so a machine that drifts over the run (direct's own rate moved by a fifth
    from the first round to the last in some runs) moves both sides of each ratio alike."""
    under = _per_round(rows, scenario, base, key)
    mine = _per_round(rows, scenario, arm, key)
    return [value / under[r] for r, value in mine.items() if under.get(r)]


def summary(
    rows: list[dict[str, Any]], metrics: list[str] | None = None, *, paired: bool = False
) -> Summary:
    """scenario → arm → metric → median over the rounds (``errors``: the sum); ``metrics``:
    which (the throughput suites' by default). ``paired`` (a real llama-server's suites):
    also ``tokens_x_direct``, the median of :func:`paired_ratios` of tokens/s, where a
    ``direct`` arm ran."""
    out: Summary = {}
    for row in rows:
        out.setdefault(str(row["scenario"]), {}).setdefault(str(row["arm"]), {})
    for scenario, arms in out.items():
        for arm, medians in arms.items():
            mine = [r for r in rows if r["scenario"] == scenario and r["arm"] == arm]
            for metric in metrics or _METRICS:
                medians[metric] = _median([r.get(metric) for r in mine])
            medians["errors"] = float(sum(int(r["errors"]) for r in mine))
            medians["rounds"] = float(len(mine))
            if paired and arm != "direct" and "direct" in arms:
                ratios = paired_ratios(rows, scenario, arm, "tokens_per_s")
                if ratios:
                    medians["tokens_x_direct"] = _median(ratios)
    return out


def _num(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _delta(m: dict[str, float | None], base: dict[str, float | None], key: str) -> float | None:
    a, b = m.get(key), base.get(key)
    return None if a is None or b is None else a - b


def _ratio(m: dict[str, float | None], base: dict[str, float | None], key: str) -> float | None:
    a, b = m.get(key), base.get(key)
    return None if a is None or not b else a / b


def x_direct(m: dict[str, float | None], base: dict[str, float | None]) -> float | None:
    """An arm's tokens/s against direct's: the median of each round's ratio
    (``tokens_x_direct``) where the run recorded it, else (runs before session 26, and
    ``direct`` itself) the ratio of the two medians."""
    paired = m.get("tokens_x_direct")
    return paired if paired is not None else _ratio(m, base, "tokens_per_s")


def throughput_table(summ: Summary, rate: str) -> str:
    """One row per scenario and arm: medians, ratios and deltas to ``direct`` (tokens/s: see
    :func:`x_direct`)."""
    unit = "tokens/s" if rate == "tokens_per_s" else "events/s"
    ms = "{:.3f}"
    lines = [
        f"| scenario | arm | {unit} | x direct | TTFT p50 ms | +TTFT p50 | TTFT p99 ms | +TTFT p99"
        " | gap p99 ms | close→upstream p50 / p99 ms | CPU µs/event | RSS MiB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, arms in summ.items():
        base = arms.get("direct", {})
        for arm, m in arms.items():
            close = "-"
            if m["disconnects"] and not m["disconnects_seen"]:
                close = "never seen (within 2 s)"
            if m["disconnect_p99_ms"] is not None:
                close = f"{_num(m['disconnect_p50_ms'], ms)} / {_num(m['disconnect_p99_ms'], ms)}"
            cells = [
                _num(m[rate]),
                _num(
                    x_direct(m, base) if rate == "tokens_per_s" else _ratio(m, base, rate),
                    "{:.3f}x",
                ),
                _num(m["ttft_p50_ms"], ms),
                _num(_delta(m, base, "ttft_p50_ms"), "{:+.3f}"),
                _num(m["ttft_p99_ms"], ms),
                _num(_delta(m, base, "ttft_p99_ms"), "{:+.3f}"),
                _num(m["gap_p99_ms"], ms),
                close,
                _num(m["cpu_us_per_event"], "{:.1f}"),
                _num(m["rss_mib"], "{:.0f}"),
                _num(m["errors"]),
            ]
            lines.append(f"| {scenario} | {arm} | {' | '.join(cells)} |")
    return "\n".join(lines)


# The proxies of the fake suite, each against the direct arm of its own upstream: the
# loopback relay reads the child over its Unix socket, the remote aliases the twin over TCP.
_PROXIES = (
    ("bodhi-trio", "direct", "loopback client, Unix socket"),
    ("remote", "direct-tcp", "own HTTP/1.1 client, TCP"),
    ("remote-httpx", "direct-tcp", "httpx, TCP"),
)


def remote_table(summ: Summary) -> str:
    """The remote aliases against the local relay, each against its own upstream's direct
    arm (``direct`` for ``bodhi-trio``, ``direct-tcp`` for ``remote`` and ``remote-httpx``):
    rate, added TTFT, CPU per event and its ratio to ``bodhi-trio``'s, close→upstream."""
    ms = "{:.3f}"
    lines = [
        "| scenario | arm | transport | events/s | x its direct | +TTFT p50 ms | +TTFT p99 ms"
        " | CPU µs/event | CPU x bodhi-trio | close→upstream p50 / p99 ms | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, arms in summ.items():
        if "remote" not in arms:
            continue
        local = arms.get("bodhi-trio", {})
        for arm, direct, transport in _PROXIES:
            if arm not in arms:
                continue
            m, base = arms[arm], arms.get(direct, {})
            close = "-"
            if m["disconnect_p99_ms"] is not None:
                close = f"{_num(m['disconnect_p50_ms'], ms)} / {_num(m['disconnect_p99_ms'], ms)}"
            cells = [
                transport,
                _num(m["events_per_s"]),
                _num(_ratio(m, base, "events_per_s"), "{:.3f}x") + f" `{direct}`",
                _num(_delta(m, base, "ttft_p50_ms"), "{:+.3f}"),
                _num(_delta(m, base, "ttft_p99_ms"), "{:+.3f}"),
                _num(m["cpu_us_per_event"], "{:.1f}"),
                _num(_ratio(m, local, "cpu_us_per_event"), "{:.2f}x"),
                close,
                _num(m["errors"]),
            ]
            lines.append(f"| {scenario} | {arm} | {' | '.join(cells)} |")
    return "\n".join(lines)


def swap_stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """kind → n, errors and p50/p99 of TTFT, child ready time and overhead."""
    out: dict[str, dict[str, float | None]] = {}
    for kind in ("swap", "cold", "warm"):
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        stats: dict[str, float | None] = {"n": len(mine), "errors": sum(r["errors"] for r in mine)}
        for key in ("ttft_ms", "ready_ms", "overhead_ms"):
            values = [float(r[key]) for r in mine if isinstance(r.get(key), (int, float))]
            stats[f"{key}_p50"] = _percentile(values, 50)
            stats[f"{key}_p99"] = _percentile(values, 99)
        out[kind] = stats
    return out


def _swap_table(stats: dict[str, dict[str, float | None]]) -> str:
    ms = "{:.1f}"
    lines = [
        "| requests | n | TTFT p50 / p99 ms | child spawn→ready p50 / p99 ms"
        " | overhead p50 / p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {"swap": "swap (A, B, A, ...)", "cold": "cold (stop first)", "warm": "warm (loaded)"}
    for kind, s in stats.items():
        pairs = [
            f"{_num(s[f'{k}_p50'], ms)} / {_num(s[f'{k}_p99'], ms)}"
            for k in ("ttft_ms", "ready_ms", "overhead_ms")
        ]
        lines.append(
            f"| {names[kind]} | {_num(s['n'])} | {' | '.join(pairs)} | {_num(s['errors'])} |"
        )
    return "\n".join(lines)


def _memory_table(mem: dict[str, Any]) -> str:
    rows = [
        (
            "RSS right after the first start (it writes the demo model)",
            mem.get("rss_first_start_mib"),
            "MiB",
        ),
        ("RSS right after startup (the next start)", mem.get("rss_started_mib"), "MiB"),
        ("RSS idle, after one completed request", mem.get("rss_idle_mib"), "MiB"),
        ("CPU idle then, the model loaded (µs a second)", mem.get("cpu_idle_us_per_s"), "µs"),
        ("RSS after loading the idle alias (baseline)", mem.get("rss_before_streams_mib"), "MiB"),
        (f"RSS with {mem.get('streams')} open idle streams", mem.get("rss_streams_mib"), "MiB"),
        ("per open stream (vs. baseline)", mem.get("per_stream_kib"), "KiB"),
        ("RSS after closing them", mem.get("rss_after_streams_mib"), "MiB"),
        ("streams opened / failed", f"{mem.get('opened')} / {mem.get('failed')}", ""),
        ("time to open them all", mem.get("open_s"), "s"),
        ("`in_flight` at the peak", mem.get("in_flight_at_peak"), ""),
        ("`in_flight` back to 0 after closing, in", mem.get("in_flight_zero_after_s"), "s"),
        ("fake upstream saw every socket closed, in", mem.get("upstream_closed_after_s"), "s"),
    ]
    lines = ["| what | value |", "|---|---:|"]
    for what, value, unit in rows:
        text = f"{value:,.1f} {unit}" if isinstance(value, float) else f"{value} {unit}"
        lines.append(f"| {what} | {'-' if value is None else text.strip()} |")
    return "\n".join(lines)


def _verdict(value: float | None, limit: float, higher: bool, fmt: Callable[[float], str]) -> str:
    if value is None:
        return "NOT MEASURED"
    if (value >= limit) if higher else (value <= limit):
        return "MET"
    gap = abs(value - limit)
    return f"MISSED by {fmt(gap)} ({gap / limit:.0%} {'short' if higher else 'over'})"


def _target(n: str, target: str, measured: str, result: str) -> dict[str, str]:
    return {"n": n, "target": target, "measured": measured, "result": result}


def _x(v: float) -> str:
    return f"{v:.3f}x"


def _ms(v: float) -> str:
    return f"{v:.2f} ms"


def _tokens_against_direct(
    suites: dict[str, Any],
    m: Callable[[str, str, str, str], float | None],
    scenarios: Sequence[str],
    limit: float,
) -> tuple[str, str]:
    """bodhi-trio's tokens/s against direct's on ``scenarios`` of the llama suites (the
    median of each round's ratio, see :func:`x_direct`), and the verdict: the default threads'
    worst ratio against ``limit``, then one thread's if that suite ran them (runs before
    session 22 have no demo:smol with one thread). Beside it the medians' tokens/s, and
    their ratio where it is not the one scored: how far the two ways of reading the rounds
    differ is the run's noise."""
    parts, worst = [], {}
    for suite in ("llama", "llama-t1"):
        ratios = []
        for scenario in scenarios:
            a = m(suite, scenario, "bodhi-trio", "tokens_per_s")
            b = m(suite, scenario, "direct", "tokens_per_s")
            paired = m(suite, scenario, "bodhi-trio", "tokens_x_direct")
            of_medians = None if a is None or not b else a / b
            r = paired if paired is not None else of_medians
            ratios.append(r)
            shown = f"{_num(a)} vs {_num(b)} tok/s"
            if paired is not None and of_medians is not None:
                shown = f"medians {shown}: {of_medians:.3f}x"
            if suite in suites and (suite == "llama" or a is not None):
                parts.append(
                    f"{'' if suite == 'llama' else '`--threads 1`, '}{scenario}:"
                    f" {_num(r, '{:.3f}x')} ({shown})"
                )
        worst[suite] = None if None in ratios else min(r for r in ratios if r is not None)
    verdict = _verdict(worst["llama"], limit, True, _x)
    if worst["llama-t1"] is not None:
        verdict += f" (`--threads 1`: {_verdict(worst['llama-t1'], limit, True, _x)})"
    return "; ".join(parts) or "-", verdict


def check_targets(doc: dict[str, Any]) -> list[dict[str, str]]:
    """The issue-5 targets (and issue 13's) with the measured value and MET / MISSED (by how
    much)."""
    suites = doc.get("suites", {})

    def m(suite: str, scenario: str, arm: str, key: str) -> float | None:
        value = suites.get(suite, {}).get("summary", {}).get(scenario, {}).get(arm, {}).get(key)
        return value if isinstance(value, (int, float)) else None

    out = []
    tokens_shown, verdict = _tokens_against_direct(suites, m, ("1 stream", "8 streams"), 0.95)
    out.append(
        _target(
            "1",
            "real llama-server, 1 and 8 streams: tokens/s through bodhi-trio >= 0.95x direct"
            + (
                " (each round against direct's in the same round, median)"
                if _has_paired(doc)
                else ""
            ),
            tokens_shown,
            verdict,
        )
    )

    rate = m("fake", "1 stream", "bodhi-trio", "events_per_s")
    direct = m("fake", "1 stream", "direct", "events_per_s")
    ratio = f" ({_x(rate / direct)} direct)" if rate is not None and direct else ""
    out.append(
        _target(
            "2a",
            "fake upstream, 1 stream: >= 50k events/s through bodhi-trio",
            f"{_num(rate)} events/s{ratio}",
            _verdict(rate, 50_000, True, lambda v: f"{v:,.0f} events/s"),
        )
    )
    # 2b, scored twice: back to back (a read brings many events, whose per-read costs they
    # share) and paced (one event per read, as a real model sends: each pays them alone)
    pace = suites.get("fake", {}).get("pace_s")
    for n, scenario, many, how in (
        ("2b", "1 stream", "64 streams", "unpaced: events back to back, many per read"),
        ("2b paced", "1 stream, paced", "8 streams, paced", "paced: one event per read"),
    ):
        if scenario.endswith("paced") and isinstance(pace, (int, float)):
            how += f", {pace * 1e6:.0f} µs apart (how a real model sends)"
        cpu = m("fake", scenario, "bodhi-trio", "cpu_us_per_event")
        more = m("fake", many, "bodhi-trio", "cpu_us_per_event")
        out.append(
            _target(
                n,
                f"proxy CPU per relayed event <= 20 µs, 1 stream, {how}",
                f"{_num(cpu, '{:.1f}')} µs ({many}: {_num(more, '{:.1f}')} µs)",
                _verdict(cpu, 20, False, lambda v: f"{v:.1f} µs"),
            )
        )

    agg = m("fake", "64 streams", "bodhi-trio", "events_per_s")
    errors = m("fake", "64 streams", "bodhi-trio", "errors")
    verdict = "NOT MEASURED"
    if agg is not None and rate is not None and errors is not None:
        verdict = "MET" if agg >= rate and errors == 0 else "MISSED"
        if agg < rate:
            verdict += f" by {rate - agg:,.0f} events/s ({(rate - agg) / rate:.0%} short)"
        if errors:
            verdict += f", {errors:.0f} errors"
    out.append(
        _target(
            "3",
            "64 concurrent streams, fake upstream: 0 errors, aggregate >= the 1-stream figure",
            f"{_num(agg)} events/s (1 stream: {_num(rate)}); {_num(errors)} errors",
            verdict,
        )
    )

    for q, limit, n in (("p50", 2.0, "4a"), ("p99", 10.0, "4b")):
        a = m("fake", "1 stream", "bodhi-trio", f"ttft_{q}_ms")
        b = m("fake", "1 stream", "direct", f"ttft_{q}_ms")
        d = None if a is None or b is None else a - b
        pa = m("fake", "1 stream, paced", "bodhi-trio", f"ttft_{q}_ms")
        pb = m("fake", "1 stream, paced", "direct", f"ttft_{q}_ms")
        paced_note = "" if pa is None or pb is None else f"; paced: {pa - pb:+.3f} ms"
        out.append(
            _target(
                n,
                f"added TTFT over direct, 1 stream: {q} <= {limit:g} ms",
                f"{_num(d, '{:+.3f}')} ms ({_num(a, '{:.3f}')} vs {_num(b, '{:.3f}')} ms)"
                + paced_note,
                _verdict(d, limit, False, _ms),
            )
        )

    p99 = m("fake", "disconnect", "bodhi-trio", "disconnect_p99_ms")
    p50 = m("fake", "disconnect", "bodhi-trio", "disconnect_p50_ms")
    out.append(
        _target(
            "5",
            "client disconnect -> upstream socket closed: p99 <= 20 ms",
            f"p99 {_num(p99, '{:.2f}')} ms (p50 {_num(p50, '{:.2f}')} ms)",
            _verdict(p99, 20, False, _ms),
        )
    )

    stats = suites.get("swap", {}).get("stats", {})
    s, c = stats.get("swap", {}), stats.get("cold", {})
    out.append(
        _target(
            "6",
            "swap overhead (TTFT minus the child's spawn-to-ready): p50 <= 50 ms",
            f"swap: p50 {_num(s.get('overhead_ms_p50'), '{:.1f}')} ms,"
            f" p99 {_num(s.get('overhead_ms_p99'), '{:.1f}')} ms;"
            f" cold: p50 {_num(c.get('overhead_ms_p50'), '{:.1f}')} ms,"
            f" p99 {_num(c.get('overhead_ms_p99'), '{:.1f}')} ms",
            _verdict(s.get("overhead_ms_p50"), 50, False, _ms),
        )
    )

    mem = suites.get("memory", {})
    idle, per = mem.get("rss_idle_mib"), mem.get("per_stream_kib")
    out.append(
        _target(
            "7a",
            "idle RSS <= 80 MiB",
            f"{_num(idle, '{:.1f}')} MiB",
            _verdict(idle, 80, False, lambda v: f"{v:.1f} MiB"),
        )
    )
    out.append(
        _target(
            "7b",
            f"<= 64 KiB more per open idle stream ({mem.get('streams', 1000)} streams)",
            f"{_num(per, '{:.1f}')} KiB",
            _verdict(per, 64, False, lambda v: f"{v:.1f} KiB"),
        )
    )
    # issue 13: Ollama's NDJSON, translated per event, against the byte relay of the same
    # stream; paced (one event per read, as from a real model) and at full speed
    ratios, shown = [], []
    for scenario in ("1 stream, paced", "8 streams, paced", "1 stream"):
        a = m("fake", scenario, "ollama", "cpu_us_per_event")
        b = m("fake", scenario, "bodhi-trio", "cpu_us_per_event")
        r = None if a is None or not b else a / b
        ratios.append(r)
        shown.append(
            f"{scenario}: {_num(r, '{:.2f}x')} ({_num(a, '{:.1f}')} vs {_num(b, '{:.1f}')} µs)"
        )
    paced = ratios[:2]
    worst_paced = None if None in paced else max(r for r in paced if r is not None)
    out.append(
        _target(
            "13",
            "Ollama stream CPU µs/event <= 2x the OpenAI relay's (paced streams)",
            "; ".join(shown),
            _verdict(worst_paced, 2.0, False, lambda v: f"{v:.2f}x"),
        )
    )
    return out


# Each proxy of the scale suite against the direct arm of its own upstream (as in the fake
# suite): bodhi-trio relays the child over its Unix socket, the remote alias the twin over TCP.
_SCALE_DIRECT = {"bodhi-trio": "direct", "trio-floor": "direct", "remote": "direct-tcp"}


def scale_table(summ: Summary) -> str:
    """The scale suite: per scenario and arm, offered vs delivered events/s, the CPU of the
    arm's process, the client's gaps and TTFT, and what each proxy adds over its direct arm."""
    ms = "{:.2f}"
    lines = [
        "| scenario | arm | offered events/s | delivered events/s | x offered | CPU % of a core"
        " | CPU µs/event | gap p50 / p99 ms | lag p50 / p99 ms | added gap p99 / lag p99 ms"
        " | TTFT p50 / p99 ms | added TTFT p50 / p99 ms | client CPU % (µs/event) | fake CPU %"
        " | RSS MiB"
        " | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, arms in summ.items():
        for arm, m in arms.items():
            base = arms.get(_SCALE_DIRECT.get(arm, ""), {})
            added = "-"
            if base:
                added = (
                    f"{_num(_delta(m, base, 'gap_p99_ms'), '{:+.2f}')}"
                    f" / {_num(_delta(m, base, 'lag_p99_ms'), '{:+.2f}')}"
                )
            cells = [
                _num(m["offered_events_per_s"]),
                _num(m["events_per_s"]),
                _num(m["delivered_ratio"], "{:.3f}x"),
                _num(m["cpu_pct"], "{:.0f}%"),
                _num(m["cpu_us_per_event"], "{:.1f}"),
                f"{_num(m['gap_p50_ms'], ms)} / {_num(m['gap_p99_ms'], ms)}",
                f"{_num(m.get('lag_p50_ms'), ms)} / {_num(m.get('lag_p99_ms'), ms)}",
                added,
                f"{_num(m['ttft_p50_ms'], ms)} / {_num(m['ttft_p99_ms'], ms)}",
                (
                    f"{_num(_delta(m, base, 'ttft_p50_ms'), '{:+.2f}')}"
                    f" / {_num(_delta(m, base, 'ttft_p99_ms'), '{:+.2f}')}"
                )
                if base
                else "-",
                f"{_num(m['client_cpu_pct'], '{:.0f}%')}"
                f" ({_num(m['client_us_per_event'], '{:.1f}')})",
                _num(m["upstream_cpu_pct"], "{:.0f}%"),
                _num(m["rss_mib"], "{:.0f}"),
                _num(m["errors"]),
            ]
            lines.append(f"| {scenario} | {arm} | {' | '.join(cells)} |")
    return "\n".join(lines)


ROUTER_ARMS = ("direct", "trio-floor", "bodhi-trio", "router")


def side_by_side_table(summ: Summary) -> str:
    """The llama suite's arms (direct, the bare Trio relay, bodhi-trio, llama.cpp's router
    mode) on every scenario: tokens/s and ratio to direct, TTFT, the arm's CPU per token and
    % of a core, its context switches per token."""
    ms = "{:.2f}"
    lines = [
        "| scenario | arm | tokens/s | x direct | TTFT p50 ms | added TTFT p50 ms | TTFT p99 ms"
        " | CPU µs/token | CPU % of a core | switches/token | RSS MiB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, arms in summ.items():
        base = arms.get("direct", {})
        for arm in ROUTER_ARMS:
            if arm not in arms:
                continue
            m = arms[arm]
            cells = [
                _num(m["tokens_per_s"]),
                _num(x_direct(m, base), "{:.3f}x"),
                _num(m["ttft_p50_ms"], ms),
                _num(_delta(m, base, "ttft_p50_ms"), "{:+.2f}"),
                _num(m["ttft_p99_ms"], ms),
                _num(m.get("cpu_us_per_token"), "{:.1f}"),
                _num(m.get("cpu_pct"), "{:.1f}%"),
                _num(m.get("switches_per_token"), "{:.2f}"),
                _num(m["rss_mib"], "{:.0f}"),
                _num(m["errors"]),
            ]
            lines.append(f"| {scenario} | {arm} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _has_paired(doc: dict[str, Any]) -> bool:
    """Whether the run recorded ``tokens_x_direct`` (session 26 on) in a llama suite."""
    return any(
        "tokens_x_direct" in m
        for suite in ("llama", "llama-t1")
        for arms in doc.get("suites", {}).get(suite, {}).get("summary", {}).values()
        for m in arms.values()
    )


def _has_router(doc: dict[str, Any], suite: str = "llama") -> bool:
    summ = doc.get("suites", {}).get(suite, {}).get("summary", {})
    return any("router" in arms for arms in summ.values())


SMOL_SCENARIOS = ("demo:smol, 1 stream", "demo:smol, 8 streams")
GPU_SCENARIO = "256 x 50/s"


def _floor_note(floor: float | None, direct: float | None) -> str:
    """The same scenario's bare Trio relay (``trio-floor``) and the fake alone, if measured."""
    if floor is None:
        return ""
    return f"; a bare Trio relay {floor:.1f} µs, the fake alone {_num(direct, '{:.1f}')} µs"


def _head_to_head(rows: list[dict[str, Any]], scenario: str) -> tuple[float, int, int] | None:
    """bodhi-trio's tokens/s over the router's, round by round (the two ran in the same
    round, a few seconds apart): the median, in how many rounds bodhi-trio led, of how many;
    None if they never ran in the same round."""
    ratios = paired_ratios(rows, scenario, "bodhi-trio", "tokens_per_s", base="router")
    if not ratios:
        return None
    return statistics.median(ratios), sum(r > 1 for r in ratios), len(ratios)


def check_targets_17(doc: dict[str, Any]) -> list[dict[str, str]]:
    """Issue 17's targets (GPU scale), scored from the scale, fake, llama and memory suites;
    [] when the run has neither the scale suite, the llama suite's router arm nor the pace
    suite (runs from before issue 17 render as they did)."""
    suites = doc.get("suites", {})
    if "scale" not in suites and not _has_router(doc) and "pace" not in suites:
        return []

    def m(suite: str, scenario: str, arm: str, key: str) -> float | None:
        value = suites.get(suite, {}).get("summary", {}).get(scenario, {}).get(arm, {}).get(key)
        return value if isinstance(value, (int, float)) else None

    out = []
    each_round = (
        " (each round against direct's in the same round, median)" if _has_paired(doc) else ""
    )
    gpu = GPU_SCENARIO
    ratio = m("scale", gpu, "bodhi-trio", "delivered_ratio")
    rate, offered = (
        m("scale", gpu, "bodhi-trio", "events_per_s"),
        m("scale", gpu, "bodhi-trio", "offered_events_per_s"),
    )
    out.append(
        _target(
            "17.1a",
            f"{gpu} (256 paced streams, spread): delivered >= 0.99x offered through bodhi-trio",
            f"{_num(ratio, '{:.3f}x')} ({_num(rate)} of {_num(offered)} events/s; direct"
            f" {_num(m('scale', gpu, 'direct', 'delivered_ratio'), '{:.3f}x')}; in step"
            f" {_num(m('scale', gpu + ', in step', 'bodhi-trio', 'delivered_ratio'), '{:.3f}x')})",
            _verdict(ratio, 0.99, True, _x),
        )
    )
    cpu = m("scale", gpu, "bodhi-trio", "cpu_us_per_event")
    step_cpu = m("scale", gpu + ", in step", "bodhi-trio", "cpu_us_per_event")
    out.append(
        _target(
            "17.1b",
            f"{gpu}: proxy CPU <= 40 µs/event (<= 51% of a core)",
            f"{_num(cpu, '{:.1f}')} µs, {_num(m('scale', gpu, 'bodhi-trio', 'cpu_pct'), '{:.0f}')}%"
            f" of a core (in step: {_num(step_cpu, '{:.1f}')} µs)"
            + _floor_note(
                m("scale", gpu, "trio-floor", "cpu_us_per_event"),
                m("scale", gpu, "direct", "cpu_us_per_event"),
            ),
            _verdict(cpu, 40, False, lambda v: f"{v:.1f} µs"),
        )
    )
    a, b = m("scale", gpu, "bodhi-trio", "gap_p99_ms"), m("scale", gpu, "direct", "gap_p99_ms")
    added = None if a is None or b is None else a - b
    la, lb = m("scale", gpu, "bodhi-trio", "lag_p99_ms"), m("scale", gpu, "direct", "lag_p99_ms")
    lag = None if la is None or lb is None else la - lb
    out.append(
        _target(
            "17.1c",
            f"{gpu}: added inter-event gap p99 <= 5 ms over direct",
            f"{_num(added, '{:+.2f}')} ms ({_num(a, '{:.2f}')} vs {_num(b, '{:.2f}')} ms);"
            f" added lag p99 {_num(lag, '{:+.2f}')} ms",
            _verdict(added, 5, False, _ms),
        )
    )
    errors = m("scale", gpu, "bodhi-trio", "errors")
    out.append(
        _target(
            "17.1d",
            f"{gpu}: 0 errors",
            f"{_num(errors)} errors",
            "NOT MEASURED" if errors is None else "MET" if errors == 0 else "MISSED",
        )
    )
    paced = m("fake", "1 stream, paced", "bodhi-trio", "cpu_us_per_event")
    slow = m("scale", "1 x 50/s", "bodhi-trio", "cpu_us_per_event")
    out.append(
        _target(
            "17.2",
            "1 paced stream (fake suite, 200 µs apart): proxy CPU <= 60 µs/event",
            f"{_num(paced, '{:.1f}')} µs"
            + _floor_note(
                m("fake", "1 stream, paced", "trio-floor", "cpu_us_per_event"),
                m("fake", "1 stream, paced", "direct", "cpu_us_per_event"),
            ),
            _verdict(paced, 60, False, lambda v: f"{v:.1f} µs"),
        )
    )
    out.append(
        _target(
            "17.2 at 50/s",
            "1 paced stream at 50 events/s (scale suite): proxy CPU <= 60 µs/event",
            f"{_num(slow, '{:.1f}')} µs"
            + _floor_note(
                m("scale", "1 x 50/s", "trio-floor", "cpu_us_per_event"),
                m("scale", "1 x 50/s", "direct", "cpu_us_per_event"),
            ),
            _verdict(slow, 60, False, lambda v: f"{v:.1f} µs"),
        )
    )
    for q, limit in (("p50", 1.0), ("p99", 3.0)):
        a = m("fake", "1 stream", "bodhi-trio", f"ttft_{q}_ms")
        b = m("fake", "1 stream", "direct", f"ttft_{q}_ms")
        d = None if a is None or b is None else a - b
        floor = m("fake", "1 stream", "trio-floor", f"ttft_{q}_ms")
        floor_note = (
            ""
            if floor is None or b is None
            else f"; a bare Trio relay {floor - b:+.3f} ms (its connections kept)"
        )
        out.append(
            _target(
                f"17.3 {q}",
                f"added TTFT over direct, fake upstream, 1 stream: {q} <= {limit:g} ms",
                f"{_num(d, '{:+.3f}')} ms ({_num(a, '{:.3f}')} vs {_num(b, '{:.3f}')} ms)"
                + floor_note,
                _verdict(d, limit, False, _ms),
            )
        )
    parts, worse = [], []
    for suite, prefix in (("llama", ""), ("llama-t1", "one llama-server thread, ")):
        for scenario, arms in suites.get(suite, {}).get("summary", {}).items():
            if "router" not in arms:
                continue
            direct = arms.get("direct", {})
            ours = x_direct(arms.get("bodhi-trio", {}), direct)
            theirs = x_direct(arms["router"], direct)
            floor = x_direct(arms.get("trio-floor", {}), direct)
            named = prefix + scenario
            rows = suites[suite].get("runs", [])
            head = _head_to_head(rows, scenario) if each_round else None
            if head is None:  # runs before session 26: the two ratios to direct compared
                behind = ours is None or theirs is None or ours < theirs
                shown = ""
            else:
                behind = head[0] < 1
                shown = f"; head to head {head[0]:.3f}x, ahead in {head[1]} of {head[2]} rounds"
            parts.append(
                f"{named}: {_num(ours, '{:.3f}x')} vs {_num(theirs, '{:.3f}x')}"
                + ("" if floor is None else f" (a bare Trio relay {floor:.3f}x)")
                + shown
            )
            if behind:
                worse.append(named)
    verdict = (
        "NOT MEASURED" if not parts else "MET" if not worse else f"MISSED on {', '.join(worse)}"
    )
    out.append(
        _target(
            "17.4",
            "relay overhead below llama-server router mode's (real llama-server, tokens/s x"
            f" direct{each_round}: bodhi-trio vs router, one run"
            + (
                "; scored head to head: bodhi-trio's tokens/s over the router's in each round,"
                " median >= 1"
                if each_round
                else ""
            )
            + "; where missed, the bare Trio relay's ratio says whether any relay on Trio"
            " could)",
            "; ".join(parts) or "-",
            verdict,
        )
    )
    if "pace" in suites and (by_answer := pace_report.head_to_head(suites["pace"])) is not None:
        out.append(by_answer)
    smol_shown, verdict = _tokens_against_direct(suites, m, SMOL_SCENARIOS, 0.98)
    out.append(
        _target(
            "17.5",
            "real model (`demo:smol`), 1 and 8 streams: tokens/s through bodhi-trio"
            f" >= 0.98x direct{each_round}",
            smol_shown,
            verdict,
        )
    )
    if "pace" in suites and (by_answer := pace_report.target(suites["pace"])) is not None:
        out.append(by_answer)
    ceiling = m("fake", "1 stream", "bodhi-trio", "events_per_s")
    idle = suites.get("memory", {}).get("rss_idle_mib")
    cancel = m("fake", "disconnect", "bodhi-trio", "disconnect_p99_ms")
    for n, what, value, limit, higher, fmt in (
        (
            "17.6a",
            "no regression: ceiling (fake, 1 stream) >= 150k events/s",
            ceiling,
            150_000,
            True,
            lambda v: f"{v:,.0f} events/s",
        ),
        ("17.6b", "no regression: idle RSS <= 80 MiB", idle, 80, False, lambda v: f"{v:.1f} MiB"),
        (
            "17.6c",
            "no regression: cancel (client disconnect -> upstream closed) p99 <= 20 ms",
            cancel,
            20,
            False,
            _ms,
        ),
    ):
        out.append(
            _target(
                n, what, "-" if value is None else fmt(value), _verdict(value, limit, higher, fmt)
            )
        )
    return out


def _scale_section(scale: dict[str, Any]) -> list[str]:
    pinning = scale.get("pinning")
    if pinning:
        pinned = "; ".join(
            f"{who} on core {', '.join(map(str, cores))}" for who, cores in pinning.items()
        )
        pinned = (
            f"Pinned (`sched_setaffinity` on every thread, as `taskset -a`): {pinned}; other"
            " work on the machine was not."
        )
        client = pinning.get("client (the harness)")
        if client is not None and client == pinning.get("bodhi-trio"):
            pinned += (
                " The client shares the proxies' core: the fake, alone on its own, keeps its"
                " schedule whatever the arm, and the client's work there counts against the"
                " proxies' figures, not for them."
            )
    else:
        pinned = "Nothing pinned (fewer than 2 cores)."
    idle = [
        f"{arm} {v['idle_open_s']:.1f} s"
        for arms in scale["summary"].values()
        for arm, v in arms.items()
        if isinstance(v.get("idle_open_s"), (int, float))
    ]
    pace = scale["pace_s"]
    return [
        "",
        "## Paced streams at scale (issue 17)",
        "",
        f"A GPU server sends each of its users ~{1 / pace:.0f} tokens/s, every token a small event"
        " of its own. The fake child paces every stream on a fixed schedule: one event every"
        f" {pace * 1e3:.0f} ms (`bench_token_delay`), {scale['tokens']}-token streams"
        f" ({scale['events_per_stream']} events with the role, finish and usage chunks and"
        " `[DONE]`; the next request follows at once). The N streams' phases are spread (worker"
        f" i of N starts i/N x {scale['ramp_s']:g} s in, so each event is a wake-up of its own);"
        " `in step`: the fake sends every stream's next event at the same clock ticks, as a"
        " batch step of a GPU server gives every sequence its token at once; `1024 idle`: 1,024"
        f" streams at one event every {scale['idle_pace_s']:g} s, opened before the run and held"
        " through it (opened in " + (", ".join(idle) or "-") + "). Everything counts only the"
        f" {scale['window_s']:g} s after the {scale['ramp_s']:g} s ramp: offered = N x the"
        " fake's schedule; delivered = events the client received; CPU = the arm's process"
        " (`direct`, `direct-tcp`: the fake itself; `bodhi-trio`, `remote`: bodhi-trio's own"
        " pid, not the child; `trio-floor`: `floor_relay.py`, a bare Trio relay of the child's"
        " socket, pinned as bodhi-trio is, at 1 and 256 streams) over the same window, as %"
        " of a core and per delivered event;"
        " gap = time between reads of a stream that brought events, at the client; lag = how"
        " much later than the fake's schedule a read's first event came (the schedule taken from"
        " the stream's first content event): a relay that falls behind shows in the lag where"
        " the gaps may stay even; added ="
        " the arm minus its own direct arm (`bodhi-trio` - `direct`, the child's Unix socket;"
        " `remote`, a remote alias of bodhi-trio's, at 256 streams - `direct-tcp`, the child's"
        " TCP twin); client CPU = the harness's own."
        " Medians over the rounds, arms interleaved. " + pinned,
        "",
        scale_table(scale["summary"]),
    ]


def _demo_only(summ: Summary) -> Summary:
    """The demo model's scenarios through direct and bodhi-trio (issue 5's table)."""
    return {
        scenario: {arm: m for arm, m in arms.items() if arm in ("direct", "bodhi-trio")}
        for scenario, arms in summ.items()
        if scenario not in SMOL_SCENARIOS
    }


def _router_section(llama: dict[str, Any]) -> list[str]:
    router = llama.get("router") or {}
    smol = llama.get("smol") or {}
    about_smol = (
        " `demo:smol` is SmolLM2-135M-Instruct (the real small model `serve"
        f" --demo` places in the HF cache), alias `{smol.get('alias', '-')}` with the same args"
        " and `--chat-template chatml`, `max_tokens`"
        f" {smol.get('max_tokens', '-')} with `ignore_eos`; one slot each (bodhi-trio and the"
        " router swap to it after the demo model's rounds, so `direct` is the new child's Unix"
        " socket)."
        if "alias" in smol
        else ""
    )
    return [
        "",
        "### Side by side with llama.cpp's router mode",
        "",
        "`router` is llama-server's own router mode, the same binary: `llama-server"
        f" --models-preset INI --models-max {router.get('models_max', 1)}` with one section per"
        " model and the same llama args"
        + (
            f" (and those bodhi-trio adds to its children: `{' '.join(router['added'])}`)"
            if router.get("added")
            else ""
        )
        + ", reached over its TCP port; it proxies to a child of its own (over TCP)."
        + about_smol
        + " `trio-floor` is `benchmarks/floor_relay.py` in front"
        " of the same child's Unix socket: a bare Trio relay (per token a wait, a read and a"
        " write, nothing parsed), the floor of any relay on Trio. CPU: the arm's own pid"
        " (`direct`: llama-server's; `router`: the router's, not its child's) per token"
        " received and as % of a core; switches/token: that pid's context switches (every"
        " thread's, voluntary or not: a wake-up, or a thread taken off its core) per token"
        " received, each a chance to take a core from llama-server's threads.",
        "",
        side_by_side_table(llama["summary"]),
    ]


def _provenance(doc: dict[str, Any], source: str, command: str) -> list[str]:
    prov = doc["provenance"]
    git, machine, llama = prov["git"], prov["machine"], prov["llama_server"]
    paths = " and ".join(f"{p}/" for p in git["paths_checked"])
    if git["dirty"] is None:
        state = "uncommitted changes unknown (git status failed)"
    elif not git["dirty"]:
        state = f"no uncommitted changes in {paths}"
    else:
        shown = ", ".join(f"`{c}`" for c in git["changes"][:10])
        more = len(git["changes"]) - 10
        state = f"**uncommitted changes** in {paths}: {shown}" + (
            f" and {more} more" if more > 0 else ""
        )
    memory = machine["memory_mib"]
    versions = ", ".join(f"{k} {v or 'not installed'}" for k, v in prov["packages"].items())
    built = f"; {llama['built_with']}" if llama["built_with"] else ""
    argv = shlex.join(prov["argv"])
    return [
        "## Provenance",
        "",
        f"Rendered from [`{source}`]({source}), the run's raw JSON, which records everything"
        f" below; `{command}` writes this file again from it, byte for byte.",
        "",
        f"- git revision: `{git['revision'] or 'unknown'}`, {state}",
        f"- machine: {machine['cpu_model']}, {machine['cpus']} logical cores,"
        f" {'?' if memory is None else f'{memory / 1024:.1f} GiB'} memory;"
        f" {machine['platform']}; loopback only",
        f"- Python {prov['python']}; {versions}",
        f"- llama-server: {llama['path'] or 'not found'}"
        f" ({llama['version'] or 'version unknown'}{built})",
        f"- date: {prov['date']}; wall time of the run: {doc['wall_s']:.0f} s",
        f"- command: `{prov['command']}` (same as `nox -s bench -- {argv}`)",
        f"- rounds per throughput scenario: {doc['rounds']}"
        + (" (`--quick`: short runs)" if doc.get("quick") else "")
        + ", interleaved A/B (each round rotates the order of the arms); tables show medians"
        " over the rounds"
        + (
            "; a real llama-server's x direct is the median of each round's tokens/s over"
            " direct's in the same round"
            if _has_paired(doc)
            else ""
        ),
        "",
    ]


def _remote_section(fake: dict[str, Any]) -> list[str]:
    alias = fake.get("remote_alias", "bench:remote")
    httpx_alias = fake.get("httpx_alias", "bench:remote-httpx")
    return [
        "",
        "## Remote aliases: the relay to another server",
        "",
        f"`remote` is the same bodhi-trio serving `{alias}`, an alias with a `remote:` block"
        " whose `base_url` is the twin of the fake child (the same fake with the same arguments"
        " on a TCP port of its own, plain `http://`): client → bodhi-trio → its own HTTP/1.1"
        f" client → fake over TCP. `remote-httpx` serves `{httpx_alias}`, the same block with a"
        " `ca_bundle`, which keeps a remote on httpx as every HTTPS remote is (httpx's cost"
        " without TLS's). `bodhi-trio` is client → bodhi-trio → its loopback client → fake over"
        " its Unix socket. `direct-tcp` is the client straight to the twin, so each proxy is set"
        " against its own upstream: `x its direct` and the added TTFT are to `direct` for"
        " `bodhi-trio` and to `direct-tcp` for the remote arms. CPU µs/event: bodhi-trio's own"
        " pid in every row; `CPU x bodhi-trio` is the row's figure over the local relay's in the"
        " same scenario. Every arm of a round runs one after the other, the order rotated each"
        " round.",
        "",
        remote_table(fake["summary"]),
    ]


def render_results(
    doc: dict[str, Any], source: str, command: str, more: list[str] | None = None
) -> str:
    """RESULTS.md from the document ``run.py`` wrote to ``source`` (its path relative to
    RESULTS.md); ``command`` re-renders it; ``more``: other suites' sections (rendered by
    their own modules from ``doc``), placed before the notes. Nothing here may depend on
    anything but these, so that re-rendering the committed JSON gives the committed
    RESULTS.md."""
    suites = doc["suites"]
    lines = [
        "# Benchmark results",
        "",
        "Generated by `benchmarks/run.py` (`bench_report.render_results`) from the run's raw"
        " JSON (see Provenance); rerun the benchmarks to refresh both, do not edit by hand.",
        "",
        *_provenance(doc, source, command),
        "## Targets (issue 5; 13: the Ollama dialect)",
        "",
        "| # | target | measured | result |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t['n']} | {t['target']} | {t['measured']} | {t['result']} |" for t in doc["targets"]
    ]
    lines += [
        "",
        "Why the misses (on 2 cores, where llama-server's threads, the fake upstream, the proxy"
        " and the client compete for the CPU), the profile of the hot path and what each change"
        " bought: [docs/benchmarks.md](../docs/benchmarks.md).",
    ]
    if targets_17 := check_targets_17(doc):
        lines += [
            "",
            "## Targets (issue 17: GPU scale)",
            "",
            "| # | target | measured | result |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {t['n']} | {t['target']} | {t['measured']} | {t['result']} |" for t in targets_17
        ]
    if "fake" in suites:
        fake = suites["fake"]
        litellm = (
            "; LiteLLM's proxy cannot reach a Unix socket, so its upstream is a twin of the"
            " child (the same fake with the same arguments, on a TCP port of its own)"
            if doc.get("litellm")
            else ""
        )
        lines += [
            "",
            "## Fake upstream: the proxy ceiling",
            "",
            "`bodhi-trio serve` with `BODHI_LLAMA_SERVER=benchmarks/fake_upstream.py` (one write"
            " per event); `direct` is the child's own Unix socket (children have no TCP port),"
            f" the same process and socket that bodhi-trio relays from{litellm}."
            " Streams of 1,000 tokens (1,003 events with the usage chunk and `[DONE]`);"
            " `disconnect`: 4 workers each closing after 10 events of a 5,000-token stream,"
            " latency until the fake sees its socket closed. CPU µs/event: the arm's process CPU"
            " time (utime+stime) during the run divided by the events the client received"
            " (`direct`: the fake itself; `bodhi-trio`: its own pid, not the child; `litellm`:"
            " its process). RSS: after each run. `paced`: the fake waits"
            f" {fake.get('pace_s', 0) * 1e6:.0f} µs between events (about the demo model's"
            " pace), so the proxy reads them one at a time and pays its per-read costs for"
            " each; LiteLLM is left out there. `trio-floor` (`1 stream` and the paced"
            " scenarios): `floor_relay.py`, a"
            " bare Trio relay of the same Unix socket (per event one wait, one read, one write;"
            " nothing parsed, counted or framed but the answer's end; its connections kept, as"
            " bodhi-trio's are): the floor of any"
            " relay on Trio here, so that bodhi-trio's cost above it is its own and its cost"
            " above `direct` is what waking a Trio program per event costs on this machine.",
            "",
            throughput_table(suites["fake"]["summary"], "events_per_s"),
        ]
        if any("remote" in arms for arms in fake["summary"].values()):
            lines += _remote_section(fake)
    if "scale" in suites:
        lines += _scale_section(suites["scale"])
    for name in ("llama", "llama-t1"):
        if name not in suites:
            continue
        llama = suites[name]
        lines += [
            "",
            f"## Real llama-server on the demo model: `{llama['alias']}`",
            "",
            f"Context params `{' '.join(llama['alias_params'])}`; `max_tokens`"
            f" {llama['max_tokens']} with `ignore_eos`. `direct` is the child's Unix socket. CPU"
            " µs/event: `direct` is llama-server's own CPU per event received; `bodhi-trio`"
            " its own pid. "
            + (
                "llama-server picks its thread count itself (as many as cores): on 2 cores its"
                " spinning ggml threads and any other busy process (the proxy, the client)"
                " slow each other down, so these numbers are noisy, `direct` included."
                if name == "llama"
                else "One llama-server thread leaves a core to the proxy and the client."
            ),
            "",
            throughput_table(_demo_only(llama["summary"]), "tokens_per_s"),
        ]
        if _has_router(doc, name):
            lines += _router_section(llama)
    if "swap" in suites:
        lines += [
            "",
            "## Model swap and cold start (real llama-server)",
            "",
            "Aliases `bench:a` and `bench:b` on the demo model; 5-token streamed requests."
            " TTFT from sending the request to the first content event; child spawn→ready is"
            " bodhi-trio's own `[bodhi-trio] ready on unix:PATH after X s` log line for that"
            " start;"
            " overhead = TTFT - spawn→ready (it includes stopping the previous child, the"
            " readiness poll granularity and the first token itself: see the warm row).",
            "",
            _swap_table(suites["swap"]["stats"]),
        ]
    if "memory" in suites:
        lines += [
            "",
            "## Memory (bodhi-trio's own pid, fake upstream)",
            "",
            "The first start on a fresh home writes the demo model (importing gguf and numpy);"
            " the rest is a second start on the same home, as every later start. Idle: after"
            " that start and one completed 100-token request. Streams: a raw Trio client"
            " opens them (alias `bench:idle`, whose fake child sends headers and the role chunk"
            " then waits an hour); RSS is read once `in_flight` in `/bodhi/v1/state` counts them"
            " all, and 2 s later.",
            "",
            _memory_table(suites["memory"]),
        ]
    lines += more or []
    notes = list(doc.get("notes") or [])
    loads = [
        f"{name}: {v['loadavg'][0]} → {v['loadavg'][1]} ({v.get('wall_s', 0):.0f} s)"
        for name, v in suites.items()
        if isinstance(v.get("loadavg"), list)
    ]
    if loads:
        notes.append(
            "load average (1, 5, 15 min) before → after each suite, to spot other work on the"
            " machine: " + "; ".join(loads)
        )
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
