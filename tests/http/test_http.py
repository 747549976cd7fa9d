"""The HTTP API over real Hypercorn on port 0, with the real llama-server and demo model.

The fault cases (a slow load, a load that fails after headers) use our fake
llama-server, configured as the binary through ``BODHI_LLAMA_SERVER``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from openai.types.chat import ChatCompletionMessageParam

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_ALIAS, DEMO_FILENAME, DEMO_REPO
from bodhi_trio._config._settings import load_settings
from bodhi_trio._core._address import Address
from bodhi_trio._http import _event_streams
from bodhi_trio._http._serve import prepare_demo
from bodhi_trio._transport._loopback import UpstreamPool, send_upstream
from httpserver import child_address, one_model, running_server
from paths import FAKE_LLAMA_SERVER, REPO
from procs import child_client

# The real llama-server runs in every test here but the four fault cases, which use the fake.
REAL = pytest.mark.llama

README = REPO / "README.md"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def sse_events(body: bytes) -> list[str]:
    """The ``data:`` payloads and comments of an SSE body, in order."""
    return [block for block in body.decode().split("\n\n") if block]


@REAL
# The SDK stops reading at [DONE] and leaves its own async generators to the GC,
# which Trio reports; that is the SDK's business, not a leak of ours.
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <async_generator object "
    r"(SSEDecoder|AsyncStream|PoolByteStream|Response|BoundAsyncStream)\."
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_openai_sdk_async_and_sync(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache) as server:
            client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused")
            models = await client.models.list()
            assert [m.id for m in models.data] == [DEMO_ALIAS]
            reply = await client.chat.completions.create(
                model=DEMO_ALIAS, messages=MESSAGES, max_tokens=8, extra_body={"ignore_eos": True}
            )
            assert reply.model == DEMO_ALIAS
            assert reply.usage is not None
            assert reply.usage.completion_tokens == 8
            stream = await client.chat.completions.create(
                model=DEMO_ALIAS,
                messages=MESSAGES,
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            chunks = [chunk async for chunk in stream]
            assert all(chunk.model == DEMO_ALIAS for chunk in chunks)
            assert chunks[-1].usage is not None
            assert chunks[-1].usage.completion_tokens == 8
            await client.close()

            def sync_calls() -> tuple[str, int]:
                with openai.OpenAI(base_url=server.url + "/v1", api_key="unused") as sync:
                    listed = sync.models.list().data[0].id
                    events = list(
                        sync.chat.completions.create(
                            model=DEMO_ALIAS,
                            messages=MESSAGES,
                            max_tokens=5,
                            stream=True,
                            extra_body={"ignore_eos": True},
                        )
                    )
                    return listed, sum(
                        1 for e in events if e.choices and e.choices[0].finish_reason
                    )

            listed, count = await trio.to_thread.run_sync(sync_calls)
            assert listed == DEMO_ALIAS
            assert count == 1  # one chunk carries finish_reason


def normalized(body: bytes) -> list[Any]:
    """SSE events with the fields llama-server varies per call blanked out."""
    events: list[Any] = []
    for block in sse_events(body):
        payload = block.removeprefix("data: ")
        if payload == "[DONE]":
            events.append(payload)
            continue
        event = json.loads(payload)
        event["id"] = event["created"] = None  # a random id and a timestamp per request
        event.pop("timings", None)  # measured durations
        events.append(event)
    return events


@REAL
async def test_stream_is_relayed_byte_for_byte(tmp_path: Path, hub_cache: Path) -> None:
    request = {
        "model": DEMO_ALIAS,
        "messages": MESSAGES,
        "max_tokens": 40,
        "seed": 7,
        "temperature": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
        "cache_prompt": False,
    }
    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache) as server, httpx.AsyncClient() as client:
            proxied = await client.post(server.url + "/v1/chat/completions", json=request)
            async with child_client(await child_address(server.url)) as child:
                direct = await child.post("/v1/chat/completions", json=request)
    assert proxied.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert proxied.headers["cache-control"] == "no-cache"
    assert proxied.headers["x-accel-buffering"] == "no"
    assert normalized(proxied.content) == normalized(direct.content)
    # Beyond those fields the bytes are identical: same length per event.
    pattern = re.compile(rb'"(id|created)":("[^"]*"|\d+)|"timings":\{[^}]*\}')
    assert pattern.sub(b"", proxied.content) == pattern.sub(b"", direct.content)


async def slots_busy(child: Address) -> bool:
    async with child_client(child) as probe:
        slots = (await probe.get("/slots")).json()
    return any(slot["is_processing"] for slot in slots)


# A generation that nobody stops runs for minutes: with context shift the context never
# fills, and a million tokens take the demo model ~400 s. So the liveness bound below (a
# client that left must stop it within STOP_BOUND) is far from what an unstopped run takes.
ENDLESS = Alias("endless:1", DEMO_REPO, DEMO_FILENAME,
                context_params=("--ctx-size 256 --context-shift --parallel 1",))  # fmt: skip
STOP_BOUND = 10.0


@REAL
async def test_client_disconnect_mid_stream_stops_generation(
    tmp_path: Path, hub_cache: Path
) -> None:
    request = {"model": ENDLESS.alias, "messages": MESSAGES, "max_tokens": 1_000_000,
               "ignore_eos": True, "stream": True}  # fmt: skip
    with trio.fail_after(120):  # liveness bound for the whole test
        async with (
            running_server(tmp_path, hub_cache, aliases=(ENDLESS,)) as server,
            UpstreamPool() as pool,
        ):
            port = int(server.url.rsplit(":", 1)[1])
            body = json.dumps(request).encode()
            # Our own HTTP/1.1 client: it closes the connection when the block is left early.
            async with send_upstream(
                pool, Address.tcp("127.0.0.1", port), "/v1/chat/completions", body
            ) as r:
                received = 0
                async for chunk in r:
                    received += chunk.count(b"data: ")
                    if received >= 20:
                        break  # leave mid-stream
            child = await child_address(server.url)
            with trio.fail_after(STOP_BOUND):  # liveness bound: unstopped, it runs ~400 s
                while await slots_busy(child):  # noqa: ASYNC110 - only pollable
                    await trio.sleep(0.01)
            with trio.fail_after(STOP_BOUND):  # liveness bound
                while (await client_state(server.url))["in_flight"]:  # noqa: ASYNC110
                    await trio.sleep(0.01)


async def client_state(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        state: dict[str, Any] = one_model((await client.get(url + "/bodhi/v1/state")).json())
        return state


FAKE = str(FAKE_LLAMA_SERVER)


def fake_alias(name: str, *fake_args: str) -> Alias:
    from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO

    return Alias(name, DEMO_REPO, DEMO_FILENAME, context_params=(" ".join(fake_args),))


async def stream_from_fake(
    tmp_path: Path, hub_cache: Path, fake_args: str
) -> tuple[httpx.Response, dict[str, Any]]:
    """Stream a chat completion from a server whose llama-server is our fake (run with
    ``fake_args``, keep-alive 0.3 s); also return the state after."""
    alias = fake_alias("fake:1", fake_args)
    request = {"model": "fake:1", "messages": MESSAGES, "stream": True}
    with trio.fail_after(30):
        async with (
            running_server(
                tmp_path,
                hub_cache,
                aliases=(alias,),
                BODHI_LLAMA_SERVER=FAKE,
                BODHI_SSE_KEEPALIVE_SECS="0.3",
            ) as server,
            httpx.AsyncClient(timeout=30) as client,
        ):
            response = await client.post(server.url + "/v1/chat/completions", json=request)
            state: dict[str, Any] = one_model(
                (await client.get(server.url + "/bodhi/v1/state")).json()
            )
    return response, state


async def test_slow_load_sends_keepalives_then_completes(tmp_path: Path, hub_cache: Path) -> None:
    args = "--fake-load-delay 1.5 --fake-load-chatter 0.1"
    response, _state = await stream_from_fake(tmp_path, hub_cache, args)
    events = sse_events(response.content)
    assert response.status_code == 200
    keepalives = [e for e in events if e == ": keep-alive"]
    assert len(keepalives) >= 3  # 1.5 s of loading at 0.3 s
    data = [e for e in events if e.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert events.index(data[0]) > events.index(keepalives[-1])  # comments only before data


async def test_paused_generation_gets_keepalives_between_whole_events(
    tmp_path: Path, hub_cache: Path
) -> None:
    args = "--fake-tokens 3 --fake-token-delay 0.7"
    response, state = await stream_from_fake(tmp_path, hub_cache, args)
    assert response.status_code == 200
    events = sse_events(response.content)
    data = [i for i, e in enumerate(events) if e.startswith("data: ")]
    assert events[data[-1]] == "data: [DONE]"
    for i in data[:-1]:
        json.loads(events[i].removeprefix("data: "))  # whole events: a comment never splits one
    between = events[data[0] : data[-1]]
    assert between.count(": keep-alive") >= 3  # 0.7 s pauses at a 0.3 s keep-alive
    assert set(events) - {events[i] for i in data} == {": keep-alive"}
    assert state["in_flight"] == 0


async def test_load_failing_after_headers_gives_one_error_event(
    tmp_path: Path, hub_cache: Path
) -> None:
    args = "--fake-load-delay 30 --fake-die-while-loading 1"
    response, state = await stream_from_fake(tmp_path, hub_cache, args)
    assert response.status_code == 200  # headers went out while it loaded
    events = sse_events(response.content)
    data = [e for e in events if e.startswith("data: ")]
    assert len(data) == 1
    error = json.loads(data[0].removeprefix("data: "))["error"]
    assert error["code"] == "server_startup_failed"
    assert "fake out of memory" in error["message"]
    assert state["state"] == "stopped"


async def test_disconnect_during_load_lets_the_load_finish(tmp_path: Path, hub_cache: Path) -> None:
    slow = fake_alias("slow:1", "--fake-load-delay 1")
    request = {"model": "slow:1", "messages": MESSAGES, "stream": True}
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache, aliases=(slow,), BODHI_LLAMA_SERVER=FAKE) as server,
            httpx.AsyncClient(timeout=30) as client,
        ):
            with trio.move_on_after(0.3):  # leave while it loads
                await client.post(server.url + "/v1/chat/completions", json=request)
            with trio.fail_after(10):
                while (await client_state(server.url))["state"] != "ready":  # noqa: ASYNC110
                    await trio.sleep(0.05)
            state = one_model((await client.get(server.url + "/bodhi/v1/state")).json())
    assert state["alias"] == "slow:1"
    assert state["error"] is None


@REAL
async def test_events_stream_shows_load_and_stop(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(60):
        async with (
            running_server(tmp_path, hub_cache, BODHI_SSE_KEEPALIVE_SECS="0.2") as server,
            UpstreamPool() as pool,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            port = int(server.url.rsplit(":", 1)[1])
            async with send_upstream(
                pool, Address.tcp("127.0.0.1", port), "/bodhi/v1/events", b"", method="GET"
            ) as events:
                assert events.headers["content-type"] == "text/event-stream; charset=utf-8"
                load = await client.post("/bodhi/v1/server/load", json={"alias": DEMO_ALIAS})
                assert one_model(load.json())["state"] == "ready"
                await client.post("/bodhi/v1/server/stop")
                received = b""
                async for chunk in events:
                    received += chunk
                    seen = sse_events(received)
                    if any('"event":"stop"' in s for s in seen) and ": keep-alive" in seen:
                        break
    kinds = [json.loads(s.removeprefix("data: "))["event"] for s in seen if s.startswith("data: ")]
    assert kinds == ["loading", "start", "stop"]
    assert ": keep-alive" in seen


async def test_event_streams_are_bounded_and_give_back_their_place(
    tmp_path: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every open event stream costs every request a delivery (the probe: 2,000 streams
    never read took the server from 329 to 3 requests a second): past the limit (here 2)
    a new one is 503 with ``Retry-After``, and a stream that ends gives its place back."""
    monkeypatch.setattr(_event_streams, "MAX_EVENT_STREAMS", 2)
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache) as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
            client.stream("GET", "/bodhi/v1/events") as first,
        ):
            async with client.stream("GET", "/bodhi/v1/events") as second:
                assert (first.status_code, second.status_code) == (200, 200)
                refused = await client.get("/bodhi/v1/events")
            statuses: list[int] = []
            with trio.fail_after(5):  # the second's end is seen once its connection closes
                while not statuses or statuses[-1] != 200:
                    async with client.stream("GET", "/bodhi/v1/events") as again:
                        statuses.append(again.status_code)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert "event streams are open" in refused.json()["error"]["message"]
    assert set(statuses[:-1]) <= {503}


