"""Several models at once over real HTTP (issue 12): the bounded queue, stop and logs
per alias, the state of two models, crash isolation, keep-alive per alias, and no
child outliving a SIGKILLed server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from api_errors import envelope_problem
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from bodhi_trio._core._address import Address
from bodhi_trio._transport._loopback import UpstreamPool, send_upstream
from httpserver import one_model, running_server
from paths import FAKE_LLAMA_SERVER
from procs import is_alive, listening_url, serve_env, start_serve, wait_gone
from streams import DONE_LAST, ONE_ERROR_EVENT_LAST, streams_in_flight

FAKE = str(FAKE_LLAMA_SERVER)
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "x"}]


def chat(alias: str, max_tokens: int, *, stream: bool = False, **extra: object) -> bytes:
    body = {"model": alias, "messages": MESSAGES, "max_tokens": max_tokens, "stream": stream}
    return json.dumps({**body, **extra}).encode()


def address_of(url: str) -> Address:
    return Address.tcp("127.0.0.1", int(url.rsplit(":", 1)[1]))


@asynccontextmanager
async def open_streams(url: str, body: bytes, count: int) -> AsyncIterator[list[bytearray]]:
    """``count`` streamed chats held open; yields their bytes so far once each has some,
    and closes them (the client leaves) when the block ends."""
    received = [bytearray() for _ in range(count)]
    streaming = 0
    all_streaming = trio.Event()

    async def one(pool: UpstreamPool, buffer: bytearray) -> None:
        nonlocal streaming
        async with send_upstream(pool, address_of(url), CHAT, body) as response:
            assert response.status_code == 200
            async for chunk in response:
                if not buffer:
                    streaming += 1
                    if streaming == count:
                        all_streaming.set()
                buffer += chunk

    async with UpstreamPool() as pool, trio.open_nursery() as nursery:
        for buffer in received:
            nursery.start_soon(one, pool, buffer)
        await all_streaming.wait()
        yield received
        nursery.cancel_scope.cancel()


async def get_state(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/bodhi/v1/state")
    assert response.status_code == 200
    state: dict[str, Any] = response.json()
    return state


async def state_when(
    client: httpx.AsyncClient, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The state once ``predicate`` holds (it is only pollable over HTTP); callers bound it."""
    state = await get_state(client)
    while not predicate(state):
        await trio.sleep(0.01)
        state = await get_state(client)
    return state


def assert_server_busy(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "server_busy")
    assert error["param"] is None
    assert "BODHI_MAX_QUEUE" in error["message"]
    assert envelope_problem(429, response.json(), relay_allowed=False) is None  # documented


# ---------------------------------------------------------------- the bounded queue


async def test_a_full_queue_answers_429_at_once(tmp_path: Path, hub_cache: Path) -> None:
    slow = Alias("slow:1", DEMO_REPO, DEMO_FILENAME,
                 context_params=("--fake-tokens 100000 --fake-token-delay 0.01",))  # fmt: skip
    quick = Alias("quick:1", DEMO_REPO, DEMO_FILENAME, context_params=("--fake-tokens 3",))
    with trio.fail_after(60):  # liveness bound
        async with (
            running_server(tmp_path, hub_cache, aliases=(slow, quick), BODHI_LLAMA_SERVER=FAKE,
                           BODHI_MAX_QUEUE="4") as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):  # fmt: skip
            async with open_streams(server.url, chat("slow:1", 100_000, stream=True), 4) as held:
                assert (await client.get("/ping")).status_code == 200  # connected already
                # Answered, not queued: a queued request would wait for a place the held
                # streams (100,000 tokens each) never free, until the liveness bound.
                # (No wall-clock bound here: the test process's own full garbage
                # collection, 110-125 ms, once landed inside one.)
                streamed = await client.post(CHAT, content=chat("slow:1", 5, stream=True))
                plain = await client.post(CHAT, content=chat("slow:1", 5))
                load = await client.post("/bodhi/v1/server/load", json={"alias": "slow:1"})
                full = one_model(await get_state(client), "slow:1")
                other = await client.post(CHAT, content=chat("quick:1", 3))
                # Undisturbed: every held stream goes on receiving tokens, none an error.
                sizes = [len(buffer) for buffer in held]
                with trio.fail_after(10):  # liveness bound
                    waiting = True
                    while waiting:
                        await trio.sleep(0.01)
                        waiting = any(len(b) <= n for b, n in zip(held, sizes, strict=True))
                assert all(b'"error"' not in buffer for buffer in held)
            # The streams' clients left: their places are free again.
            with trio.fail_after(10):  # liveness bound
                await state_when(client, lambda s: one_model(s, "slow:1")["in_flight"] == 0)
            again = await client.post(CHAT, content=chat("slow:1", 3))
    for response in (streamed, plain, load):
        assert_server_busy(response)
    assert (full["state"], full["in_flight"], full["queued"]) == ("ready", 4, 0)
    assert other.status_code == 200  # another model is not limited by this one's queue
    assert again.status_code == 200


