"""Ollama's ``/api/pull`` over the server's pull jobs, against our fake Hub (``HF_ENDPOINT``):
the official ``ollama`` client pulls ``hf.co/REPO:QUANT`` and then chats under that name
with the real llama-server; raw NDJSON framing; a client that leaves stops nothing, a
cancel mid-stream is one error line; names and keys that are refused."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import attrs
import httpx
import ollama
import pytest
import trio

from bodhi_trio._config._hub_refs import PullRequest
from bodhi_trio._context._pull_job import PullProgress, PullState
from bodhi_trio._exceptions import RepoNotFoundError
from bodhi_trio._http._ollama._pull import PullLines
from fake_hub import TINY_FILE, TINY_REPO, FakeHub
from httpserver import running_server
from paths import FAKE_LLAMA_SERVER

REPO, FILE = TINY_REPO, TINY_FILE
NAME = f"hf.co/{REPO}:Q4_K_M"
ALIAS = "tiny:q4_k_m"  # PullRequest.from_ref(NAME).alias_name
FAKE = str(FAKE_LLAMA_SERVER)
ADMIN = {"Authorization": "Bearer admin-1"}
API = {"Authorization": "Bearer api-1"}
USER = [{"role": "user", "content": "hello"}]
STEPS = ["pulling manifest", f"pulling {FILE}", "verifying sha256 digest", "writing manifest",
         "success"]  # fmt: skip


def statuses(parts: list[dict[str, Any]]) -> list[str]:
    """The distinct statuses in order (one per pulling bar)."""
    seen: list[str] = []
    for part in parts:
        if part.get("status") and (not seen or seen[-1] != part["status"]):
            seen.append(part["status"])
    return seen


def check_framing(raw: bytes) -> list[dict[str, Any]]:
    """Ollama's NDJSON: one JSON object a line, each ended by a newline, no blank
    lines, integer byte counts (the official client would choke otherwise)."""
    assert raw.endswith(b"\n")
    lines = raw[:-1].split(b"\n")
    assert all(lines), f"a blank line in {raw!r}"
    parts = [json.loads(line) for line in lines]
    for part in parts:
        assert isinstance(part, dict)
        for key in ("total", "completed"):
            if key in part:
                assert type(part[key]) is int, part
                assert part[key] > 0, part
    return parts


def check_progress(parts: list[dict[str, Any]], size: int) -> None:
    """A pull that succeeded, in Ollama's order, its bar brought to the file's size."""
    assert statuses(parts) == STEPS
    bars = [p for p in parts if p["status"] == f"pulling {FILE}"]
    assert all(p["digest"] == FILE and p["total"] == size for p in bars)
    done = [p.get("completed", 0) for p in bars]
    assert done == sorted(done)
    assert done[-1] == size
    assert set(parts[-1]) == {"status"}


async def leave_mid_pull(url: str, body: dict[str, Any]) -> bytes:
    """A client that starts an Ollama pull and leaves once it is downloading (a plain
    socket, closed then); what it read."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = (
        f"POST /api/pull HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: {ADMIN['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(head.encode() + payload)
        received = b""
        while b'{"status":"pulling manifest"}\n' not in received:
            data = await stream.receive_some()
            assert data, received
            received += data
        return received


async def sse_events(response: httpx.Response) -> AsyncGenerator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


