"""The Ollama API with the official ``ollama`` client, over real Hypercorn on port 0 with the
real llama-server and demo model: the sync client in a worker thread, the async client
in the test's own Trio loop (it runs on httpx, whose anyio backend speaks Trio), and raw
checks of the NDJSON framing and the types the client relies on."""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import trio
from test_http import client_state, slots_busy

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_ALIAS, DEMO_FILENAME, DEMO_REPO
from bodhi_trio._core._address import Address
from bodhi_trio._transport._loopback import UpstreamPool, send_upstream
from httpserver import child_address, running_server
from procs import is_alive

pytestmark = pytest.mark.llama

# Embeddings on a generative GGUF need both flags (until the server adds them itself).
EMB = Alias("emb", DEMO_REPO, DEMO_FILENAME,
            context_params=("--ctx-size 512 --embeddings --pooling mean",))  # fmt: skip
USER = [{"role": "user", "content": "hello"}]
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
           "eval_count", "eval_duration")  # fmt: skip


def rfc3339(value: str) -> datetime.datetime:
    assert value.endswith("Z"), value
    return datetime.datetime.fromisoformat(value)


def norm(vector: Any) -> float:
    return math.sqrt(sum(x * x for x in vector))


async def state_of(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        state: dict[str, Any] = (await client.get(url + "/bodhi/v1/state")).json()
        return state


async def wait_until(url: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the state until ``predicate`` holds (the caller bounds the wait)."""
    while not predicate(state := await state_of(url)):  # noqa: ASYNC110 - only pollable
        await trio.sleep(0.02)
    return state


def loaded(state: dict[str, Any]) -> set[str]:
    return {m["alias"] for m in state["models"] if m["pid"] is not None}


async def test_sync_client(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(120):
        async with running_server(tmp_path, hub_cache, aliases=(EMB,)) as server:

            def calls() -> dict[str, Any]:
                with ollama.Client(host=server.url) as client:
                    return calls_with(client)

            def calls_with(client: ollama.Client) -> dict[str, Any]:
                out: dict[str, Any] = {"list": client.list(), "show": client.show(DEMO_ALIAS)}
                options = {"num_predict": 6, "temperature": 0.5, "seed": 3}
                out["chat"] = client.chat(DEMO_ALIAS, messages=USER, options=options)
                out["chat_stream"] = list(
                    client.chat(DEMO_ALIAS, messages=USER, options=options, stream=True)
                )
                out["generate"] = client.generate(DEMO_ALIAS, "Once", options=options)
                out["generate_raw"] = list(
                    client.generate(DEMO_ALIAS, "Once", raw=True, options=options, stream=True)
                )
                out["embed"] = client.embed("emb:latest", ["a cat", "a dog"])
                out["embeddings"] = client.embeddings("emb", "a cat")
                out["ps"] = client.ps()
                with pytest.raises(ollama.ResponseError) as missing:
                    client.chat("no-such-model", messages=USER)
                out["missing"] = missing.value
                return out

            out = await trio.to_thread.run_sync(calls)
            assert {m.model for m in out["list"].models} == {DEMO_ALIAS, "emb:latest"}
            show = out["show"]
            assert show.modelinfo["general.architecture"] == "llama"
            assert show.modelinfo["llama.context_length"] == 2048
            assert "completion" in show.capabilities
            chat = out["chat"]
            assert chat.message.role == "assistant"
            assert chat.done
            assert chat.done_reason in ("stop", "length")
            assert 0 < chat.eval_count <= 6
            *pieces, last = out["chat_stream"]
            assert pieces
            assert not any(p.done for p in pieces)
            assert last.done
            assert last.message.content == ""
            assert all(isinstance(getattr(last, key), int) for key in METRICS)
            rfc3339(last.created_at)
            assert out["generate"].response is not None
            assert out["generate"].done
            assert out["generate_raw"][-1].done
            embed = out["embed"].embeddings
            assert len(embed) == 2
            assert all(norm(v) == pytest.approx(1, abs=1e-5) for v in embed)
            legacy = out["embeddings"].embedding
            assert len(legacy) == len(embed[0])
            assert norm(legacy) != pytest.approx(1, abs=1e-3)
            resident = {m.model: m for m in out["ps"].models}
            assert set(resident) == {DEMO_ALIAS, "emb:latest"}
            assert resident[DEMO_ALIAS].context_length == 2048
            assert resident[DEMO_ALIAS].size > 0
            assert out["missing"].status_code == 404
            assert out["missing"].error == "model 'no-such-model' not found"


async def test_async_client_and_keep_alive_zero(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(120):
        async with (
            running_server(tmp_path, hub_cache, aliases=(EMB,)) as server,
            ollama.AsyncClient(host=server.url) as client,
        ):
            await async_calls(server.url, client)


async def async_calls(url: str, client: ollama.AsyncClient) -> None:
    """Load, unload, keep_alive 0 and "5m", ps, a 404: with the async client."""
    # An empty prompt loads; with keep_alive 0 it unloads at once.
    load = await client.generate("emb")
    assert load.done_reason == "load"
    (pid,) = [m["pid"] for m in (await state_of(url))["models"] if m["alias"] == "emb"]
    assert is_alive(pid)
    unload = await client.generate("emb", keep_alive=0)
    assert unload.done_reason == "unload"
    assert "emb" not in loaded(await state_of(url))
    assert not is_alive(pid)  # gone (and reaped) before the answer
    # keep_alive 0 on a request: unloaded right after it.
    reply = await client.chat(DEMO_ALIAS, messages=USER, options={"num_predict": 4}, keep_alive=0)
    assert reply.done
    with trio.fail_after(10):  # liveness bound
        await wait_until(url, lambda s: DEMO_ALIAS not in loaded(s))
    parts = [
        part
        async for part in await client.chat(
            DEMO_ALIAS, messages=USER, options={"num_predict": 4}, stream=True,
            keep_alive="5m",
        )
    ]  # fmt: skip
    assert parts[-1].done
    (entry,) = [m for m in (await client.ps()).models if m.model == DEMO_ALIAS]
    assert entry.expires_at is not None
    remaining = entry.expires_at - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=4) < remaining <= datetime.timedelta(minutes=5)
    with pytest.raises(ollama.ResponseError) as missing:
        await client.embed("nope", "x")
    assert missing.value.status_code == 404


async def test_ndjson_framing_and_types(tmp_path: Path, hub_cache: Path) -> None:
    request = {"model": DEMO_ALIAS, "prompt": "Once upon", "options": {"num_predict": 5}}
    with trio.fail_after(60):
        async with (
            running_server(tmp_path, hub_cache) as server,
            httpx.AsyncClient(base_url=server.url, timeout=60) as http,
        ):
            streamed = await http.post("/api/generate", json=request)
            single = await http.post("/api/chat", json={**request, "messages": USER,
                                                        "stream": False})  # fmt: skip
            head = await http.head("/api/tags")
            version = await http.head("/api/version")
            root = await http.get("/")
            bad = await http.post("/api/chat", json={**request, "keep_alive": "300"})
    assert streamed.status_code == 200
    assert streamed.headers["content-type"] == "application/x-ndjson"
    body = streamed.text
    assert body.endswith("\n")
    assert "\n\n" not in body
    assert "data:" not in body
    lines = [json.loads(line) for line in body.splitlines()]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    for line in lines:
        assert line["model"] == DEMO_ALIAS
        rfc3339(line["created_at"])
    last = lines[-1]
    assert last["response"] == ""
    assert last["done_reason"] in ("stop", "length")
    assert all(type(last[key]) is int for key in METRICS)
    assert last["eval_count"] == len(lines) - 1 or last["eval_count"] >= len(lines) - 1
    answer = single.json()
    # Ollama's own content type for whole answers and errors (reference/ollama-api.md)
    assert single.headers["content-type"] == "application/json; charset=utf-8"
    assert version.headers["content-type"] == "application/json; charset=utf-8"
    assert bad.headers["content-type"] == "application/json; charset=utf-8"
    assert answer["done"] is True
    assert answer["message"]["role"] == "assistant"
    assert all(type(answer[key]) is int for key in METRICS)
    assert (head.status_code, head.content) == (200, b"")
    assert version.status_code == 200
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["content-type"].startswith("text/plain")
    assert (bad.status_code, bad.json()) == (400, {"error": 'time: missing unit in duration "300"'})


# Generates until stopped (see test_http's ENDLESS); --ignore-eos because Ollama's API has
# no per-request ignore_eos.
ENDLESS = Alias(
    "endless:1",
    DEMO_REPO,
    DEMO_FILENAME,
    context_params=("--ctx-size 256 --context-shift --parallel 1 --ignore-eos",),
)
STOP_BOUND = 10.0


async def test_client_disconnect_mid_stream_stops_generation(
    tmp_path: Path, hub_cache: Path
) -> None:
    request = {"model": ENDLESS.alias, "messages": USER, "options": {"num_predict": 1_000_000}}
    with trio.fail_after(120):  # liveness bound for the whole test
        async with (
            running_server(tmp_path, hub_cache, aliases=(ENDLESS,)) as server,
            UpstreamPool() as pool,
        ):
            port = int(server.url.rsplit(":", 1)[1])
            body = json.dumps(request).encode()
            async with send_upstream(
                pool, Address.tcp("127.0.0.1", port), "/api/chat", body
            ) as response:
                assert response.headers["content-type"] == "application/x-ndjson"
                received = 0
                async for piece in response:
                    received += piece.count(b"\n")
                    if received >= 20:
                        break  # leave mid-stream: our client closes the connection
            child = await child_address(server.url)
            with trio.fail_after(STOP_BOUND):  # liveness bound: unstopped, it runs for minutes
                while await slots_busy(child):  # noqa: ASYNC110 - only pollable
                    await trio.sleep(0.01)
            with trio.fail_after(STOP_BOUND):
                while (await client_state(server.url))["in_flight"]:  # noqa: ASYNC110
                    await trio.sleep(0.01)
