"""llama-server's other routes (OpenAI Responses, Anthropic Messages, rerank, infill,
tokenize, detokenize, apply-template) over real Hypercorn on port 0, with the real
llama-server and the demo model: the official SDKs against them, what is relayed
unchanged, which alias defaults each route gets, and the disconnect guarantee.

The SDKs are synchronous here (their async clients run on asyncio): each runs in a
worker thread while the server runs in the test's Trio loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import requests
import trio

from bodhi_trio._config._aliases import Alias, RequestParams
from bodhi_trio._config._demo import DEMO_ALIAS, DEMO_FILENAME, DEMO_REPO
from bodhi_trio._context._endpoints import ENDPOINTS
from bodhi_trio._core._address import Address
from bodhi_trio._transport._loopback import UpstreamPool, send_upstream
from httpserver import child_address, one_model, running_server
from procs import child_client

pytestmark = pytest.mark.llama

HELLO = [{"role": "user", "content": "hello"}]
USER_HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hello"}]
# Every generation here has a fixed length: the demo model's random weights may end early.
FIXED = {"ignore_eos": True}
# llama-server's Anthropic route drops fields Anthropic has not (ignore_eos among them), so
# the Anthropic tests use an alias whose child ignores end-of-stream itself.
NO_EOS = Alias("noeos:1", DEMO_REPO, DEMO_FILENAME, context_params=("--ctx-size 512 --ignore-eos",))


async def test_openai_responses_stream_and_not(tmp_path: Path, hub_cache: Path) -> None:
    def calls(url: str) -> tuple[Any, list[Any]]:
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
            reply = client.responses.create(
                model=DEMO_ALIAS, input="hello", max_output_tokens=8, extra_body=FIXED
            )
            stream = client.responses.create(
                model=DEMO_ALIAS, input="hello", max_output_tokens=6, stream=True,
                extra_body=FIXED,
            )  # fmt: skip
            return reply, list(stream)

    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache) as server:
            reply, events = await trio.to_thread.run_sync(calls, server.url)
    assert reply.model == DEMO_ALIAS
    assert reply.status == "completed"
    assert reply.usage is not None
    assert reply.usage.output_tokens == 8
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage.output_tokens == 6
    assert any(e.type == "response.output_text.delta" for e in events)


async def test_anthropic_messages_stream_not_and_count(tmp_path: Path, hub_cache: Path) -> None:
    def calls(url: str) -> tuple[Any, list[Any], Any]:
        client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
        model = NO_EOS.alias
        reply = client.messages.create(model=model, max_tokens=8, messages=USER_HELLO)
        stream = client.messages.create(model=model, max_tokens=5, messages=USER_HELLO, stream=True)
        events = list(stream)
        counted = client.messages.count_tokens(model=model, messages=USER_HELLO)
        client.close()
        return reply, events, counted

    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache, aliases=(NO_EOS,)) as server:
            reply, events, counted = await trio.to_thread.run_sync(calls, server.url)
    assert reply.model == NO_EOS.alias
    assert reply.usage.output_tokens == 8
    assert reply.stop_reason == "max_tokens"
    # (llama-server itself leaves out message_start now and then: seen on the child too.)
    assert events[-1].type == "message_stop"
    deltas = [e for e in events if e.type == "message_delta"]
    assert deltas[-1].usage.output_tokens == 5
    assert counted.input_tokens > 0


async def test_tokenize_detokenize_apply_template_infill_rerank(
    tmp_path: Path, hub_cache: Path
) -> None:
    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache) as server, httpx.AsyncClient() as client:

            async def post(path: str, **body: Any) -> httpx.Response:
                return await client.post(server.url + path, json={"model": DEMO_ALIAS, **body})

            tokens = (await post("/tokenize", content="hello world")).json()["tokens"]
            assert tokens
            assert all(isinstance(t, int) for t in tokens)
            text = (await post("/detokenize", tokens=tokens)).json()["content"]
            assert text.strip() == "hello world"
            prompt = (await post("/apply-template", messages=HELLO)).json()["prompt"]
            assert "hello" in prompt
            assert prompt != "hello"  # the template wrapped it
            # The demo model has no FIM tokens and the child runs without --reranking:
            # llama-server refuses both, and its answer comes back unchanged.
            infill = await post("/infill", input_prefix="def f(", input_suffix="):")
            rerank = await post("/v1/rerank", query="a", documents=["a", "b"])
            async with child_client(await child_address(server.url)) as child:
                direct_infill = await child.post(
                    "/infill", json={"input_prefix": "def f(", "input_suffix": "):"}
                )
                direct_rerank = await child.post(
                    "/v1/rerank", json={"query": "a", "documents": ["a", "b"]}
                )
    for proxied, direct in ((infill, direct_infill), (rerank, direct_rerank)):
        assert 400 <= proxied.status_code < 600
        assert proxied.status_code == direct.status_code
        assert proxied.content == direct.content
        assert proxied.headers["content-type"] == direct.headers["content-type"]


REQUEST_FOR: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": HELLO},
    "/v1/completions": {"prompt": "hello"},
    "/v1/embeddings": {"input": "hello"},
    "/v1/responses": {"input": "hello"},
    "/v1/messages": {"messages": HELLO, "max_tokens": 1},
    "/v1/messages/count_tokens": {"messages": HELLO},
    "/v1/rerank": {"query": "a", "documents": ["a"]},
    "/infill": {"input_prefix": "a", "input_suffix": "b"},
    "/tokenize": {"content": "a"},
    "/detokenize": {"tokens": [1]},
    "/apply-template": {"messages": HELLO},
}


async def test_unknown_missing_and_mistyped_models(tmp_path: Path, hub_cache: Path) -> None:
    assert set(REQUEST_FOR) == set(ENDPOINTS)
    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache) as server, httpx.AsyncClient() as client:
            for path, body in REQUEST_FOR.items():
                unknown = await client.post(server.url + path, json={"model": "nope", **body})
                assert unknown.status_code == 404, path
                assert unknown.json()["error"]["code"] == "alias_not_found"
                for model in ({}, {"model": 5}, {"model": ""}):
                    bad = await client.post(server.url + path, json={**model, **body})
                    assert bad.status_code == 400, (path, model)
                    assert bad.json()["error"]["param"] == "model"
                not_object = await client.post(server.url + path, json=[1])
                assert not_object.status_code == 400
            stream = await client.post(
                server.url + "/v1/responses", json={"model": DEMO_ALIAS, "stream": "yes"}
            )
            assert stream.status_code == 400
            assert stream.json()["error"]["param"] == "stream"
            state = (await client.get(server.url + "/bodhi/v1/state")).json()
    assert state["models"] == []  # nothing was loaded for any of them


async def test_each_route_gets_the_alias_defaults_it_understands(
    tmp_path: Path, hub_cache: Path
) -> None:
    """``max_tokens`` of the alias reaches Responses as ``max_output_tokens`` and
    Anthropic as ``max_tokens`` (llama-server's own default there is 4096)."""
    short = Alias("short:1", DEMO_REPO, DEMO_FILENAME, context_params=("--ignore-eos",),
                  request_params=RequestParams(max_tokens=3))  # fmt: skip
    with trio.fail_after(60):
        async with (
            running_server(tmp_path, hub_cache, aliases=(short,)) as server,
            httpx.AsyncClient(timeout=30) as client,
        ):
            responses = await client.post(
                server.url + "/v1/responses", json={"model": "short:1", "input": "hi", **FIXED}
            )
            messages = await client.post(
                server.url + "/v1/messages", json={"model": "short:1", "messages": HELLO, **FIXED}
            )
            own = await client.post(
                server.url + "/v1/messages",
                json={"model": "short:1", "messages": HELLO, "max_tokens": 2, **FIXED},
            )
    assert responses.json()["usage"]["output_tokens"] == 3
    assert messages.json()["usage"]["output_tokens"] == 3
    assert own.json()["usage"]["output_tokens"] == 2  # the request's own wins


async def test_a_tools_request_passes_through(tmp_path: Path, hub_cache: Path) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    request = {"model": DEMO_ALIAS, "messages": HELLO, "tools": [tool], "max_tokens": 4, **FIXED}
    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache) as server, httpx.AsyncClient() as client:
            reply = await client.post(server.url + "/v1/chat/completions", json=request)
            streamed = await client.post(
                server.url + "/v1/chat/completions", json={**request, "stream": True}
            )
    assert reply.status_code == 200, reply.text
    assert reply.json()["object"] == "chat.completion"
    assert streamed.status_code == 200
    assert streamed.text.endswith("data: [DONE]\n\n")


