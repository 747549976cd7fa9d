"""The several-models suite (``rag``): the RAG pattern on the real llama-server.

A RAG pipeline embeds each question, then asks the chat model with what it found: requests
alternate an embedding alias and a chat alias. Three arms serve the same two models (the
demo GGUF, once as ``--embeddings --pooling mean``, once plain), one after the other:

- ``bodhi-trio`` with ``BODHI_MAX_LOADED_MODELS=2``: both children stay resident;
- ``bodhi-trio one slot`` (``BODHI_MAX_LOADED_MODELS=1``, the behaviour before several
  models): every request swaps the child;
- ``router``: llama.cpp's own router mode, ``llama-server --models-preset INI
  --models-max 2`` (the same binary; one section per model, same flags), on a TCP port.

Each arm answers 200 requests (100 embed/chat pairs, first loads included) from one client
on one keep-alive connection: per request the latency to the whole response (chat:
non-streamed, 8 tokens). Reported: children started, p50/p99 per kind, wall time.

Then, on ``bodhi-trio`` with two slots: the **load-beside overhead**, ``POST
/bodhi/v1/server/load`` of one model while the other is resident vs. into an empty server,
minus the child's own spawn→ready time (the ``ready on unix:PATH after X s`` log line); and
the **memory estimate** of each model (``estimate_model_memory``, from its GGUF header and
args) against what bodhi-trio measured once it loaded (``memory`` in ``/bodhi/v1/state``, the
child's process-group RSS).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_procs import (
    DEMO_FILENAME,
    DEMO_REPO,
    Bodhi,
    child_starts,
    rss_mib,
    running_bodhi,
    running_router,
)

from bodhi_trio._bench._scan import _percentile

__all__ = ["rag_suite", "render_rag"]

EMBED, CHAT = "bench:embed", "bench:chat"
_EMBED_PARAMS = ["--embeddings", "--pooling mean"]
_ROUTER_NAMES = {EMBED: "bench-embed", CHAT: "bench-chat"}  # router sections: no ":"
_ROUTER_SPAWN = b"spawning server instance with name="


class _Client:
    """One keep-alive HTTP/1.1 connection, as a RAG pipeline's client would hold."""

    def __init__(self, host: str, port: int) -> None:
        self._conn = http.client.HTTPConnection(host, port, timeout=120)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, float, bytes]:
        """Status, seconds to the whole response, and the body."""
        data = json.dumps(body).encode()
        started = time.perf_counter()
        self._conn.request("POST", path, data, {"Content-Type": "application/json"})
        response = self._conn.getresponse()
        content = response.read()
        return response.status, time.perf_counter() - started, content

    def close(self) -> None:
        self._conn.close()


def _rag_requests(client: _Client, names: dict[str, str], pairs: int) -> list[dict[str, Any]]:
    """``pairs`` embed/chat pairs; one row per request."""
    rows: list[dict[str, Any]] = []
    for i in range(pairs):
        question = f"question {i}: what does the document say about llamas?"
        embed = {"model": names[EMBED], "input": question}
        chat = {
            "model": names[CHAT],
            "max_tokens": 8,
            "messages": [{"role": "user", "content": f"context: chunk {i}\n\n{question}"}],
        }
        for kind, path, body in (
            ("embed", "/v1/embeddings", embed),
            ("chat", "/v1/chat/completions", chat),
        ):
            try:
                status, seconds, content = client.post(path, body)
            except (OSError, http.client.HTTPException) as exc:
                rows.append({"kind": kind, "i": i, "status": 0, "error": repr(exc)})
                continue
            row: dict[str, Any] = {"kind": kind, "i": i, "status": status, "ms": seconds * 1e3}
            if status != 200:
                row["error"] = content[:200].decode(errors="replace")
            rows.append(row)
    return rows


def _summary(rows: list[dict[str, Any]], starts: int | None, wall_s: float) -> dict[str, Any]:
    """The first request of each kind (it waits for the load) apart; p50/p99 over the rest."""
    out: dict[str, Any] = {"starts": starts, "wall_s": wall_s, "requests": len(rows)}
    out["errors"] = sum(1 for r in rows if r["status"] != 200)
    out["error_samples"] = [r["error"] for r in rows if "error" in r][:3]
    for kind in ("embed", "chat"):
        first = next((r.get("ms") for r in rows if r["kind"] == kind and r["i"] == 0), None)
        ms = [r["ms"] for r in rows if "ms" in r and r["kind"] == kind and r["i"] > 0]
        out[kind] = {
            "first_ms": first,
            "p50_ms": _percentile(ms, 50),
            "p99_ms": _percentile(ms, 99),
        }
    return out


