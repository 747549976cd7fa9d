"""Paced streams at scale (issue 17): the fake's fixed schedule, the client's ramp and window,
the scale suite's and the router comparison's report, and the helpers behind them."""

from __future__ import annotations

import importlib
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from test_bench import committed_like_results

from bodhi_trio._bench._client import BenchConfig, run_bench
from bodhi_trio._bench._scan import FRAMINGS, _Scan, _Totals
from bodhi_trio._exceptions import ConfigError
from paths import REPO
from procs import first_line

BENCH_DIR = REPO / "benchmarks"


def bench_module(name: str) -> Any:
    """A module of benchmarks/ (they import each other by bare name, as run.py does)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


# The fake's pacing, on a clock of our own: each send costs 3 ms, and the schedule absorbs it.


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakePoller:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def register(self, sock: object, mask: int) -> None:
        pass

    def poll(self, timeout_ms: float) -> list[tuple[int, int]]:
        self.clock.now += timeout_ms / 1000  # nothing happens on the socket
        return []


class FakeSocket:
    def __init__(self, clock: FakeClock, cost: float) -> None:
        self.clock, self.cost = clock, cost
        self.sent_at: list[float] = []

    def sendall(self, data: bytes) -> None:
        self.sent_at.append(self.clock.now)
        self.clock.now += self.cost


@pytest.mark.parametrize("align", [False, True])
def test_the_fake_paces_on_a_fixed_schedule(monkeypatch: pytest.MonkeyPatch, align: bool) -> None:
    fake = bench_module("fake_upstream")
    clock = FakeClock(1000.007)
    fake_select = type("S", (), {"POLLIN": select.POLLIN, "POLLRDHUP": select.POLLRDHUP})
    fake_select.poll = staticmethod(lambda: FakePoller(clock))  # type: ignore[attr-defined]
    monkeypatch.setattr(fake, "time", clock)
    monkeypatch.setattr(fake, "select", fake_select)
    sock = FakeSocket(clock, cost=0.003)
    assert fake._send_paced(sock, iter([b"x"] * 11), 0.02, align) == 11
    first = sock.sent_at[0]
    origin = first - first % 0.02 if align else first
    expected = [origin + 0.02 * k for k in range(1, 11)]
    assert sock.sent_at[1:] == pytest.approx(expected, abs=1e-9)  # no drift: 3 ms absorbed


def test_a_stream_gets_one_event_per_pace_and_the_window_counts_after_the_ramp(
    tmp_path: Path,
) -> None:
    """Real processes: 4 streams at 50 events/s, started over 0.4 s; the rates count the
    second after the first 0.5 s (loose bounds: the machine may be busy)."""
    sock = str(tmp_path / "f.sock")
    proc = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "fake_upstream.py"), "--host", sock],
        stdout=subprocess.PIPE,
    )
    try:
        assert first_line(proc).startswith(b"listening on unix://")
        config = BenchConfig(
            base_url="http://localhost/v1",
            unix_socket=sock,
            concurrency=4,
            duration=1.5,
            max_tokens=20,
            extra_body={"bench_token_delay": 0.02},
            ramp=0.4,
            warmup=0.5,
        )
        result = trio.run(run_bench, config)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert result.errors == 0, result.error_samples
    assert result.elapsed_s == pytest.approx(1.5, abs=0.05)  # not the workers' cancellation
    assert result.window_s is not None
    assert result.window_s == pytest.approx(1.0, abs=0.1)
    assert result.window_events is not None
    offered = 4 * 24 / (23 * 0.02)  # 24 events per stream, 20 ms apart
    assert 0.8 * offered < result.events_per_s < 1.2 * offered
    assert result.gap_p50_ms == pytest.approx(20, abs=3)
    assert result.lag_p50_ms is None  # no pace given: no schedule to lag behind
    assert result.client_cpu_s is not None
    assert 0 < result.client_cpu_s < result.window_s
    with pytest.raises(ConfigError):
        trio.run(run_bench, BenchConfig(base_url="http://localhost/v1", duration=1, ramp=-1))


def test_the_lag_is_measured_against_the_schedule_from_the_first_content_event() -> None:
    totals = _Totals()
    scan = _Scan(0.0, FRAMINGS["chat"], pace=0.02)
    role = b'data: {"choices":[{"delta":{"role":"assistant","content":null}}]}\n\n'
    token = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    scan.feed(role, 0.001, totals)
    scan.feed(token, 0.021, totals)  # the first content event: the schedule starts here
    scan.feed(token, 0.041, totals)  # on time
    scan.feed(token + token, 0.085, totals)  # due at 0.061 and 0.081: the first 24 ms late
    scan.feed(token, 0.101, totals)  # on time again
    assert list(totals.lags) == pytest.approx([0.0, 0.024, 0.0])
    assert list(totals.gaps) == pytest.approx([0.020, 0.044, 0.016])
    assert totals.ttfts == pytest.approx([0.021])
    unpaced = _Totals()
    scan = _Scan(0.0, FRAMINGS["chat"])
    for at in (0.01, 0.02, 0.05):
        scan.feed(token, at, unpaced)
    assert not unpaced.lags
    assert len(unpaced.gaps) == 2


# Helpers of the harness.


def test_cpu_between_counts_new_threads_whole_and_ended_ones_not() -> None:
    procs = bench_module("bench_procs")
    assert procs.cpu_between({1: 1.0, 2: 5.0}, {1: 1.5, 3: 0.25}) == pytest.approx(0.75)
    assert procs.cpu_between({0: 2.0}, {0: 2.5}) == pytest.approx(0.5)  # ticks, whole process
    assert procs.cpu_between({0: 2.0}, {1: 2.5}) is None  # taken in different ways
    assert procs.cpu_between(None, {1: 2.5}) is None
    mine = procs.cpu_reading(procs.os.getpid())
    assert mine
    assert all(t >= 0 for t in mine.values())
    assert list(procs.cpu_reading(procs.os.getpid(), precise=False)) == [0]


def test_switches_are_counted_per_thread_and_compared_as_cpu_is() -> None:
    procs = bench_module("bench_procs")
    before = procs.switches_reading(os.getpid())
    assert before
    for _ in range(3):  # each sleep gives the core up: a voluntary switch
        select.select([], [], [], 0.001)
    after = procs.switches_reading(os.getpid())
    assert procs.cpu_between(before, after) >= 3
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    assert procs.switches_reading(child.pid) is None  # gone


def test_the_router_preset_carries_the_alias_args() -> None:
    suites = bench_module("bench_suites")
    params = [*suites.LLAMA_VARIANTS["llama"], "--chat-template chatml"]
    assert suites._ini(params) == (
        "parallel = 8\nctx-size = 16384\ncontext-shift = true\nchat-template = chatml"
    )
    preset = suites._router_preset({"bench-smol": (Path("/m/s.gguf"), ["--threads 1"])})
    assert preset == "version = 1\n\n[bench-smol]\nmodel = /m/s.gguf\nthreads = 1\n"


def test_the_routers_child_gets_what_bodhi_trio_adds_to_its_own() -> None:
    suites = bench_module("bench_suites")
    params = [*suites.LLAMA_VARIANTS["llama-t1"]]
    argv = [
        "/cache/llama-server", "--alias", "bench:llama-t1", "--model", "/hub/m.gguf",
        "--host", "/tmp/x/llama.sock", "--parallel", "8", "--ctx-size", "16384",
        "--context-shift", "--threads", "1", "--embeddings", "--pooling", "mean",
    ]  # fmt: skip
    assert suites.added_by_bodhi(argv, params) == ["--embeddings", "--pooling mean"]
    # a flag the alias names stays the alias's, whatever the child got
    assert suites.added_by_bodhi([*argv, "--parallel", "4"], params) == [
        "--embeddings",
        "--pooling mean",
    ]
    assert suites.added_by_bodhi(["/llama-server", "--port", "8080", "-a", "x"], params) == []


@pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="pinning needs cores 0 and 1")
@pytest.mark.parametrize(("client_core", "core"), [("proxy", 0), ("load", 1)])
def test_the_client_goes_beside_the_chosen_core_and_back_where_it_was(
    client_core: str, core: int
) -> None:
    scale = bench_module("bench_scale")
    before = os.sched_getaffinity(0)
    proxy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    load = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with scale._pinned(
            {"bodhi-trio": proxy.pid},
            {"fake child": load.pid},
            True,
            scale.CLIENT_CORES[client_core],
        ) as pinned:
            assert pinned == {
                "bodhi-trio": [scale.PROXY_CORE],
                "fake child": [scale.LOAD_CORE],
                "client (the harness)": [core],
            }
            assert os.sched_getaffinity(0) == {core}
            assert os.sched_getaffinity(proxy.pid) == {scale.PROXY_CORE}
            assert os.sched_getaffinity(load.pid) == {scale.LOAD_CORE}
        assert os.sched_getaffinity(0) == before
    finally:
        for child in (proxy, load):
            child.kill()
            child.wait(timeout=10)


def test_offered_is_the_fakes_schedule() -> None:
    scale = bench_module("bench_scale")
    gpu = next(s for s in scale.SCENARIOS if s.key == "256")
    assert gpu.offered == pytest.approx(256 * 204 / (203 * 0.02))
    assert {s.key for s in scale.SCENARIOS} == {"1", "64", "256", "256-step", "idle"}


# The report: the scale table, the side-by-side table and issue 17's targets.


def _scale_arm(offered: float, delivered: float, cpu_pct: float, gap99: float) -> dict[str, Any]:
    return {
        "offered_events_per_s": offered,
        "events_per_s": delivered,
        "delivered_ratio": delivered / offered,
        "cpu_pct": cpu_pct,
        "cpu_us_per_event": cpu_pct / 100 / delivered * 1e6,
        "upstream_cpu_pct": 30.0,
        "client_cpu_pct": 40.0,
        "client_us_per_event": 31.0,
        "gap_p50_ms": 20.0,
        "gap_p99_ms": gap99,
        "lag_p50_ms": 0.1,
        "lag_p99_ms": gap99 - 20,
        "ttft_p50_ms": 20.5,
        "ttft_p99_ms": 22.0,
        "rss_mib": 90.0,
        "idle_open_s": None,
        "drain_s": 0.1,
        "requests_done": 700.0,
        "errors": 0.0,
        "rounds": 3.0,
    }


def _llama_arm(tokens: float, ttft: float, cpu_token: float | None) -> dict[str, Any]:
    return {
        "events_per_s": tokens,
        "tokens_per_s": tokens,
        "ttft_p50_ms": ttft,
        "ttft_p99_ms": ttft * 2,
        "gap_p99_ms": 20.0,
        "disconnect_p50_ms": None,
        "disconnect_p99_ms": None,
        "disconnects": 0.0,
        "disconnects_seen": None,
        "cpu_us_per_event": cpu_token,
        "cpu_us_per_token": cpu_token,
        "cpu_pct": 2.0,
        "rss_mib": 80.0,
        "drain_s": 0.0,
        "errors": 0.0,
        "rounds": 5.0,
    }


@pytest.fixture
def scale_doc() -> dict[str, Any]:
    doc: dict[str, Any] = committed_like_results()
    offered = 256 * 204 / (203 * 0.02)
    doc["suites"]["scale"] = {
        "pace_s": 0.02,
        "idle_pace_s": 10.0,
        "tokens": 200,
        "events_per_stream": 204,
        "ramp_s": 2.0,
        "window_s": 10.0,
        "pinning": {"bodhi-trio": [0], "fake child": [1], "client (the harness)": [1]},
        "summary": {
            "1 x 50/s": {
                "direct": _scale_arm(50.25, 50.2, 0.5, 20.4),
                "bodhi-trio": _scale_arm(50.25, 50.2, 2.5, 20.5),
            },
            "256 x 50/s": {
                "direct": _scale_arm(offered, 12_840, 30, 21.0),
                "bodhi-trio": _scale_arm(offered, 12_800, 80, 24.5),
            },
        },
        "loadavg": ["0.1 0.2 0.3"] * 2,
    }
    summary = {}
    for scenario, direct in (("1 stream", 5000.0), ("demo:smol, 1 stream", 88.0)):
        summary[scenario] = {
            "direct": _llama_arm(direct, 3.0, 300.0),
            "bodhi-trio": _llama_arm(direct * 0.99, 4.0, 90.0),
            "router": {**_llama_arm(direct * 0.97, 5.0, 60.0), "switches_per_token": 1.25},
        }
    doc["suites"]["llama"] = {
        "alias": "bench:llama",
        "alias_params": ["--parallel 8"],
        "max_tokens": 500,
        "summary": summary,
        "router": {"models_max": 1, "preset": ["bench-llama", "bench-smol"]},
        "smol": {"alias": "bench:smol", "params": [], "max_tokens": 100},
        "loadavg": ["0.1 0.2 0.3"] * 2,
    }
    return doc


def test_the_scale_and_router_sections_render_from_the_json(
    tmp_path: Path, scale_doc: dict[str, Any]
) -> None:
    run = bench_module("run")
    json_path, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    run.write_results(scale_doc, json_path, md)
    text = md.read_text()
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| 17.")}
    assert rows["| 17.1a"].endswith(
        "| 0.995x (12,800 of 12,863 events/s; direct 0.998x; in step -) | MET |"
    )
    assert (
        "| 62.5 µs, 80% of a core (in step: - µs) | MISSED by 22.5 µs (56% over) |"
        in rows["| 17.1b"]
    )
    assert rows["| 17.1c"].endswith(
        "| +3.50 ms (24.50 vs 21.00 ms); added lag p99 +3.50 ms | MET |"
    )
    assert rows["| 17.1d"].endswith("| 0 errors | MET |")
    assert rows["| 17.2 at 50/s"].endswith("| 498.0 µs | MISSED by 438.0 µs (730% over) |")
    assert rows["| 17.4"].endswith(
        "| 1 stream: 0.990x vs 0.970x; demo:smol, 1 stream: 0.990x vs 0.970x | MET |"
    )
    # a run from before session 26 (no ratio per round) reads as it did
    assert "in the same round" not in text
    assert "head to head" not in text
    assert "demo:smol, 1 stream: 0.990x (87 vs 88 tok/s)" in rows["| 17.5"]
    assert rows["| 17.5"].endswith("| NOT MEASURED |")  # 8 streams missing
    assert "bodhi-trio on core 0; fake child on core 1; client (the harness) on core 1" in text
    assert "The client shares the proxies' core" not in text
    assert (
        "| 256 x 50/s | bodhi-trio | 12,863 | 12,800 | 0.995x | 80% | 62.5 | 20.00 / 24.50"
        " | 0.10 / 4.50 | +3.50 / +3.50 | 20.50 / 22.00 | +0.00 / +0.00 | 40% (31.0) | 30% | 90"
        " | 0 |" in text
    )
    assert (
        "| demo:smol, 1 stream | router | 85 | 0.970x | 5.00 | +2.00 | 10.00 | 60.0 | 2.0% | 1.25"
        " | 80 | 0 |" in text
    )
    assert (
        "| demo:smol, 1 stream | bodhi-trio | 87 | 0.990x | 4.00 | +1.00 | 8.00 | 90.0 | 2.0% | -"
        in text
    )
    # the demo model's table keeps its two arms; the router and demo:smol have their own
    demo_table = text[text.index("## Real llama-server") : text.index("### Side by side")]
    assert "router" not in demo_table.split("\n\n")[2]
    assert "demo:smol" not in demo_table.split("\n\n")[2]
    md.unlink()
    assert run.main(["--render", str(json_path)]) == 0
    assert md.read_text() == text


def test_a_client_beside_the_proxy_is_said_so(tmp_path: Path, scale_doc: dict[str, Any]) -> None:
    run = bench_module("run")
    scale_doc["suites"]["scale"]["pinning"]["client (the harness)"] = [0]
    run.write_results(scale_doc, tmp_path / "results.json", md := tmp_path / "RESULTS.md")
    text = md.read_text()
    assert "fake child on core 1; client (the harness) on core 0" in text
    assert "The client shares the proxies' core: the fake, alone on its own, keeps" in text


def test_a_run_without_the_scale_suite_or_the_router_renders_as_before(
    tmp_path: Path, scale_doc: dict[str, Any]
) -> None:
    run = bench_module("run")
    for name in ("scale", "llama"):
        del scale_doc["suites"][name]
    run.write_results(scale_doc, tmp_path / "results.json", tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "issue 17" not in text
    assert "| 17." not in text


def test_the_added_ttft_target_names_the_bare_relays_beside_it(
    tmp_path: Path, scale_doc: dict[str, Any]
) -> None:
    """17.3's row gives the bare Trio relay's added TTFT in the same scenario, when it ran
    there (its connections kept), and none when it did not."""
    run = bench_module("run")
    one_stream = scale_doc["suites"]["fake"]["summary"]["1 stream"]
    one_stream["trio-floor"] = dict(one_stream["direct"], ttft_p50_ms=0.9, ttft_p99_ms=1.5)
    run.write_results(scale_doc, tmp_path / "results.json", tmp_path / "RESULTS.md")
    rows = {
        line.split(" | ")[0]: line
        for line in (tmp_path / "RESULTS.md").read_text().splitlines()
        if line.startswith("| 17.3")
    }
    assert (
        "| +2.400 ms (2.600 vs 0.200 ms); a bare Trio relay +0.700 ms (its connections"
        " kept) | MISSED by 1.40 ms" in rows["| 17.3 p50"]
    )
    assert "; a bare Trio relay +1.100 ms (its connections kept) |" in rows["| 17.3 p99"]
    del one_stream["trio-floor"]
    run.write_results(scale_doc, tmp_path / "results.json", tmp_path / "RESULTS.md")
    assert "a bare Trio relay +" not in (tmp_path / "RESULTS.md").read_text().split("| 17.4")[0]


def test_demo_smol_with_one_llama_server_thread_has_its_own_verdict_in_17_5(
    tmp_path: Path, scale_doc: dict[str, Any]
) -> None:
    run = bench_module("run")
    t1_summary = {
        scenario: {
            "direct": _llama_arm(100.0, 3.0, 300.0),
            "bodhi-trio": _llama_arm(direct, 4.0, 90.0),
            "router": _llama_arm(97.0, 5.0, 60.0),
        }
        for scenario, direct in (("demo:smol, 1 stream", 99.0), ("demo:smol, 8 streams", 97.0))
    }
    scale_doc["suites"]["llama-t1"] = {
        **scale_doc["suites"]["llama"],
        "alias": "bench:llama-t1",
        "alias_params": ["--parallel 8", "--threads 1"],
        "summary": t1_summary,
    }
    md = tmp_path / "RESULTS.md"
    run.write_results(scale_doc, tmp_path / "results.json", md)
    row = next(line for line in md.read_text().splitlines() if line.startswith("| 17.5 "))
    assert "`--threads 1`, demo:smol, 1 stream: 0.990x (99 vs 100 tok/s)" in row
    assert "`--threads 1`, demo:smol, 8 streams: 0.970x (97 vs 100 tok/s)" in row
    # the default threads' verdict first (8 streams missing there), then one thread's
    assert row.endswith("| NOT MEASURED (`--threads 1`: MISSED by 0.010x (1% short)) |")


def _round_rows(scenario: str, per_arm: dict[str, list[float]]) -> list[dict[str, Any]]:
    """The rows a llama suite records: one per arm and round, only what the summary reads."""
    return [
        {"suite": "llama", "round": r, "scenario": scenario, "arm": arm, "tokens_per_s": tps}
        | {"errors": 0}
        for arm, rates in per_arm.items()
        for r, tps in enumerate(rates)
    ]


def test_x_direct_is_each_rounds_ratio_not_the_ratio_of_the_medians() -> None:
    report = bench_module("bench_report")
    # the machine was slow for direct's first two rounds and for bodhi-trio's last two: the
    # medians compare a slow direct with a fast bodhi-trio (190 / 100 = 1.9x), each round
    # compares the two as they ran a few seconds apart (0.95x in two rounds of three)
    rows = _round_rows("s", {"direct": [100, 100, 200], "bodhi-trio": [95, 190, 190]})
    rows += _round_rows("alone", {"bodhi-trio": [10, 20]})
    assert "tokens_x_direct" not in report.summary(rows)["s"]["bodhi-trio"]  # the fake suites'
    summ = report.summary(rows, paired=True)
    assert summ["s"]["bodhi-trio"]["tokens_per_s"] == 190
    assert summ["s"]["bodhi-trio"]["tokens_x_direct"] == pytest.approx(0.95)
    assert report.paired_ratios(rows, "s", "bodhi-trio", "tokens_per_s") == pytest.approx(
        [0.95, 1.9, 0.95]
    )
    assert "tokens_x_direct" not in summ["s"]["direct"]
    assert "tokens_x_direct" not in summ["alone"]["bodhi-trio"]  # no direct to pair with
    # a round direct has no number for is left out, not divided by
    rows[0]["tokens_per_s"] = None
    assert report.paired_ratios(rows, "s", "bodhi-trio", "tokens_per_s") == pytest.approx(
        [1.9, 0.95]
    )


def test_17_4_and_17_5_score_each_round_and_say_in_how_many_rounds_bodhi_trio_led(
    tmp_path: Path, scale_doc: dict[str, Any]
) -> None:
    run = bench_module("run")
    report = bench_module("bench_report")
    runs = _round_rows(
        "demo:smol, 1 stream",
        {
            "direct": [100, 50, 100, 100, 100],
            "bodhi-trio": [98, 49, 99, 97, 120],
            "router": [99, 45, 100, 99, 130],
        },
    )
    runs += _round_rows(
        "demo:smol, 8 streams",
        {"direct": [200, 300], "bodhi-trio": [198, 216], "router": [190, 200]},
    )
    # behind the router against direct (0.910x vs 0.990x: each arm's middle round), ahead
    # of it in two rounds of three as the two ran
    runs += _round_rows(
        "1 stream",
        {"direct": [100, 100, 100], "bodhi-trio": [10, 100, 91], "router": [9, 99, 120]},
    )
    scale_doc["suites"]["llama"]["runs"] = runs
    scale_doc["suites"]["llama"]["summary"] = report.summary(runs, paired=True)
    md = tmp_path / "RESULTS.md"
    run.write_results(scale_doc, tmp_path / "results.json", md)
    text = md.read_text()
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| 17.")}
    # scored head to head, bodhi-trio's tokens/s over the router's in each round: per round
    # 98/99 49/45 99/100 97/99 120/130, median 0.990x, ahead in one round of five
    assert (
        "| demo:smol, 1 stream: 0.980x vs 0.990x; head to head 0.990x, ahead in 1 of 5 rounds;"
        " demo:smol, 8 streams: 0.855x vs 0.808x; head to head 1.061x, ahead in 2 of 2 rounds;"
        " 1 stream: 0.910x vs 0.990x; head to head 1.010x, ahead in 2 of 3 rounds |"
        in rows["| 17.4"]
    )
    assert "scored head to head" in rows["| 17.4"]
    assert rows["| 17.4"].endswith("| MISSED on demo:smol, 1 stream |")
    # the ratio is the median of each round's; beside it the arms' own medians and theirs
    assert (
        "| demo:smol, 1 stream: 0.980x (medians 98 vs 100 tok/s: 0.980x); demo:smol, 8 streams:"
        " 0.855x (medians 207 vs 250 tok/s: 0.828x) | MISSED by 0.125x (13% short) |"
        in rows["| 17.5"]
    )
    assert "| demo:smol, 1 stream | bodhi-trio | 98 | 0.980x |" in text
    assert "x direct is the median of each round's tokens/s over direct's" in text


def _pace_turn(per_token: float, answer: float) -> dict[str, Any]:
    return {
        "first_ms": 10.0,
        "per_token_ms": per_token,
        "tail_ms": 1.0,
        "answer_ms": answer,
        "tokens": 100,
        "cpu_us_per_token": None,
    }


def test_the_pace_suite_renders_its_tables_and_reads_17_5_by_answer(
    tmp_path: Path, scale_doc: dict[str, Any]
) -> None:
    run = bench_module("run")
    pace_report = bench_module("pace_report")
    scenarios = {}
    for name, slower in (("1 stream", 1.01), ("8 streams", 1.03)):
        rounds = [
            {
                "direct": _pace_turn(7.0, 700.0),
                "bodhi-trio": _pace_turn(7.07, 700.0 * slower),
                "router": _pace_turn(7.07, 707.0 * router),
            }
            for router in (1.0, 1.05, 0.95)
        ]
        scenarios[name] = {"streams": 1, "rounds": rounds, "summary": pace_report.summary(rounds)}
    scale_doc["suites"]["pace"] = {"params": ["--parallel 8"], "scenarios": scenarios}
    md = tmp_path / "RESULTS.md"
    run.write_results(scale_doc, tmp_path / "results.json", md)
    text = md.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 17.5, by answer |"))
    assert "demo:smol, 1 stream: 0.990x (llama.cpp's router 0.990x)" in row
    assert row.endswith("| MISSED on 8 streams by 0.009x |")
    # head to head with the router, round by round: on one stream bodhi-trio takes 707 ms
    # against the router's 707, 742.35 and 671.65 (level, ahead, behind: the median is
    # level); on eight 721 ms (behind, ahead, behind)
    rows = [line for line in text.splitlines() if line.startswith("| 17.")]
    names = [line.split(" | ")[0] for line in rows]
    assert names.index("| 17.4") + 1 == names.index("| 17.4, by answer")
    assert names.index("| 17.5") + 1 == names.index("| 17.5, by answer")
    head = rows[names.index("| 17.4, by answer")]
    assert "demo:smol, 1 stream: 1.000x, ahead in 1 of 3 rounds;" in head
    assert "demo:smol, 8 streams: 0.981x, ahead in 1 of 3 rounds |" in head
    assert head.endswith("| MISSED on 8 streams |")
    # the windows' verdict stays beside it, as it was
    assert any(line.startswith("| 17.5 | real model") for line in text.splitlines())
    assert "## A real model's pace, answer by answer (`demo:smol`)" in text
    assert "**8 streams** (3 rounds):" in text
    assert "| bodhi-trio | 10.00 (1.000x) | 7.070 (1.0100x) | 1.00 | 0.9709x (0 of 3) | - |" in text
    assert "| router | 10.00 (1.000x) | 7.070 (1.0100x) | 1.00 | 0.9901x (1 of 3) | - |" in text
    # a run of the pace suite alone still scores it
    only = {**scale_doc, "suites": {"pace": scale_doc["suites"]["pace"]}}
    run.write_results(only, tmp_path / "alone.json", alone := tmp_path / "ALONE.md")
    assert "| 17.5, by answer |" in alone.read_text()
