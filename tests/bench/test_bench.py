"""The benchmark tools: the fake upstream's llama-server shape, and the harness against it."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from bodhi_trio._bench._client import BenchConfig, run_bench
from bodhi_trio._bench._scan import _CHAT_STYLES, FRAMINGS, _Scan, _Totals
from bodhi_trio._core._http1 import ChunkedDecoder
from paths import REPO
from procs import first_line

FAKE = REPO / "benchmarks" / "fake_upstream.py"


def spawn_fake(*extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start the fake upstream on a free port (read from its first stdout line)."""
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", "0", "--alias", "a", "--model", "m", *extra],
        stdout=subprocess.PIPE,
    )
    line = first_line(proc).decode()
    assert line.startswith("listening on http://127.0.0.1:"), line
    return proc, int(line.rsplit(":", 1)[1])


def stop_fake(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture
def fake() -> Iterator[int]:
    proc, port = spawn_fake()
    yield port
    assert stop_fake(proc) == 0


def strict_dechunk(body: bytes) -> tuple[list[bytes], bytes]:
    """HTTP/1.1 chunks, checked strictly; returns the chunks and what follows the last."""
    chunks: list[bytes] = []
    while True:
        line, sep, body = body.partition(b"\r\n")
        assert sep, "unterminated chunk size line"
        size = int(line, 16)
        if size == 0:
            assert body.startswith(b"\r\n"), "no trailer-ending CRLF"
            return chunks, body[2:]
        assert body[size : size + 2] == b"\r\n", "chunk data not followed by CRLF"
        chunks.append(body[:size])
        body = body[size + 2 :]


def sse_events(text: str) -> list[str]:
    """A minimal SSE parser: the data of each event (data lines joined, comments skipped)."""
    events: list[str] = []
    data: list[str] = []
    for line in text.split("\n"):
        if not line:
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        else:
            assert line.startswith(":"), f"unexpected SSE line {line!r}"
    assert not data, "unterminated final event"
    return events


async def post(stream: trio.SocketStream, path: str, body: dict[str, object]) -> bytes:
    """One POST over a kept-alive connection; returns the raw response (head and body)."""
    raw = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(raw)}\r\n\r\n"
    await stream.send_all(head.encode() + raw)
    data = b""

    def complete() -> bool:
        head, sep, body = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                return len(body) >= int(line.split(b":")[1])
        return bool(sep) and body.endswith(b"\r\n0\r\n\r\n")

    while not complete():
        chunk = await stream.receive_some(65536)
        assert chunk, "connection closed early"
        data += chunk
    return data


