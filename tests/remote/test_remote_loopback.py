"""A remote alias end to end, over real Hypercorn: a second bodhi-trio on loopback as the
remote (the real llama-server behind it) with the official clients, the exact bytes of a
relayed stream, and HTTPS with a private CA."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import trio
from openai.types.chat import ChatCompletionMessageParam
from remote_helpers import EVENTS, USER, chat, remote_alias, stream_body

from bodhi_trio._config._demo import DEMO_ALIAS
from httpserver import running_server
from remote_stub import RemoteStub, Script, Transport, remote_stub, sse_bytes

SDK_USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
# The SDK stops reading at [DONE] and leaves its own async generators to the GC,
# which Trio reports; that is the SDK's business, not a leak of ours.
SDK_GENERATORS = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <async_generator object "
    r"(SSEDecoder|AsyncStream|PoolByteStream|Response|BoundAsyncStream)\."
    ":pytest.PytestUnraisableExceptionWarning"
)


@pytest.mark.llama
@SDK_GENERATORS
async def test_a_second_bodhi_trio_as_the_remote(
    tmp_path: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remote one wants an API key (BODHI_API_KEYS): the front one's alias sends it."""
    monkeypatch.setenv("FAR_BODHI_KEY", "far-key-91d2")
    with trio.fail_after(90):
        async with running_server(
            tmp_path / "remote", hub_cache, BODHI_API_KEYS="far-key-91d2"
        ) as far_server:
            far = remote_alias(
                "far", far_server.url + "/v1", model=DEMO_ALIAS, api_key_env="FAR_BODHI_KEY"
            )
            async with (
                running_server(
                    tmp_path / "front",
                    hub_cache,
                    aliases=(far,),
                    BODHI_REMOTE_KEY_ENVS="FAR_BODHI_KEY",
                ) as front,
                httpx.AsyncClient(base_url=front.url, timeout=60) as http,
            ):
                listed = (await http.get("/v1/models")).json()["data"]
                owners = {m["id"]: m["owned_by"] for m in listed}
                assert owners == {DEMO_ALIAS: "bodhi-trio", "far": "remote"}

                sdk = openai.AsyncOpenAI(
                    base_url=front.url + "/v1", api_key="unused", max_retries=0
                )
                raw = await sdk.chat.completions.with_raw_response.create(
                    model="far",
                    messages=SDK_USER,
                    max_tokens=6,
                )
                assert raw.headers["x-bodhi-routed-alias"] == "far"
                assert raw.headers["x-bodhi-routed-model"] == DEMO_ALIAS
                reply = raw.parse()
                assert reply.model == DEMO_ALIAS  # the remote's answer, not rewritten
                assert reply.usage is not None
                assert reply.usage.completion_tokens > 0
                assert reply.choices[0].message.content is not None

                stream = await sdk.chat.completions.create(
                    model="far",
                    messages=SDK_USER,
                    max_tokens=6,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True},
                )
                chunks = [chunk async for chunk in stream]
                assert chunks[-1].usage is not None
                assert chunks[-1].usage.completion_tokens == 6
                await sdk.close()

                async with ollama.AsyncClient(host=front.url) as client:
                    options = {"num_predict": 5, "seed": 1}
                    answer = await client.chat("far", messages=SDK_USER, options=options)
                    assert answer.done
                    assert answer.message.role == "assistant"
                    assert answer.eval_count is not None
                    assert answer.eval_count > 0
                    parts = [
                        part
                        async for part in await client.chat(
                            "far", messages=SDK_USER, options=options, stream=True
                        )
                    ]
                    assert parts[-1].done
                    assert "".join(p.message.content or "" for p in parts) != ""

                # Every one of those went through the remote: it loaded the model; the
                # front server started nothing of its own.
                front_state = (await http.get("/bodhi/v1/state")).json()
                assert [m["alias"] for m in front_state["models"]] == []
                async with httpx.AsyncClient(
                    headers={"Authorization": "Bearer far-key-91d2"}
                ) as direct:
                    far_state = (await direct.get(far_server.url + "/bodhi/v1/state")).json()
                assert [m["alias"] for m in far_state["models"]] == [DEMO_ALIAS]


