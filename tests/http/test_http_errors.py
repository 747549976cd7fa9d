"""Errors and access rules over real HTTP (Hypercorn on port 0); no model is loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from httpserver import running_server

CHAT = {"model": "demo:tiny", "messages": [{"role": "user", "content": "hi"}]}


async def request(url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.request(method, path, **kwargs)


def envelope(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("body", "status", "error_type", "code", "param"),
    [
        ({**CHAT, "model": "nope"}, 404, "not_found_error", "alias_not_found", "model"),
        (b"{not json", 400, "invalid_request_error", "invalid_request", None),
        (b"\xff\xfe", 400, "invalid_request_error", "invalid_request", None),
        (b"[1, 2]", 400, "invalid_request_error", "invalid_request", None),
        (b"[" * 100_000, 400, "invalid_request_error", "invalid_request", None),
        ({"messages": CHAT["messages"]}, 400, "invalid_request_error", "invalid_request", "model"),
        ({**CHAT, "model": 5}, 400, "invalid_request_error", "invalid_request", "model"),
        ({**CHAT, "messages": "hi"}, 400, "invalid_request_error", "invalid_request", "messages"),
        ({**CHAT, "stream": "yes"}, 400, "invalid_request_error", "invalid_request", "stream"),
        (
            {**CHAT, "max_tokens": "5"},
            400,
            "invalid_request_error",
            "invalid_request",
            "max_tokens",
        ),
        (
            {**CHAT, "max_tokens": True},
            400,
            "invalid_request_error",
            "invalid_request",
            "max_tokens",
        ),
        (
            {**CHAT, "temperature": []},
            400,
            "invalid_request_error",
            "invalid_request",
            "temperature",
        ),
    ],
)
async def test_chat_errors_have_the_envelope(
    tmp_path: Path,
    hub_cache: Path,
    body: object,
    status: int,
    error_type: str,
    code: str,
    param: str | None,
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache) as server:
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            response = await request(server.url, "POST", "/v1/chat/completions", **kwargs)
    assert response.status_code == status
    error = envelope(response)
    assert (error["type"], error["code"], error["param"]) == (error_type, code, param)
    assert "Traceback" not in error["message"]


WRONG_TYPES = [
    ({**CHAT, "tools": "x"}, "tools"),
    ({**CHAT, "tools": [5]}, "tools"),
    ({**CHAT, "tool_choice": 5}, "tool_choice"),
    ({**CHAT, "response_format": "x"}, "response_format"),
    ({**CHAT, "logit_bias": "x"}, "logit_bias"),
    ({**CHAT, "user": 5}, "user"),
    ({**CHAT, "messages": [{"role": 5, "content": "hi"}]}, "messages"),
    ({**CHAT, "messages": [{"content": "hi"}]}, "messages"),
]


async def test_wrong_field_types_llama_server_would_refuse_with_a_500_are_400(
    tmp_path: Path, hub_cache: Path
) -> None:
    """Refused before any model loads, with the field named: llama-server answers some of
    these 500 (``Failed to parse tools``), and takes others silently."""
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache) as server:
            answers = [
                await request(server.url, "POST", "/v1/chat/completions", json=body)
                for body, _ in WRONG_TYPES
            ]
            embedding = await request(
                server.url,
                "POST",
                "/v1/embeddings",
                json={"model": "demo:tiny", "input": "x", "dimensions": "x"},
            )
    for response, (_, param) in [
        *zip(answers, WRONG_TYPES, strict=True),
        (embedding, ("", "dimensions")),
    ]:
        assert response.status_code == 400
        assert envelope(response)["param"] == param


async def test_missing_model_file_is_404(tmp_path: Path, hub_cache: Path) -> None:
    from bodhi_trio._config._aliases import Alias

    ghost = Alias("ghost:1", "nobody/nothing", "missing.gguf")
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache, aliases=(ghost,)) as server:
            response = await request(
                server.url, "POST", "/v1/chat/completions", json={**CHAT, "model": "ghost:1"}
            )
    assert response.status_code == 404
    error = envelope(response)
    assert error["code"] == "model_file_not_found"
    assert "nobody/nothing" in error["message"]
    assert "missing.gguf" in error["message"]
    assert "main" in error["message"]


async def test_too_large_is_413(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache, BODHI_MAX_BODY_BYTES="1000") as server:
            big = {**CHAT, "padding": "x" * 2000}
            response = await request(server.url, "POST", "/v1/chat/completions", json=big)
            ok_size = await request(
                server.url, "POST", "/v1/chat/completions", json={**CHAT, "model": "nope"}
            )
    assert response.status_code == 413
    assert envelope(response)["code"] == "request_too_large"
    assert ok_size.status_code == 404  # a small body still gets through to the alias lookup


async def test_a_body_of_too_many_json_values_is_413_before_it_is_parsed(
    tmp_path: Path, hub_cache: Path
) -> None:
    """32 MiB of ``{},`` (under the body limit) took 1 GB and stopped the server for
    seconds while parsed; values are counted first. A large body of prose passes."""
    flood = b'{"model": "x", "messages": [' + b"{}," * 300_000 + b"{}]}"
    prose = json.dumps({**CHAT, "model": "nope", "user": "a word, " * 200_000}).encode()
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache) as server:
            refused = [
                await request(server.url, "POST", path, content=flood)
                for path in ("/v1/chat/completions", "/api/chat")
            ]
            passed = await request(server.url, "POST", "/v1/chat/completions", content=prose)
    assert [response.status_code for response in refused] == [413, 413]
    assert envelope(refused[0])["code"] == "request_too_large"
    assert "at most 250000 are read" in envelope(refused[0])["message"]
    assert "at most 250000 are read" in refused[1].json()["error"]  # Ollama's shape
    assert passed.status_code == 404  # read, and on to the alias lookup


async def test_unknown_route_and_wrong_method(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache) as server:
            missing = await request(server.url, "GET", "/v1/nothing")
            wrong = await request(server.url, "GET", "/v1/chat/completions")
            ollama = await request(server.url, "PUT", "/api/tags")
    assert missing.status_code == 404
    assert envelope(missing)["type"] == "not_found_error"
    assert wrong.status_code == 405
    assert envelope(wrong)["type"] == "invalid_request_error"
    # A 405 names the methods the route takes (RFC 9110), in either dialect.
    assert wrong.headers["allow"] == "POST"
    assert ollama.status_code == 405
    assert set(ollama.headers["allow"].split(", ")) == {"GET", "HEAD"}


# A read route through the app, and a completion route, which is answered without Quart
# (_completion_route): the same checks must hold on both. A request that passes them gets
# its route's own answer (the completion's `{}` is a 400: it never reaches a model).
CHECKED_ROUTES = pytest.mark.parametrize(
    ("method", "path", "body", "passed"),
    [("GET", "/v1/models", None, 200), ("POST", "/v1/chat/completions", b"{}", 400)],
    ids=["app-route", "completion-route"],
)


@CHECKED_ROUTES
async def test_api_keys(
    tmp_path: Path, hub_cache: Path, method: str, path: str, body: bytes | None, passed: int
) -> None:
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache, BODHI_API_KEYS="k1,k2") as server:

            async def call(**headers: str) -> httpx.Response:
                return await request(server.url, method, path, content=body, headers=headers)

            missing = await call()
            wrong = await call(Authorization="Bearer k3")
            right = await call(Authorization="Bearer k2")
            x_api_key = await call(**{"x-api-key": "k1"})
            ping = await request(server.url, "GET", "/ping")
    assert missing.status_code == 401
    assert envelope(missing)["type"] == "authentication_error"
    assert wrong.status_code == 401
    assert envelope(wrong)["code"] == "invalid_api_key"
    assert right.status_code == passed
    assert x_api_key.status_code == passed
    assert ping.json() == {"message": "pong"}


@CHECKED_ROUTES
async def test_foreign_host_and_origin_are_refused(
    tmp_path: Path, hub_cache: Path, method: str, path: str, body: bytes | None, passed: int
) -> None:
    with trio.fail_after(30):
        async with running_server(
            tmp_path, hub_cache, BODHI_ALLOWED_ORIGINS="https://app.example"
        ) as server:

            async def call(**headers: str) -> httpx.Response:
                return await request(server.url, method, path, content=body, headers=headers)

            rebinding = await call(Host="evil.example:1135")
            foreign = await call(Origin="https://evil.example")
            null_origin = await call(Origin="null")
            local_page = await call(Origin="http://localhost:3000")
            allowed = await call(Origin="https://app.example")
            preflight = await request(
                server.url,
                "OPTIONS",
                "/v1/chat/completions",
                headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
            )
            foreign_preflight = await request(
                server.url,
                "OPTIONS",
                "/v1/chat/completions",
                headers={"Origin": "https://evil.example"},
            )
            post_from_page = await request(
                server.url,
                "POST",
                "/bodhi/v1/server/stop",
                headers={"Origin": "https://evil.example"},
            )
    for refused in (rebinding, foreign, null_origin, foreign_preflight, post_from_page):
        assert refused.status_code == 403
        assert envelope(refused)["type"] == "permission_error"
    for refused in (rebinding, foreign, null_origin):
        assert "access-control-allow-origin" not in refused.headers
    assert local_page.status_code == passed
    assert local_page.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert allowed.status_code == passed
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"


async def test_alias_api_round_trip_and_bad_names(tmp_path: Path, hub_cache: Path) -> None:
    alias = {"alias": "x:1", "repo": "org/repo", "filename": "x.gguf", "context_params": ["-c 512"]}
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache) as server:
            created = await request(server.url, "POST", "/bodhi/v1/aliases", json=alias)
            again = await request(server.url, "POST", "/bodhi/v1/aliases", json=alias)
            fetched = await request(server.url, "GET", "/bodhi/v1/aliases/x:1")
            listed = await request(server.url, "GET", "/bodhi/v1/aliases")
            traversal = await request(
                server.url, "POST", "/bodhi/v1/aliases", json={**alias, "alias": "../../etc"}
            )
            reserved = await request(
                server.url,
                "POST",
                "/bodhi/v1/aliases",
                json={**alias, "alias": "y", "context_params": ["--port 1"]},
            )
            deleted = await request(server.url, "DELETE", "/bodhi/v1/aliases/x:1")
            gone = await request(server.url, "GET", "/bodhi/v1/aliases/x:1")
    assert created.status_code == 201
    assert again.status_code == 409
    assert fetched.json()["context_params"] == ["-c 512"]
    assert [a["alias"] for a in listed.json()["data"]] == ["demo:tiny", "x:1"]
    assert traversal.status_code == 400
    assert reserved.status_code == 400
    assert "--port" in envelope(reserved)["message"]
    assert deleted.status_code == 204
    assert gone.status_code == 404
    assert sorted(p.name for p in (tmp_path / "aliases").iterdir()) == ["demo--tiny.yaml"]


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
async def test_non_finite_numbers_are_rejected(
    tmp_path: Path, hub_cache: Path, number: bytes
) -> None:
    body = b'{"model": "demo:tiny", "messages": [{"role": "user", "content": "x"}], '
    body += b'"temperature": ' + number + b"}"
    with trio.fail_after(30):
        async with running_server(tmp_path, hub_cache) as server:
            response = await request(server.url, "POST", "/v1/chat/completions", content=body)
    assert response.status_code == 400
    assert "not valid JSON" in envelope(response)["message"]
