"""The wake-up and per-thread CPU tools measure what they say (not how fast it is)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest
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


def _sse(*contents: str) -> bytes:
    events = [b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % c.encode() for c in contents]
    return b"".join(events) + b"data: [DONE]\n\n"


def test_token_pace_times_the_content_tokens_of_one_answer() -> None:
    token_pace = bench_module("token_pace")
    seen: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, content=_sse("Once", " upon", " a"))

    client = httpx.Client(base_url="http://model", transport=httpx.MockTransport(answer))
    arm = token_pace.PacedArm("direct", client, "m", None)
    with client:
        timed = token_pace.timed(arm)
        together = token_pace.timed(arm, 3)
    assert timed.tokens == 3  # the content events; the [DONE] is not a token
    assert timed.answer_ms >= timed.first_ms + 2 * timed.per_token_ms
    assert min(timed.first_ms, timed.per_token_ms, timed.tail_ms) >= 0
    assert timed.cpu_us_per_token is None  # nothing between: no relay's CPU
    assert seen[0]["model"] == "m"
    assert seen[0]["stream"] is True
    assert seen[0]["max_tokens"] == token_pace.SMOL_TOKENS
    assert len(seen) == 4  # three answers at once, each its own request
    assert together.tokens == 9
    assert together.answer_ms >= together.first_ms


def test_token_pace_refuses_an_answer_it_cannot_split() -> None:
    token_pace = bench_module("token_pace")
    client = httpx.Client(
        base_url="http://model",
        transport=httpx.MockTransport(lambda _: httpx.Response(200, content=_sse("one"))),
    )
    with client, pytest.raises(RuntimeError, match="1 content tokens"):
        token_pace.timed(token_pace.PacedArm("direct", client, "m", None))


def test_the_pace_report_reads_each_round_against_direct_in_that_round() -> None:
    pace_report = bench_module("pace_report")

    def turn(first: float, per_token: float, tail: float, cpu: float | None) -> dict[str, Any]:
        answer = first + 99 * per_token + tail
        return {
            "first_ms": first,
            "per_token_ms": per_token,
            "tail_ms": tail,
            "answer_ms": answer,
            "tokens": 100,
            "cpu_us_per_token": cpu,
        }

    def run(direct: float, relay: float) -> dict[str, dict[str, Any]]:
        return {"direct": turn(10.0, direct, 1.0, None), "relay": turn(12.0, relay, 2.0, 150.0)}

    # direct drifts from 5 to 9 ms per token, the relay 1% slower in three rounds of four:
    # the ratio of the medians (6.06 over 6.5) would say it was 7% faster
    rounds = [run(5.0, 5.05), run(7.0, 7.07), run(9.0, 9.09), run(6.0, 5.0)]
    rows = pace_report.summary(rounds)
    relay = rows["relay"]
    assert relay["per_token_ms_x_direct"] == pytest.approx(1.01)
    assert relay["first_ms_x_direct"] == pytest.approx(1.2)
    # answers of 100 tokens: 506 against 513.95 ms, 704 / 713.93, 902 / 913.91, and in the
    # last round the relay the faster, 605 / 509; the median of the four is the middle two's
    # mean
    middle = (704 / 713.93 + 902 / 913.91) / 2
    assert relay["tokens_per_s_x_direct"] == pytest.approx(middle)
    assert relay["faster_rounds"] == 1
    assert relay["cpu_us_per_token"] == 150.0
    assert "per_token_ms_x_direct" not in rows["direct"]
    assert rows["direct"]["cpu_us_per_token"] is None
    shown = pace_report.table(rows, len(rounds))
    assert "| relay | 12.00 (1.200x) |" in shown
    assert "(1.0100x)" in shown
    assert f"| {middle:.4f}x (1 of 4) | 150.0 |" in shown


def _pace(ours: float, theirs: float) -> dict[str, Any]:
    rows = {
        "bodhi-trio": {"tokens_per_s_x_direct": ours},
        "router": {"tokens_per_s_x_direct": theirs},
    }
    return {"rounds": [{}], "summary": rows}


def test_target_17_5_by_answer_is_met_only_where_every_scenario_is() -> None:
    pace_report = bench_module("pace_report")
    met = pace_report.target(
        {"scenarios": {"1 stream": _pace(0.984, 0.985), "8 streams": _pace(0.99, 0.97)}}
    )
    assert met["result"] == "MET"
    assert "1 stream: 0.984x (llama.cpp's router 0.985x)" in met["measured"]
    missed = pace_report.target(
        {"scenarios": {"1 stream": _pace(0.975, 0.99), "8 streams": _pace(0.99, 0.97)}}
    )
    assert missed["result"] == "MISSED on 1 stream by 0.005x"
    assert pace_report.target({"scenarios": {}}) is None
    assert pace_report.target({}) is None