@pytest.mark.llama
async def test_the_official_client_pulls_then_chats_under_the_name(
    tmp_path: Path, gated_hub: FakeHub, gate: threading.Event, gguf: bytes
) -> None:
    gate.set()  # no holding here
    with trio.fail_after(120):
        async with running_server(
            tmp_path / "home", tmp_path / "hub", BODHI_ADMIN_KEYS="admin-1", BODHI_API_KEYS="api-1"
        ) as server:

            def calls() -> dict[str, Any]:
                out: dict[str, Any] = {}
                with ollama.Client(host=server.url, headers=ADMIN) as client:
                    out["stream"] = [p.model_dump(exclude_none=True)
                                     for p in client.pull(NAME, stream=True)]  # fmt: skip
                    out["chat"] = client.chat(NAME, messages=USER, options={"num_predict": 4})
                    out["show"] = client.show(NAME)
                    out["tags"] = client.list()
                    out["again"] = client.pull(NAME)  # stream false; the file is cached
                    for key, name in [("missing", "hf.co/acme/nope:Q4_K_M"),
                                      ("ollama_name", "llama3.2:latest"),
                                      ("quant", f"hf.co/{REPO}:Q2_K")]:  # fmt: skip
                        with pytest.raises(ollama.ResponseError) as refused:
                            client.pull(name)
                        out[key] = refused.value
                    with pytest.raises(ollama.ResponseError) as streamed:
                        list(client.pull("hf.co/acme/nope:Q4_K_M", stream=True))
                    out["missing_streamed"] = streamed.value
                with ollama.Client(host=server.url, headers=API) as client:
                    with pytest.raises(ollama.ResponseError) as not_admin:
                        client.pull(NAME)
                    out["not_admin"] = not_admin.value
                    out["api_chat"] = client.chat(NAME, messages=USER, options={"num_predict": 2})
                return out

            out = await trio.to_thread.run_sync(calls)
    check_progress(out["stream"], len(gguf))
    chat = out["chat"]
    assert chat.model == NAME  # the name the client used, served by the alias pull wrote
    assert chat.message.role == "assistant"
    assert chat.done
    assert out["show"].modelinfo["general.architecture"] == "llama"
    assert ALIAS in {m.model for m in out["tags"].models}
    assert out["again"].status == "success"
    assert len(gated_hub.gets(FILE)) == 1  # one download; the second pull found it cached
    assert out["missing"].status_code == 404
    assert out["quant"].status_code == 400
    assert FILE in out["quant"].error  # the message lists the repo's GGUF files
    refused = out["ollama_name"]
    assert refused.status_code == 400
    assert "only Hugging Face GGUF repos can be pulled" in refused.error
    assert "hf.co/OWNER/REPO:QUANT" in refused.error
    assert out["missing_streamed"].status_code == -1  # an error line after the first one
    assert out["not_admin"].status_code == 403
    assert out["api_chat"].done  # using the pulled model needs no admin key