async def test_following_an_alias_before_its_first_start_streams_its_lines(
    tmp_path: Path, hub_cache: Path
) -> None:
    """``?alias=&follow=true`` before the alias ever started is a stream that gets its
    child's first lines, not an empty answer; without ``follow`` it is still ``[]``."""
    quiet = Alias("quiet:1", DEMO_REPO, DEMO_FILENAME, context_params=("--fake-tokens 3",))
    with trio.fail_after(30):  # liveness bound
        async with (
            running_server(
                tmp_path, hub_cache, aliases=(quiet,), BODHI_LLAMA_SERVER=FAKE,
                BODHI_SSE_KEEPALIVE_SECS="0.2",
            ) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):  # fmt: skip
            before = await client.get("/bodhi/v1/server/logs?alias=quiet:1")
            path = "/bodhi/v1/server/logs?alias=quiet:1&follow=true"
            async with (
                UpstreamPool() as pool,
                send_upstream(pool, address_of(server.url), path, b"", method="GET") as follow,
            ):
                assert follow.headers["content-type"] == "text/event-stream; charset=utf-8"
                loaded = await client.post("/bodhi/v1/server/load", json={"alias": "quiet:1"})
                pid = loaded.json()["models"][0]["pid"]
                spawned = f'data: {{"line":"[bodhi-trio] spawned pid {pid}"}}'
                received = b""
                async for chunk in follow:
                    received += chunk
                    if spawned.encode() in received:
                        break  # the child's own first line, followed live
    assert before.json() == {"lines": []}


# ---------------------------------------------------------------- keep-alive per alias