async def test_requests_reads_streams_as_utf8(tmp_path: Path, hub_cache: Path) -> None:
    """Without ``charset=utf-8`` Python's requests decodes an event stream as Latin-1."""
    request: dict[str, Any] = {
        "model": DEMO_ALIAS, "messages": HELLO, "max_tokens": 4, "stream": True, **FIXED
    }  # fmt: skip

    def read(url: str) -> tuple[str | None, str]:
        with requests.post(url + "/v1/chat/completions", json=request, stream=True) as response:
            return response.encoding, response.text

    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache) as server:
            encoding, text = await trio.to_thread.run_sync(read, server.url)
    assert encoding == "utf-8"
    assert text.endswith("data: [DONE]\n\n")


async def slots_busy(child: Address) -> bool:
    async with child_client(child) as probe:
        slots = (await probe.get("/slots")).json()
    return any(slot["is_processing"] for slot in slots)


# Never stops on its own within the test (see test_http.ENDLESS); --ignore-eos for the
# Anthropic route, which drops a request's ignore_eos.
ENDLESS = Alias(
    "endless:1",
    DEMO_REPO,
    DEMO_FILENAME,
    context_params=("--ctx-size 256 --context-shift --parallel 1", "--ignore-eos"),
)
STOP_BOUND = 10.0


