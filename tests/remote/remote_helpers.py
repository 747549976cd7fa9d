"""What the remote-alias tests share: aliases, requests, reading a stream's raw bytes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from bodhi_trio._config._aliases import Alias
from httpserver import running_server
from remote_stub import RemoteStub, Script, Transport, remote_stub

USER = [{"role": "user", "content": "hello"}]
EVENTS = [
    '{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    '{"role":"assistant","content":""}}]}',
    '{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    '{"content":"h\\u00e9llo \\ud83d\\ude00"}}]}',
    '{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
    '"finish_reason":"stop"}]}',
    '{"id":"c1","object":"chat.completion.chunk","choices":[],"usage":'
    '{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
]


def remote_alias(
    name: str, base_url: str, *, fallback: tuple[str, ...] = (), **fields: Any
) -> Alias:
    """A remote alias as its YAML would say it (validated like a file)."""
    data: dict[str, Any] = {"alias": name, "remote": {"base_url": base_url, **fields}}
    if fallback:
        data["fallback"] = list(fallback)
    return Alias.from_dict(data, source="test")


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, **extra}


async def stream_body(
    url: str, request: dict[str, Any], endpoint: str = "/v1/chat/completions"
) -> tuple[httpx.Response, bytes]:
    """POST ``request`` and read the answer's raw bytes to their end."""
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", url + endpoint, json=request) as response,
    ):
        body = b"".join([piece async for piece in response.aiter_raw()])
        return response, body


def data_events(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (keep-alive comments skipped)."""
    events = []
    for block in body.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if lines:
            assert all(line.startswith("data: ") for line in lines), block
            events.append("\n".join(line.removeprefix("data: ") for line in lines))
    return events


def error_of(event: str) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(event)["error"]
    return error


def local_embedder(name: str, *params: str, fallback: tuple[str, ...] = ()) -> Alias:
    """A local alias of one embedding file, with these ``context_params`` (as a file)."""
    return Alias.from_dict(
        {
            "alias": name,
            "repo": "org/embed",
            "filename": "e.gguf",
            "context_params": list(params),
            "fallback": list(fallback),
        },
        source="t",
    )


@asynccontextmanager
async def serving_far(
    script: Script, home: Path, hub_cache: Path, transport: Transport | None = None, **env: str
) -> AsyncIterator[tuple[RemoteStub, str, httpx.AsyncClient]]:
    """A stub remote answering by ``script``, a server whose alias ``far`` is that remote
    (``env``: the server's settings), and a client: ``(stub, server URL, client)``."""
    tls, fields = (transport.ssl_context, transport.fields) if transport else (None, {})
    async with remote_stub(script, ssl_context=tls) as stub:
        far = remote_alias("far", stub.base_url, **fields)
        async with (
            running_server(home, hub_cache, aliases=(far,), shutdown_grace=2.0, **env) as server,
            httpx.AsyncClient(timeout=20) as http,
        ):
            yield stub, server.url, http
