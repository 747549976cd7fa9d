"""Our own HTTP/1.1 client for plain ``http://`` remotes (``_transport/_remote_plain``):
keep-alive reuse, a connection the remote closed while idle, the idle watchdog under
the relay's keep-alive, headers that could reframe a request, and httpx when the
environment names a proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from remote_helpers import chat, data_events, error_of, remote_alias, stream_body

from bodhi_trio._exceptions import RemoteStalledError, UpstreamError
from bodhi_trio._transport._remote import RemoteTimeouts, open_remote_clients
from bodhi_trio._transport._remote_httpx import HttpxResponse
from bodhi_trio._transport._remote_plain import PlainClient, PlainTarget
from bodhi_trio._transport._response import HTTPResponse
from httpserver import running_server
from remote_stub import Script, remote_stub

TIMEOUTS = RemoteTimeouts(connect=2.0, idle=2.0)
CHAT = "/chat/completions"


async def post(url: str) -> tuple[int, bytes]:
    async with (
        open_remote_clients() as clients,
        clients.send(url + CHAT, b"{}", headers=[], timeouts=TIMEOUTS) as response,
    ):
        return response.status_code, await response.aread()


async def test_a_kept_connection_carries_the_next_request() -> None:
    with trio.fail_after(10):
        async with remote_stub() as stub, open_remote_clients() as clients:
            stub.keep_alive = True
            for _ in range(3):
                async with clients.send(
                    stub.base_url + CHAT, b"{}", headers=[], timeouts=TIMEOUTS
                ) as response:
                    assert await response.aread() == Script().body
            assert (len(stub.requests), stub.connections) == (3, 1)


async def test_a_plain_http_response_is_relayed_as_a_childs_is() -> None:
    """The loopback client's response (so the relay writes it in one loop, a paced token
    a read and a write); the idle watchdog ends its stalled read with the remote's own
    error, naming its URL."""
    script = Script(events=['{"n":0}'], stall_after=1, stall_for=30)
    quick = RemoteTimeouts(connect=2.0, idle=0.3)
    with trio.fail_after(10):
        async with (
            remote_stub(script) as stub,
            open_remote_clients() as clients,
            clients.send(stub.base_url + CHAT, b"{}", headers=[], timeouts=quick) as response,
        ):
            assert isinstance(response, HTTPResponse)
            assert await response.__anext__() == b'data: {"n":0}\n\n'
            with pytest.raises(RemoteStalledError, match=f"{stub.base_url}{CHAT} sent nothing"):
                await response.__anext__()  # the stub stalls: the watchdog closes under it


async def test_a_connection_the_remote_closed_while_idle_is_replaced_unseen() -> None:
    with trio.fail_after(10):
        async with remote_stub() as stub, open_remote_clients() as clients:
            stub.keep_alive = stub.close_idle = True  # it says keep-alive, then closes
            for _ in range(3):
                async with clients.send(
                    stub.base_url + CHAT, b"{}", headers=[], timeouts=TIMEOUTS
                ) as response:
                    assert response.status_code == 200
                    assert await response.aread() == Script().body
            assert (len(stub.requests), stub.connections) == (3, 3)


def test_a_header_that_could_reframe_the_request_is_refused() -> None:
    target = PlainTarget.of("http://127.0.0.1:9/v1/chat/completions")
    assert target is not None
    head = target.request("POST", b"{}", [("Authorization", "Bearer k")])
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9\r\n")
    assert head.endswith(b"Authorization: Bearer k\r\n\r\n{}")
    for name, value in [("X-A", "v\r\nX-Injected: 1"), ("X\nB", "v"), ("X-A", "v\0")]:
        with pytest.raises(UpstreamError) as caught:
            target.request("POST", b"{}", [(name, value)])
        assert "X-Injected" not in caught.value.message
    assert PlainTarget.of("https://h/v1") is None
    assert PlainTarget.of("http://h\u00e9/v1") is None  # not ASCII: httpx's job


async def test_with_a_proxy_in_the_environment_plain_http_goes_through_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # ... and httpx does not go there
    with trio.fail_after(10):
        async with (
            remote_stub() as stub,
            open_remote_clients() as clients,
            clients.send(stub.base_url + CHAT, b"{}", headers=[], timeouts=TIMEOUTS) as response,
        ):
            assert isinstance(response, HttpxResponse)
            assert await response.aread() == Script().body


async def test_a_stall_ends_the_stream_even_while_keep_alives_interrupt_the_wait(
    tmp_path: Path, hub_cache: Path
) -> None:
    """The relay stops waiting for bytes every BODHI_SSE_KEEPALIVE_SECS to send a comment;
    each wait taken up again must go on counting towards the idle timeout, or a stalled
    remote would be waited on forever."""
    events = [json.dumps({"n": n}) for n in range(3)]
    script = Script(events=events, stall_after=2, stall_for=30)
    with trio.fail_after(20):
        async with remote_stub(script) as stub:
            far = remote_alias("far", stub.base_url, idle_timeout_secs=1.0)
            async with running_server(
                tmp_path, hub_cache, aliases=(far,), BODHI_SSE_KEEPALIVE_SECS="0.2"
            ) as server:
                started = trio.current_time()
                response, body = await stream_body(server.url, chat("far", stream=True))
                took = trio.current_time() - started
                await stub.disconnected.wait()  # the upstream connection was closed
    assert response.status_code == 200
    assert b": keep-alive" in body  # the relay did interrupt its waits
    received = data_events(body)
    assert received[:2] == events[:2]
    assert len(received) == 3
    assert error_of(received[2])["code"] == "upstream_stalled"
    assert 1.0 <= took < 10


async def test_a_late_second_release_leaves_the_next_response_on_that_connection_alone() -> None:
    """Releasing is idempotent per response: once its connection carries the next
    response, releasing the first again must not hand that busy connection out."""
    with trio.fail_after(10):
        async with remote_stub() as stub:
            stub.keep_alive = True
            url = stub.base_url + CHAT
            target = PlainTarget.of(url)
            assert target is not None
            client = PlainClient()
            try:
                first = await client.send(target, url, b"{}", [], TIMEOUTS, "POST")
                await first.aread()
                await client.release(first)
                second = await client.send(target, url, b"{}", [], TIMEOUTS, "POST")
                assert second.connection is first.connection  # kept, and reused
                await client.release(first)  # again, late
                third = await client.send(target, url, b"{}", [], TIMEOUTS, "POST")
                assert third.connection is not second.connection
                assert await second.aread() == await third.aread() == Script().body
                for response in (second, third):
                    await client.release(response)
            finally:
                await client.aclose()
