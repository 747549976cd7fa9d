#!/usr/bin/env python3
"""What a relay does to a real model's pace, one request at a time (issue 17, target 17.5).

The harness's ``demo:smol`` rows count the tokens of 5-second windows, a few requests each,
and this machine's noise moves a window by more than the relay could (docs/benchmarks.md).
Here every request of the same answer (100 tokens at ``temperature`` 0) is timed on its
own, the arms taking turns request by request (the order rotated each round), and each is
split into what a relay can add to it in three different ways:

- **first token**: the request's send to its first content token (a relay's request path);
- **per token**: the time between the first and the last content token over the tokens
  between them (the model's pace as the client sees it: a relay's CPU per token is taken
  from llama-server's threads where they use every core);
- **tail**: the last content token to the end of the response.

The first, the per-token time times the tokens after the first, and the tail add up to the
answer's time; its tokens over it are the arm's tokens/s. With ``--streams N``
each turn is N answers at once: the parts are their medians, and the time is the first send
to the last end.

Each round reads each arm against ``direct`` (the child's own Unix socket) in the same
round; the table gives the median over rounds of those ratios, with the relay's CPU per
token (its process, every thread) beside them.

    python benchmarks/token_pace.py [--rounds 40] [--streams 8] [--threads 1] [--no-router]

``run.py --llama`` runs it as the ``pace`` suite (:func:`pace_suite`), and RESULTS.md reads
target 17.5 from it too (:mod:`pace_report`).

Arms: ``direct``, ``bodhi-trio`` (``serve`` with ``demo:smol``), ``trio-floor``
(``floor_relay.py``, a bare Trio relay) and ``router`` (llama.cpp's router mode, its child
given the args bodhi-trio gives its own). Needs what ``nox -s bench`` installs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pace_report as report
from bench_procs import (
    CHILD_URL,
    cpu_between,
    cpu_reading,
    hub_file,
    running_bodhi,
    running_floor,
    running_router,
)
from bench_suites import (
    LLAMA_VARIANTS,
    ROUTER_NAMES,
    SMOL_ALIAS,
    SMOL_TOKENS,
    _router_preset,
    added_by_bodhi,
)

from bodhi_trio._config._demo_smol import SMOL_CONTEXT_PARAMS, SMOL_FILENAME, SMOL_REPO

PROMPT = "Tell me a long story about a dragon."


@attrs.frozen
class Timed:
    """One streamed answer, split as the module docstring says."""

    first_ms: float
    per_token_ms: float
    tail_ms: float
    answer_ms: float  # the send to the response's end
    tokens: int
    cpu_us_per_token: float | None


@attrs.frozen
class PacedArm:
    name: str
    client: httpx.Client
    model: str
    pid: int | None  # the relay's process (None: direct, nothing between)


def _answer(arm: PacedArm) -> tuple[float, list[float], float]:
    """Stream one answer of ``SMOL_TOKENS`` tokens through ``arm``: when it was sent, when
    each content token came, when it ended (``time.perf_counter``). A kept connection closed
    before any answer (its keep-alive ran out while the other arms took their turns) is
    tried once more, on a new one."""
    body = {
        "model": arm.model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": SMOL_TOKENS,
        "temperature": 0,
        "stream": True,
    }
    for attempt in (1, 2):
        sent = time.perf_counter()
        stamps: list[float] = []
        try:
            with arm.client.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if line.startswith("data: {") and '"content":"' in line:
                        stamps.append(time.perf_counter())
        except httpx.RemoteProtocolError as exc:
            if attempt == 2 or "without sending a response" not in str(exc):
                raise
            continue
        if len(stamps) < 2:
            raise RuntimeError(f"{arm.name}: {len(stamps)} content tokens")
        return sent, stamps, time.perf_counter()
    raise AssertionError("unreachable")


def timed(arm: PacedArm, streams: int = 1) -> Timed:
    """``streams`` answers at once through ``arm`` (each in a thread of its own if more
    than one): the medians of their parts, the time from the first send to the last end,
    and the relay's CPU over all of them."""
    before = None if arm.pid is None else cpu_reading(arm.pid)
    if streams == 1:
        answers = [_answer(arm)]
    else:
        with concurrent.futures.ThreadPoolExecutor(streams) as pool:
            answers = list(pool.map(lambda _: _answer(arm), range(streams)))
    cpu = None if arm.pid is None else cpu_between(before, cpu_reading(arm.pid))
    tokens = sum(len(stamps) for _, stamps, _ in answers)
    return Timed(
        first_ms=statistics.median((stamps[0] - sent) * 1e3 for sent, stamps, _ in answers),
        per_token_ms=statistics.median(
            (stamps[-1] - stamps[0]) * 1e3 / (len(stamps) - 1) for _, stamps, _ in answers
        ),
        tail_ms=statistics.median((ended - stamps[-1]) * 1e3 for _, stamps, ended in answers),
        answer_ms=(max(e for *_, e in answers) - min(s for s, *_ in answers)) * 1e3,
        tokens=tokens,
        cpu_us_per_token=None if cpu is None else cpu * 1e6 / tokens,
    )