async def test_ndjson_a_client_that_leaves_and_a_cancel(
    tmp_path: Path, gated_hub: FakeHub, gate: threading.Event, gguf: bytes
) -> None:
    with trio.fail_after(60):
        async with (
            running_server(tmp_path / "home", tmp_path / "hub", BODHI_LLAMA_SERVER=FAKE,
                           BODHI_ADMIN_KEYS="admin-1", BODHI_API_KEYS="api-1") as server,
            httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=30) as http,
        ):  # fmt: skip
            # A client starts the pull (the legacy "name") and leaves mid-download.
            body = {"model": NAME}
            first = await leave_mid_pull(server.url, {"name": NAME, "insecure": True})
            assert b"content-type: application/x-ndjson" in first.lower()
            assert await trio.to_thread.run_sync(gated_hub.half_sent.wait, 30)  # it is downloading
            # The job goes on without it: a watcher sees it still running, alone.
            async with (
                http.stream("POST", "/bodhi/v1/pull", json=body) as watch,
                aclosing(sse_events(watch)) as events,
            ):
                job = await anext(events)
                while job["watchers"] != 1:  # the Ollama client's watch has ended
                    job = await anext(events)
                assert job["state"] == "running"
                assert job["aliases"] == [ALIAS]

                # An Ollama stream that joins it gets one error line when it is cancelled.
                async with http.stream("POST", "/api/pull", json=body) as second:
                    chunks = second.aiter_raw()
                    raw = await anext(chunks)
                    assert raw.startswith(b'{"status":"pulling manifest"}\n')
                    cancelled = await http.delete(f"/bodhi/v1/pulls/{job['id']}")
                    assert cancelled.json()["state"] == "cancelled"
                    raw += b"".join([chunk async for chunk in chunks])
                rest = [event async for event in events]  # the watcher's stream ends too
                assert rest[-1]["error"]["code"] == "pull_cancelled"
            parts = check_framing(raw)
            assert parts[-1] == {"error": f"pull {job['id']} was cancelled"}
            assert all("error" not in part for part in parts[:-1])
            assert len(gated_hub.gets(FILE)) == 1  # both Ollama clients shared one download

            # Again, to the end: Ollama's progress, as raw NDJSON.
            gate.set()
            done = await http.post("/api/pull", json={"model": NAME})
            assert done.status_code == 200
            parts = check_framing(done.content)
            check_progress(parts, len(gguf))
            alias = (await http.get(f"/bodhi/v1/aliases/{ALIAS}")).json()
            assert (alias["repo"], alias["filename"]) == (REPO, FILE)

            quiet = await http.post("/api/pull", json={"model": NAME, "stream": False})
            assert quiet.status_code == 200
            assert quiet.headers["content-type"].startswith("application/json")
            assert quiet.json() == {"status": "success"}

            # The pulled name is a model name; another repo's name is not this model.
            show = await http.post("/api/show", json={"model": NAME})
            assert show.status_code == 200
            latest = await http.post("/api/show", json={"model": f"hf.co/{REPO}:latest"})
            assert (latest.status_code, latest.json()) == (  # its alias would be "tiny"
                404, {"error": f"model 'hf.co/{REPO}:latest' not found"})  # fmt: skip
            other = await http.post("/api/show", json={"model": "hf.co/other/tiny-GGUF:Q4_K_M"})
            assert other.status_code == 404
            taken = await http.post(  # its alias name is taken by another repo's model
                "/api/pull", json={"model": "hf.co/other/tiny-GGUF:Q4_K_M", "stream": False}
            )
            assert taken.status_code == 409
            assert set(taken.json()) == {"error"}

            for bad, text in [
                ({"model": "llama3.2"}, "only Hugging Face GGUF repos can be pulled"),
                ({"model": NAME, "stream": "no"}, "stream must be a boolean"),
                ({"model": NAME, "insecure": 1}, "insecure must be a boolean"),
                ({}, "model"),
                ({"model": "hf.co/not a repo"}, "must be 'owner/name'"),
            ]:
                answer = await http.post("/api/pull", json=bad)
                assert answer.status_code == 400, bad
                assert set(answer.json()) == {"error"}
                assert text in answer.json()["error"], answer.json()
            assert (await http.post("/api/pull", json=body, headers=API)).status_code == 403
            assert len(gated_hub.gets(FILE)) == 2  # the cancelled download, then one that finished


def test_snapshots_become_ollama_progress_once_each() -> None:
    """A watcher that skips snapshots (progress is a level) still gets Ollama's order, a
    bar brought to the total, and one verifying line per file checked."""
    request = PullRequest.from_ref(NAME)
    start = PullProgress("j", PullState.RUNNING, "starting", request, (ALIAS,))
    parts = ("m-00001-of-00002.gguf", "m-00002-of-00002.gguf")
    down = attrs.evolve(start, phase="downloading", files=parts, bytes_total=100)
    lines = PullLines()
    seen = [
        *lines.lines(attrs.evolve(start, state=PullState.QUEUED, phase="queued")),
        *lines.lines(start),
        *lines.lines(down),
        *lines.lines(attrs.evolve(down, bytes_done=40)),
        *lines.lines(attrs.evolve(down, bytes_done=40)),  # no change: nothing
        *lines.lines(attrs.evolve(down, phase="verifying", bytes_done=10)),
        *lines.lines(attrs.evolve(down, phase="verifying", bytes_done=40)),
        *lines.lines(attrs.evolve(down, bytes_done=70)),  # part 2 (skipped its verifying)
        *lines.lines(attrs.evolve(down, state=PullState.DONE, phase="done", bytes_done=100)),
        *lines.lines(attrs.evolve(down, state=PullState.DONE, phase="done", bytes_done=100)),
    ]
    bar = {"status": f"pulling {parts[0]}", "digest": parts[0], "total": 100}
    assert seen == [
        {"status": "pulling manifest"},
        bar,
        {**bar, "completed": 40},
        {"status": "verifying sha256 digest"},
        {**bar, "completed": 70},
        {**bar, "completed": 100},
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    failed = PullLines()
    error = RepoNotFoundError("repository acme/nope not found")
    assert failed.lines(attrs.evolve(start, state=PullState.FAILED, error=error)) == [
        {"status": "pulling manifest"},
        {"error": "repository acme/nope not found"},
    ]