@REAL
async def test_readme_curl_works(tmp_path: Path) -> None:
    """The README's first curl, as written, against ``serve --demo``'s models: the answer
    it promises (the GGUF is fetched once per user, then cached)."""
    readme = README.read_text()
    match = re.search(r"curl (http://127\.0\.0\.1:1135\S+).*?-d '(\{.*?\})'", readme, re.S)
    assert match, "the README must show a curl chat completion against 127.0.0.1:1135"
    path = match.group(1).removeprefix("http://127.0.0.1:1135")
    payload = json.loads(match.group(2))
    home, hub_cache = tmp_path / "home", tmp_path / "hub"
    settings = load_settings(home=home, env={"HF_HUB_CACHE": str(hub_cache)})
    with trio.fail_after(600):  # a 93 MB download the first time on a machine
        await trio.to_thread.run_sync(prepare_demo, settings)
    with trio.fail_after(120):
        async with (
            running_server(home, hub_cache) as server,
            httpx.AsyncClient(timeout=100) as client,
        ):
            response = await client.post(server.url + path, json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == payload["model"]
    promised = re.search(r'→ `"content":"([^"]+)"`', readme)
    assert promised, "the README must show the answer it promises"
    assert response.json()["choices"][0]["message"]["content"] == promised.group(1)


@REAL
async def test_logs_tail_and_follow(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(60):
        async with (
            running_server(tmp_path, hub_cache, BODHI_SSE_KEEPALIVE_SECS="0.2") as server,
            UpstreamPool() as pool,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            await client.post("/bodhi/v1/server/load", json={"alias": DEMO_ALIAS})
            tail = (await client.get("/bodhi/v1/server/logs", params={"lines": "5"})).json()
            assert len(tail["lines"]) == 5
            bad = await client.get("/bodhi/v1/server/logs", params={"lines": "x"})
            assert bad.status_code == 400
            port = int(server.url.rsplit(":", 1)[1])
            path = "/bodhi/v1/server/logs?follow=true&lines=2"
            async with send_upstream(
                pool, Address.tcp("127.0.0.1", port), path, b"", method="GET"
            ) as follow:
                assert follow.headers["content-type"] == "text/event-stream; charset=utf-8"
                await client.post("/bodhi/v1/server/stop")  # the child logs its shutdown
                received = b""
                async for chunk in follow:
                    received += chunk
                    lines = [json.loads(e.removeprefix("data: "))["line"]
                             for e in sse_events(received) if e.startswith("data: ")]  # fmt: skip
                    if any("cleaning up before exit" in line for line in lines):
                        break  # llama-server's own line on SIGTERM, followed live
            everything = (await client.get("/bodhi/v1/server/logs?lines=1000")).json()["lines"]
    assert lines[0] in everything  # the stream began with lines from the tail
    assert lines[1] in everything
