"""``/upstream/{alias}/{path}``, the pass-through to an alias's child, over real
Hypercorn on port 0 with the real llama-server and the demo model: what it relays,
that it holds the model while it streams, who may use it, and what an attacker's
paths, queries, methods and headers get (raw HTTP/1.1 requests, so no client
normalises them first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_ALIAS, DEMO_FILENAME, DEMO_REPO
from bodhi_trio._core._address import Address
from bodhi_trio._core._http1 import split_head
from bodhi_trio._transport._loopback import UpstreamPool, send_upstream
from httpserver import child_address, one_model, running_server
from procs import child_client

pytestmark = pytest.mark.llama

UP = f"/upstream/{DEMO_ALIAS}"


async def raw(url: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and headers, without the blank line) as it is."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        request = head.encode("latin-1") + b"\r\nConnection: close\r\n\r\n" + body
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    found = split_head(data)
    assert found is not None, data[:200]
    response, rest = found
    return response.status, response.headers, rest


def get(target: str, *headers: str) -> str:
    return "\r\n".join([f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *headers])


async def test_relays_answers_as_the_child_gives_them(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache) as server, httpx.AsyncClient() as client:
            props = await client.get(server.url + UP + "/props")
            head = await client.head(server.url + UP + "/health")
            models = await client.get(server.url + UP + "/v1/models?limit=1")
            tokenized = await client.post(server.url + UP + "/tokenize", json={"content": "hi"})
            route = await client.post(
                server.url + "/tokenize", json={"model": DEMO_ALIAS, "content": "hi"}
            )
            missing = await client.get(server.url + UP + "/no/such/route")
            async with child_client(await child_address(server.url)) as child:
                direct_props = await child.get("/props")
                direct_missing = await child.get("/no/such/route")
    assert props.status_code == 200
    assert props.json() == direct_props.json()
    assert props.headers["content-type"] == direct_props.headers["content-type"]
    assert head.status_code == 200
    assert head.content == b""
    assert models.json()["data"][0]["id"] == DEMO_ALIAS
    assert tokenized.json() == route.json()
    assert (missing.status_code, missing.content) == (direct_missing.status_code,
                                                      direct_missing.content)  # fmt: skip
    # Only end-to-end headers of the child's come back: no CORS of its own.
    assert not any(name.startswith("access-control-") for name in props.headers)


# Generates for minutes unless stopped (see test_http.ENDLESS).
ENDLESS = Alias("endless:1", DEMO_REPO, DEMO_FILENAME,
                context_params=("--ctx-size 256 --context-shift --parallel 1",))  # fmt: skip


async def test_a_stream_is_relayed_while_the_model_is_held(tmp_path: Path, hub_cache: Path) -> None:
    request = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1_000_000,
               "ignore_eos": True, "stream": True}  # fmt: skip
    with trio.fail_after(60):
        async with (
            running_server(tmp_path, hub_cache, aliases=(ENDLESS,)) as server,
            httpx.AsyncClient(timeout=30) as client,
        ):

            async def in_flight() -> int:
                state = (await client.get(server.url + "/bodhi/v1/state")).json()
                return int(one_model(state, ENDLESS.alias)["in_flight"])

            # Our own HTTP/1.1 client: it closes the connection when the block is left early
            # (httpx would leave its generators to the GC).
            target = f"/upstream/{ENDLESS.alias}/v1/chat/completions"
            port = int(server.url.rsplit(":", 1)[1])
            async with (
                UpstreamPool() as pool,
                send_upstream(
                    pool, Address.tcp("127.0.0.1", port), target, json.dumps(request).encode()
                ) as response,
            ):
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                body = b""
                async for piece in response:
                    body += piece
                    if body.count(b"data: ") >= 5:
                        break
                held = await in_flight()  # the read side is held while the body streams
            with trio.fail_after(10):  # liveness bound: the client left, so it ends
                while await in_flight():  # noqa: ASYNC110 - only pollable
                    await trio.sleep(0.01)
    assert held == 1
    events = [block for block in body.decode().split("\n\n") if block.startswith("data: {")]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:4]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


HOSTILE_TARGETS = [
    # dot segments, plain and escaped: refused, never resolved to one of our routes
    f"{UP}/../../bodhi/v1/state",
    f"{UP}/%2e%2e/%2e%2e/bodhi/v1/state",
    f"{UP}/%2E%2E/%2E%2E/bodhi/v1/server/logs",
    f"{UP}/./props",
    f"{UP}/a//props",
    f"{UP}/a%5c..%5cprops",  # backslashes
    # CR/LF and NUL in the path (escaped: raw ones never get past the HTTP parser)
    f"{UP}/props%0d%0aX-Injected:%201",
    f"{UP}/props%00",
    # a query with characters that would have to be escaped
    f'{UP}/props?a="<x>"',
    f"{UP}/props?a=%zz",
    f"{UP}/http:%2f%2fevil.example/",
]


async def test_hostile_requests_are_refused(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache, BODHI_MAX_BODY_BYTES="1000") as server:
            url = server.url
            for target in HOSTILE_TARGETS:
                status, _, body = await raw(url, get(target))
                # Ours (a line break is no route: the router's path does not match it).
                code = json.loads(body)["error"]["code"]
                assert (status, code) in ((400, "invalid_request"), (404, "not_found")), target
            # "//" right after the alias is no route of ours at all.
            status, _, _ = await raw(url, get(f"{UP}//props"))
            assert status == 404
            # Escapes in the query stay escapes: the child gets a valid request line.
            status, _, body = await raw(url, get(f"{UP}/props?a=%0d%0aX-Injected:%201"))
            assert status == 200
            assert b"default_generation_settings" in body
            # An absolute-form target never makes us talk to its host.
            status, _, body = await raw(url, get("http://evil.example/upstream/demo:tiny/props"))
            assert status == 400 or b"default_generation_settings" in body
            # Methods outside the allowlist, and OPTIONS that is no CORS preflight.
            for method in ("TRACE", "CONNECT", "PROPFIND"):
                status, _, _ = await raw(url, f"{method} {UP}/props HTTP/1.1\r\nHost: 127.0.0.1")
                assert status == 405, method
            status, _, _ = await raw(url, f"OPTIONS {UP}/props HTTP/1.1\r\nHost: 127.0.0.1")
            assert status == 400
            # A content type that is not printable ASCII.
            status, _, body = await raw(
                url,
                f"POST {UP}/tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: text/pl\xe4in\r\nContent-Length: 2",
                b"{}",
            )
            assert status == 400, body
            # The app's body bound applies.
            status, _, body = await raw(
                url,
                f"POST {UP}/tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\nContent-Length: 2000",
                b"x" * 2000,
            )
            assert status == 413, body
            # An unknown alias is the usual 404, and nothing was loaded for any of these
            # but the demo alias the two valid requests above used.
            async with httpx.AsyncClient() as client:
                unknown = await client.get(url + "/upstream/nope/props")
                state = (await client.get(url + "/bodhi/v1/state")).json()
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "alias_not_found"
    assert [m["alias"] for m in state["models"]] == [DEMO_ALIAS]


async def test_only_admin_keys_may_pass_through(tmp_path: Path, hub_cache: Path) -> None:
    def auth(key: str) -> dict[str, Any]:
        return {"Authorization": f"Bearer {key}"}

    with trio.fail_after(60):
        async with (
            running_server(
                tmp_path, hub_cache, BODHI_API_KEYS="api-key-1", BODHI_ADMIN_KEYS="admin-key-1"
            ) as server,
            httpx.AsyncClient() as client,
        ):
            anonymous = await client.get(server.url + UP + "/props")
            api = await client.get(server.url + UP + "/props", headers=auth("api-key-1"))
            admin = await client.get(server.url + UP + "/props", headers=auth("admin-key-1"))
            chat = await client.post(
                server.url + "/tokenize",
                json={"model": DEMO_ALIAS, "content": "hi"},
                headers=auth("api-key-1"),
            )
    assert anonymous.status_code == 401
    assert api.status_code == 403
    assert admin.status_code == 200
    assert chat.status_code == 200  # llama-server's other routes are model routes
