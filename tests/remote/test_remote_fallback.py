"""Fallback chains over real Hypercorn, with stubs as the remotes (and local targets: the
real demo model, and the fake context): the order, what is terminal and what falls
through, the last answer verbatim, the 502 when nothing answered, ``Retry-After``, the
routing headers, and embeddings that never switch models."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from remote_helpers import EVENTS, chat, local_embedder, remote_alias, stream_body

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_ALIAS
from bodhi_trio._context._routing import FallbackRouter
from bodhi_trio._exceptions import InvalidRequestError, UpstreamError
from fake_context import FakeLauncher, harness
from httpserver import running_server
from remote_stub import RemoteStub, Script, remote_stub, sse_bytes

CHAT = "/v1/chat/completions"
OK = Script()
ERROR_BODY = b'{"error":{"message":"nope","type":"x","code":7}}'


def failing(status: int, **fields: Any) -> Script:
    return Script(status=status, body=ERROR_BODY.replace(b"nope", b"%d" % status), **fields)


@attrs.define
class Chain:
    url: str
    http: httpx.AsyncClient
    stubs: dict[str, RemoteStub]

    async def post(self, model: str = "p", endpoint: str = CHAT, **extra: Any) -> httpx.Response:
        return await self.http.post(self.url + endpoint, json=chat(model, **extra))

    def calls(self) -> dict[str, int]:
        return {name: len(stub.requests) for name, stub in self.stubs.items()}


@asynccontextmanager
async def chain(
    tmp_path: Path,
    hub_cache: Path,
    *,
    fallback: tuple[str, ...] = ("f1", "f2"),
    cooldown: float = 30,
    extra: tuple[Alias, ...] = (),
    models: dict[str, str] | None = None,
) -> AsyncIterator[Chain]:
    """Stubs ``p``, ``f1``, ``f2`` (answering 200) behind remote aliases of those names;
    ``p`` falls back to ``fallback``."""
    models = models or {}
    async with AsyncExitStack() as stack:
        stubs = {name: await stack.enter_async_context(remote_stub()) for name in ("p", "f1", "f2")}
        aliases = tuple(
            remote_alias(
                name,
                stub.base_url,
                model=models.get(name, f"model-{name}"),
                cooldown_secs=cooldown,
                probe_interval_secs=3600,
                fallback=fallback if name == "p" else (),
            )
            for name, stub in stubs.items()
        )
        server = await stack.enter_async_context(
            running_server(tmp_path, hub_cache, aliases=aliases + extra)
        )
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        yield Chain(server.url, http, stubs)


def routed(response: httpx.Response) -> tuple[str | None, str | None, str | None]:
    headers = response.headers
    return (
        headers.get("x-bodhi-routed-alias"),
        headers.get("x-bodhi-routed-model"),
        headers.get("x-bodhi-router-attempts"),
    )


async def test_the_first_that_answers_wins_in_order(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(30):
        async with chain(tmp_path, hub_cache) as c:
            response = await c.post()
            assert response.status_code == 200
            assert routed(response) == ("p", "model-p", "1")
            assert c.calls() == {"p": 1, "f1": 0, "f2": 0}

            c.stubs["p"].script = failing(503)
            c.stubs["f1"].script = failing(500)
            c.stubs["f2"].script = Script(events=EVENTS)
            response, body = await stream_body(c.url, chat("p", stream=True))
            assert response.status_code == 200
            assert body == sse_bytes(EVENTS)
            assert routed(response) == ("f2", "model-f2", "3")
            assert c.calls() == {"p": 2, "f1": 1, "f2": 1}
            # Each target got the request with its own model name.
            assert [c.stubs[n].requests[-1].json()["model"] for n in ("p", "f1", "f2")] == [
                "model-p", "model-f1", "model-f2",
            ]  # fmt: skip


@pytest.mark.parametrize("status", [400, 422])
async def test_400_and_422_are_terminal_and_verbatim(
    tmp_path: Path, hub_cache: Path, status: int
) -> None:
    with trio.fail_after(30):
        async with chain(tmp_path, hub_cache) as c:
            c.stubs["p"].script = failing(status)
            for stream in (False, True):
                response = await c.post(stream=stream)
                assert response.status_code == status
                assert response.content == ERROR_BODY.replace(b"nope", b"%d" % status)
                assert routed(response) == ("p", "model-p", "1")
            assert c.calls() == {"p": 2, "f1": 0, "f2": 0}
            # Not the target's fault: it is not cooled, the next request goes to it first.
            c.stubs["p"].script = OK
            assert routed(await c.post())[0] == "p"


@pytest.mark.parametrize("status", [401, 403, 404, 408, 429, 500, 502, 503, 504, "refused"])
async def test_other_failures_fall_through(
    tmp_path: Path, hub_cache: Path, status: int | str
) -> None:
    with trio.fail_after(30):
        async with chain(tmp_path, hub_cache) as c:
            if status == "refused":
                await c.stubs["p"].stop()
            else:
                c.stubs["p"].script = failing(int(status))
            response = await c.post()
            assert response.status_code == 200
            assert routed(response) == ("f1", "model-f1", "2")
            assert c.calls()["f2"] == 0


async def test_a_cooling_target_goes_last(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(30):
        async with chain(tmp_path, hub_cache) as c:
            c.stubs["p"].script = failing(503)
            assert routed(await c.post())[0] == "f1"
            c.stubs["p"].script = OK  # p would answer now, but it cools: f1 goes first
            for _ in range(3):
                assert routed(await c.post()) == ("f1", "model-f1", "1")
            assert c.calls() == {"p": 1, "f1": 4, "f2": 0}


async def test_the_last_answer_comes_back_verbatim(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(30):
        async with chain(tmp_path, hub_cache) as c:
            c.stubs["p"].script = failing(503)
            c.stubs["f1"].script = failing(429, headers=[("Retry-After", "7")])
            c.stubs["f2"].script = failing(401)
            response = await c.post()
            assert response.status_code == 401
            assert response.content == ERROR_BODY.replace(b"nope", b"401")
            assert routed(response) == ("f2", "model-f2", "3")

            # The last target refused: the last answer (f1's 429) comes back, with its
            # Retry-After.
            await c.stubs["f2"].stop()
            for stream in (False, True):
                response = await c.post(stream=stream)
                assert response.status_code == 429
                assert response.content == ERROR_BODY.replace(b"nope", b"429")
                assert response.headers["retry-after"] == "7"
                assert response.headers["x-bodhi-router-attempts"] == "3"


async def test_nothing_answered_is_a_502_with_retry_after_when_all_cool(
    tmp_path: Path, hub_cache: Path
) -> None:
    with trio.fail_after(30):
        async with chain(tmp_path, hub_cache, cooldown=5) as c:
            for stub in c.stubs.values():
                await stub.stop()
            for stream in (False, True):
                response = await c.post(stream=stream)
                assert response.status_code == 502
                error = response.json()["error"]
                assert error["code"] == "upstream_unavailable"
                assert error["type"] == "upstream_error"
                assert error["message"].startswith("all targets failed: p: could not connect")
                assert "; f1: could not connect" in error["message"]
                assert "; f2: could not connect" in error["message"]
                assert 1 <= int(response.headers["retry-after"]) <= 5


async def test_every_target_is_tried_even_when_all_cool(tmp_path: Path, hub_cache: Path) -> None:
    """Never starve: cooling targets are tried, soonest recovery first."""
    with trio.fail_after(30):
        async with chain(tmp_path, hub_cache) as c:
            for stub in c.stubs.values():
                stub.script = failing(503)
            assert (await c.post()).status_code == 503
            assert c.calls() == {"p": 1, "f1": 1, "f2": 1}
            c.stubs["f2"].script = OK
            response = await c.post()
            assert response.status_code == 200
            # p cooled first, so recovers first: tried first.
            assert routed(response) == ("f2", "model-f2", "3")
            assert c.calls() == {"p": 2, "f1": 2, "f2": 2}


async def test_one_level_and_dangling_names(tmp_path: Path, hub_cache: Path) -> None:
    """A fallback's own fallback is not followed; a name without an alias is skipped."""
    async with remote_stub() as f3:
        f1_with_fallback = remote_alias("f1-chained", f3.base_url, fallback=("f2",))
        with trio.fail_after(30):
            async with chain(
                tmp_path, hub_cache, fallback=("gone", "f1-chained"), extra=(f1_with_fallback,)
            ) as c:
                c.stubs["p"].script = failing(503)
                f3.script = failing(503)
                response = await c.post()
                assert response.status_code == 503
                assert routed(response) == ("f1-chained", "f1-chained", "2")
                assert c.calls()["f2"] == 0