def _bodhi_arm(workdir: Path, name: str, max_loaded: int, pairs: int) -> dict[str, Any]:
    aliases = {EMBED: _EMBED_PARAMS, CHAT: []}
    with running_bodhi(workdir, name, aliases, max_loaded=max_loaded) as bodhi:
        host, port = bodhi.url.removeprefix("http://").rsplit(":", 1)
        client = _Client(host, int(port))
        started = time.monotonic()
        try:
            rows = _rag_requests(client, {EMBED: EMBED, CHAT: CHAT}, pairs)
        finally:
            client.close()
        wall = time.monotonic() - started
        # each alias's children write to their own file (the console has no child lines)
        logs = (bodhi.home / "logs").glob("llama-server-*.log")
        spawned = sum(p.read_bytes().count(b"[bodhi-trio] spawned pid ") for p in logs)
        out = _summary(rows, spawned, wall)
        out["resident_after"] = [m["alias"] for m in bodhi.api("/bodhi/v1/state")["models"]]
        return out


@contextlib.contextmanager
def _running_router(workdir: Path, model: Path, max_models: int) -> Iterator[tuple[int, Path]]:
    """``llama-server --models-preset INI --models-max N`` on a free port; its port and log."""
    preset = (
        "version = 1\n\n"
        f"[{_ROUTER_NAMES[EMBED]}]\nmodel = {model}\nembeddings = true\npooling = mean\n\n"
        f"[{_ROUTER_NAMES[CHAT]}]\nmodel = {model}\n"
    )
    with running_router(workdir / "router", preset, max_models) as (port, _pid, log):
        yield port, log


def _router_arm(workdir: Path, model: Path, pairs: int) -> dict[str, Any]:
    with _running_router(workdir, model, 2) as (port, log):
        client = _Client("127.0.0.1", port)
        started = time.monotonic()
        try:
            rows = _rag_requests(client, _ROUTER_NAMES, pairs)
        finally:
            client.close()
        wall = time.monotonic() - started
        return _summary(rows, log.read_bytes().count(_ROUTER_SPAWN), wall)


def _load(bodhi: Bodhi, alias: str) -> dict[str, Any]:
    """``server/load`` of ``alias``: its wall time, the new child's spawn→ready, the rest."""
    started = time.perf_counter()
    doc = bodhi.api("/bodhi/v1/server/load", "POST", {"alias": alias}, 120)
    wall_ms = (time.perf_counter() - started) * 1e3
    model = next(m for m in doc["models"] if m["alias"] == alias)
    ready = next(
        (s.ready_s for s in reversed(child_starts(bodhi.logs(1000))) if s.pid == model["pid"]),
        None,
    )
    row: dict[str, Any] = {"wall_ms": wall_ms, "ready_ms": None, "overhead_ms": None}
    if ready is not None:
        row.update(ready_ms=ready * 1e3, overhead_ms=wall_ms - ready * 1e3)
    return row


def _load_beside(workdir: Path, rounds: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with running_bodhi(workdir, "load-beside", {EMBED: _EMBED_PARAMS, CHAT: []}, max_loaded=2) as b:
        for i in range(rounds):
            b.api("/bodhi/v1/server/stop", "POST", timeout=120)  # nothing resident
            rows.append({"kind": "alone", "i": i, **_load(b, CHAT)})
            rows.append({"kind": "beside", "i": i, **_load(b, EMBED)})  # CHAT stays resident
        memory = _memory(b)
    stats: dict[str, Any] = {}
    for kind in ("alone", "beside"):
        mine = [r for r in rows if r["kind"] == kind]
        stats[kind] = {
            key: _percentile([r[key] for r in mine if r[key] is not None], 50)
            for key in ("wall_ms", "ready_ms", "overhead_ms")
        }
    return {"runs": rows, "stats": stats, "memory": memory}


def _memory(bodhi: Bodhi) -> list[dict[str, Any]]:
    """Per resident model: the estimate from its GGUF and args, and what bodhi-trio measured
    (its child watch replaces the estimate within one health interval, at most 5 s)."""
    from bodhi_trio._llama._memory import estimate_model_memory  # the harness's own venv

    out: list[dict[str, Any]] = []
    starts = child_starts(bodhi.logs(1000))
    for model in bodhi.api("/bodhi/v1/state")["models"]:
        start = next((s for s in reversed(starts) if s.pid == model["pid"]), None)
        if start is None or "--model" not in start.argv:
            continue
        path = Path(start.argv[start.argv.index("--model") + 1])
        estimate = estimate_model_memory(path, start.argv[1:])
        row = {"alias": model["alias"], "pid": model["pid"], "file_bytes": estimate.file_bytes}
        row.update(kv_bytes=estimate.kv_bytes, estimate_bytes=estimate.total)
        out.append(row)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        counted = {m["alias"]: m["memory"] for m in bodhi.api("/bodhi/v1/state")["models"]}
        if all(counted.get(r["alias"]) not in (None, r["estimate_bytes"]) for r in out):
            break
        time.sleep(0.5)
    for row in out:
        measured = counted.get(row["alias"])
        row["measured_bytes"] = None if measured == row["estimate_bytes"] else measured
        group = rss_mib(row["pid"], group=True)  # the harness's own reading, to compare
        row["group_rss_bytes"] = None if group is None else int(group * 2**20)
    return out


def rag_suite(workdir: Path, quick: bool) -> dict[str, Any]:
    pairs = 20 if quick else 100
    arms: dict[str, dict[str, Any]] = {}
    arms["bodhi-trio"] = _bodhi_arm(workdir, "rag-two", 2, pairs)
    print(f"[rag] bodhi-trio: {arms['bodhi-trio']}", flush=True)
    arms["bodhi-trio one slot"] = _bodhi_arm(workdir, "rag-one", 1, pairs)
    print(f"[rag] one slot: {arms['bodhi-trio one slot']}", flush=True)
    # the demo model the bodhi-trio arms served (serve --demo also places demo:smol there)
    repo_dir = "models--" + DEMO_REPO.replace("/", "--")
    model = next(
        (workdir / "rag-two" / "hf" / "hub" / repo_dir).glob(f"snapshots/*/{DEMO_FILENAME}")
    )
    arms["router"] = _router_arm(workdir, model, pairs)
    print(f"[rag] router: {arms['router']}", flush=True)
    beside = _load_beside(workdir, 3 if quick else 10)
    print(f"[rag] load beside: {beside['stats']}", flush=True)
    errors = sum(int(a["errors"]) for a in arms.values())
    return {"requests": 2 * pairs, "arms": arms, "load_beside": beside, "errors": errors}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:,.1f}"


