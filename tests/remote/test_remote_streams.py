"""A remote's stream over real Hypercorn: the idle timeout ends a stalled stream with one
error event and closes the upstream connection, never a healthy slow stream; a client
that leaves closes the upstream connection too."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio
from remote_helpers import (
    EVENTS,
    chat,
    data_events,
    error_of,
    remote_alias,
    serving_far,
    stream_body,
)

from bodhi_trio._transport import _whole
from httpserver import running_server
from remote_stub import Script, Transport, remote_stub, sse_bytes

IDLE = 0.25


async def test_a_stall_mid_stream_ends_it_with_one_error(
    tmp_path: Path, hub_cache: Path, transport: Transport
) -> None:
    script = Script(events=EVENTS, stall_after=2, stall_for=20)
    with trio.fail_after(15):
        async with remote_stub(script, ssl_context=transport.ssl_context) as stub:
            far = remote_alias("far", stub.base_url, idle_timeout_secs=IDLE, **transport.fields)
            async with running_server(tmp_path, hub_cache, aliases=(far,)) as server:
                response, body = await stream_body(server.url, chat("far", stream=True))
                # The upstream connection was closed: the stub saw its client leave
                # (long before its 20 s stall ended).
                await stub.disconnected.wait()
    assert response.status_code == 200
    events = data_events(body)
    assert events[:2] == EVENTS[:2]
    assert len(events) == 3  # no [DONE]: the stream ended with the error
    error = error_of(events[2])
    assert error["code"] == "upstream_stalled"
    assert f"{IDLE:g} s" in error["message"]
    assert body.startswith(sse_bytes(EVENTS)[: body.index(b'data: {"error"')])


async def test_a_stall_before_the_head_is_a_502(
    tmp_path: Path, hub_cache: Path, transport: Transport
) -> None:
    with trio.fail_after(15):
        async with remote_stub(
            Script(stall_before_head=20), ssl_context=transport.ssl_context
        ) as stub:
            far = remote_alias("far", stub.base_url, idle_timeout_secs=IDLE, **transport.fields)
            async with (
                running_server(tmp_path, hub_cache, aliases=(far,)) as server,
                httpx.AsyncClient(timeout=10) as http,
            ):
                response = await http.post(server.url + "/v1/chat/completions", json=chat("far"))
                await stub.disconnected.wait()
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_stalled"  # no fallback: the alias's own error
    assert f"sent nothing for {IDLE:g} s" in error["message"]


async def test_a_slow_healthy_stream_is_never_cut(
    tmp_path: Path, hub_cache: Path, transport: Transport
) -> None:
    """Events every 0.4 x the idle timeout, for 10 x the idle timeout in all."""
    events = [json.dumps({"n": n}) for n in range(24)]
    script = Script(events=events, pause=0.4 * IDLE)
    with trio.fail_after(20):
        async with remote_stub(script, ssl_context=transport.ssl_context) as stub:
            far = remote_alias("far", stub.base_url, idle_timeout_secs=IDLE, **transport.fields)
            async with running_server(tmp_path, hub_cache, aliases=(far,)) as server:
                start = trio.current_time()
                response, body = await stream_body(server.url, chat("far", stream=True))
                took = trio.current_time() - start
    assert response.status_code == 200
    assert body == sse_bytes(events)
    assert took > 8 * IDLE
    assert not stub.disconnected.is_set()


async def test_a_client_that_leaves_closes_the_upstream(
    tmp_path: Path, hub_cache: Path, transport: Transport
) -> None:
    events = [json.dumps({"n": n}) for n in range(500)]
    with trio.fail_after(15):
        async with remote_stub(
            Script(events=events, pause=0.05), ssl_context=transport.ssl_context
        ) as stub:
            far = remote_alias("far", stub.base_url, **transport.fields)
            async with running_server(tmp_path, hub_cache, aliases=(far,)) as server:
                port = int(server.url.rsplit(":", 1)[1])
                body = json.dumps(chat("far", stream=True)).encode()
                head = (
                    f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                # A raw client: it reads until the third event, then hangs up.
                async with await trio.open_tcp_stream("127.0.0.1", port) as client:
                    await client.send_all(head.encode() + body)
                    received = b""
                    while b'data: {"n": 2}' not in received:
                        piece = await client.receive_some(65536)
                        assert piece, received
                        received += piece
                assert len(stub.requests) == 1
                # The client closed its connection mid-stream: so do we, upstream.
                await stub.disconnected.wait()


async def test_an_answer_too_large_to_read_whole_is_a_502(
    tmp_path: Path, hub_cache: Path, transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-streamed answer is read whole before it is answered: a server that sends
    more than MAX_ANSWER_BYTES (here 1,000: without end, in the attack) gets a 502, not
    the process's memory."""
    monkeypatch.setattr(_whole, "MAX_ANSWER_BYTES", 1000)
    big = Script(body=b'{"pad":"' + b"x" * 5000 + b'"}')
    with trio.fail_after(15):
        async with serving_far(big, tmp_path, hub_cache, transport) as (_stub, url, http):
            response = await http.post(url + "/v1/chat/completions", json=chat("far"))
            again = await http.post(url + "/v1/chat/completions", json=chat("far"))
    assert response.status_code == 502
    assert "is larger than 1000 bytes" in response.json()["error"]["message"]
    assert again.status_code == 502  # the limit holds for every answer, not only the first


async def test_answers_held_together_past_the_budget_get_a_503_and_release_at_the_end(
    tmp_path: Path, hub_cache: Path, transport: Transport
) -> None:
    """Every request's whole answers are charged to BODHI_MAX_ANSWERS_BYTES until the
    request ends: one past it alone is refused with a 503 to retry; three that each fit
    but together would not pass one after another (each gives its bytes back)."""
    big = Script(body=b'{"pad":"' + b"x" * 5000 + b'"}')
    small = Script(body=b'{"pad":"' + b"x" * 400 + b'"}')
    with trio.fail_after(15):
        async with remote_stub(big, ssl_context=transport.ssl_context) as stub:
            far = remote_alias("far", stub.base_url, **transport.fields)
            async with (
                running_server(
                    tmp_path, hub_cache, aliases=(far,), BODHI_MAX_ANSWERS_BYTES="1000"
                ) as server,
                httpx.AsyncClient(timeout=10) as http,
            ):
                refused = await http.post(server.url + "/v1/chat/completions", json=chat("far"))
                stub.script = small
                served = [
                    await http.post(server.url + "/v1/chat/completions", json=chat("far"))
                    for _ in range(3)
                ]
                metrics = (await http.get(server.url + "/metrics")).text.splitlines()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "answers_over_budget"
    assert [response.status_code for response in served] == [200, 200, 200]
    assert served[2].json()["pad"] == "x" * 400
    assert "bodhi_answers_budget_bytes 1000.0" in metrics
    assert "bodhi_answers_held_bytes 0.0" in metrics  # every request gave its bytes back
    assert "bodhi_answers_refused_total 1.0" in metrics