async def test_keep_alive_secs_of_an_alias_via_the_alias_api(
    tmp_path: Path, hub_cache: Path
) -> None:
    """Written with the alias API, it unloads that model only (the default is -1 here)."""
    brief = {"alias": "brief:1", "repo": DEMO_REPO, "filename": DEMO_FILENAME,
             "context_params": ["--fake-tokens 3"], "keep_alive_secs": 1}  # fmt: skip
    stay = Alias("stay:1", DEMO_REPO, DEMO_FILENAME, context_params=("--fake-tokens 3",))
    stops: list[dict[str, Any]] = []
    with trio.fail_after(60):  # liveness bound
        async with (
            running_server(tmp_path, hub_cache, aliases=(stay,), BODHI_LLAMA_SERVER=FAKE) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            created = await client.post("/bodhi/v1/aliases", json=brief)
            read = await client.get("/bodhi/v1/aliases/brief:1")
            bad = {**brief, "alias": "bad:1", "keep_alive_secs": -2}
            refused = await client.put("/bodhi/v1/aliases/bad:1", json=bad)
            async with (
                UpstreamPool() as pool,
                send_upstream(pool, address_of(server.url), "/bodhi/v1/events", b"",
                              method="GET") as events,
            ):  # fmt: skip
                for name in ("stay:1", "brief:1"):  # brief:1 last: its 1 s runs from here
                    assert (await client.post(CHAT, content=chat(name, 3))).status_code == 200
                state = await get_state(client)
                received = b""
                with trio.fail_after(10):  # liveness bound: the keep-alive is 1 s
                    async for chunk in events:
                        received += chunk
                        stops = [
                            event
                            for line in received.decode().split("\n\n")
                            if line.startswith("data: ")
                            and (event := json.loads(line[6:]))["event"] == "stop"
                        ]
                        if stops:
                            break
            after = await get_state(client)
    assert created.status_code == 201
    assert created.json()["keep_alive_secs"] == 1
    assert read.json() == created.json()
    assert (tmp_path / "aliases" / "brief--1.yaml").read_text().count("keep_alive_secs: 1") == 1
    assert refused.status_code == 400
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (
        "invalid_alias",
        "keep_alive_secs",
    )
    loaded = {m["alias"]: m for m in state["models"]}
    assert loaded["brief:1"]["expires_at"] == pytest.approx(loaded["brief:1"]["last_used"] + 1)
    assert loaded["stay:1"]["expires_at"] is None
    assert [(e["alias"], e["reason"]) for e in stops] == [("brief:1", "idle for 1 s")]
    assert stops[0]["time"] - loaded["brief:1"]["last_used"] > 0.99  # not before its 1 s
    assert [m["alias"] for m in after["models"]] == ["stay:1"]


# ---------------------------------------------------------------- real llama-server

TINY_A = Alias("tiny:a", DEMO_REPO, DEMO_FILENAME, context_params=("--ctx-size 512",))
TINY_B = Alias("tiny:b", DEMO_REPO, DEMO_FILENAME, context_params=("--ctx-size 512",))


async def load_both(client: httpx.AsyncClient) -> tuple[int, int]:
    """Load tiny:a and tiny:b; their pids."""
    for alias in ("tiny:a", "tiny:b"):
        response = await client.post("/bodhi/v1/server/load", json={"alias": alias})
        assert response.status_code == 200, response.text
    state = await get_state(client)
    pids = one_model(state, "tiny:a")["pid"], one_model(state, "tiny:b")["pid"]
    assert all(isinstance(pid, int) and is_alive(pid) for pid in pids)
    return pids


@pytest.mark.llama
async def test_state_and_logs_of_two_loaded_models(tmp_path: Path, hub_cache: Path) -> None:
    endless = chat("tiny:a", 1_000_000, stream=True, ignore_eos=True)
    with trio.fail_after(60):  # liveness bound
        async with (
            running_server(tmp_path, hub_cache, aliases=(TINY_A, TINY_B)) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            pid_a, pid_b = await load_both(client)
            async with open_streams(server.url, endless, 1):
                streaming = await get_state(client)
            logs = {
                alias: await client.get(f"/bodhi/v1/server/logs?lines=1000&alias={alias}")
                for alias in ("tiny:a", "tiny:b", "nope", "demo:tiny")
            }
            combined = (await client.get("/bodhi/v1/server/logs?lines=1000")).json()["lines"]
    memory = streaming["memory"]
    models = {m["alias"]: m for m in streaming["models"]}
    assert sorted(models) == ["tiny:a", "tiny:b"]
    assert isinstance(memory["budget"], int)
    assert memory["budget"] > 0  # cpu: 80% of RAM
    assert isinstance(memory["used"], int)
    assert memory["used"] == sum(m["memory"] for m in models.values())
    assert memory["used"] <= memory["budget"]
    for model, pid, in_flight in ((models["tiny:a"], pid_a, 1), (models["tiny:b"], pid_b, 0)):
        assert (model["state"], model["pid"], model["port"], model["error"]) == (
            "ready", pid, None, None)  # fmt: skip
        assert (model["in_flight"], model["queued"]) == (in_flight, 0)
        assert {type(model[key]) for key in ("in_flight", "queued", "memory")} == {int}
        assert model["memory"] > 0
        assert {type(model[key]) for key in ("since", "last_used")} == {float}
        assert model["expires_at"] is None  # BODHI_KEEP_ALIVE_SECS=-1 in running_server
    # ?alias= has that alias's child's lines only, unprefixed; the combined log has both.
    own = {alias: logs[alias].json()["lines"] for alias in ("tiny:a", "tiny:b")}
    for alias, pid, other_alias, other_pid in (
        ("tiny:a", pid_a, "tiny:b", pid_b), ("tiny:b", pid_b, "tiny:a", pid_a)
    ):  # fmt: skip
        text = "\n".join(own[alias])
        assert f"[bodhi-trio] spawned pid {pid}\n" in text + "\n"
        assert f"--alias {alias} " in text
        assert f"spawned pid {other_pid}\n" not in text + "\n"
        assert f"--alias {other_alias} " not in text
        assert not any(line.startswith(("[tiny:a] ", "[tiny:b] ")) for line in own[alias])
        assert f"[{alias}] [bodhi-trio] spawned pid {pid}" in combined
        # Its own file too (read after the server stopped: it has the shutdown lines too).
        file_stem = alias.replace(":", "--")
        in_file = (tmp_path / "logs" / f"llama-server-{file_stem}.log").read_text()
        assert set(own[alias]) <= set(in_file.splitlines())
        assert f"spawned pid {other_pid}\n" not in in_file
    assert logs["nope"].status_code == 404
    assert logs["nope"].json()["error"]["code"] == "alias_not_found"
    assert logs["demo:tiny"].json() == {"lines": []}  # an alias that never started


@pytest.mark.llama
async def test_stop_one_alias_or_every_model(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(60):  # liveness bound
        async with (
            running_server(tmp_path, hub_cache, aliases=(TINY_A, TINY_B),
                           BODHI_MAX_LOADED_MODELS="2") as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):  # fmt: skip
            pid_a, pid_b = await load_both(client)
            stop_a = await client.post("/bodhi/v1/server/stop", json={"alias": "tiny:a"})
            a_alive, b_alive = is_alive(pid_a), is_alive(pid_b)
            unknown = await client.post("/bodhi/v1/server/stop", json={"alias": "nope"})
            after_unknown = await get_state(client)
            stop_all = await client.post("/bodhi/v1/server/stop")
            b_alive_after = is_alive(pid_b)
    assert stop_a.status_code == 200
    assert [(m["alias"], m["state"], m["pid"]) for m in stop_a.json()["models"]] == [
        ("tiny:b", "ready", pid_b)
    ]
    assert (a_alive, b_alive) == (False, True)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "alias_not_found"
    assert [m["alias"] for m in after_unknown["models"]] == ["tiny:b"]  # nothing stopped
    assert stop_all.status_code == 200
    assert stop_all.json()["models"] == []
    assert stop_all.json()["memory"]["used"] == 0
    assert not b_alive_after


# Generations that outlast the test unless the crash ends them (context shift: the
# context never fills). One thread each: with llama-server's default (a thread per core)
# two children on a shared 2-core machine sometimes took 30+ s for a 200-token stream.
ENDLESS_PARAMS = ("--ctx-size 4096 --parallel 4 --context-shift --threads 1",)
CRASHING = Alias("crash:a", DEMO_REPO, DEMO_FILENAME, context_params=ENDLESS_PARAMS)
SURVIVING = Alias("survive:b", DEMO_REPO, DEMO_FILENAME, context_params=ENDLESS_PARAMS)


@pytest.mark.llama
@pytest.mark.reliability
async def test_one_child_sigkilled_while_both_models_stream(
    tmp_path: Path, hub_cache: Path
) -> None:
    endless = chat(CRASHING.alias, 1_000_000, stream=True, ignore_eos=True)
    # Long enough that all four are still streaming at the kill, short enough to end soon.
    finite = chat(SURVIVING.alias, 2000, stream=True, ignore_eos=True)
    with trio.fail_after(90):  # liveness bound: what fails here is a hang
        async with (
            running_server(tmp_path, hub_cache, aliases=(CRASHING, SURVIVING)) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            # Leaving waits for every stream to end: the survivor's at its 200 tokens.
            async with (
                streams_in_flight(server.url, endless, 4) as crashed_streams,
                streams_in_flight(server.url, finite, 4) as surviving_streams,
            ):
                before = await get_state(client)
                victim = one_model(before, CRASHING.alias)["pid"]
                os.kill(victim, signal.SIGKILL)
            # A stream can see its connection break before the exit is reaped: wait
            # (bounded) for the crash to be reported rather than race it.
            with trio.fail_after(10):  # liveness bound
                after = await state_when(
                    client, lambda s: one_model(s, CRASHING.alias)["state"] == "crashed"
                )
            survivor_alive = is_alive(one_model(after, SURVIVING.alias)["pid"])
    survivor = one_model(before, SURVIVING.alias)
    assert survivor["in_flight"] == 4  # the other model was streaming when the kill came
    assert surviving_streams.outcomes == [DONE_LAST] * 4
    assert crashed_streams.outcomes == [ONE_ERROR_EVENT_LAST] * 4
    crashed = one_model(after, CRASHING.alias)
    assert (crashed["state"], crashed["pid"]) == ("crashed", None)
    assert "-9" in crashed["error"]
    still = one_model(after, SURVIVING.alias)
    assert (still["state"], still["pid"], still["error"]) == ("ready", survivor["pid"], None)
    assert survivor_alive
    assert not is_alive(victim)


# ---------------------------------------------------------------- the server SIGKILLed

ALIASES = ("kill:1", "kill:2", "kill:3")


def bodhi_trio(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "bodhi_trio", *args], env=env, capture_output=True,
                   text=True, timeout=60, check=True)  # fmt: skip


@pytest.mark.llama
@pytest.mark.reliability
async def test_parent_sigkilled_with_three_children_alive(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = serve_env(tmp_path, BODHI_MAX_LOADED_MODELS="3")
    for name in ALIASES:
        bodhi_trio("alias", "create", name, "--repo", DEMO_REPO, "--filename", DEMO_FILENAME,
                   "--context-param", "--ctx-size 512", env=env)  # fmt: skip
    with start_serve(home, env, "--demo") as process:
        try:
            with trio.fail_after(60):  # the thread is let go; the finally's kill ends it
                url = await listening_url(process)
            # Keep reading its log, so a full pipe never blocks it; EOF when it dies.
            assert process.stderr is not None
            threading.Thread(target=process.stderr.read, daemon=True).start()
            with trio.fail_after(60):  # liveness bound
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    for name in ALIASES:
                        loaded = await client.post("/bodhi/v1/server/load", json={"alias": name})
                        assert loaded.status_code == 200, loaded.text
                    state = await get_state(client)
            pids = [one_model(state, name)["pid"] for name in ALIASES]
            assert all(isinstance(pid, int) and is_alive(pid) for pid in pids)
            assert len(set(pids)) == 3
            process.kill()  # SIGKILL: no handler, no cleanup in bodhi-trio
            with trio.move_on_after(3):  # the bound under test: every child gone in 3 s
                for pid in pids:
                    await wait_gone(pid)
            survivors = [pid for pid in pids if is_alive(pid)]
        finally:
            if process.poll() is None:
                process.kill()
    assert survivors == []