def render_rag(suite: dict[str, Any]) -> list[str]:
    """RESULTS.md's section for the ``rag`` suite."""
    lines = [
        "",
        "## Several models: the RAG pattern (real llama-server)",
        "",
        f"{suite['requests']} requests alternating `/v1/embeddings` on `{EMBED}` (the demo model"
        f" with `{' '.join(_EMBED_PARAMS)}`) and a non-streamed 8-token `/v1/chat/completions`"
        f" on `{CHAT}` (the demo model), from one client on one keep-alive connection; latency"
        " to the whole response: the first request of each kind (it waits for its model's"
        " load) apart, then p50/p99 over the rest. `router` is llama.cpp's router mode"
        " (`llama-server --models-preset INI --models-max 2`, the same binary and flags).",
        "",
        "| arm | children started | embed: first, p50 / p99 ms | chat: first, p50 / p99 ms"
        " | wall s | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, arm in suite["arms"].items():
        embed, chat = arm["embed"], arm["chat"]
        lines.append(
            f"| {name} | {arm['starts']} | {_ms(embed['first_ms'])}, {_ms(embed['p50_ms'])}"
            f" / {_ms(embed['p99_ms'])} | {_ms(chat['first_ms'])}, {_ms(chat['p50_ms'])}"
            f" / {_ms(chat['p99_ms'])} | {arm['wall_s']:.1f} | {arm['errors']} |"
        )
    stats = suite["load_beside"]["stats"]
    lines += [
        "",
        "Loading one model (`POST /bodhi/v1/server/load`, medians of"
        f" {len(suite['load_beside']['runs']) // 2} rounds) into an empty server (`{CHAT}`) and"
        f" beside a resident one (`{EMBED}` while `{CHAT}` stays loaded); overhead = wall -"
        " the child's own spawn→ready.",
        "",
        "| load | wall ms | child spawn→ready ms | overhead ms |",
        "|---|---:|---:|---:|",
    ]
    for kind in ("alone", "beside"):
        s = stats[kind]
        lines.append(
            f"| {kind} | {_ms(s['wall_ms'])} | {_ms(s['ready_ms'])} | {_ms(s['overhead_ms'])} |"
        )
    lines += [
        "",
        "Memory per model: the estimate admission uses before a load (GGUF file + KV cache for"
        " its context, from the header and the child's args, plus a fixed allowance for the"
        " runtime) and what bodhi-trio counts once it loaded (the child's process-group RSS,"
        " read by its child watch), next to the harness's own reading of that RSS.",
        "",
        "| alias | file MiB | KV MiB | estimate MiB | measured MiB | harness's reading MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in suite["load_beside"]["memory"]:
        lines.append(
            f"| `{m['alias']}` | {_mib(m['file_bytes'])} | {_mib(m['kv_bytes'])}"
            f" | {_mib(m['estimate_bytes'])} | {_mib(m['measured_bytes'])}"
            f" | {_mib(m['group_rss_bytes'])} |"
        )
    return lines
