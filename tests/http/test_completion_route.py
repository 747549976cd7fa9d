"""The completion routes answered straight from ASGI (``_completion_route``).

What they answer is the app's (the rest of the HTTP suite runs through them); here:
that Quart is out of their way, and the body rules no real client easily breaks (a
body slower than the timeout, a client that leaves halfway through it), driven as
ASGI calls with a mock clock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from quart_trio import QuartTrio

from bodhi_trio._http._completion_route import CompletionRoute
from bodhi_trio._http._request_scope import close_with_request, request_scope
from bodhi_trio._http._routes import Reply
from bodhi_trio._http._security import Access, AccessPolicy
from httpserver import running_server
from paths import FAKE_LLAMA_SERVER

CHAT = {"model": "demo:tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
BODY_TIMEOUT = 60.0


async def test_completions_are_answered_without_the_framework(
    tmp_path: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A completion, streamed or not, OpenAI's or Ollama's, never reaches Quart; other
    routes still do."""
    handled: list[str] = []
    handle_request = QuartTrio.handle_request

    async def counted(self: QuartTrio, request: Any) -> Any:
        handled.append(request.path)
        return await handle_request(self, request)

    monkeypatch.setattr(QuartTrio, "handle_request", counted)
    fake = str(FAKE_LLAMA_SERVER)
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache, BODHI_LLAMA_SERVER=fake) as running,
            httpx.AsyncClient(base_url=running.url, timeout=10) as client,
        ):
            plain = await client.post("/v1/chat/completions", json=CHAT)
            streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
            refused = await client.post("/v1/completions", json={"model": "demo:tiny"})
            ollama = await client.post("/api/chat", json={**CHAT, "stream": False})
            ollama_streamed = await client.post("/api/chat", json=CHAT)
            ollama_refused = await client.post("/api/chat", json={"messages": CHAT["messages"]})
            show = await client.post("/api/show", json={"model": "demo:tiny"})
            ping = await client.get("/ping")
    assert plain.status_code == streamed.status_code == ping.status_code == 200
    assert ollama.status_code == ollama_streamed.status_code == show.status_code == 200
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert json.loads(ollama_streamed.text.splitlines()[-1])["done"] is True
    assert refused.status_code == 400
    # Ollama's shape for an error under its paths, on this path as through the app
    assert ollama_refused.status_code == 400
    assert set(ollama_refused.json()) == {"error"}
    assert handled == ["/api/show", "/ping"]


async def _unused(raw: bytes) -> Reply:
    """A route that must not be reached: the body never became whole."""
    raise AssertionError(f"the route ran with {raw!r}")


def _route(max_body_bytes: int = 1000) -> CompletionRoute:
    handlers = {"/v1/chat/completions": _unused}
    access = {"/v1/chat/completions": Access.API}
    return CompletionRoute(
        handlers, AccessPolicy("127.0.0.1"), access, max_body_bytes, BODY_TIMEOUT
    )


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
    }