async def test_embeddings_fall_back_only_to_the_same_model(tmp_path: Path, hub_cache: Path) -> None:
    same = {"p": "embed-1", "f1": "embed-2", "f2": "embed-1"}
    embed = {"model": "p", "input": "hello"}
    with trio.fail_after(30):
        async with chain(tmp_path, hub_cache, models=same) as c:
            c.stubs["p"].script = failing(503)
            response = await c.http.post(c.url + "/v1/embeddings", json=embed)
            assert response.status_code == 200
            assert routed(response) == ("f2", "embed-1", "2")  # f1 is another model
            assert c.calls() == {"p": 1, "f1": 0, "f2": 1}
            assert c.stubs["f2"].requests[-1].target == "/v1/embeddings"

            c.stubs["f2"].script = failing(503)
            response = await c.http.post(c.url + "/v1/embeddings", json=embed)
            assert response.status_code == 503  # never embed-2's vectors
            assert c.calls()["f1"] == 0

            response = await c.post()  # a chat may switch models
            assert routed(response)[0] == "f1"


def test_embeddings_fall_back_only_to_an_alias_with_the_same_vectors() -> None:
    """Two local aliases of one file whose pooling differs give different vectors."""
    aliases = {
        a.alias: a
        for a in (
            local_embedder("p", fallback=("cls", "faster")),
            local_embedder("cls", "--pooling cls"),
            local_embedder("faster", "--threads 8"),
        )
    }

    def unused(*_: object) -> Any:
        raise AssertionError("nothing is sent")

    router = FallbackRouter(aliases.__getitem__, unused, unused, unused)

    def chain(endpoint: str) -> list[str]:
        return [target.alias for target in router.targets(aliases["p"], endpoint)]

    assert chain("/v1/embeddings") == ["p", "faster"]
    assert chain(CHAT) == ["p", "cls", "faster"]


