"""Pull jobs over HTTP against our fake Hub: one download however many clients ask,
a client that leaves stops nothing, DELETE stops it and leaves nothing partial; and
aliases for local files, with the path rule an admin key cannot get around."""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from bodhi_trio._config import _local_gguf
from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._hf_cache import resolve_model_file
from bodhi_trio._http import _pull_routes
from fake_hub import TINY_FILE, TINY_REPO, FakeHub, FakeRepo, sha256
from httpserver import running_server
from paths import FAKE_LLAMA_SERVER

REPO, FILE = TINY_REPO, TINY_FILE
COMMIT = FakeRepo({}).commit
FAKE = str(FAKE_LLAMA_SERVER)
ADMIN = {"Authorization": "Bearer admin-1"}
API = {"Authorization": "Bearer api-1"}


async def events(response: httpx.Response) -> AsyncGenerator[dict[str, Any]]:
    """The ``data:`` payloads of an SSE response (comments skipped)."""
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


async def next_event(stream: AsyncIterator[dict[str, Any]], **wanted: object) -> dict[str, Any]:
    """The next event whose fields have the ``wanted`` values."""
    async for event in stream:
        if all(event.get(key) == value for key, value in wanted.items()):
            return event
    raise AssertionError(f"the stream ended before an event with {wanted}")


@attrs.define
class RawClient:
    """A client that leaves mid-stream: a plain socket, closed when it is done."""

    stream: trio.SocketStream
    buffer: bytes = b""

    @classmethod
    async def pull(cls, url: str, body: dict[str, Any]) -> RawClient:
        host, port = url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        payload = json.dumps(body).encode()
        head = (
            f"POST /bodhi/v1/pull HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: {ADMIN['Authorization']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        await stream.send_all(head.encode() + payload)
        return cls(stream)

    async def next_event(self, **wanted: object) -> dict[str, Any]:
        """The next event with the ``wanted`` field values (each event is one chunk)."""
        while True:
            while match := re.search(rb"data: (\{.*?\})\n\n", self.buffer):
                self.buffer = self.buffer[match.end() :]
                event: dict[str, Any] = json.loads(match[1])
                if all(event.get(key) == value for key, value in wanted.items()):
                    return event
            data = await self.stream.receive_some()
            assert data, f"the stream ended before an event with {wanted}"
            self.buffer += data

    async def leave(self) -> None:
        await self.stream.aclose()


def partial_files(hub_cache: Path) -> list[Path]:
    """What the pulled repo has in the cache, partial or under ``snapshots/``."""
    repo = hub_cache / "models--acme--tiny-GGUF"
    return [*repo.rglob("*.incomplete"), *repo.rglob("snapshots/**/*.gguf")]


async def test_two_clients_share_one_download_that_only_delete_stops(
    tmp_path: Path, gated_hub: FakeHub
) -> None:
    hub_cache = tmp_path / "hub"
    body = {"repo": REPO, "filename": FILE}
    with trio.fail_after(60):
        async with (
            running_server(tmp_path / "home", hub_cache, BODHI_LLAMA_SERVER=FAKE,
                           BODHI_SSE_KEEPALIVE_SECS="0.2", BODHI_ADMIN_KEYS="admin-1",
                           BODHI_API_KEYS="api-1") as server,
            httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=30) as second,
        ):  # fmt: skip
            first = await RawClient.pull(server.url, body)
            job = await first.next_event(watchers=1)
            # the worker is downloading
            assert await trio.to_thread.run_sync(gated_hub.half_sent.wait, 30)

            b_body = {**body, "alias": "second"}
            async with (
                second.stream("POST", "/bodhi/v1/pull", json=b_body) as b,
                aclosing(events(b)) as b_events,
            ):
                joined = await next_event(b_events, watchers=2)
                assert joined["id"] == job["id"]
                assert joined["aliases"] == ["tiny:q4_k_m", "second"]
                await first.leave()  # the first client leaves...
                left = await next_event(b_events, watchers=1)
                assert left["state"] == "running"  # ...and the download goes on

                listed = (await second.get("/bodhi/v1/pulls")).json()["data"]
                assert [(j["id"], j["state"]) for j in listed] == [(job["id"], "running")]
                assert len(gated_hub.gets(FILE)) == 1  # one download for two clients

                cancelled = await second.delete(f"/bodhi/v1/pulls/{job['id']}")
                assert cancelled.status_code == 200
                assert cancelled.json()["state"] == "cancelled"
                error = await next_event(b_events)
                assert error["error"]["code"] == "pull_cancelled"
                assert [event async for event in b_events] == []  # then the stream ends

            assert partial_files(hub_cache) == []  # the worker is gone, nothing half there
            assert len(gated_hub.gets(FILE)) == 1
            assert AliasStore(tmp_path / "home" / "aliases").load()[0][0].alias == "demo:tiny"
            gone = await second.delete("/bodhi/v1/pulls/0123456789ab")
            assert gone.json()["error"]["code"] == "pull_not_found"