async def _call(
    route: CompletionRoute, scope: dict[str, Any], messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Call ``route`` with ``messages`` to receive (then nothing more, ever); what it sent."""
    incoming, receive = trio.open_memory_channel[dict[str, Any]](len(messages))
    for message in messages:
        incoming.send_nowait(message)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with request_scope():
        await route(scope, receive.receive, send)
    return sent


def _head(sent: list[dict[str, Any]]) -> tuple[int, dict[bytes, bytes]]:
    start = sent[0]
    assert start["type"] == "http.response.start"
    return start["status"], dict(start["headers"])


async def test_a_body_slower_than_the_timeout_gets_408_and_a_closed_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    part = {"type": "http.request", "body": b'{"model"', "more_body": True}
    with trio.fail_after(BODY_TIMEOUT + 10):
        started = trio.current_time()
        sent = await _call(_route(), _scope((b"transfer-encoding", b"chunked")), [part])
        waited = trio.current_time() - started
    status, headers = _head(sent)
    assert status == 408
    assert headers[b"connection"] == b"close"
    assert b'"code":"request_timeout"' in sent[1]["body"]
    assert BODY_TIMEOUT <= waited < BODY_TIMEOUT + 1


async def test_a_client_that_leaves_while_sending_its_body_gets_no_answer() -> None:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"model"', "more_body": True},
        {"type": "http.disconnect"},
    ]
    with trio.fail_after(5):
        sent = await _call(_route(), _scope(), messages)
    assert sent == []


@pytest.mark.parametrize(
    ("headers", "messages", "message"),
    [
        (((b"content-length", b"1001"),), [], "larger than 1000 bytes"),
        (
            ((b"transfer-encoding", b"chunked"),),
            [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 2,
            "the request body is too large",
        ),
        (
            ((b"transfer-encoding", b"chunked"),),
            [{"type": "http.request", "body": b"x" * 1001, "more_body": False}],
            "the request body is too large",
        ),
        (
            ((b"transfer-encoding", b"chunked"),),
            [{"type": "http.request", "body": b"x" * 1001, "more_body": True}],
            "the request body is too large",
        ),
    ],
    ids=["declared", "found", "found whole at once", "found in its first piece"],
)
async def test_a_body_over_the_limit_gets_413_unread(
    headers: tuple[tuple[bytes, bytes], ...], messages: list[dict[str, Any]], message: str
) -> None:
    """Declared too large: refused before a byte is read; found too large: at once."""
    with trio.fail_after(5):
        sent = await _call(_route(max_body_bytes=1000), _scope(*headers), messages)
    status, head = _head(sent)
    assert (status, head[b"connection"]) == (413, b"close")
    assert message.encode() in sent[1]["body"]
    assert len(sent) == 2


async def test_an_early_answer_reads_what_the_client_still_sends() -> None:
    """Hypercorn puts ``http.disconnect`` into the app's bounded queue from inside the
    last ``send``; with a body left unread filling that queue, only a reader of it lets
    the send return (a refused upload otherwise held its connection open)."""
    incoming, receive = trio.open_memory_channel[dict[str, Any]](2)
    for _ in range(2):
        incoming.send_nowait({"type": "http.request", "body": b"x" * 100, "more_body": True})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            await incoming.send({"type": "http.disconnect"})  # waits for room, as Hypercorn's

    with trio.fail_after(5):
        async with request_scope():
            await _route()(_scope((b"content-length", b"5000")), receive.receive, send)
    status, headers = _head(sent)
    assert (status, headers[b"connection"]) == (413, b"close")


class _ShieldedStream:
    """A streamed body whose wait for its next piece no cancellation reaches, as a relay's
    read on a busy server does not for a whole turn of the loop: only ``aclose`` (the
    producer's cancellation, which closes the upstream request) ends it."""

    def __init__(self) -> None:
        self.closed = trio.Event()
        self.ended_by_close = False

    def __aiter__(self) -> _ShieldedStream:
        return self

    async def __anext__(self) -> bytes:
        # Bounded, so that a route that never closes it fails instead of hanging.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 2):
            await self.closed.wait()
        self.ended_by_close = self.closed.is_set()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed.set()


class _Streaming:
    """Routes answering with a :class:`_ShieldedStream`, registered as a relay's body is."""

    def __init__(self) -> None:
        self.stream = _ShieldedStream()

    async def completion(self, raw: bytes) -> Reply:
        close_with_request(self.stream)
        return Reply(200, {"Content-Type": "text/event-stream"}, self.stream)


async def test_a_client_that_leaves_closes_the_stream_without_waiting_for_its_read() -> None:
    routes = _Streaming()
    route = CompletionRoute(
        {"/v1/chat/completions": routes.completion},
        AccessPolicy("127.0.0.1"),
        {"/v1/chat/completions": Access.API},
        1000,
        BODY_TIMEOUT,
    )
    left = trio.Event()
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            left.set()  # the client leaves once the stream began

    with trio.fail_after(5):
        async with request_scope():
            await route(_scope(), receive, send)
    assert routes.stream.ended_by_close