def rounds_of(arms: list[PacedArm], rounds: int, streams: int = 1) -> list[dict[str, Timed]]:
    """A warm-up answer each, then ``rounds`` rounds of ``streams`` answers at once per arm,
    the order of the arms rotated each round."""
    for arm in arms:
        timed(arm, streams)
    out: list[dict[str, Timed]] = []
    for r in range(rounds):
        order = arms[r % len(arms) :] + arms[: r % len(arms)]
        out.append({arm.name: timed(arm, streams) for arm in order})
        print(
            f"round {r + 1}/{rounds}: "
            + "  ".join(f"{n} {t.per_token_ms:.3f} ms/token" for n, t in out[-1].items()),
            flush=True,
        )
    return out


@contextlib.contextmanager
def paced_arms(workdir: Path, params: list[str], router: bool) -> Iterator[list[PacedArm]]:
    """The arms in front of one ``demo:smol`` child (and the router's own), closed on
    leaving."""
    workdir.mkdir(parents=True, exist_ok=True)
    smol_params = [*params, *SMOL_CONTEXT_PARAMS]
    files = {SMOL_ALIAS: (SMOL_REPO, SMOL_FILENAME)}
    with (
        running_bodhi(workdir, "pace", {SMOL_ALIAS: smol_params}, files=files) as bodhi,
        contextlib.ExitStack() as stack,
    ):
        state = bodhi.load(SMOL_ALIAS)
        child = bodhi.child(state["pid"])
        floor_url, floor_pid = stack.enter_context(running_floor(str(child.socket), workdir))
        uds = httpx.HTTPTransport(uds=child.socket)
        arms = [
            PacedArm("direct", httpx.Client(base_url=CHILD_URL, transport=uds), SMOL_ALIAS, None),
            PacedArm("bodhi-trio", httpx.Client(base_url=bodhi.url), SMOL_ALIAS, bodhi.pid),
            PacedArm("trio-floor", httpx.Client(base_url=floor_url), SMOL_ALIAS, floor_pid),
        ]
        if router:
            smol = hub_file(bodhi, SMOL_REPO, SMOL_FILENAME)
            assert smol is not None, "serve --demo did not place demo:smol"
            added = added_by_bodhi(child.argv, smol_params)
            preset = _router_preset({ROUTER_NAMES[SMOL_ALIAS]: (smol, [*smol_params, *added])})
            port, pid, _log = stack.enter_context(running_router(workdir / "router", preset, 1))
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
            arms.append(PacedArm("router", client, ROUTER_NAMES[SMOL_ALIAS], pid))
        for arm in arms:
            stack.callback(arm.client.close)
            arm.client.timeout = httpx.Timeout(120.0)
        yield arms


SCENARIOS = {"1 stream": (1, 40), "8 streams": (8, 20)}  # answers at once, rounds


def pace_suite(workdir: Path, quick: bool) -> dict[str, Any]:
    """The ``pace`` suite of ``run.py``: :data:`SCENARIOS`, llama-server with its own
    threads (the ``llama`` suite's args), a tenth of the rounds if ``quick``."""
    params = list(LLAMA_VARIANTS["llama"])
    out: dict[str, Any] = {"params": params, "scenarios": {}}
    with paced_arms(workdir / "pace", params, router=True) as arms:
        for name, (streams, full) in SCENARIOS.items():
            count = full // 10 if quick else full
            print(f"[pace] {name}: {count} rounds", flush=True)
            out["scenarios"][name] = scenario(rounds_of(arms, count, streams), streams)
    return out


def scenario(runs: list[dict[str, Timed]], streams: int) -> dict[str, Any]:
    """A scenario's rounds as JSON, with their summary."""
    rounds = [{name: attrs.asdict(turn) for name, turn in run.items()} for run in runs]
    return {"streams": streams, "rounds": rounds, "summary": report.summary(rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--streams", type=int, default=1, help="answers at once per turn")
    parser.add_argument("--threads", type=int, help="llama-server's --threads (default: its own)")
    parser.add_argument("--no-router", action="store_true", help="without the router's arm")
    parser.add_argument("--out", type=Path, help="also write the rounds and summary as JSON")
    args = parser.parse_args()
    params = list(LLAMA_VARIANTS["llama"])
    if args.threads:
        params = [f"{params[0]} --threads {args.threads}"]
    with (
        tempfile.TemporaryDirectory() as tmp,
        paced_arms(Path(tmp), params, not args.no_router) as arms,
    ):
        done = scenario(rounds_of(arms, args.rounds, args.streams), args.streams)
    print(report.table(done["summary"], args.rounds))
    if args.out:
        args.out.write_text(json.dumps({"params": params, **done}, indent=1))


if __name__ == "__main__":
    main()