async def test_a_pull_finishes_after_its_client_left(
    tmp_path: Path, gated_hub: FakeHub, gate: threading.Event, gguf: bytes
) -> None:
    hub_cache = tmp_path / "hub"
    body = {"model": f"hf.co/{REPO}:Q4_K_M", "alias": "tiny:pulled"}
    with trio.fail_after(60):
        async with (
            running_server(tmp_path / "home", hub_cache, BODHI_LLAMA_SERVER=FAKE,
                           BODHI_ADMIN_KEYS="admin-1", BODHI_API_KEYS="api-1") as server,
            httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=30) as client,
        ):  # fmt: skip
            first = await RawClient.pull(server.url, body)
            job = await first.next_event(watchers=1)
            assert await trio.to_thread.run_sync(gated_hub.half_sent.wait, 30)
            await first.leave()
            # Nobody watches now; a later watcher sees it still running, then done.
            async with (
                client.stream("POST", "/bodhi/v1/pull", json=body) as later,
                aclosing(events(later)) as later_events,
            ):
                await next_event(later_events, id=job["id"], watchers=1, state="running")
                gate.set()
                done = await next_event(later_events, state="done")
                assert [event async for event in later_events] == []  # the end
            assert done["files"] == [FILE]
            assert done["commit"] == COMMIT
            assert done["bytes_done"] == done["bytes_total"] == len(gguf)
            alias = (await client.get("/bodhi/v1/aliases/tiny:pulled")).json()
            assert alias == {"alias": "tiny:pulled", "repo": REPO, "filename": FILE,
                             "snapshot": COMMIT}  # fmt: skip
            path = resolve_model_file(hub_cache, REPO, FILE, COMMIT)
            assert sha256(path.read_bytes()) == sha256(gguf)

            # stream false: the finished job; the file is cached, nothing is fetched again
            again = await client.post("/bodhi/v1/pull", json={**body, "stream": False})
            assert again.status_code == 200
            assert again.json()["state"] == "done"
            assert again.json()["id"] != job["id"]
            assert len(gated_hub.gets(FILE)) == 1


async def test_pull_errors_and_who_may_pull(tmp_path: Path, gated_hub: FakeHub) -> None:
    with trio.fail_after(60):
        async with (
            running_server(tmp_path / "home", tmp_path / "hub", BODHI_LLAMA_SERVER=FAKE,
                           BODHI_ADMIN_KEYS="admin-1", BODHI_API_KEYS="api-1") as server,
            httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=30) as client,
        ):  # fmt: skip
            body = {"repo": REPO, "filename": FILE}
            refused = await client.post("/bodhi/v1/pull", json=body, headers=API)
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "admin_key_required"
            assert (await client.get("/bodhi/v1/pulls", headers=API)).status_code == 403
            assert (await client.get("/bodhi/v1/pulls")).json() == {"data": []}

            missing = await client.post(
                "/bodhi/v1/pull", json={"model": "hf.co/acme/nope:Q4_K_M", "stream": False}
            )
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "repo_not_found"
            quant = await client.post(
                "/bodhi/v1/pull", json={"model": f"hf.co/{REPO}:Q2_K", "stream": False}
            )
            assert quant.status_code == 400
            assert quant.json()["error"]["code"] == "quant_not_found"
            assert FILE in quant.json()["error"]["message"]
            streamed = await client.post("/bodhi/v1/pull", json={"repo": "acme/nope",
                                                                  "filename": FILE})  # fmt: skip
            assert streamed.status_code == 200
            last = [line for line in streamed.text.splitlines() if line.startswith("data: ")][-1]
            assert json.loads(last.removeprefix("data: "))["error"]["code"] == "repo_not_found"
            taken = await client.post(
                "/bodhi/v1/pull", json={**body, "alias": "demo:tiny", "stream": False}
            )
            assert taken.status_code == 409  # the alias names another model: nothing fetched
            bad = await client.post("/bodhi/v1/pull", json={**body, "unknown": 1})
            assert bad.status_code == 400
            assert gated_hub.gets(FILE) == []


