"""The throughput suites: every scenario against every arm, interleaved A/B.

- **fake**: one bodhi-trio whose llama-server is ``fake_upstream.py``; arms ``direct`` (the
  child's own Unix socket: the same upstream process bodhi-trio relays from, reached the
  same way), ``bodhi-trio``, ``ollama`` (bodhi-trio's ``/api/chat``: the same stream
  translated to Ollama's NDJSON; paced, its requests go to ``bench:paced``, a second fake
  child paced by its arguments, since Ollama requests carry no pace field), ``direct-tcp``,
  ``remote`` and ``remote-httpx`` (see below) and, optionally, ``litellm`` (LiteLLM's
  proxy). Children have no TCP port, so the arms that need one share a twin of the child:
  a second ``fake_upstream.py`` with the child's arguments, on a free TCP port.
  ``direct-tcp`` is the client straight to the twin; ``remote`` is bodhi-trio serving
  ``bench:remote``, a remote alias whose ``remote.base_url`` is the twin (plain
  ``http://``: :mod:`bodhi_trio._transport._remote`'s own HTTP/1.1 client);
  ``remote-httpx`` the same with a ``ca_bundle`` (certifi's), which keeps a remote on httpx,
  as every HTTPS remote is: httpx's cost without TLS's. ``litellm``'s upstream is the twin
  too (LiteLLM cannot reach a Unix socket).
- **llama**: one bodhi-trio serving the real llama-server on the demo model (alias
  ``bench:llama``: 8 slots, context shift); arms ``direct`` (the child's Unix socket),
  ``bodhi-trio`` and ``router``: llama.cpp's own router mode (``llama-server --models-preset
  INI --models-max 1``, the same binary, one section per model with the same llama args,
  reached over its TCP port). Then the same three arms on ``demo:smol`` (SmolLM2-135M, the
  real small model ``serve --demo`` places in the HF cache; alias ``bench:smol``, the same
  args and ``--chat-template chatml``): bodhi-trio and the router swap to it (one slot each),
  ``direct`` is the new child's socket. ``llama-t1`` is the same with ``--threads 1`` on
  both models (one core left to the relay and the client: whether a tokens/s loss is the
  relay's CPU taken from the model's threads).

Each round rotates the order of the arms, so drift and warm-up hit all of them alike. For
each run the arm's process RSS and CPU time (``/proc/<pid>/stat`` utime+stime, before and
after) are recorded: for ``bodhi-trio`` its own pid only, never the child (for ``router``
the router's own pid, not its child's).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import attrs
import trio
from bench_procs import (
    CHILD_URL,
    DEMO_FILENAME,
    DEMO_REPO,
    FAKE,
    LITELLM_KEY,
    Bodhi,
    cpu_between,
    cpu_reading,
    http_json,
    hub_file,
    newest_model,
    rss_mib,
    running_bodhi,
    running_fake,
    running_floor,
    running_litellm,
    running_router,
    switches_reading,
)
from certifi import where

from bodhi_trio._bench._client import BenchConfig, BenchResult, run_bench
from bodhi_trio._config._demo_smol import SMOL_CONTEXT_PARAMS, SMOL_FILENAME, SMOL_REPO

__all__ = ["LLAMA_VARIANTS", "Arm", "Scenario", "fake_suite", "llama_suite", "run_one"]

LLAMA_PARAMS = "--parallel 8 --ctx-size 16384 --context-shift"
# llama-server's own choice of threads (here: as many as cores), and one thread, which leaves
# a core to the proxy and the client: on 2 cores, ggml's spinning worker threads and any other
# busy process slow each other down.
LLAMA_VARIANTS = {"llama": [LLAMA_PARAMS], "llama-t1": [f"{LLAMA_PARAMS} --threads 1"]}
LLAMA_TOKENS = 500
SMOL_ALIAS = "bench:smol"
SMOL_TOKENS = 100  # ~1 s at SmolLM2-135M's pace here: a few TTFTs per run
SMOL_PREFIX = "demo:smol, "  # its scenarios' names: "demo:smol, 1 stream", ...
ROUTER_NAMES = {"llama": "bench-llama", SMOL_ALIAS: "bench-smol"}  # INI sections: no ":"


@attrs.frozen
class Arm:
    """One way to reach the upstream."""

    name: str
    base_url: str
    model: str
    api_key: str | None = None
    upstream_url: str | None = None  # the fake behind it, for disconnect latency
    pid: int | None = None  # whose RSS and CPU time to record
    rss_group: bool = False  # RSS of the pid's whole process group
    unix_socket: str | None = None  # reach base_url over this socket (a child's)
    upstream_socket: str | None = None  # reach upstream_url over this socket (a child's)
    endpoint: str = "chat"  # the harness's endpoint: "ollama" is /api/chat at base_url
    # Paced scenarios ask the fake for its pace in the request body; a dialect that does
    # not pass unknown fields on (Ollama's) uses an alias whose fake is paced from the start.
    paced_model: str | None = None
    only_where_named: bool = False  # runs in the scenarios that name it, not in all


@attrs.frozen
class Scenario:
    """One load shape, run against every arm in each round."""

    name: str
    concurrency: int
    max_tokens: int
    duration: float | None = None
    requests: int | None = None
    disconnect_after: int | None = None
    token_delay: float | None = None  # asks the fake upstream to pace its events
    arms: tuple[str, ...] | None = None  # only these arms (default: all)
    also: tuple[str, ...] = ()  # with the default: these arms that run only where named


PACE = 0.0002  # s between events: about 4k events/s per stream, as the demo model makes


def fake_scenarios(quick: bool) -> list[Scenario]:
    seconds = 1.5 if quick else 5.0
    paced = ("direct", "direct-tcp", "trio-floor", "bodhi-trio", "remote", "remote-httpx", "ollama")
    return [
        # the bare Trio relay here too: its added TTFT beside bodhi-trio's (17.3), in one run
        Scenario("1 stream", 1, 1000, duration=seconds, also=("trio-floor",)),
        Scenario("64 streams", 64, 1000, duration=seconds),
        # one event per read, as from a real model: the proxy's cost per wakeup
        Scenario("1 stream, paced", 1, 1000, duration=seconds, token_delay=PACE, arms=paced),
        Scenario("8 streams, paced", 8, 1000, duration=seconds, token_delay=PACE, arms=paced),
        # long streams, so that the upstream is still writing when the client leaves
        Scenario(
            "disconnect",
            4,
            5_000,
            duration=5.0 if quick else 15.0,
            requests=40 if quick else 200,
            disconnect_after=10,
            # the fake tells closed streams apart by the request's `user`, which Ollama's
            # requests do not carry
            arms=("direct", "direct-tcp", "bodhi-trio", "remote", "remote-httpx", "litellm"),
        ),
    ]


def llama_scenarios(quick: bool, prefix: str = "", tokens: int = LLAMA_TOKENS) -> list[Scenario]:
    seconds = 2.0 if quick else 5.0
    return [
        Scenario(f"{prefix}1 stream", 1, tokens, duration=seconds),
        Scenario(f"{prefix}8 streams", 8, tokens, duration=seconds),
    ]


def run_one(arm: Arm, scenario: Scenario, timeout: float = 30.0) -> BenchResult:
    paced_by_alias = scenario.token_delay is not None and arm.paced_model is not None
    config = BenchConfig(
        base_url=arm.base_url,
        model=arm.paced_model if paced_by_alias and arm.paced_model else arm.model,
        endpoint=arm.endpoint,
        api_key=arm.api_key,
        concurrency=scenario.concurrency,
        duration=scenario.duration,
        requests=scenario.requests,
        max_tokens=scenario.max_tokens,
        disconnect_after=scenario.disconnect_after,
        upstream_url=arm.upstream_url,
        unix_socket=arm.unix_socket,
        upstream_unix_socket=arm.upstream_socket,
        timeout=timeout,
        extra_body=None
        if scenario.token_delay is None or paced_by_alias
        else {"bench_token_delay": scenario.token_delay},
    )
    return trio.run(lambda: run_bench(config))


def _upstream_active(arm: Arm) -> int | None:
    assert arm.upstream_url is not None
    try:
        stats = http_json(
            f"{arm.upstream_url}/bench/stats", timeout=2, unix_socket=arm.upstream_socket
        )
    except (OSError, ValueError):
        return None
    active = stats.get("active") if isinstance(stats, dict) else None
    return active if isinstance(active, int) else None


def drain(arm: Arm, limit: float = 120.0) -> float | None:
    """Wait until ``arm`` is idle again: its fake upstream streams nothing and a 1-token
    request completes (a proxy may go on working for streams its clients left). Returns the
    seconds waited, None past ``limit``.
    """
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if arm.upstream_url and _upstream_active(arm) not in (0, None):
            time.sleep(0.05)
            continue
        if run_one(arm, Scenario("probe", 1, 1, requests=1), timeout=10.0).requests_done:
            return time.monotonic() - started
    return None


def _cpu(pid: int | None, precise: bool) -> dict[int, float] | None:
    return None if pid is None else cpu_reading(pid, precise)


def _switches(pid: int | None, precise: bool) -> dict[int, int] | None:
    """Context switches per thread, read where CPU is read per thread (the llama suites)."""
    return None if pid is None or not precise else switches_reading(pid)


def _recorded(suite: str, arm: Arm, scenario: Scenario, r: int, rounds: int) -> dict[str, Any]:
    # The llama suites' streams are slow (a real model's pace, down to ~100 tokens/s): their
    # CPU is read per thread to the nanosecond; the fake suite's, as before, in ticks.
    precise = suite.startswith("llama")
    switches_before = _switches(arm.pid, precise)
    cpu_before = _cpu(arm.pid, precise)
    result = run_one(arm, scenario)
    cpu_after = _cpu(arm.pid, precise)
    switches_after = _switches(arm.pid, precise)
    row: dict[str, Any] = {"suite": suite, "round": r, "scenario": scenario.name, "arm": arm.name}
    row.update(result.to_dict())
    row["rss_mib"] = rss_mib(arm.pid, arm.rss_group) if arm.pid else None
    cpu = cpu_between(cpu_before, cpu_after)
    row["cpu_s"] = cpu
    row["cpu_us_per_event"] = (
        cpu * 1e6 / result.events if cpu is not None and result.events else None
    )
    row["cpu_us_per_token"] = (
        cpu * 1e6 / result.tokens if cpu is not None and result.tokens else None
    )
    row["cpu_pct"] = cpu * 100 / result.elapsed_s if cpu is not None and result.elapsed_s else None
    # the llama suites: how often the arm's process woke or was taken off a core per token,
    # each time a chance to take a core from llama-server's threads
    switches = cpu_between(switches_before, switches_after)
    row["switches_per_token"] = (
        switches / result.tokens if switches is not None and result.tokens else None
    )
    row["drain_s"] = waited = drain(arm)  # so that runs don't overlap
    llama = suite.startswith("llama")
    rate = result.tokens_per_s if llama else result.events_per_s
    unit = "tok/s" if llama else "ev/s"
    per_event = "" if row["cpu_us_per_event"] is None else f"  {row['cpu_us_per_event']:.1f} µs/ev"
    print(
        f"[{suite}] round {r + 1}/{rounds} {scenario.name:>10} {arm.name:>10}: "
        f"{rate:>9,.0f} {unit}  errors {result.errors}  cut {result.requests_cut}{per_event}"
        f"  idle again after {'?' if waited is None else f'{waited:.2f}'} s",
        flush=True,
    )
    return row


def interleaved(
    suite: str, arms: list[Arm], phases: list[list[Scenario]], rounds: int
) -> list[dict[str, Any]]:
    """Warm every arm up, then run each phase's scenarios for ``rounds`` rounds, rotating
    the order of the arms every round."""
    for arm in arms:  # warm-up, not recorded
        run_one(arm, Scenario("warm-up", 4, 100, duration=0.5))
        drain(arm)
    rows: list[dict[str, Any]] = []
    for phase in phases:
        for r in range(rounds):
            for scenario in phase:
                order = arms[r % len(arms) :] + arms[: r % len(arms)]
                for arm in order:
                    if _runs_in(arm, scenario):
                        rows.append(_recorded(suite, arm, scenario, r, rounds))
    return rows


def _runs_in(arm: Arm, scenario: Scenario) -> bool:
    if scenario.arms is None:
        return not arm.only_where_named or arm.name in scenario.also
    return arm.name in scenario.arms


def _same_child(bodhi: Bodhi, state: dict[str, Any]) -> bool:
    now = newest_model(bodhi.api("/bodhi/v1/state", timeout=10), state["alias"])
    return bool(now.get("pid") == state["pid"] and now.get("state") == "ready")


REMOTE_ALIAS = "bench:remote"
HTTPX_ALIAS = "bench:remote-httpx"  # with a ca_bundle: on httpx, as HTTPS remotes are


def fake_suite(workdir: Path, quick: bool, rounds: int, litellm: bool) -> dict[str, Any]:
    """The proxy ceiling: fake upstream, arms direct / direct-tcp / bodhi-trio / remote /
    remote-httpx / ollama / litellm."""
    aliases = {"bench:fake": [], "bench:paced": [f"--token-delay {PACE}"]}
    with running_bodhi(workdir, "fake", aliases, FAKE, max_loaded=2) as bodhi:
        state = bodhi.load("bench:fake")
        bodhi.load("bench:paced")  # beside it (two slots), before any run is timed
        child = bodhi.child(state["pid"])  # its Unix socket, from bodhi-trio's log
        sock = child.socket
        arms = [
            Arm(
                "direct",
                f"{CHILD_URL}/v1",
                "bench:fake",
                None,
                CHILD_URL,
                state["pid"],
                unix_socket=sock,
                upstream_socket=sock,
            ),
            Arm(
                "bodhi-trio",
                f"{bodhi.url}/v1",
                "bench:fake",
                None,
                CHILD_URL,
                bodhi.pid,
                upstream_socket=sock,
            ),
            # the same relay through the Ollama dialect: SSE translated to NDJSON per event
            Arm(
                "ollama",
                bodhi.url,
                "bench:fake",
                None,
                CHILD_URL,
                bodhi.pid,
                upstream_socket=sock,
                endpoint="ollama",
                paced_model="bench:paced",
            ),
        ]
        with contextlib.ExitStack() as stack:
            # Children have no TCP port: the arms that need one (a remote alias's upstream,
            # LiteLLM's) reach a twin of the child, the same fake with the same arguments on
            # a free TCP port. Its own process, never shared with the Unix-socket arms.
            twin, twin_pid = stack.enter_context(running_fake(child.argv, workdir / "twin"))
            # the twin straight, so the remote arm's cost shows against its own upstream
            arms.insert(1, Arm("direct-tcp", f"{twin}/v1", "bench:fake", None, twin, twin_pid))
            # bodhi-trio relaying the twin through a remote alias: over plain http, its own
            # HTTP/1.1 client; with a CA bundle (unused by http://, but read), over httpx
            remote = {"base_url": f"{twin}/v1", "model": "bench:fake"}
            bodhi.create_alias({"alias": REMOTE_ALIAS, "remote": remote})
            arms.insert(3, Arm("remote", f"{bodhi.url}/v1", REMOTE_ALIAS, None, twin, bodhi.pid))
            bodhi.create_alias({"alias": HTTPX_ALIAS, "remote": remote | {"ca_bundle": where()}})
            arms.insert(
                4, Arm("remote-httpx", f"{bodhi.url}/v1", HTTPX_ALIAS, None, twin, bodhi.pid)
            )
            if sock is not None:  # a bare Trio relay of the child's socket (floor_relay.py)
                floor, floor_pid = stack.enter_context(running_floor(sock, workdir / "floor"))
                floor_arm = Arm("trio-floor", f"{floor}/v1", "bench:fake", None, CHILD_URL)
                floor_arm = attrs.evolve(floor_arm, pid=floor_pid, upstream_socket=sock)
                arms.insert(2, attrs.evolve(floor_arm, only_where_named=True))
            if litellm:
                port = int(twin.rsplit(":", 1)[1])
                url, pid = stack.enter_context(running_litellm(port, workdir / "litellm"))
                arms.append(Arm("litellm", url, "fake", LITELLM_KEY, twin, pid, rss_group=True))
            scenarios = fake_scenarios(quick)
            # Disconnect rounds come last: a proxy that keeps consuming the upstream after its
            # client left (LiteLLM does) would otherwise slow down every later measurement.
            phases = [[s for s in scenarios if not s.disconnect_after]]
            phases.append([s for s in scenarios if s.disconnect_after])
            rows = interleaved("fake", arms, phases, rounds)
        return {
            "runs": rows,
            "pace_s": PACE,
            "remote_alias": REMOTE_ALIAS,
            "httpx_alias": HTTPX_ALIAS,
            "same_child_throughout": _same_child(bodhi, state),
            "bodhi_rss_end_mib": bodhi.rss_mib(),
        }


def _ini(params: list[str]) -> str:
    """llama-server args (``--flag value`` or ``--flag``, as alias context params give them)
    as the lines of a router preset section (``flag = value``, ``flag = true``)."""
    words = " ".join(params).split()
    lines = []
    for i, word in enumerate(words):
        if not word.startswith("--"):
            continue
        value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
        lines.append(f"{word[2:]} = {'true' if value is None else value}")
    return "\n".join(lines)


_WHERE_AND_WHAT = frozenset({"--alias", "-a", "--model", "-m", "--host", "--port"})


def _flag_pairs(words: list[str]) -> list[tuple[str, str | None]]:
    """``--flag value`` / ``--flag`` words as pairs (a value never starts with ``-`` in the
    suites' args)."""
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("-") else None
        pairs.append((words[i], value))
        i += 2 if value is not None else 1
    return pairs


def added_by_bodhi(argv: list[str], params: list[str]) -> list[str]:
    """The llama args bodhi-trio gave its child beyond the alias's own (``--embeddings``,
    ``--pooling mean``), without where it listens and what it is called: the router's
    child gets them too, so that it is the same llama-server as bodhi-trio's, which
    ``direct`` reads and every ratio divides by. A flag the alias names is the alias's,
    whatever value the child got (a preset section holds each key once). Read from the
    demo model's child and given to ``demo:smol``'s section too (the router's preset is
    written before bodhi-trio loads it; both GGUFs declare no pooling)."""
    own = {flag for flag, _value in _flag_pairs(" ".join(params).split())}
    return [
        flag if value is None else f"{flag} {value}"
        for flag, value in _flag_pairs(argv[1:])
        if flag not in _WHERE_AND_WHAT and flag not in own
    ]


def _router_preset(models: dict[str, tuple[Path, list[str]]]) -> str:
    """A ``--models-preset`` INI: one section per model (name → GGUF path, llama args)."""
    sections = [
        f"[{name}]\nmodel = {path}\n{_ini(params)}\n" for name, (path, params) in models.items()
    ]
    return "version = 1\n\n" + "\n".join(sections)


def _direct(bodhi: Bodhi, alias: str, state: dict[str, Any]) -> Arm:
    child = bodhi.child(state["pid"])  # its Unix socket, from bodhi-trio's log
    return Arm(
        "direct", f"{CHILD_URL}/v1", alias, None, None, state["pid"], unix_socket=child.socket
    )


def _floor(
    stack: contextlib.ExitStack, bodhi: Bodhi, alias: str, state: dict[str, Any], workdir: Path
) -> Arm:
    """The ``trio-floor`` arm in front of the loaded child (``floor_relay.py``: a wait, a
    read and a write per token, nothing else): what any relay on Trio costs per token."""
    socket = bodhi.child(state["pid"]).socket
    assert socket is not None, "bodhi.child() gives a child with its socket"
    url, pid = stack.enter_context(running_floor(socket, workdir))
    return Arm("trio-floor", f"{url}/v1", alias, None, None, pid)


def llama_suite(workdir: Path, quick: bool, rounds: int, variant: str) -> dict[str, Any]:
    """Real llama-server on the demo model, then on demo:smol: arms direct / trio-floor /
    bodhi-trio / router, with the variant's args (``llama-t1``: ``--threads 1``, which
    leaves a core to the relay and the client on 2 cores)."""
    alias, params = f"bench:{variant}", LLAMA_VARIANTS[variant]
    smol_params = [*params, *SMOL_CONTEXT_PARAMS]
    aliases = {alias: params, SMOL_ALIAS: smol_params}
    files = {SMOL_ALIAS: (SMOL_REPO, SMOL_FILENAME)}
    out: dict[str, Any] = {"alias": alias, "alias_params": params, "max_tokens": LLAMA_TOKENS}
    with (
        running_bodhi(workdir, variant, aliases, files=files) as bodhi,
        contextlib.ExitStack() as stack,
    ):
        state = bodhi.load(alias)
        arms = [
            _direct(bodhi, alias, state),
            _floor(stack, bodhi, alias, state, workdir / f"floor-{variant}"),
            Arm("bodhi-trio", f"{bodhi.url}/v1", alias, None, None, bodhi.pid),
        ]
        demo = hub_file(bodhi, DEMO_REPO, DEMO_FILENAME)
        smol = hub_file(bodhi, SMOL_REPO, SMOL_FILENAME)
        assert demo is not None, "serve --demo did not place the demo model"
        added = added_by_bodhi(bodhi.child(state["pid"]).argv, params)
        models = {ROUTER_NAMES["llama"]: (demo, [*params, *added])}
        if smol is not None:
            models[ROUTER_NAMES[SMOL_ALIAS]] = (smol, [*smol_params, *added])
        with running_router(workdir / "llama-router", _router_preset(models), 1) as (
            port,
            pid,
            _log,
        ):
            url = f"http://127.0.0.1:{port}/v1"
            router = Arm("router", url, ROUTER_NAMES["llama"], None, None, pid)
            out["runs"] = interleaved(variant, [*arms, router], [llama_scenarios(quick)], rounds)
            out["same_child_throughout"] = _same_child(bodhi, state)
            out["router"] = {"models_max": 1, "preset": sorted(models), "added": added}
            if smol is None:
                out["smol"] = {"skipped": "serve --demo did not place demo:smol (offline?)"}
                return out
            # one slot each: bodhi-trio swaps to demo:smol here, the router at the warm-up
            state = bodhi.load(SMOL_ALIAS)
            arms = [
                _direct(bodhi, SMOL_ALIAS, state),
                _floor(stack, bodhi, SMOL_ALIAS, state, workdir / "floor-smol"),
                Arm("bodhi-trio", f"{bodhi.url}/v1", SMOL_ALIAS, None, None, bodhi.pid),
                Arm("router", url, ROUTER_NAMES[SMOL_ALIAS], None, None, pid),
            ]
            scenarios = llama_scenarios(quick, SMOL_PREFIX, SMOL_TOKENS)
            out["runs"] += interleaved(variant, arms, [scenarios], rounds)
            out["same_child_throughout"] &= _same_child(bodhi, state)
            out["smol"] = {"alias": SMOL_ALIAS, "params": smol_params, "max_tokens": SMOL_TOKENS}
    return out
