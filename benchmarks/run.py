"""Side-by-side streaming benchmarks, interleaved A/B (``nox -s bench`` runs this).

Starts ``benchmarks/fake_upstream.py`` and runs ``bodhi_trio._bench`` against every arm in
interleaved rounds (each round rotates the order of the arms, so drift and warm-up hit all
of them alike):

- ``direct``: straight to the fake upstream;
- ``proxy``: any OpenAI-compatible proxy in front of a fake upstream (``--proxy-url``), e.g.
  bodhi-trio serving an alias whose llama-server is ``fake_upstream.py``;
- ``litellm`` (``--litellm``): LiteLLM's proxy in its own venv (``benchmarks/.venv-litellm``,
  created on first use), configured with one model that points at the fake upstream.

Writes every round and the medians to ``benchmarks/results/latest.json`` and prints a
markdown table of medians with ratios to ``direct``. Loopback only.

    python benchmarks/run.py [--quick] [--proxy-url http://127.0.0.1:1135/v1 --proxy-model M]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import attrs
import trio

from bodhi_trio._bench import BenchConfig, BenchResult, run_bench

__all__ = ["Arm", "Scenario", "main"]

HERE = Path(__file__).resolve().parent
LITELLM_VENV = HERE / ".venv-litellm"
LITELLM_KEY = "sk-bench-litellm"


@attrs.frozen
class Arm:
    """One way to reach the upstream."""

    name: str
    base_url: str
    model: str
    api_key: str | None = None
    upstream_url: str | None = None  # the fake behind it, for disconnect latency
    pid: int | None = None  # whose process group's RSS to record


@attrs.frozen
class Scenario:
    """One load shape, run against every arm in each round."""

    name: str
    concurrency: int
    max_tokens: int
    duration: float | None = None
    requests: int | None = None
    disconnect_after: int | None = None


def _scenarios(quick: bool) -> list[Scenario]:
    seconds = 1.5 if quick else 5.0
    return [
        Scenario("1 stream", 1, 1000, duration=seconds),
        Scenario("64 streams", 64, 1000, duration=seconds),
        # long streams, so that the upstream is still writing when the client leaves
        Scenario(
            "disconnect",
            4,
            5_000,
            duration=5.0 if quick else 15.0,
            requests=40 if quick else 200,
            disconnect_after=10,
        ),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """TERM the process group, KILL it after 10 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass


def start_fake(*extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start the fake upstream on a free loopback port; returns the process and port."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fake_upstream.py"), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("listening on http://127.0.0.1:"):
        _stop(proc)
        raise SystemExit(f"fake upstream did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def _rss_mib(pgid: int) -> float | None:
    """Resident memory of every process in a process group, in MiB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            status = (entry / "status").read_text()
        except (OSError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024 if total else None


def _get(url: str, key: str | None = None) -> int:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            status: int = response.status
            return status
    except OSError:
        return 0


def start_litellm(fake_port: int, log: Path) -> tuple[subprocess.Popen[bytes], Arm]:
    """Install LiteLLM's proxy into its own venv (first time), start it, wait until ready."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    if not litellm.exists():
        print(f"creating {LITELLM_VENV} and installing litellm[proxy] (large) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "litellm[proxy]"], check=True)
    config = {
        "model_list": [
            {
                "model_name": "fake",
                "litellm_params": {
                    "model": "openai/fake",
                    "api_base": f"http://127.0.0.1:{fake_port}/v1",
                    "api_key": "sk-none",
                },
            }
        ],
        "litellm_settings": {"drop_params": True},
    }
    config_path = log.with_name("litellm-config.yaml")
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = _free_port()
    env = dict(
        os.environ,
        LITELLM_MASTER_KEY=LITELLM_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY_DISABLED="true",
    )
    argv = [str(litellm), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + 60
    url = f"http://127.0.0.1:{port}"
    while _get(f"{url}/health/liveliness", LITELLM_KEY) != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise SystemExit(f"LiteLLM did not become ready in 60 s; see {log}")
        time.sleep(0.5)
    arm = Arm("litellm", f"{url}/v1", "fake", LITELLM_KEY, f"http://127.0.0.1:{fake_port}")
    return proc, attrs.evolve(arm, pid=proc.pid)


def _run_one(arm: Arm, scenario: Scenario, timeout: float = 30.0) -> BenchResult:
    config = BenchConfig(
        base_url=arm.base_url,
        model=arm.model,
        api_key=arm.api_key,
        concurrency=scenario.concurrency,
        duration=scenario.duration,
        requests=scenario.requests,
        max_tokens=scenario.max_tokens,
        disconnect_after=scenario.disconnect_after,
        upstream_url=arm.upstream_url,
        timeout=timeout,
    )
    return trio.run(lambda: run_bench(config))


def _drain(arm: Arm, limit: float = 120.0) -> float | None:
    """Wait until ``arm`` is idle again: its fake upstream streams nothing and a 1-token
    request completes (a proxy may go on working for streams its clients left). Returns the
    seconds waited, None past ``limit``.
    """
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            if arm.upstream_url:
                with urllib.request.urlopen(f"{arm.upstream_url}/bench/stats", timeout=2) as r:
                    if json.load(r).get("active") != 0:
                        time.sleep(0.05)
                        continue
        except (OSError, ValueError):
            pass
        if _run_one(arm, Scenario("probe", 1, 1, requests=1), timeout=10.0).requests_done:
            return time.monotonic() - started
    return None


def _recorded(arm: Arm, scenario: Scenario, r: int, rounds: int) -> dict[str, object]:
    result = _run_one(arm, scenario)
    row: dict[str, object] = {"round": r, "scenario": scenario.name, "arm": arm.name}
    row.update(result.to_dict())
    row["rss_mib"] = _rss_mib(arm.pid) if arm.pid else None
    row["drain_s"] = drain = _drain(arm)  # so that runs don't overlap
    print(
        f"round {r + 1}/{rounds} {scenario.name:>10} {arm.name:>8}: "
        f"{result.events_per_s:>9,.0f} ev/s  errors {result.errors}  cut {result.requests_cut}"
        f"  idle again after {'?' if drain is None else f'{drain:.2f}'} s",
        flush=True,
    )
    return row


def _median(values: list[object]) -> float | None:
    present = [float(v) for v in values if isinstance(v, (int, float))]
    return statistics.median(present) if present else None


_METRICS = ["events_per_s", "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "gap_p99_ms"]
_METRICS += ["disconnect_p50_ms", "disconnect_p99_ms", "rss_mib", "drain_s"]


def _summary(rows: list[dict[str, object]]) -> dict[str, dict[str, dict[str, float | None]]]:
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for row in rows:
        out.setdefault(str(row["scenario"]), {}).setdefault(str(row["arm"]), {})
    for scenario, arms in out.items():
        for arm, medians in arms.items():
            mine = [r for r in rows if r["scenario"] == scenario and r["arm"] == arm]
            for metric in _METRICS:
                medians[metric] = _median([r.get(metric) for r in mine])
            medians["errors"] = float(sum(int(str(r["errors"])) for r in mine))
    return out


def _table(summary: dict[str, dict[str, dict[str, float | None]]]) -> str:
    def num(v: float | None, fmt: str = "{:,.0f}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = [
        "| scenario | arm | events/s | ratio to direct | TTFT p50 ms | +TTFT p50 | TTFT p99 ms"
        " | gap p99 ms | close→upstream p99 ms | RSS MiB | drain s | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, arms in summary.items():
        base = arms.get("direct", {})
        for arm, m in arms.items():
            ratio = delta = None
            base_rate, rate = base.get("events_per_s"), m["events_per_s"]
            if base_rate and rate is not None:
                ratio = rate / base_rate
            base_ttft, ttft = base.get("ttft_p50_ms"), m["ttft_p50_ms"]
            if base_ttft is not None and ttft is not None:
                delta = ttft - base_ttft
            ms = "{:.3f}"
            lines.append(
                f"| {scenario} | {arm} | {num(m['events_per_s'])} | {num(ratio, '{:.3f}x')} "
                f"| {num(m['ttft_p50_ms'], ms)} | {num(delta, '{:+.3f}')} "
                f"| {num(m['ttft_p99_ms'], ms)} | {num(m['gap_p99_ms'], ms)} "
                f"| {num(m['disconnect_p99_ms'], ms)} | {num(m['rss_mib'], '{:.0f}')} "
                f"| {num(m['drain_s'], '{:.2f}')} "
                f"| {num(m['errors'])} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds; returns the exit code (1 if any run had errors)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 short rounds")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, --quick 2)")
    parser.add_argument("--proxy-url", help="base URL of a proxy in front of a fake upstream")
    parser.add_argument("--proxy-model", default="fake", help="model (alias) for the proxy")
    parser.add_argument("--proxy-api-key", help="bearer key for the proxy")
    parser.add_argument("--proxy-upstream-url", help="root URL of the fake behind the proxy")
    parser.add_argument("--proxy-pid", type=int, help="proxy process group, for its RSS")
    parser.add_argument("--litellm", action="store_true", help="also run LiteLLM's proxy")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    scenarios = _scenarios(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, object]] = []
    try:
        fake, port = start_fake()
        procs.append(fake)
        fake_url = f"http://127.0.0.1:{port}"
        arms = [Arm("direct", f"{fake_url}/v1", "fake", None, fake_url, fake.pid)]
        if args.proxy_url:
            proxy = Arm(
                "proxy",
                args.proxy_url,
                args.proxy_model,
                args.proxy_api_key,
                args.proxy_upstream_url,
                args.proxy_pid,
            )
            arms.append(proxy)
        if args.litellm:
            litellm, arm = start_litellm(port, args.out.with_name("litellm.log"))
            procs.append(litellm)
            arms.append(arm)
        for arm in arms:  # warm-up, not recorded
            _run_one(arm, Scenario("warm-up", 4, 100, duration=0.5))
            _drain(arm)
        # Disconnect rounds come last: a proxy that keeps consuming the upstream after its
        # client left (LiteLLM does) would otherwise slow down every later measurement.
        phases = [[s for s in scenarios if not s.disconnect_after]]
        phases.append([s for s in scenarios if s.disconnect_after])
        for phase in phases:
            for r in range(rounds):
                for scenario in phase:
                    order = arms[r % len(arms) :] + arms[: r % len(arms)]
                    for arm in order:
                        rows.append(_recorded(arm, scenario, r, rounds))
    finally:
        for proc in procs:
            _stop(proc)
    summary = _summary(rows)
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor(),
    }
    command = " ".join(
        ["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]
    )
    document = {"command": command, "machine": machine, "summary": summary, "runs": rows}
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print()
    print(_table(summary))
    print(f"\nwritten to {args.out}")
    return 1 if any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