async def test_an_alias_for_a_local_file_over_http(tmp_path: Path, gguf: bytes) -> None:
    allowed = tmp_path / "models"
    allowed.mkdir()
    (allowed / "mine.gguf").write_bytes(gguf)
    (allowed / "notes.txt").write_text("not a model")
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(gguf)
    hub_cache = tmp_path / "hub"
    with trio.fail_after(60):
        async with (
            running_server(tmp_path / "home", hub_cache, BODHI_LLAMA_SERVER=FAKE,
                           BODHI_ALLOWED_PATHS=str(allowed), BODHI_ADMIN_KEYS="admin-1",
                           BODHI_API_KEYS="api-1") as server,
            httpx.AsyncClient(base_url=server.url, headers=ADMIN, timeout=30) as client,
        ):  # fmt: skip

            async def create(file: str, **extra: object) -> httpx.Response:
                return await client.post(
                    "/bodhi/v1/aliases", json={"alias": "mine", "file": file, **extra}
                )

            for file, reason in [
                ("/etc/shadow", "outside the HF hub cache"),
                (str(outside), "outside the HF hub cache"),
                (str(allowed / ".." / "outside.gguf"), "outside the HF hub cache"),
                ("models/mine.gguf", "is not absolute"),
                (str(tmp_path / "home" / "settings.yaml"), "own settings or run state"),
                (str(allowed / "missing.gguf"), "does not exist"),
                (str(allowed / "notes.txt"), "is not a GGUF file"),
            ]:
                answer = await create(file)
                assert answer.status_code == 400, file
                assert answer.json()["error"]["code"] == "invalid_model_file"
                assert answer.json()["error"]["param"] == "file"
                assert reason in answer.json()["error"]["message"]
            both = await create(str(allowed / "mine.gguf"), repo="a/b")
            assert both.status_code == 400
            assert not (hub_cache / "models--local--mine").exists()  # nothing was placed
            api_key = await client.post(
                "/bodhi/v1/aliases", json={"alias": "x", "file": "/etc/shadow"}, headers=API
            )
            assert api_key.status_code == 403

            made = await create(str(allowed / "mine.gguf"), context_params=["--ctx-size 512"])
            assert made.status_code == 201
            assert made.headers["x-bodhi-placement"] == "hardlink"
            alias = made.json()
            assert (alias["repo"], alias["filename"]) == ("local/mine", "mine.gguf")
            assert alias["snapshot"] == sha256(gguf)[:40]
            path = resolve_model_file(
                hub_cache, alias["repo"], alias["filename"], alias["snapshot"]
            )
            assert path.resolve().samefile(allowed / "mine.gguf")
            assert (await create(str(allowed / "mine.gguf"))).status_code == 409
            chat = await client.post(
                "/v1/chat/completions",
                json={"model": "mine", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert chat.status_code == 200, chat.text


async def test_a_client_leaving_mid_copy_leaves_nothing_placed(
    tmp_path: Path, gguf: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no link can be made, the file is copied; a client that leaves mid-copy stops
    the copy (within a chunk) and the route waits for it: no blob, no temporary file,
    no alias, even with the server stopping right after."""
    allowed = tmp_path / "models"
    allowed.mkdir()
    (allowed / "mine.gguf").write_bytes(gguf)
    hub_cache = tmp_path / "hub"
    stops: list[threading.Event] = []
    real_place = _local_gguf.place_local_gguf

    def recording_place(hub_cache: Path, source: str, *, cancelled: Callable[[], bool]) -> Any:
        stops.append(cancelled.__self__)  # type: ignore[attr-defined]  # the route's Event
        return real_place(hub_cache, source, cancelled=cancelled)

    copying, resume = threading.Event(), threading.Event()
    real_sendfile = os.sendfile

    def held_sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        if not copying.is_set():
            copying.set()
            resume.wait(30)
            time.sleep(0.5)  # a slow disk's chunk: the route must wait for it to end
        return real_sendfile(out_fd, in_fd, offset, count)

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    def no_symlink(self: Path, target: str | Path) -> None:
        if os.path.isabs(target):
            raise OSError(1, "Operation not permitted")
        symlink_to(self, target)

    symlink_to = Path.symlink_to
    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(Path, "symlink_to", no_symlink)
    monkeypatch.setattr(os, "sendfile", held_sendfile)
    monkeypatch.setattr(_local_gguf, "_COPY_CHUNK", 64)  # many chunks, a check between each
    monkeypatch.setattr(_pull_routes, "place_local_gguf", recording_place)
    with trio.fail_after(60):
        async with running_server(tmp_path / "home", hub_cache, BODHI_LLAMA_SERVER=FAKE,
                                  BODHI_ALLOWED_PATHS=str(allowed)) as server:  # fmt: skip
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=30) as client,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(
                    functools.partial(
                        client.post,
                        "/bodhi/v1/aliases",
                        json={"alias": "mine", "file": str(allowed / "mine.gguf")},
                    )
                )
                await trio.to_thread.run_sync(copying.wait, abandon_on_cancel=True)
                nursery.cancel_scope.cancel()  # the client leaves mid-copy
            stop = stops[0]  # the route's: told to stop once it sees the client gone
            await trio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
            resume.set()
    assert len(gguf) > 2 * 64  # so the copy had chunks left when it was stopped
    assert list(hub_cache.rglob("*.incomplete")) == []
    assert list(hub_cache.glob("models--local--mine/blobs/*")) == []
    aliases, _ = AliasStore(tmp_path / "home" / "aliases").load()
    assert "mine" not in {alias.alias for alias in aliases}
