"""A remote's answers that are hostile or malformed (an OpenAI-compatible server an admin
configured, now someone else's): each is a clear error to our client, with a bound on
what it costs the server, never a stall of every client or a 500 with a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio
from remote_helpers import chat, remote_alias

from httpserver import running_server
from remote_stub import Script, Transport, remote_stub

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def ask(
    script: Script, tmp_path: Path, hub_cache: Path, transport: Transport, **request: object
) -> httpx.Response:
    """The answer to one chat request to a remote alias whose server answers by
    ``script``."""
    with trio.fail_after(30):
        async with remote_stub(script, ssl_context=transport.ssl_context) as stub:
            far = remote_alias("far", stub.base_url, **transport.fields)
            async with (
                running_server(tmp_path, hub_cache, aliases=(far,)) as server,
                httpx.AsyncClient(timeout=20) as http,
            ):
                return await http.post(
                    server.url + "/v1/chat/completions", json=chat("far", **request)
                )


@pytest.mark.parametrize("stream", [False, True])
async def test_informational_heads_without_end_are_a_502(
    tmp_path: Path, hub_cache: Path, stream: bool
) -> None:
    """2.6 MB of ``100 Continue`` before the head, to our own HTTP/1.1 client (plain
    http; over https, httpx's h11 skips them one by one): each was skipped and the rest of
    the buffer copied, on the event loop, so every client of the server stalled for
    seconds (the probe measured /ping at 14 s), and a server that kept sending them was
    read until the idle timeout. Now the head is refused after a few."""
    flood = Script(before_head=CONTINUE * 100_000, events=["{}"] if stream else None)
    response = await ask(flood, tmp_path, hub_cache, Transport(None, {}), stream=stream)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_error"
    assert "informational" in error["message"]


@pytest.mark.parametrize("status", [0, 99, 600, 999])
async def test_a_status_outside_100_to_599_is_a_502_envelope(
    tmp_path: Path, hub_cache: Path, transport: Transport, status: int
) -> None:
    """Passed on, it could not be sent: a bare 500 without a body, and a traceback."""
    response = await ask(Script(status=status, body=b"{}"), tmp_path, hub_cache, transport)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"


ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}}]}


@pytest.mark.parametrize("junk", [b"", b"{}," * 1_000_000])
async def test_an_answer_parsed_for_ollama_is_charged_for_what_it_takes_parsed(
    tmp_path: Path, hub_cache: Path, junk: bytes
) -> None:
    """An Ollama route parses the answer whole to translate it: 3 MB of ``{},`` take about
    90 MB parsed (the probe: 30 MB took 776 MB). Under a budget of 40 MB the bytes fit and
    the objects do not: a 503 before the parse, where the same answer without them is
    translated."""
    body = json.dumps(ANSWER).encode()[:-1] + b', "junk": [' + junk + b"0]}"
    with trio.fail_after(30):
        async with remote_stub(Script(body=body)) as stub:
            far = remote_alias("far", stub.base_url)
            async with (
                running_server(
                    tmp_path, hub_cache, aliases=(far,), BODHI_MAX_ANSWERS_BYTES=str(40 << 20)
                ) as server,
                httpx.AsyncClient(timeout=20) as http,
            ):
                response = await http.post(server.url + "/api/chat", json=chat("far", stream=False))
    if junk:
        assert response.status_code == 503
        assert "retry later" in response.json()["error"]
    else:
        assert response.status_code == 200
        assert response.json()["message"]["content"] == "Hi."


async def test_an_error_body_that_is_not_json_is_quoted_in_part(
    tmp_path: Path, hub_cache: Path
) -> None:
    """Ollama's error quotes the upstream's text: its start, not 1 MB of it."""
    refusal = Script(status=400, body=b"<html>" + b"x" * 1_000_000)
    with trio.fail_after(30):
        async with remote_stub(refusal) as stub:
            far = remote_alias("far", stub.base_url)
            async with (
                running_server(tmp_path, hub_cache, aliases=(far,)) as server,
                httpx.AsyncClient(timeout=20) as http,
            ):
                response = await http.post(server.url + "/api/chat", json=chat("far", stream=False))
    assert response.status_code == 400
    message = response.json()["error"]
    assert message.startswith("<html>xxx")
    assert len(message) == 4096


@pytest.mark.parametrize(
    ("declared", "sent"),
    [
        ("text/html", "text/plain; charset=utf-8"),
        ("application/xhtml+xml", "text/plain; charset=utf-8"),
        ("application/json; charset=utf-8", "application/json; charset=utf-8"),
        ("Text/Plain", "Text/Plain"),
    ],
)
async def test_a_remote_does_not_choose_an_answers_type_beyond_an_apis(
    tmp_path: Path, hub_cache: Path, transport: Transport, declared: str, sent: str
) -> None:
    """A remote's answer is its own making: passed on as ``text/html`` it was a page of
    anyone's writing on our origin. Its body is passed on unchanged, as a type an API
    answers with."""
    page = b"<script>alert(document.domain)</script>"
    script = Script(body=page, headers=[("Content-Type", declared)])
    response = await ask(script, tmp_path, hub_cache, transport)
    assert response.status_code == 200
    assert response.headers["content-type"] == sent
    assert response.content == page
