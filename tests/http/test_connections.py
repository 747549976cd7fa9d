"""The HTTP transport under abuse (issue 10, items 6 and 7c-f), over raw sockets.

Each test talks bytes to a real server on 127.0.0.1:0, because what is tested is what
HTTP clients hide: whether the socket closes, what the parser answers, which protocol
is spoken.
"""

from __future__ import annotations

import json
import resource
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from httpserver import running_server
from paths import FAKE_LLAMA_SERVER

HOST = b"Host: 127.0.0.1\r\n"
# Reading stops at EOF; this is only how long a test waits before it calls an open
# connection a failure (the server's keep-alive timeout is 75 s).
CLOSE_WITHIN = 5.0


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def read_until_closed(stream: trio.SocketStream) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed within ``CLOSE_WITHIN``."""
    received = b""
    with trio.move_on_after(CLOSE_WITHIN):
        while chunk := await stream.receive_some():
            received += chunk
        return received, True
    return received, False


async def exchange(port: int, raw: bytes) -> tuple[bytes, bool]:
    """Send ``raw`` on a new connection; return the answer and whether it was closed."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(raw)
        return await read_until_closed(stream)


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def envelope(body: bytes) -> dict[str, Any]:
    document = json.loads(body)
    assert set(document) == {"error"}
    assert set(document["error"]) == {"message", "type", "code", "param"}
    error: dict[str, Any] = document["error"]
    return error


async def test_idle_connections_at_the_cap_make_room_for_new_ones(
    tmp_path: Path, hub_cache: Path
) -> None:
    """1100 idle sockets used to exhaust the fd limit (EMFILE for 75 s), and then as many
    as the cap (here 20), idle or sending a head a byte at a time, kept everyone out
    with 503s until their keep-alive timeout. Now a new connection at the cap takes the
    place of the one idle the longest, which is closed; the others stay."""
    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache, BODHI_MAX_CONNECTIONS="20") as server:
            port = port_of(server.url)
            idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(20)]
            try:
                for stream in idle[10:]:  # a head that never ends (slowloris)
                    await stream.send_all(b"GET /ping HTTP/1.1\r\nHo")
                    await trio.testing.wait_all_tasks_blocked()  # read: now idle the longest
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                    ping = await client.get("/ping", headers={"Connection": "close"})
                oldest, oldest_closed = await read_until_closed(idle[0])
                await idle[1].send_all(
                    b"GET /ping HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
                )
                kept, kept_closed = await read_until_closed(idle[1])
            finally:
                for stream in idle:
                    await stream.aclose()
    assert ping.status_code == 200
    assert (oldest, oldest_closed) == (b"", True)  # closed as a keep-alive timeout would
    assert (parse(kept)[0], kept_closed) == (200, True)


async def test_connections_over_the_cap_get_a_503_when_all_are_busy(
    tmp_path: Path, hub_cache: Path
) -> None:
    """With every place held by a request (here 3 event streams), a new connection gets
    a 503 envelope and is closed; a connection that ends frees its place at once."""
    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache, BODHI_MAX_CONNECTIONS="3") as server:
            port = port_of(server.url)
            busy = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
            try:
                for stream in busy:
                    await stream.send_all(b"GET /bodhi/v1/events HTTP/1.1\r\n" + HOST + b"\r\n")
                    assert b" 200 " in await stream.receive_some()  # streaming: busy
                async with await trio.open_tcp_stream("127.0.0.1", port) as over:
                    refused, refused_closed = await read_until_closed(over)
                await busy[0].aclose()
                await trio.testing.wait_all_tasks_blocked()  # the server saw it leave
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                    ping = await client.get("/ping")
            finally:
                for stream in busy:
                    await stream.aclose()
    assert refused, "the connection over the cap got no answer"
    status, headers, body = parse(refused)
    assert (status, refused_closed) == (503, True)
    assert headers["connection"] == "close"
    assert headers["retry-after"] == "1"
    assert headers["content-type"] == "application/json"
    error = envelope(body)
    assert (error["type"], error["code"]) == ("service_unavailable", "too_many_connections")
    assert "BODHI_MAX_CONNECTIONS" in error["message"]
    assert ping.status_code == 200