async def test_chat_stream_is_shaped_like_llama_server(fake: int) -> None:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", fake)
        async with stream:
            for usage in (True, False):  # two requests on one keep-alive connection
                request: dict[str, object] = {"model": "demo:tiny", "stream": True}
                request |= {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
                if usage:
                    request["stream_options"] = {"include_usage": True}
                raw = await post(stream, "/v1/chat/completions", request)
                head, _, body = raw.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                assert lines[0] == "HTTP/1.1 200 OK"
                assert "Content-Type: text/event-stream" in lines
                assert "Transfer-Encoding: chunked" in lines
                assert not any(h.lower().startswith("content-length") for h in lines)
                chunks, rest = strict_dechunk(body)
                assert rest == b""
                assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") for c in chunks)
                events = sse_events(b"".join(chunks).decode())
                assert len(events) == len(chunks)  # one event per chunk (per write)
                assert events[-1] == "[DONE]"
                objs = [json.loads(e) for e in events[:-1]]
                assert all(o["object"] == "chat.completion.chunk" for o in objs)
                assert all(o["model"] == "demo:tiny" for o in objs)
                assert len({o["id"] for o in objs}) == 1
                assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
                tokens = [o["choices"][0]["delta"]["content"] for o in objs[1:6]]
                assert len(set(tokens)) == 5
                assert all(tokens)
                finish = objs[6]["choices"][0]
                assert finish == {"finish_reason": "length", "index": 0, "delta": {}}
                if usage:
                    assert len(objs) == 8
                    assert objs[7]["choices"] == []
                    assert objs[7]["usage"]["completion_tokens"] == 5
                    assert "timings" in objs[7]
                else:
                    assert len(objs) == 7
                    assert "timings" in objs[6]
                    assert "usage" not in objs[6]


async def test_completions_health_slots_and_plain(fake: int) -> None:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", fake)
        async with stream:
            raw = await post(stream, "/v1/completions", {"prompt": "x", "stream": True})
            chunks, _ = strict_dechunk(raw.partition(b"\r\n\r\n")[2])
            events = sse_events(b"".join(chunks).decode())
            assert len(events) == 102  # default 100 tokens, the final chunk, [DONE]
            final = json.loads(events[-2])
            assert final["object"] == "text_completion"
            assert final["choices"][0]["finish_reason"] == "length"
            assert final["usage"]["completion_tokens"] == 100
            raw = await post(stream, "/v1/chat/completions", {"max_tokens": 3})
            body = json.loads(raw.partition(b"\r\n\r\n")[2])
            assert body["object"] == "chat.completion"
            assert body["usage"]["completion_tokens"] == 3
        for path, expected in (("/health", {"status": "ok"}), ("/slots", None)):
            stream = await trio.open_tcp_stream("127.0.0.1", fake)
            async with stream:
                await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                data = b""
                while not data.endswith((b"}", b"]")):
                    data += await stream.receive_some(65536)
                assert data.startswith(b"HTTP/1.1 200 OK\r\n")
                doc = json.loads(data.partition(b"\r\n\r\n")[2])
                assert doc == expected if expected else isinstance(doc, list)


def test_eos_after_is_honoured_unless_ignore_eos() -> None:
    proc, port = spawn_fake("--eos-after", "3")
    try:
        for ignore, n in ((False, 3), (True, 7)):
            result = trio.run(
                partial(run_bench, _config(port, requests=1, max_tokens=7, ignore_eos=ignore))
            )
            assert result.tokens == n
    finally:
        assert stop_fake(proc) == 0


async def test_the_first_events_time_is_its_reads_not_the_decoding_after_it(
    fake: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of a fast stream brings many events, and de-chunking them all takes the
    client's Python a while: the first event's time (TTFT) is when its bytes were read."""
    from bodhi_trio._bench import _load

    clock = [0.0]

    def counter() -> float:
        clock[0] += 0.001  # every reading a millisecond later
        return clock[0]

    class SlowDecoder:
        """Decoding the read that brought a stream's first content event "takes" 10 s
        (only that one: how the stream splits into reads must not matter)."""

        def __init__(self) -> None:
            self._decoder = ChunkedDecoder()
            self._content_seen = False

        def feed(self, data: bytes) -> bytes:
            payload = self._decoder.feed(data)
            content = sum(
                payload.count(event) - payload.count(empty) for event, empty in _CHAT_STYLES
            )
            if content > 0 and not self._content_seen:
                self._content_seen = True
                clock[0] += 10.0
            return payload

        @property
        def done(self) -> bool:
            return self._decoder.done

    clocks = types.SimpleNamespace(perf_counter=counter, monotonic=time.monotonic)
    monkeypatch.setattr(_load, "time", clocks)  # the harness's readings only
    monkeypatch.setattr(_load, "ChunkedDecoder", SlowDecoder)
    with trio.fail_after(20):
        result = await run_bench(_config(fake, requests=3, max_tokens=20))
    assert result.errors == 0, result.error_samples
    assert result.ttft_p50_ms is not None
    assert result.ttft_p50_ms < 1000  # a few readings apart, not 10 s
    # the slow decoding did happen (10 s of the fake clock per request): the test can fail
    assert clock[0] > 3 * 10.0


def _config(port: int, **kwargs: Any) -> BenchConfig:
    return attrs.evolve(BenchConfig(base_url=f"http://127.0.0.1:{port}/v1"), **kwargs)


async def test_harness_against_fake_upstream(fake: int) -> None:
    with trio.fail_after(20):
        result = await run_bench(_config(fake, concurrency=2, duration=0.5, max_tokens=200))
        assert result.errors == 0, result.error_samples
        assert result.events_per_s > 1000
        assert result.requests_done > 2
        assert result.tokens >= result.requests_done * 200
        assert result.ttft_p50_ms is not None
        assert 0 < result.ttft_p50_ms < 1000
        assert result.gap_p99_ms is not None
        counted = await run_bench(_config(fake, concurrency=3, requests=7, max_tokens=50))
        assert (counted.requests_done, counted.requests_cut, counted.errors) == (7, 0, 0)
        assert counted.tokens == 7 * 50  # from the usage chunks
        assert counted.events == 7 * 54  # role, 50 tokens, finish, usage, [DONE]
        plain = await run_bench(
            _config(fake, requests=2, max_tokens=9, include_usage=False, endpoint="completions")
        )
        assert plain.tokens == plain.content_events == 18  # counted, no usage chunk


async def test_disconnect_after_closes_and_the_fake_sees_it(fake: int) -> None:
    with trio.fail_after(20):
        upstream = f"http://127.0.0.1:{fake}"
        config = _config(fake, concurrency=2, requests=6, max_tokens=1_000_000)
        result = await run_bench(attrs.evolve(config, disconnect_after=3, upstream_url=upstream))
        assert result.errors == 0, result.error_samples
        assert result.disconnects == 6
        assert result.disconnects_seen == 6
        assert result.disconnect_p99_ms is not None
        assert result.disconnect_p99_ms < 1000


async def test_harness_counts_errors() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        if data.startswith(b"POST /broken/"):
            await stream.send_all(head + b'10\r\ndata: {"choi')  # then the connection drops
        else:
            event = b'data: {"error": {"message": "boom", "code": 500}}\n\n'
            await stream.send_all(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            for prefix, kind in (("broken", "broken"), ("event", "error event")):
                config = BenchConfig(base_url=f"http://127.0.0.1:{port}/{prefix}/v1", requests=2)
                result = await run_bench(config)
                assert result.error_kinds == {kind: 2}
                assert result.requests_done == 0
            config = BenchConfig(base_url="http://127.0.0.1:1/v1", requests=1)
            assert (await run_bench(config)).error_kinds == {"connect": 1}
            nursery.cancel_scope.cancel()


def _chunked(events: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


SSE_STREAM = [b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % t for t in (b"", b"a", b"bc")]
SSE_STREAM += [b'data: {"error": {"message": "x"}}\n\n', b"data: [DONE]\n\n"]
NDJSON_STREAM = [
    b'{"message":{"role":"assistant","content":"%s"},"done":false}\n' % t
    for t in (b"", b"a", b"bc")
]
NDJSON_STREAM += [b'{"error":"x"}\n', b'{"message":{"content":""},"done":true,"eval_count":7}\n']


@pytest.mark.parametrize(("endpoint", "events"), [("chat", SSE_STREAM), ("ollama", NDJSON_STREAM)])
def test_scanner_counts_the_same_for_any_split(endpoint: str, events: list[bytes]) -> None:
    body = _chunked(events)
    for step in (1, 2, 3, 7, 64, len(body)):
        dechunk, totals = ChunkedDecoder(), _Totals()
        scan = _Scan(0.0, FRAMINGS[endpoint])
        for i in range(0, len(body), step):
            scan.feed(dechunk.feed(body[i : i + step]), 1.0, totals)
        assert dechunk.done
        assert (scan.events, scan.content, scan.errors) == (5, 2, 1), step
    assert scan.usage_tokens() == (7 if endpoint == "ollama" else None)


def test_fake_stops_on_sigterm() -> None:
    proc, _port = spawn_fake()
    assert stop_fake(proc) == 0


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private directory for Unix sockets (sun_path holds 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="bt-bench-") as name:
        yield Path(name)


async def test_harness_over_a_unix_socket(socket_dir: Path) -> None:
    """With ``unix_socket`` the client connects there; the URL gives the path and Host."""
    seen: list[tuple[str, str]] = []
    event = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"completion_tokens":3}}\n\n'
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in [event] * 3 + [usage])
    body += b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    async def handler(stream: trio.abc.Stream) -> None:
        data = b""
        while True:  # keep-alive: one request after the other
            while b"\r\n\r\n" not in data:
                if not (chunk := await stream.receive_some(65536)):
                    return
                data += chunk
            request, _, data = data.partition(b"\r\n\r\n")
            lines = request.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:])
            length = int(headers["Content-Length"])
            while len(data) < length:
                data += await stream.receive_some(65536)
            data = data[length:]
            seen.append((lines[0], headers["Host"]))
            await stream.send_all(head + body)

    path = os.fspath(socket_dir / "llama.sock")
    config = BenchConfig(base_url="http://localhost/v1", unix_socket=path, requests=4)
    with trio.fail_after(10), trio.socket.socket(trio.socket.AF_UNIX) as sock:
        await sock.bind(path)
        sock.listen(16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handler, [trio.SocketListener(sock)])
            result = await run_bench(attrs.evolve(config, concurrency=2))
            nursery.cancel_scope.cancel()
    assert result.errors == 0, result.error_samples
    assert (result.requests_done, result.events, result.tokens) == (4, 20, 12)
    assert result.ttft_p50_ms is not None
    assert result.unix_socket == path
    assert seen == [("POST /v1/chat/completions HTTP/1.1", "localhost")] * 4


@pytest.fixture
def fake_unix(socket_dir: Path) -> Iterator[str]:
    """The fake upstream on a Unix socket (like llama-server: a --host ending in .sock)."""
    path = os.fspath(socket_dir / "llama.sock")
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--host", path, "--alias", "a"], stdout=subprocess.PIPE
    )
    try:
        assert first_line(proc).decode() == f"listening on unix://{path}\n"
        yield path
    finally:
        assert stop_fake(proc) == 0
    assert not os.path.exists(path)  # the fake removes its socket on the way out


async def test_fake_on_a_unix_socket_and_disconnect_latency_over_it(fake_unix: str) -> None:
    """The client reaches the fake over its socket, and reads its disconnect log there too."""
    config = BenchConfig(
        base_url="http://localhost/v1",
        unix_socket=fake_unix,
        concurrency=2,
        requests=4,
        max_tokens=1_000_000,
        disconnect_after=3,
        upstream_url="http://localhost",
        upstream_unix_socket=fake_unix,
    )
    with trio.fail_after(20):
        result = await run_bench(config)
    assert result.errors == 0, result.error_samples
    assert result.disconnects == result.disconnects_seen == 4


# The benchmark report: RESULTS.md is rendered from the run's raw JSON, nothing else.

BENCH_DIR = FAKE.parent


def _bench_module(name: str) -> Any:
    """A module of benchmarks/ (they import each other by bare name, as run.py does)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


def _arm(events_per_s: float, cpu: float, ttft: float) -> dict[str, float | None]:
    metrics: dict[str, float | None] = dict.fromkeys(
        ["tokens_per_s", "gap_p99_ms", "disconnect_p50_ms", "disconnect_p99_ms", "drain_s"]
    )
    metrics |= {"events_per_s": events_per_s, "cpu_us_per_event": cpu, "rss_mib": 70.0}
    metrics |= {"ttft_p50_ms": ttft, "ttft_p99_ms": ttft * 2, "disconnects": 0.0}
    return metrics | {"disconnects_seen": 0.0, "errors": 0.0, "rounds": 5.0}


def committed_like_results() -> dict[str, Any]:
    """A small run document shaped like the committed ``benchmarks/results.json``."""
    summary = {
        "1 stream": {"direct": _arm(200_000, 4.7, 0.2), "bodhi-trio": _arm(160_000, 5.1, 2.6)},
        "64 streams": {"direct": _arm(300_000, 3.4, 50), "bodhi-trio": _arm(240_000, 3.2, 130)},
        "1 stream, paced": {
            "direct": _arm(3_333, 36.6, 0.5),
            "bodhi-trio": _arm(3_300, 130.7, 1.9),
        },
        "8 streams, paced": {
            "direct": _arm(26_000, 14.7, 0.7),
            "bodhi-trio": _arm(25_000, 35.9, 7),
        },
    }
    return {
        "provenance": {
            "date": "2026-11-28T15:05:02+00:00",
            "command": "python benchmarks/run.py --llama --litellm",
            "argv": ["--llama", "--litellm"],
            "executable": "/usr/bin/python3",
            "git": {
                "revision": "0123456789abcdef0123456789abcdef01234567",
                "dirty": True,
                "changes": [" M src/bodhi_trio/_relay.py"],
                "paths_checked": ["src", "benchmarks"],
            },
            "machine": {
                "cpu_model": "Some CPU 9000",
                "cpus": 2,
                "memory_mib": 24104,
                "platform": "Linux-6.1-x86_64-with-glibc2.36",
            },
            "python": "CPython 3.11.7",
            "packages": {"bodhi-trio": "0.1.0", "trio": "0.35.0", "hypercorn": "0.18.0"}
            | {"quart": "0.22.0", "quart-trio": "0.12.0", "h11": "0.16.0"},
            "llama_server": {
                "path": "/opt/llama-server",
                "version": "version: 1234 (abcdef0)",
                "built_with": "built with cc for x86_64-linux-gnu",
            },
        },
        "rounds": 5,
        "quick": False,
        "litellm": False,
        "suites": {
            "fake": {"pace_s": 0.0002, "summary": summary, "loadavg": ["0.1 0.2 0.3"] * 2},
            "memory": {"rss_idle_mib": 67.4, "per_stream_kib": 46.7, "streams": 1000},
        },
        "notes": [],
        "errors": 0,
        "wall_s": 717.2,
    }


def test_results_md_is_rendered_from_the_committed_json_byte_for_byte(tmp_path: Path) -> None:
    """What a run writes, ``--render`` of its JSON writes again, identically, every time."""
    run = _bench_module("run")
    json_path, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    run.write_results(committed_like_results(), json_path, md)  # what a full run does
    written = md.read_bytes()
    assert json.loads(json_path.read_text()) == committed_like_results()
    for _ in range(2):
        md.unlink()
        assert run.main(["--render", str(json_path)]) == 0
        assert md.read_bytes() == written
    elsewhere = tmp_path / "other" / "OUT.md"
    assert run.main(["--render", str(json_path), "--results-md", str(elsewhere)]) == 0
    text = elsewhere.read_text()
    assert "Rendered from [`../results.json`](../results.json)" in text
    assert f"--results-md {elsewhere.resolve()}`" in text


def test_rendered_report_states_its_provenance_and_both_2b_scores(tmp_path: Path) -> None:
    run = _bench_module("run")
    json_path, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    run.write_results(committed_like_results(), json_path, md)
    text = md.read_text()
    assert "Rendered from [`results.json`](results.json)" in text
    command = f"python benchmarks/run.py --render {json_path.resolve()}"
    assert f"`{command}` writes this file again from it, byte for byte" in text
    for fact in (
        "git revision: `0123456789abcdef0123456789abcdef01234567`, **uncommitted changes**",
        "` M src/bodhi_trio/_relay.py`",
        "machine: Some CPU 9000, 2 logical cores, 23.5 GiB memory; Linux-6.1-x86_64-with-glibc2.36",
        "Python CPython 3.11.7; bodhi-trio 0.1.0, trio 0.35.0, hypercorn 0.18.0, quart 0.22.0,"
        " quart-trio 0.12.0, h11 0.16.0",
        "llama-server: /opt/llama-server (version: 1234 (abcdef0); built with cc",
        "date: 2026-11-28T15:05:02+00:00; wall time of the run: 717 s",
        "command: `python benchmarks/run.py --llama --litellm`",
    ):
        assert fact in text
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| 2b")}
    assert rows.keys() == {"| 2b", "| 2b paced"}
    assert rows["| 2b"].endswith("| 5.1 µs (64 streams: 3.2 µs) | MET |")
    assert "one event per read, 200 µs apart" in rows["| 2b paced"]
    assert rows["| 2b paced"].endswith(
        "| 130.7 µs (8 streams, paced: 35.9 µs) | MISSED by 110.7 µs (553% over) |"
    )


def test_provenance_is_recorded_at_run_time(tmp_path: Path) -> None:
    """The collector itself: the checked-out revision, git state, machine and versions."""
    run = _bench_module("run")
    prov = run.provenance(["--quick"], [run.RESULTS_JSON, tmp_path / "x.json"])
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True, check=True
    )
    assert prov["git"]["revision"] == head.stdout.strip()
    assert isinstance(prov["git"]["dirty"], bool)
    assert prov["git"]["dirty"] == bool(prov["git"]["changes"])
    assert all(c[2] == " " for c in prov["git"]["changes"])  # "XY path", X may be a space
    assert not any("results.json" in c for c in prov["git"]["changes"])
    assert prov["command"] == "python benchmarks/run.py --quick"
    assert prov["machine"]["cpus"] == os.cpu_count()
    assert prov["machine"]["memory_mib"] > 0
    assert prov["machine"]["cpu_model"]
    assert prov["packages"]["trio"] == trio.__version__
    assert set(prov["packages"]) >= {"trio", "hypercorn", "quart", "quart-trio", "bodhi-trio"}
    assert set(prov["llama_server"]) == {"path", "version", "built_with"}


def _rag_arm(starts: int, first: float, p50: float) -> dict[str, Any]:
    kind = {"first_ms": first, "p50_ms": p50, "p99_ms": p50 * 3}
    return {"starts": starts, "wall_s": 1.5, "requests": 200, "errors": 0} | {
        "error_samples": [],
        "embed": kind,
        "chat": kind,
    }


def test_the_rag_suite_renders_its_three_arms_and_loads_beside(tmp_path: Path) -> None:
    """The several-models section comes from the run's JSON like the rest (byte for byte)."""
    run = _bench_module("run")
    doc = committed_like_results()
    stats = {"wall_ms": 25.0, "ready_ms": 21.0, "overhead_ms": 4.0}
    memory = {"alias": "bench:chat", "file_bytes": 2**20, "kv_bytes": 2**20}
    memory |= {"estimate_bytes": 66 * 2**20, "measured_bytes": 21 * 2**20, "group_rss_bytes": None}
    doc["suites"]["rag"] = {
        "requests": 200,
        "errors": 0,
        "arms": {
            "bodhi-trio": _rag_arm(2, 30.0, 2.5),
            "bodhi-trio one slot": _rag_arm(200, 30.0, 28.0),
            "router": _rag_arm(2, 20.0, 4.5),
        },
        "load_beside": {
            "runs": [{}] * 20,
            "stats": {"alone": stats, "beside": stats},
            "memory": [memory],
        },
    }
    json_path, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    run.write_results(doc, json_path, md)
    text = md.read_text()
    assert text.index("## Several models") < text.index("## Notes")
    assert "| bodhi-trio one slot | 200 | 30.0, 28.0 / 84.0 | 30.0, 28.0 / 84.0 | 1.5 | 0 |" in text
    assert "| router | 2 | 20.0, 4.5 / 13.5 |" in text
    assert "medians of 10 rounds" in text
    assert "| beside | 25.0 | 21.0 | 4.0 |" in text
    assert "| `bench:chat` | 1.0 | 1.0 | 66.0 | 21.0 | - |" in text
    md.unlink()
    assert run.main(["--render", str(json_path)]) == 0
    assert md.read_text() == text


def test_the_memory_table_gives_the_first_start_and_the_idle_cpu(tmp_path: Path) -> None:
    run = _bench_module("run")
    results = committed_like_results()
    results["suites"]["memory"] |= {"cpu_idle_us_per_s": 263.4, "rss_first_start_mib": 79.3}
    run.write_results(results, tmp_path / "results.json", tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| CPU idle then, the model loaded (µs a second) | 263.4 µs |" in text
    assert "| RSS right after the first start (it writes the demo model) | 79.3 MiB |" in text


def test_idle_cpu_is_what_the_process_used_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    startup = _bench_module("bench_startup")
    monkeypatch.setattr(startup, "IDLE_CPU_SECS", 0.5)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    asleep = subprocess.Popen(["sleep", "60"])
    try:
        assert startup._idle_cpu(busy.pid) > 0.3e6  # about a whole core: 1e6 µs a second
        assert startup._idle_cpu(asleep.pid) < 0.05e6
    finally:
        for proc in (busy, asleep):
            proc.kill()
            proc.wait()
