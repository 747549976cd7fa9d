"""The completion routes' fast path (``_http/_fast_path.py``): it reads only what h11 reads
the same way, writes the head h11 writes, and answers over a real server exactly as the
usual path does, keep-alive, pipelining, ``Connection: close`` and a client that leaves
included."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import h11
import httpx
import pytest
import trio
from hypercorn.config import Config
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from bodhi_trio._http import _fast_path
from bodhi_trio._http._fast_path import FastExchange, response_head
from bodhi_trio._http._h11_strict import StrictH11Connection
from bodhi_trio._http._simple_request import SimpleRequest, parse_simple_request
from httpserver import answer_lifespan, one_model, running_server, serving_asgi
from paths import FAKE_LLAMA_SERVER

TARGETS = frozenset({b"/v1/chat/completions", b"/v1/completions"})
LIMIT = 16 * 1024
BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


def request(*headers: bytes, body: bytes = BODY, line: bytes = b"") -> bytes:
    line = line or b"POST /v1/chat/completions HTTP/1.1"
    fields = b"".join(header + b"\r\n" for header in headers)
    return line + b"\r\n" + fields + b"\r\n" + body


PLAIN = (
    b"Host: 127.0.0.1:8080",
    b"Content-Type: application/json",
    b"Content-Length: %d" % len(BODY),
)


def h11_reading(data: bytes) -> tuple[Any, ...] | None:
    """What our strict h11 reads from ``data``: (target, headers, body, trailing, close),
    or None if it refuses it or needs more."""
    connection = StrictH11Connection(LIMIT)
    connection.receive_data(data)
    try:
        head = connection.next_event()
        if not isinstance(head, h11.Request):
            return None
        body = b""
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return None
    except h11.RemoteProtocolError:
        return None
    close = b"close" in {value.lower() for name, value in head.headers if name == b"connection"}
    return (head.method, head.target, list(head.headers), body, connection.trailing_data[0], close)


def test_a_plain_request_is_read_as_h11_reads_it() -> None:
    data = request(*PLAIN)
    ours = parse_simple_request(data, TARGETS, LIMIT)
    assert ours == SimpleRequest(
        b"/v1/chat/completions",
        [
            (b"host", b"127.0.0.1:8080"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(BODY)),
        ],
        BODY,
        close=False,
    )
    assert h11_reading(data) == (b"POST", ours.target, ours.headers, BODY, b"", False)


@pytest.mark.parametrize(
    ("what", "data"),
    [
        ("another method", request(*PLAIN, line=b"PUT /v1/chat/completions HTTP/1.1")),
        ("another route", request(*PLAIN, line=b"POST /v1/models HTTP/1.1")),
        ("a query string", request(*PLAIN, line=b"POST /v1/chat/completions?x=1 HTTP/1.1")),
        ("HTTP/1.0", request(*PLAIN, line=b"POST /v1/chat/completions HTTP/1.0")),
        ("two spaces", request(*PLAIN, line=b"POST  /v1/chat/completions HTTP/1.1")),
        ("no length", request(*PLAIN[:2])),
        ("no host", request(*PLAIN[1:])),
        ("two hosts", request(*PLAIN, b"Host: evil")),
        ("two lengths", request(*PLAIN, b"Content-Length: %d" % len(BODY))),
        ("a signed length", request(*PLAIN[:2], b"Content-Length: +%d" % len(BODY))),
        ("chunked too", request(*PLAIN, b"Transfer-Encoding: chunked")),
        ("expect", request(*PLAIN, b"Expect: 100-continue")),
        ("upgrade", request(*PLAIN, b"Upgrade: h2c", b"Connection: Upgrade")),
        ("another connection token", request(*PLAIN, b"Connection: keep-alive, x")),
        ("a folded line", request(*PLAIN, b"X-A: a", b" folded")),
        ("space before the colon", request(*PLAIN, b"X-A : a")),
        ("a bare LF", request(*PLAIN, b"X-A: a\nX-B: b")),
        ("a bare CR", request(*PLAIN, b"X-A: a\rX-B: b")),
        ("a NUL", request(*PLAIN, b"X-A: a\x00b")),
        ("obs-text", request(*PLAIN, b"X-A: caf\xc3\xa9")),
        ("a body cut short", request(*PLAIN, body=BODY[:-1])),
        ("a second request behind", request(*PLAIN) + request(*PLAIN)),
        ("a huge head", request(*PLAIN, b"X-A: " + b"a" * LIMIT)),
        ("too many headers", request(*PLAIN, *[b"X-%d: a" % i for i in range(70)])),
        ("the head not ended", request(*PLAIN).split(b"\r\n\r\n")[0]),
    ],
)
def test_anything_else_is_left_to_h11(what: str, data: bytes) -> None:
    assert parse_simple_request(data, TARGETS, LIMIT) is None, what


_NAMES = st.sampled_from(
    [b"Host", b"host", b"Content-Length", b"content-type", b"Connection", b"Transfer-Encoding",
     b"X-A", b"x_b", b"Expect", b"Accept", b"Host ", b" Host", b"Ho st", b""]
)  # fmt: skip
_VALUES = st.one_of(
    st.sampled_from([b"127.0.0.1", b"close", b"keep-alive", b"Close", b"chunked", b"3", b"03",
                     b" 3 ", b"3,3", b"a\tb", b"", b"x\r\ny: z"]),
    st.binary(max_size=12),
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(_NAMES, _VALUES), max_size=5),
    st.binary(max_size=6),
    st.sampled_from([b"POST /v1/chat/completions HTTP/1.1", b"POST /v1/completions HTTP/1.1"]),
    st.integers(0, 5),
    st.integers(0, 6),
)
@example([], b"abc", b"POST /v1/completions HTTP/1.1", 0, 1)
def test_what_the_fast_path_reads_h11_reads_the_same_way(
    extras: list[tuple[bytes, bytes]], body: bytes, line: bytes, host_at: int, length_at: int
) -> None:
    """No request means one thing to the fast path and another to h11 (the smuggling
    vector): whatever it accepts, h11 reads with the same target, headers and body, and
    nothing left over. (A Host and a matching Content-Length are put among random
    fields, so that some requests get past the first checks.)"""
    fields = list(extras)
    fields.insert(host_at, (b"Host", b"h"))
    fields.insert(length_at, (b"Content-Length", b"%d" % len(body)))
    data = request(*[name + b": " + value for name, value in fields], body=body, line=line)
    ours = parse_simple_request(data, TARGETS, LIMIT)
    if ours is None:
        return
    assert h11_reading(data) == (b"POST", ours.target, ours.headers, ours.body, b"", ours.close)


def h11_head(status: int, headers: list[tuple[bytes, bytes]], close: bool) -> bytes:
    """The head h11 writes for this response to a POST (with ``Connection: close`` if
    ``close``)."""
    connection = h11.Connection(h11.SERVER)
    fields = [*PLAIN, b"Connection: close"] if close else list(PLAIN)
    connection.receive_data(request(*fields))
    assert isinstance(connection.next_event(), h11.Request)
    return connection.send(h11.Response(status_code=status, headers=headers))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([200, 201, 204, 400, 404, 500, 503]),
    st.lists(
        st.sampled_from([(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                         (b"connection", b"close"), (b"x-bodhi-alias", b"a:b"),
                         (b"content-length", b"0"), (b"date", b"Wed, 02 Dec 2026 19:50:09 GMT"),
                         (b"server", b"hypercorn-h11"), (b"Access-Control-Allow-Origin", b"*")]),
        max_size=5,
        unique_by=lambda pair: pair[0].lower(),
    ),
    st.booleans(),
)  # fmt: skip
def test_the_head_is_what_h11_writes(
    status: int, headers: list[tuple[bytes, bytes]], close: bool
) -> None:
    head, chunked, length, closes = response_head(status, headers, close=close)
    assert head == h11_head(status, headers, close)
    declared = {name.lower(): value for name, value in headers}
    assert chunked == (status != 204 and b"content-length" not in declared)
    assert closes == (close or declared.get(b"connection") == b"close")
    assert length == (None if chunked else 0)


def test_hypercorn_headers_are_worked_out_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    config, heads, built = Config(), _fast_path._Heads(), list[str]()
    now = [1_800_000_000.2]
    monkeypatch.setattr("time.time", lambda: now[0])
    monkeypatch.setattr("hypercorn.config.time", lambda: now[0])
    original = config.response_headers

    def counted(protocol: str) -> list[tuple[bytes, bytes]]:
        built.append(protocol)
        return original(protocol)

    monkeypatch.setattr(config, "response_headers", counted)
    first = heads.standard(config)
    assert (b"date", b"Fri, 15 Jan 2027 08:00:00 GMT") in first
    now[0] += 0.7  # the same second: the same date, not worked out again
    assert heads.standard(config) == first == original("h11")
    assert built == ["h11"]
    now[0] += 0.2  # the next second
    assert heads.standard(config) == original("h11") != first
    assert built == ["h11", "h11"]
    heads.standard(config).append((b"connection", b"close"))  # a copy each time
    assert heads.standard(config) == original("h11")


async def test_the_body_is_given_once_then_only_the_client_leaving() -> None:
    request = SimpleRequest(b"/v1/completions", [(b"content-length", b"2")], b"{}", False)
    exchange = FastExchange(SimpleNamespace(owner=None), request)
    body = {"type": "http.request", "body": b"{}", "more_body": False}
    assert exchange.receive_nowait() == body  # taken without a wait, as the route takes it
    with pytest.raises(trio.WouldBlock):
        exchange.receive_nowait()
    exchange.connection_closed()
    with trio.fail_after(5):
        for _ in range(2):  # the client left: said at once, every time, never the body again
            assert await exchange.receive() == {"type": "http.disconnect"}


def test_heads_kept_are_the_heads_h11_writes() -> None:
    heads = _fast_path._Heads()
    given = [(b"content-type", b"text/event-stream"), (b"date", b"x")]
    kept = heads.head(200, given, close=False)
    assert kept == response_head(200, given, close=False)
    assert heads.head(200, list(given), close=True) == response_head(200, given, close=True)
    assert heads.head(200, list(given), close=False) is kept
    for _ in range(2):  # a head h11 refuses is refused every time, never kept
        with pytest.raises(ValueError, match="cannot be written"):
            heads.head(200, [(b"bad name", b"x")], close=False)
    for n in range(_fast_path._HEADS_KEPT + 1):  # a bounded number kept
        heads.head(200, [(b"x-n", b"%d" % n)], close=False)
    assert len(heads._heads) <= _fast_path._HEADS_KEPT


# ---------------------------------------------------------------------------- a real server


@attrs.define
class RawConnection:
    """One client connection, answers read whole (Content-Length or chunked)."""

    stream: trio.SocketStream
    buffer: bytes = b""

    async def _more(self) -> None:
        data = await self.stream.receive_some()
        if not data:
            raise AssertionError("the server closed the connection mid-answer")
        self.buffer += data

    async def answer(self) -> tuple[bytes, bytes]:
        """The next answer's head (without its date) and its body, de-chunked."""
        while b"\r\n\r\n" not in self.buffer:
            await self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    await self._more()
                size = int(self.buffer.split(b"\r\n", 1)[0], 16)
                start = self.buffer.index(b"\r\n") + 2
                while len(self.buffer) < start + size + 2:
                    await self._more()
                body += self.buffer[start : start + size]
                self.buffer = self.buffer[start + size + 2 :]
                if size == 0:
                    break
        else:
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(self.buffer) < length:
                await self._more()
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        lines = head.split(b"\r\n")
        return b"\r\n".join(line for line in lines if not line.startswith(b"date:")), body

    async def closed(self) -> bool:
        """Whether the server closes the connection (within 2 s) with nothing more sent."""
        with trio.move_on_after(2):
            return self.buffer == b"" and await self.stream.receive_some() == b""
        return False