async def test_serve_raises_the_soft_open_files_limit(tmp_path: Path, hub_cache: Path) -> None:
    """A process started under a low soft limit serves under the hard one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256
    if hard != resource.RLIM_INFINITY and hard <= low:
        pytest.fail(f"the hard open-files limit {hard} leaves nothing to raise")
    script = textwrap.dedent(
        f"""
        import resource, trio
        from pathlib import Path
        from bodhi_trio._http._serve import serve
        from bodhi_trio._config._settings import load_settings

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, hard))
        settings = load_settings(
            home=Path({str(tmp_path)!r}),
            env={{"HF_HUB_CACHE": {str(hub_cache)!r}, "BODHI_PORT": "0"}},
        )

        async def stop_at_once():
            pass

        trio.run(lambda: serve(settings, shutdown_trigger=stop_at_once, shutdown_grace=0))
        print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        """
    )
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-c", script], capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert int(done.stdout.decode().split()[-1]) == min(hard, 65536) > low


def test_default_connection_cap_follows_the_open_files_limit() -> None:
    from bodhi_trio._http._fd_limits import connection_limit

    assert connection_limit(0, 1024) == 192  # (1024 - 256 reserved) / 4 descriptors each
    assert connection_limit(0, 1_048_576) == 10_000
    assert connection_limit(0, 100) == 1
    assert connection_limit(50, 1024) == 50  # set explicitly: taken as given


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GET /a b c\r\n\r\n", 400, "malformed_request"),
        (b"GET /ping HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 20_000, 431, "headers_too_large"),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n",
            501,
            "unsupported_transfer_encoding",
        ),
        # Its host would stand in for Host, unchecked (it answered 200 with a foreign one).
        (b"GET http://evil.example/ping HTTP/1.1\r\n" + HOST + b"\r\n", 400, "malformed_request"),
        (b"CONNECT evil.example:80 HTTP/1.1\r\n" + HOST + b"\r\n", 400, "malformed_request"),
    ],
    ids=[
        "bad-request-line",
        "headers-too-large",
        "unknown-transfer-coding",
        "absolute-form",
        "authority-form",
    ],
)
async def test_parser_errors_carry_the_envelope(
    tmp_path: Path, hub_cache: Path, raw: bytes, status: int, code: str
) -> None:
    """Answers from the HTTP parser (the app never sees the request) have the envelope
    too, and never echo the client's bytes."""
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache) as server:
            answer, closed = await exchange(port_of(server.url), raw)
    got_status, headers, body = parse(answer)
    assert (got_status, closed, headers["connection"]) == (status, True, "close")
    assert headers["content-type"] == "application/json"
    error = envelope(body)
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    assert b"aaaa" not in body


async def test_content_length_with_transfer_encoding_is_refused_and_closed(
    tmp_path: Path, hub_cache: Path
) -> None:
    """RFC 9112 section 6.3: the server must close after such a request (a smuggling
    vector); it is refused before the app sees it."""
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        b"GET /ping HTTP/1.1\r\n" + HOST + b"\r\n"  # a smuggled second request
    )
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache) as server:
            answer, closed = await exchange(port_of(server.url), raw)
    status, headers, body = parse(answer)
    assert (status, closed, headers["connection"]) == (400, True, "close")
    assert envelope(body)["code"] == "conflicting_framing"
    assert answer.count(b"HTTP/1.1 ") == 1  # the smuggled request got no answer


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # answered before its body is read: the app says Connection: close
        (b"PUT /nowhere HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nabcde", 404),
        (b"PUT /nowhere HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\n", 404),
        # the client asks for it
        (b"GET /ping HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n", 200),
    ],
    ids=["unread-body", "body-never-sent", "client-asks"],
)
async def test_a_connection_close_answer_closes_the_socket(
    tmp_path: Path, hub_cache: Path, raw: bytes, status: int
) -> None:
    """``Connection: close`` used to leave the socket open until the 75 s keep-alive
    timeout: the close ran in a task the framework had just cancelled."""
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache) as server:
            answer, closed = await exchange(port_of(server.url), raw)
    got_status, headers, _ = parse(answer)
    assert (got_status, headers.get("connection"), closed) == (status, "close", True)