async def test_a_stream_is_relayed_byte_for_byte(
    tmp_path: Path, hub_cache: Path, transport: Transport
) -> None:
    with trio.fail_after(30):
        async with remote_stub(Script(events=EVENTS), ssl_context=transport.ssl_context) as stub:
            far = remote_alias("far", stub.base_url, model="the-model", **transport.fields)
            async with running_server(tmp_path, hub_cache, aliases=(far,)) as server:
                response, body = await stream_body(server.url, chat("far", stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-bodhi-routed-alias"] == "far"
    assert response.headers["x-bodhi-routed-model"] == "the-model"
    assert body == sse_bytes(EVENTS)
    (sent,) = stub.requests
    assert sent.target == "/v1/chat/completions"
    assert sent.json() == {"model": "the-model", "messages": USER, "stream": True}


async def test_a_pause_longer_than_the_keepalive_loses_nothing(
    tmp_path: Path, hub_cache: Path, transport: Transport
) -> None:
    """Our keep-alive comments go out while the remote is quiet; the read they interrupt
    must go on where it was (a cancelled read that dropped the connection would end the
    stream early, without [DONE] and without an error)."""
    script = Script(events=EVENTS, pause=0.35)
    with trio.fail_after(30):
        async with remote_stub(script, ssl_context=transport.ssl_context) as stub:
            far = remote_alias("far", stub.base_url, **transport.fields)
            async with running_server(
                tmp_path, hub_cache, aliases=(far,), BODHI_SSE_KEEPALIVE_SECS="0.1"
            ) as server:
                response, body = await stream_body(server.url, chat("far", stream=True))
    assert response.status_code == 200
    assert b": keep-alive\n\n" in body  # the pauses were long enough for some
    assert body.replace(b": keep-alive\n\n", b"") == sse_bytes(EVENTS)
    assert not stub.disconnected.is_set()


async def test_a_compressing_remote_is_not_asked_to(
    tmp_path: Path, hub_cache: Path, transport: Transport
) -> None:
    """The body is relayed as the bytes that came: a remote must not gzip it."""
    answer = {"object": "chat.completion", "choices": [], "model": "m"}
    script = Script(body=json.dumps(answer).encode(), gzip=True)
    with trio.fail_after(30):
        async with remote_stub(script, ssl_context=transport.ssl_context) as stub:
            far = remote_alias("far", stub.base_url, model="m", **transport.fields)
            async with (
                running_server(tmp_path, hub_cache, aliases=(far,)) as server,
                httpx.AsyncClient() as http,
            ):
                response = await http.post(server.url + "/v1/chat/completions", json=chat("far"))
    assert response.status_code == 200
    assert response.json() == answer


# ---------------------------------------------------------------------------- HTTPS


async def https_chat(
    stub: RemoteStub, home: Path, hub_cache: Path, **remote: Any
) -> httpx.Response:
    far = remote_alias("far", stub.base_url, **remote)
    async with (
        running_server(home, hub_cache, aliases=(far,)) as server,
        httpx.AsyncClient() as http,
    ):
        return await http.post(server.url + "/v1/chat/completions", json=chat("far"))


async def test_https_with_a_ca_bundle(
    tmp_path: Path, hub_cache: Path, ca_bundle: str, server_tls: ssl.SSLContext
) -> None:
    with trio.fail_after(30):
        async with remote_stub(Script(events=EVENTS), ssl_context=server_tls) as stub:
            assert stub.base_url.startswith("https://localhost:")
            far = remote_alias("far", stub.base_url, ca_bundle=ca_bundle)
            async with running_server(tmp_path / "home", hub_cache, aliases=(far,)) as server:
                response, body = await stream_body(server.url, chat("far", stream=True))
                assert response.status_code == 200
                assert body == sse_bytes(EVENTS)
                plain = await https_chat(stub, tmp_path / "h2", hub_cache, ca_bundle=ca_bundle)
                assert plain.status_code == 200
    assert len(stub.requests) == 2


async def test_https_without_the_ca_is_a_clear_502(
    tmp_path: Path, hub_cache: Path, server_tls: ssl.SSLContext
) -> None:
    with trio.fail_after(30):
        async with remote_stub(Script(), ssl_context=server_tls) as stub:
            response = await https_chat(stub, tmp_path, hub_cache)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert "TLS" in error["message"]
    assert "certificate verify failed" in error["message"]
    assert stub.base_url.removesuffix("/v1") in error["message"]
    assert stub.requests == []  # the handshake failed: nothing was sent


async def test_an_unreadable_ca_bundle_is_named_and_tells_nothing_else(
    tmp_path: Path, hub_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever writes an alias picks the path: a missing file, a directory, a FIFO (which
    once held a thread for ever), a secret that is no PEM all get one message (what
    failed is logged for the operator)."""
    (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
    os.mkfifo(tmp_path / "fifo.pem")
    paths = ["not-a-ca.pem", "missing.pem", ".", "fifo.pem"]
    messages: list[str] = []
    with trio.fail_after(30):
        async with remote_stub(Script()) as stub:
            for name in paths:
                response = await https_chat(
                    stub,
                    tmp_path / f"home-{len(messages)}",
                    hub_cache,
                    ca_bundle=str(tmp_path / name),
                )
                assert response.status_code == 502
                messages.append(response.json()["error"]["message"])
    for name, message in zip(paths, messages, strict=True):
        assert message.endswith(
            f"ca_bundle {tmp_path / name} is not a readable PEM file of CA certificates"
        ), message
    assert "FileNotFoundError" in caplog.text  # the operator's console says which
    assert "not a regular file" in caplog.text
