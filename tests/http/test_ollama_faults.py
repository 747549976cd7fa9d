"""The Ollama API when things go wrong, and its admin routes, over real Hypercorn with our
fake llama-server (``BODHI_LLAMA_SERVER``): a crash mid-stream, a slow load (the headers
wait for it), a client leaving during a load, a full queue, keys, copy and delete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import trio
from test_http import fake_alias

from bodhi_trio._config._demo import DEMO_ALIAS
from bodhi_trio._core._address import Address
from bodhi_trio._transport._loopback import UpstreamPool, send_upstream
from httpserver import one_model, running_server
from paths import FAKE_LLAMA_SERVER

FAKE = str(FAKE_LLAMA_SERVER)
USER = [{"role": "user", "content": "hello"}]


async def test_a_crash_mid_stream_is_one_error_line(tmp_path: Path, hub_cache: Path) -> None:
    crashing = fake_alias(
        "crash:1", "--fake-tokens 100 --fake-token-delay 0.05 --fake-crash-after 1"
    )
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache, aliases=(crashing,), BODHI_LLAMA_SERVER=FAKE)
            as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):  # fmt: skip

            def stream() -> tuple[list[Any], ollama.ResponseError]:
                parts = []
                with (
                    ollama.Client(host=server.url) as client,
                    pytest.raises(ollama.ResponseError) as failed,
                ):
                    parts.extend(client.chat("crash:1", messages=USER, stream=True))
                return parts, failed.value

            parts, error = await trio.to_thread.run_sync(stream)
            assert len(parts) >= 3  # it failed mid-stream, not before
            assert not any(part.done for part in parts)
            assert error.status_code == -1  # an error line after the 200, not a status
            assert error.error  # the crash or the broken read it caused, whichever came first
            raw = await http.post("/api/chat", json={"model": "crash:1", "messages": USER})
            # The next request loads it again and ends before the next crash... or not:
            # either way the body is JSON lines and the last one is done or an error.
            lines = [json.loads(line) for line in raw.text.splitlines()]
            assert "done" in lines[-1] or set(lines[-1]) == {"error"}


async def test_a_slow_load_holds_the_headers_then_streams(tmp_path: Path, hub_cache: Path) -> None:
    slow = fake_alias("slow:1", "--fake-load-delay 1.5 --fake-load-chatter 0.1")
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache, aliases=(slow,), BODHI_LLAMA_SERVER=FAKE,
                           BODHI_SSE_KEEPALIVE_SECS="0.2") as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):  # fmt: skip
            started = trio.current_time()
            request = {"model": "slow:1", "prompt": "x"}
            async with http.stream("POST", "/api/generate", json=request) as response:
                waited = trio.current_time() - started
                body = await response.aread()
    assert waited >= 1.4  # no early 200: the answer waited for the load
    assert response.status_code == 200
    lines = [json.loads(line) for line in body.decode().splitlines()]  # nothing but JSON
    assert [line["response"] for line in lines[:-1]] == [f"tok{i} " for i in range(8)]
    assert lines[-1]["done"] is True


async def test_leaving_during_a_load_lets_the_load_finish(tmp_path: Path, hub_cache: Path) -> None:
    slow = fake_alias("slow:1", "--fake-load-delay 1")
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache, aliases=(slow,), BODHI_LLAMA_SERVER=FAKE)
            as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):  # fmt: skip
            with trio.move_on_after(0.3):  # leave while it loads
                await http.post("/api/chat", json={"model": "slow:1", "messages": USER})
            with trio.fail_after(10):
                while one_model((await http.get("/bodhi/v1/state")).json())["state"] != "ready":  # noqa: ASYNC110
                    await trio.sleep(0.05)
            state = one_model((await http.get("/bodhi/v1/state")).json())
    assert state["in_flight"] == 0
    assert state["error"] is None


async def test_a_full_queue_is_503_and_refusals_keep_ollamas_shape(
    tmp_path: Path, hub_cache: Path
) -> None:
    busy = fake_alias("busy:1", "--fake-tokens 50 --fake-token-delay 0.05")
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache, aliases=(busy,), BODHI_LLAMA_SERVER=FAKE,
                           BODHI_MAX_QUEUE="1") as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):  # fmt: skip
            request = {"model": "busy:1", "messages": USER}
            port = int(server.url.rsplit(":", 1)[1])
            async with (
                UpstreamPool() as pool,
                send_upstream(
                    pool, Address.tcp("127.0.0.1", port), "/api/chat", json.dumps(request).encode()
                ) as first,
            ):
                await first.__aiter__().__anext__()  # streaming: the one admitted request
                second = await http.post("/api/chat", json=request)
            # The fake has no embeddings route: its refusal comes back in Ollama's shape.
            refused = await http.post("/api/embed", json={"model": "busy:1", "input": "x"})
    assert second.status_code == 503
    assert set(second.json()) == {"error"}
    assert "BODHI_MAX_QUEUE" in second.json()["error"]
    assert (refused.status_code, refused.json()) == (404, {"error": "File Not Found"})


async def test_keys_copy_delete_and_pull(tmp_path: Path, hub_cache: Path) -> None:
    api = {"Authorization": "Bearer api-key-1"}
    admin = {"Authorization": "Bearer admin-key-1"}
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache, BODHI_LLAMA_SERVER=FAKE,
                           BODHI_API_KEYS="api-key-1", BODHI_ADMIN_KEYS="admin-key-1") as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):  # fmt: skip
            root = await http.get("/")  # liveness probes send no key
            no_key = await http.get("/api/tags")
            copy = {"source": DEMO_ALIAS, "destination": "mine:latest"}
            not_admin = await http.post("/api/copy", json=copy, headers=api)
            copied = await http.post("/api/copy", json=copy, headers=admin)
            tags = (await http.get("/api/tags", headers=api)).json()
            show = await http.post("/api/show", json={"model": "mine"}, headers=api)
            pull = await http.post("/api/pull", json={"model": "x"}, headers=admin)
            deleted = await http.request(
                "DELETE", "/api/delete", json={"model": "mine:latest"}, headers=admin
            )
            again = await http.request(
                "DELETE", "/api/delete", json={"model": "mine"}, headers=admin
            )
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert no_key.status_code == 401
    assert set(no_key.json()) == {"error"}
    assert not_admin.status_code == 403
    assert set(not_admin.json()) == {"error"}
    assert copied.status_code == 200
    assert {m["name"] for m in tags["models"]} == {DEMO_ALIAS, "mine:latest"}
    assert show.status_code == 200
    assert show.json()["model_info"]["llama.context_length"] == 2048
    assert pull.status_code == 400  # not an hf.co/ name: nothing Ollama's registry serves
    assert "hf.co/" in pull.json()["error"]
    assert deleted.status_code == 200
    assert (again.status_code, again.json()) == (404, {"error": "model 'mine' not found"})
    assert not (server.home / "aliases" / "mine.yaml").exists()