async def test_client_disconnect_mid_responses_stream_stops_generation(
    tmp_path: Path, hub_cache: Path
) -> None:
    request = {"model": ENDLESS.alias, "input": "hello", "max_output_tokens": 1_000_000,
               "stream": True, **FIXED}  # fmt: skip
    with trio.fail_after(120):  # liveness bound for the whole test
        async with (
            running_server(tmp_path, hub_cache, aliases=(ENDLESS,)) as server,
            UpstreamPool() as pool,
        ):
            port = int(server.url.rsplit(":", 1)[1])
            # Our own HTTP/1.1 client: it closes the connection when the block is left early.
            async with send_upstream(
                pool, Address.tcp("127.0.0.1", port), "/v1/responses", json.dumps(request).encode()
            ) as response:
                assert response.status_code == 200
                deltas = 0
                async for chunk in response:
                    deltas += chunk.count(b"response.output_text.delta")
                    if deltas >= 20:
                        break  # leave mid-stream
            child = await child_address(server.url)
            with trio.fail_after(STOP_BOUND):  # liveness bound: unstopped, it runs for minutes
                while await slots_busy(child):  # noqa: ASYNC110 - only pollable
                    await trio.sleep(0.01)
            async with httpx.AsyncClient() as client:
                with trio.fail_after(STOP_BOUND):  # liveness bound
                    while one_model((await client.get(server.url + "/bodhi/v1/state")).json())[  # noqa: ASYNC110
                        "in_flight"
                    ]:
                        await trio.sleep(0.01)


async def test_an_interrupted_anthropic_stream_ends_with_an_error_the_sdk_raises(
    tmp_path: Path, hub_cache: Path
) -> None:
    """A failure after the headers ends an Anthropic stream with ``event: error``: the
    Anthropic SDK skips events without a name, so a bare ``data:`` would be lost."""
    started = trio.Event()

    def stream(url: str) -> tuple[list[str], BaseException | None]:
        client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
        seen: list[str] = []
        try:
            events: Iterable[Any] = client.messages.create(
                model=ENDLESS.alias, max_tokens=1_000_000, messages=USER_HELLO, stream=True,
            )  # fmt: skip
            for event in events:
                seen.append(event.type)
                if event.type == "content_block_delta" and not started.is_set():
                    trio.from_thread.run_sync(started.set)
        except anthropic.APIError as exc:
            return seen, exc
        finally:
            client.close()
        return seen, None

    with trio.fail_after(120):
        async with (
            running_server(
                tmp_path, hub_cache, aliases=(ENDLESS,), BODHI_DRAIN_TIMEOUT_SECS="0.5"
            ) as server,
            trio.open_nursery() as nursery,
        ):
            result: list[tuple[list[str], BaseException | None]] = []

            async def run() -> None:
                result.append(await trio.to_thread.run_sync(stream, server.url))

            nursery.start_soon(run)
            await started.wait()
            async with httpx.AsyncClient(timeout=30) as client:
                stopped = await client.post(server.url + "/bodhi/v1/server/stop")
            assert stopped.status_code == 200
    seen, error = result[0]
    assert "content_block_delta" in seen
    assert "message_stop" not in seen
    assert isinstance(error, anthropic.APIStatusError)
    assert "response_interrupted" in str(error.body)