async def one_answer(port: int, raw: bytes) -> tuple[bytes, bytes]:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(raw)
        return await RawConnection(stream).answer()


def post(path: bytes, document: dict[str, Any], *extra: bytes) -> bytes:
    body = json.dumps(document).encode()
    head = [
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
    ]
    return request(*head, *extra, body=body, line=b"POST " + path + b" HTTP/1.1")


@asynccontextmanager
async def serving(tmp_path: Path, hub_cache: Path, alias: str, tokens: int) -> AsyncIterator[int]:
    """A server (its port) with ``alias`` on the fake llama-server, ``tokens`` per answer."""
    model = Alias(alias, DEMO_REPO, DEMO_FILENAME, context_params=(f"--fake-tokens {tokens}",))
    fake = str(FAKE_LLAMA_SERVER)
    async with running_server(
        tmp_path, hub_cache, aliases=(model,), BODHI_LLAMA_SERVER=fake
    ) as server:
        yield int(server.url.rsplit(":", 1)[1])


@pytest.fixture
def fast_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The targets of the requests the fast path answered."""
    taken: list[str] = []
    run = FastExchange.run

    async def counted(self: FastExchange, app: Any) -> bytes:
        taken.append(self.scope()["path"])
        return await run(self, app)

    monkeypatch.setattr(FastExchange, "run", counted)
    return taken


async def test_answers_are_the_same_on_both_paths(
    tmp_path: Path, hub_cache: Path, fast_runs: list[str]
) -> None:
    """The same requests, once as one simple write (the fast path) and once with a
    ``Connection`` token only h11 takes (the usual path): the same bytes back, head
    and body, for a whole answer, a stream, an error and a refused key."""
    chat = {"model": "fast:1", "messages": [{"role": "user", "content": "x"}], "seed": 1}
    cases = [
        (b"/v1/chat/completions", chat),
        (b"/v1/chat/completions", {**chat, "stream": True}),
        (b"/v1/completions", {"model": "fast:1", "prompt": "x", "stream": True}),
        (b"/v1/chat/completions", {**chat, "model": "nope"}),
        (b"/v1/chat/completions", {**chat, "temperature": "hot"}),
    ]
    with trio.fail_after(60):
        async with serving(tmp_path, hub_cache, "fast:1", 5) as port:
            for path, document in cases:
                fast = await one_answer(port, post(path, document))
                usual = await one_answer(
                    port, post(path, document, b"Connection: keep-alive, x-usual")
                )
                assert fast[0] == usual[0], document  # the head, byte for byte
                assert _normalised(fast[1]) == _normalised(usual[1]), document
    assert len(fast_runs) == len(cases)


def _normalised(body: bytes) -> bytes:
    """Without what differs per request (ids, times), with or without a space after
    the colon (llama-server writes none, the fake server one)."""
    for pattern in (rb'"id": ?"[^"]*"', rb'"created": ?\d+', rb'"timings": ?\{[^}]*\}'):
        body = re.sub(pattern, b"~", body)
    return body


async def test_keep_alive_pipelining_and_close_on_the_fast_path(
    tmp_path: Path, hub_cache: Path, fast_runs: list[str]
) -> None:
    """A request sent while a stream is answered on the fast path (read by the exchange
    meanwhile) is answered after it, on the same connection, which stays open; with
    ``Connection: close`` the answer says so and the connection closes."""
    chat = {"model": "fast:1", "messages": [{"role": "user", "content": "x"}]}
    with trio.fail_after(60):
        async with serving(tmp_path, hub_cache, "fast:1", 200) as port:
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                connection = RawConnection(stream)
                await stream.send_all(post(b"/v1/chat/completions", {**chat, "stream": True}))
                while b"data: " not in connection.buffer:  # the stream is under way
                    await connection._more()
                await stream.send_all(post(b"/v1/chat/completions", chat))
                head, body = await connection.answer()
                assert head.startswith(b"HTTP/1.1 200 ")
                assert body.endswith(b"data: [DONE]\n\n")
                head, body = await connection.answer()
                assert head.startswith(b"HTTP/1.1 200 ")
                assert json.loads(body)["object"] == "chat.completion"
                assert not await connection.closed()
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                connection = RawConnection(stream)
                await stream.send_all(post(b"/v1/chat/completions", chat, b"Connection: close"))
                head, _ = await connection.answer()
                assert head.endswith(b"\r\nConnection: close")
                assert await connection.closed()
    assert fast_runs == ["/v1/chat/completions"] * 3


async def test_a_client_that_leaves_mid_stream_ends_its_stream(
    tmp_path: Path, hub_cache: Path, fast_runs: list[str]
) -> None:
    """On the fast path the exchange reads the socket while the app answers: a client
    that closes mid-stream is heard (``http.disconnect``), the stream ends and the
    connection with it, and the next client is served."""
    body = {"model": "long:1", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with trio.fail_after(60):
        async with serving(tmp_path, hub_cache, "long:1", 100_000) as port:
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(post(b"/v1/chat/completions", body))
                received = b""
                while received.count(b"data: ") < 20:
                    received += await stream.receive_some()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                # the state is only pollable over HTTP; fail_after bounds it
                state = (await client.get("/bodhi/v1/state")).json()
                while one_model(state)["in_flight"]:
                    await trio.sleep(0.01)
                    state = (await client.get("/bodhi/v1/state")).json()
            whole = {**body, "stream": False, "model": "demo:tiny"}
            head, _ = await one_answer(port, post(b"/v1/chat/completions", whole))
            assert head.startswith(b"HTTP/1.1 200 ")
    assert fast_runs == ["/v1/chat/completions"] * 2


# ------------------------------------------------------------- any ASGI app on serve_http


@attrs.define
class _Probe:
    """An ASGI app on the fast path's route ``/x``: answers ``ok`` unless the request's
    body is ``wait`` (then it waits for the client to leave and answers nothing); after
    answering it asks ``receive`` once more (ASGI allows it) and keeps what it got. It
    records the stack depth at which each request is served."""

    after: list[str] = attrs.field(factory=list)
    depths: list[int] = attrs.field(factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        self.depths.append(len(inspect.stack(0)))
        body = (await receive())["body"]
        if body == b"wait":
            assert (await receive())["type"] == "http.disconnect"
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if body == b"slow":
            await send({"type": "http.response.body", "body": b"o", "more_body": True})
            await trio.sleep(0.2)  # a slow answer, so that the next request comes during it
        await send({"type": "http.response.body", "body": b"ok"})
        self.after.append((await receive())["type"])


def probe_server(app: _Probe) -> AbstractAsyncContextManager[int]:
    return serving_asgi(app, fast_paths=frozenset({"/x"}))


@asynccontextmanager
async def probe_connection(app: _Probe) -> AsyncIterator[trio.SocketStream]:
    """A connection to a :func:`probe_server` serving ``app``."""
    async with (
        probe_server(app) as port,
        await trio.open_tcp_stream("127.0.0.1", port) as stream,
    ):
        yield stream


def to_probe(body: bytes) -> bytes:
    return request(
        b"Host: h", b"Content-Length: %d" % len(body), body=body, line=b"POST /x HTTP/1.1"
    )


async def test_receive_after_the_answer_says_the_client_left(fast_runs: list[str]) -> None:
    """As under Hypercorn, an app that asks ``receive`` after its answer hears
    ``http.disconnect`` at once (it waited for the client to close before), and the
    connection serves the next request."""
    app = _Probe()
    with trio.fail_after(10):
        async with probe_connection(app) as stream:
            connection = RawConnection(stream)
            for _ in range(2):
                await stream.send_all(to_probe(b"hi"))
                assert (await connection.answer())[1] == b"ok"
    assert app.after == ["http.disconnect"] * 2
    assert fast_runs == ["/x"] * 2


async def test_a_client_that_leaves_before_the_answer_gets_no_500(fast_runs: list[str]) -> None:
    """A client that closes its side before the app answered: the app hears it leave and
    answers nothing, and nothing is written (Hypercorn writes nothing to a closed stream)."""
    with trio.fail_after(10):
        async with probe_connection(_Probe()) as stream:
            await stream.send_all(to_probe(b"wait"))
            await stream.send_eof()
            assert await stream.receive_some() == b""
    assert fast_runs == ["/x"]


async def test_pipelined_requests_are_served_one_after_the_other_not_nested(
    fast_runs: list[str],
) -> None:
    """Each request sent while the one before is answered is read once that answer ended,
    by the same loop: the depth at which requests are served does not grow with them
    (nesting would end in a RecursionError after enough of them)."""
    app = _Probe()
    with trio.fail_after(10):
        async with probe_connection(app) as stream:
            connection = RawConnection(stream)
            await stream.send_all(to_probe(b"slow"))
            for _ in range(3):
                while not connection.buffer:  # the slow answer is under way
                    await connection._more()
                await stream.send_all(to_probe(b"slow"))
                assert (await connection.answer())[1] == b"ook"
            assert (await connection.answer())[1] == b"ook"
    assert fast_runs == ["/x"] * 4
    assert len(set(app.depths)) == 1, app.depths