async def test_http2_is_not_spoken(tmp_path: Path, hub_cache: Path) -> None:
    """Plain HTTP/1.1 only: the HTTP/2 preface gets a 505 envelope, and an h2c upgrade
    request is answered in HTTP/1.1 (the upgrade ignored)."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    upgrade = (
        b"GET /ping HTTP/1.1\r\n" + HOST + b"Connection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache) as server:
            port = port_of(server.url)
            prior, prior_closed = await exchange(port, preface)
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(upgrade)
                upgraded = b""
                while b"pong" not in upgraded and (chunk := await stream.receive_some()):
                    upgraded += chunk
    status, headers, body = parse(prior)
    assert (status, prior_closed, headers["connection"]) == (505, True, "close")
    assert envelope(body)["code"] == "http_version_not_supported"
    assert upgraded.startswith(b"HTTP/1.1 200 "), upgraded[:200]
    assert b"upgrade" not in upgraded.lower()


async def test_a_stream_to_a_slow_reader_arrives_whole(tmp_path: Path, hub_cache: Path) -> None:
    """The streaming write path writes synchronously what the socket takes and the rest
    the usual way (``_connection.Connection.protocol_send``): with a tiny receive buffer
    and a client that reads in small sips, most writes are partial. Every byte must
    still arrive once, in order, framed."""
    tokens = 3000
    fast = Alias("fast:1", DEMO_REPO, DEMO_FILENAME, context_params=(f"--fake-tokens {tokens}",))
    body = json.dumps({"model": "fast:1", "messages": [{"role": "user", "content": "x"}],
                       "stream": True, "max_tokens": tokens}).encode()  # fmt: skip
    with trio.fail_after(60):
        async with running_server(
            tmp_path, hub_cache, aliases=(fast,), BODHI_LLAMA_SERVER=str(FAKE_LLAMA_SERVER)
        ) as server:
            host, port = server.url.removeprefix("http://").split(":")
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            await sock.connect((host, int(port)))
            received = b""
            async with trio.SocketStream(sock) as slow:
                head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                await slow.send_all((head + "Connection: close\r\n\r\n").encode() + body)
                while chunk := await slow.receive_some(512):
                    received += chunk
                    if len(received) % 8 == 0:
                        await trio.lowlevel.checkpoint()  # let the server run into a full buffer
    head_bytes, _, framed = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head_bytes.lower()
    decoded = b""
    while framed:
        size_line, _, rest = framed.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        decoded += rest[:size]
        assert rest[size : size + 2] == b"\r\n"
        framed = rest[size + 2 :]
    events = [e for e in decoded.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    assert len([c for c in content if c]) == tokens


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_a_relayed_stream_writes_its_pieces_past_the_asgi_send(
    tmp_path: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A streamed completion's pieces (OpenAI's SSE as it is, Ollama's NDJSON as
    translated) go out through ``_connection.body_writer`` (framed and written by the
    relay itself), not one ASGI message each through Hypercorn's stream: only the head
    and the body's end (for Ollama, its last line before that) take that way. The
    stream still arrives whole. Either way a request is read: Hypercorn's stream, or the
    fast path's exchange."""
    from hypercorn.protocol.http_stream import HTTPStream

    from bodhi_trio._http._fast_path import FastExchange

    tokens = 50
    fast = Alias("fast:1", DEMO_REPO, DEMO_FILENAME, context_params=(f"--fake-tokens {tokens}",))
    through_asgi: list[str] = []
    app_send = HTTPStream.app_send

    async def counting(self: HTTPStream, message: Any) -> None:
        if message is not None:
            through_asgi.append(message["type"])
        await app_send(self, message)

    fast_send = FastExchange.send

    async def counting_fast(self: FastExchange, message: Any) -> None:
        through_asgi.append(message["type"])
        await fast_send(self, message)

    monkeypatch.setattr(HTTPStream, "app_send", counting)
    monkeypatch.setattr(FastExchange, "send", counting_fast)
    body = {"model": "fast:1", "messages": [{"role": "user", "content": "x"}],
            "stream": True, "max_tokens": tokens}  # fmt: skip
    fake = str(FAKE_LLAMA_SERVER)
    with trio.fail_after(60):
        async with (
            running_server(tmp_path, hub_cache, aliases=(fast,), BODHI_LLAMA_SERVER=fake) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            client.stream("POST", path, json=body) as answer,
        ):
            text = b"".join([piece async for piece in answer.aiter_bytes()])
    if path == "/api/chat":
        lines = [json.loads(line) for line in text.splitlines()]
        assert lines[-1]["done"] is True
        assert len([line for line in lines if line["message"]["content"]]) == tokens
        last = ["http.response.body"]  # the done line, returned to Quart
    else:
        events = [e for e in text.split(b"\n\n") if e.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]"
        assert len(events) >= tokens
        last = []
    # the head, then the end of the body: no piece of the stream
    assert through_asgi == ["http.response.start", *last, "http.response.body"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_a_paced_stream_is_relayed_by_the_hub_whatever_its_form(
    tmp_path: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Paced tokens (a model's pace: one event per read) are written by the relay hub's
    thread without waking the stream's task, OpenAI's as they came and Ollama's as
    translated there, and the stream arrives whole and in order either way."""
    from bodhi_trio._transport._relay_hub import RelayHub

    hubs: list[RelayHub] = []
    hub_init = RelayHub.__init__

    def noted(self: RelayHub, **options: Any) -> None:
        hub_init(self, **options)
        hubs.append(self)

    monkeypatch.setattr(RelayHub, "__init__", noted)
    tokens = 30
    paced = Alias(
        "paced:1",
        DEMO_REPO,
        DEMO_FILENAME,
        context_params=(f"--fake-tokens {tokens} --fake-token-delay 0.005",),
    )
    body = {"model": "paced:1", "messages": [{"role": "user", "content": "x"}],
            "stream": True, "max_tokens": tokens}  # fmt: skip
    fake = str(FAKE_LLAMA_SERVER)
    with trio.fail_after(60):
        async with (
            running_server(
                tmp_path, hub_cache, aliases=(paced,), BODHI_LLAMA_SERVER=fake
            ) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            client.stream("POST", path, json=body) as answer,
        ):
            text = b"".join([piece async for piece in answer.aiter_bytes()])
            [hub] = hubs
            relayed = hub.statistics().relayed
    said = [f"tok{i} " for i in range(tokens)]
    if path == "/api/chat":
        lines = [json.loads(line) for line in text.splitlines()]
        assert [line["message"]["content"] for line in lines[:-1]] == said
        assert lines[-1]["done"] is True
        assert (lines[-1]["done_reason"], lines[-1]["eval_count"]) == ("length", tokens)
    else:
        events = [e.removeprefix(b"data: ") for e in text.split(b"\n\n") if e]
        assert events[-1] == b"[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert [piece for piece in content if piece] == said
    # the first tokens are the stream's own (it learns the pace), most of the rest the hub's
    assert relayed >= tokens // 2