@pytest.mark.llama
async def test_a_remote_falls_back_to_the_local_demo_model(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(60):
        async with chain(tmp_path, hub_cache, fallback=(DEMO_ALIAS,)) as c:
            c.stubs["p"].script = failing(503)
            response = await c.post(max_tokens=4)
            assert response.status_code == 200
            assert routed(response) == (DEMO_ALIAS, DEMO_ALIAS, "2")
            assert response.json()["usage"]["completion_tokens"] > 0
            response, body = await stream_body(c.url, chat("p", stream=True, max_tokens=4))
            assert response.status_code == 200
            assert body.endswith(b"data: [DONE]\n\n")
            assert response.headers["x-bodhi-routed-alias"] == DEMO_ALIAS


# ------------------------------------------------- local targets in the fake context


async def test_local_targets_in_a_chain(tmp_path: Path) -> None:
    """A local alias that fails to load falls back to a remote one, and a remote one to
    a local alias; a local answer's status counts like a remote's."""
    launcher = FakeLauncher(load_seconds=0.01, fail_aliases={"a"})
    with trio.fail_after(30):
        async with remote_stub() as stub, harness(tmp_path, launcher=launcher) as h:
            store = AliasStore(tmp_path / "aliases")
            store.put(attrs.evolve(store.get("a"), fallback=("far",)))
            store.put(remote_alias("far", stub.base_url, model="m", fallback=("b",)))

            answer = await h.chat("a")
            assert answer == json.loads(Script().body)
            assert stub.requests[-1].json()["model"] == "m"

            stub.script = failing(503)
            answer = await h.chat("far")
            assert answer["served_by"] >= 1000  # the fake llama-server of "b"
            assert answer["request"]["model"] == "b"
            async with h.ctx.forward(CHAT, chat("far")) as response:
                assert response.headers["x-bodhi-routed-alias"] == "b"

            # Everything failed before answering: a 502 naming each failure.
            await stub.stop()
            store.put(attrs.evolve(store.get("far"), fallback=("a",)))
            with pytest.raises(UpstreamError) as caught:
                await h.chat("far")
            assert caught.value.code == "upstream_unavailable"
            assert "far: could not connect" in caught.value.message
            assert "a: fake a failed to load" in caught.value.message
            # A local target never cools: no Retry-After.
            assert getattr(caught.value, "retry_after", None) is None


async def test_each_target_gets_its_model_and_request_params(
    tmp_path: Path, hub_cache: Path
) -> None:
    async with remote_stub(failing(503)) as first, remote_stub() as second:
        aliases = tuple(
            Alias.from_dict(data, source="t")
            for data in (
                {"alias": "one", "remote": {"base_url": first.base_url, "model": "m-1"},
                 "request_params": {"temperature": 0.1, "max_tokens": 9}, "fallback": ["two"]},
                {"alias": "two", "remote": {"base_url": second.base_url},  # model: its name
                 "request_params": {"seed": 5}},
            )
        )  # fmt: skip
        with trio.fail_after(30):
            async with (
                running_server(tmp_path, hub_cache, aliases=aliases) as server,
                httpx.AsyncClient() as http,
            ):
                request = chat("one", temperature=0.9)
                response = await http.post(server.url + CHAT, json=request)
                assert routed(response) == ("two", "two", "2")
        assert first.requests[0].json() == {**request, "model": "m-1", "max_tokens": 9}
        # The request as the client sent it, with the second target's own defaults.
        assert second.requests[0].json() == {**request, "model": "two", "seed": 5}


async def test_an_image_url_goes_to_a_remote_but_never_to_a_local_child(tmp_path: Path) -> None:
    """llama-server would fetch an http(s) image itself (SPEC §15: nothing it runs reaches
    the network): refused for a local alias, before anything loads, whether asked for
    directly, through a fallback chain or passed through; a remote server takes it."""
    image = [{"type": "image_url", "image_url": {"url": "http://10.1.2.3/x.png"}}]
    request = {"messages": [{"role": "user", "content": image}], "max_tokens": 2}
    launcher = FakeLauncher(load_seconds=0.01)
    with trio.fail_after(30):
        async with remote_stub() as stub, harness(tmp_path, launcher=launcher) as h:
            AliasStore(tmp_path / "aliases").put(
                remote_alias("far", stub.base_url, model="m", fallback=("a",))
            )
            async with h.ctx.forward(CHAT, {**request, "model": "far"}) as response:
                assert response.status_code == 200
            assert stub.requests[-1].json()["messages"][0]["content"] == image

            stub.script = failing(503)  # the chain goes on to the local "a": refused
            with pytest.raises(InvalidRequestError, match="data: URL"):
                async with h.ctx.forward(CHAT, {**request, "model": "far"}):
                    pass
            with pytest.raises(InvalidRequestError, match="llama-server would fetch it"):
                async with h.ctx.forward(CHAT, {**request, "model": "a"}):
                    pass
            passed = json.dumps({**request, "model": "a"}).encode()
            with pytest.raises(InvalidRequestError):
                async with h.ctx.upstream("a", "POST", "v1/chat/completions", body=passed):
                    pass
            assert h.ctx.statistics().starts == 0  # nothing loaded for any of them

            inline = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
            answer = await h.chat("a", messages=[{"role": "user", "content": inline}])
            assert answer["request"]["messages"][0]["content"] == inline
