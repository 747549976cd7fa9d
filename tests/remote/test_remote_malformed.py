"""A remote's answers that are hostile or malformed (an OpenAI-compatible server an admin
configured, now someone else's): each is a clear error to our client, with a bound on
what it costs the server, never a stall of every client or a 500 with a traceback."""

from __future__ import annotations

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
