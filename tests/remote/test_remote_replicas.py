"""A remote alias's replicas: spread by least in-flight, a dead one skipped before the
request is accepted, back in rotation after its cooldown or a passing probe; 429/503 with
``Retry-After`` cool for the longer time. Real sockets to stubs, the real clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio
from remote_helpers import chat, remote_alias

from bodhi_trio._config._remote import RemoteSpec
from bodhi_trio._context._replicas import (
    RemoteKeyRefusedError,
    ReplicaPool,
    remote_url,
    retry_after_seconds,
)
from bodhi_trio._exceptions import UpstreamError
from bodhi_trio._transport._remote import (
    RemoteConnectError,
    RemoteStalledError,
    open_remote_clients,
)
from httpserver import running_server
from remote_stub import Recorded, RemoteStub, Script, Transport, remote_stub

CHAT = "/v1/chat/completions"
BODY = json.dumps(chat("m")).encode()


def posts(stub: RemoteStub) -> int:
    return sum(1 for r in stub.requests if r.method == "POST")


def probes(requests: Sequence[Recorded]) -> int:
    return sum(1 for r in requests if r.method == "GET" and r.target == "/v1/models")


def probed(requests: Sequence[Recorded]) -> bool:
    return probes(requests) > 0


async def ask(http: httpx.AsyncClient, url: str, times: int) -> None:
    for _ in range(times):
        response = await http.post(url + CHAT, json=chat("pair"))
        assert response.status_code == 200, response.text
        assert response.json() == json.loads(Script().body)


async def until_posted(http: httpx.AsyncClient, url: str, stub: RemoteStub) -> int:
    """Requests until ``stub`` gets one (the caller bounds the wait); how many it took."""
    sent = 0
    while not posts(stub):
        await ask(http, url, 1)
        sent += 1
    return sent


async def test_spread_failover_and_back_after_the_cooldown(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(15):
        async with remote_stub() as a, remote_stub() as b:
            port = b.port
            pair = remote_alias(
                "pair", a.base_url, replicas=[b.base_url], cooldown_secs=0.3,
                probe_interval_secs=3600,  # only the cooldown's end brings one back
            )  # fmt: skip
            async with (
                running_server(tmp_path, hub_cache, aliases=(pair,)) as server,
                httpx.AsyncClient(timeout=10) as http,
            ):
                await ask(http, server.url, 40)
                assert posts(a) >= 10
                assert posts(b) >= 10
                assert posts(a) + posts(b) == 40

                await b.stop()  # b's listener closes: connections are refused
                before = posts(a)
                await ask(http, server.url, 20)  # each one answered: failover to a
                assert posts(a) - before == 20

                async with remote_stub(port=port) as b_again:
                    await until_posted(http, server.url, b_again)
                    # Back in rotation: the spread resumes.
                    before_a, before_b = posts(a), posts(b_again)
                    await ask(http, server.url, 10)
                    assert posts(a) - before_a >= 4
                    assert posts(b_again) - before_b >= 4
                assert not probed(a.requests)  # no probe while nothing cooled (a never did)


@asynccontextmanager
async def a_cooling_replica(
    tmp_path: Path, hub_cache: Path, probe_interval_secs: float
) -> AsyncIterator[tuple[str, httpx.AsyncClient, RemoteStub, RemoteStub]]:
    """Alias ``pair`` over stubs ``a`` and ``b``; ``b`` found dead by a request (it cools
    for an hour), then listening again. Yields the server's URL, a client, ``a`` and the
    new ``b``."""
    async with remote_stub() as a, remote_stub() as b:
        port = b.port
        pair = remote_alias(
            "pair", a.base_url, replicas=[b.base_url], cooldown_secs=3600,
            probe_interval_secs=probe_interval_secs,
        )  # fmt: skip
        async with (
            running_server(tmp_path, hub_cache, aliases=(pair,)) as server,
            httpx.AsyncClient(timeout=10) as http,
        ):
            await b.stop()
            await ask(http, server.url, 2)  # the first one finds b dead: it cools
            async with remote_stub(port=port) as b_again:
                yield server.url, http, a, b_again


async def test_a_probe_brings_a_replica_back_before_its_cooldown_ends(
    tmp_path: Path, hub_cache: Path
) -> None:
    with trio.fail_after(10):
        async with a_cooling_replica(tmp_path, hub_cache, 0.1) as (url, http, a, b_again):
            await b_again.wait_for(probed)
            # The probe's answer ends the cooldown (in a moment: allow a request).
            assert await until_posted(http, url, b_again) <= 3
            assert all(r.headers.get("authorization") is None for r in b_again.requests)
            assert not probed(a.requests)


async def test_a_deleted_alias_is_probed_no_more(tmp_path: Path, hub_cache: Path) -> None:
    """Once its alias is deleted, a cooling replica's URL (and the key it would be sent)
    is contacted no more: the pool's probes end, and the pool is forgotten."""
    with trio.fail_after(15):
        async with a_cooling_replica(tmp_path, hub_cache, 0.05) as (url, http, _, b_again):
            b_again.script = Script(status=503)  # probes fail: b keeps cooling
            await b_again.wait_for(lambda requests: probes(requests) >= 2)
            deleted = await http.delete(url + "/bodhi/v1/aliases/pair")
            assert deleted.status_code == 204
            # A probe already under way may still land; then none for 20 intervals.
            await trio.sleep(0.1)
            before = probes(b_again.requests)
            await trio.sleep(1.0)  # the interval passing is the scenario
            assert probes(b_again.requests) == before
            state = (await http.get(url + "/bodhi/v1/state")).json()
            assert [r["alias"] for r in state.get("remotes", [])] == []  # forgotten


# ------------------------------------------------------------- the pool, unit level


@asynccontextmanager
async def pool_of(
    transport: Transport, *stubs: RemoteStub, **fields: object
) -> AsyncIterator[ReplicaPool]:
    data = {
        "base_url": stubs[0].base_url,
        "replicas": [s.base_url for s in stubs[1:]],
        **transport.fields,
        **fields,
    }
    spec = RemoteSpec.from_dict(data, source="test")
    async with open_remote_clients() as clients:
        yield ReplicaPool("pool", spec, clients)


async def answer(pool: ReplicaPool) -> tuple[int, bytes]:
    async with pool.send(CHAT, BODY) as response:
        return response.status_code, await response.aread()


@pytest.mark.parametrize(
    ("headers", "least"),
    [
        ([("Retry-After", "3")], 2.5),
        ([("retry-after-ms", "3000")], 2.5),
        ([("Retry-After", "Wed, 21 Oct 2099 07:28:00 GMT")], 500),  # a date: capped at 600
        ([], None),
    ],
)
async def test_503_with_retry_after_cools_for_the_longer_time(
    headers: list[tuple[str, str]], least: float | None, transport: Transport
) -> None:
    with trio.fail_after(10):
        async with (
            remote_stub(
                Script(status=503, body=b"{}", headers=headers), ssl_context=transport.ssl_context
            ) as a,
            remote_stub(ssl_context=transport.ssl_context) as b,
            pool_of(transport, a, b, cooldown_secs=0.2) as pool,
        ):
            assert await answer(pool) == (200, Script().body)  # a said 503: b answered
            assert (len(a.requests), len(b.requests)) == (1, 1)
            a_stats = pool.statistics()[0]
            assert a_stats.cooling_for is not None
            if least is None:
                assert a_stats.cooling_for <= 0.2
            else:
                assert least < a_stats.cooling_for <= 600
                for _ in range(5):  # a cools: every request goes to b first
                    assert (await answer(pool))[0] == 200
                assert len(a.requests) == 1


async def test_retry_after_is_ignored_when_told_to(transport: Transport) -> None:
    with trio.fail_after(10):
        async with (
            remote_stub(
                Script(status=429, body=b"{}", headers=[("Retry-After", "60")]),
                ssl_context=transport.ssl_context,
            ) as a,
            remote_stub(ssl_context=transport.ssl_context) as b,
            pool_of(transport, a, b, cooldown_secs=0.2, honor_retry_after=False) as pool,
        ):
            assert (await answer(pool))[0] == 200
            cooling = pool.statistics()[0].cooling_for
            assert cooling is not None
            assert cooling <= 0.2


async def test_accepted_answers_are_never_retried_elsewhere(transport: Transport) -> None:
    """401, 404, 400 and a 200 whose body then breaks: the replica accepted the request."""
    with trio.fail_after(10):
        for status in (400, 401, 404):
            async with (
                remote_stub(
                    Script(status=status, body=b'{"error":"no"}'), ssl_context=transport.ssl_context
                ) as a,
                remote_stub(ssl_context=transport.ssl_context) as b,
                pool_of(transport, a, b) as pool,
            ):
                assert await answer(pool) == (status, b'{"error":"no"}')
                assert (len(a.requests), len(b.requests)) == (1, 0)
                assert pool.statistics()[0].cooling_for is None
        broken = Script(events=['{"n":0}', '{"n":1}'], stall_after=1, stall_for=30)
        async with (
            remote_stub(broken, ssl_context=transport.ssl_context) as a,
            remote_stub(ssl_context=transport.ssl_context) as b,
            pool_of(transport, a, b, idle_timeout_secs=0.2) as pool,
        ):
            with pytest.raises(UpstreamError, match="sent nothing"):
                await answer(pool)
            assert (len(a.requests), len(b.requests)) == (1, 0)


async def test_a_500_or_504_cools_the_replica_but_is_the_requests_answer(
    transport: Transport,
) -> None:
    """The server, or the one behind a gateway that timed out, may have taken the request
    and still be working on it: another replica would do it twice. The next request goes
    elsewhere."""
    with trio.fail_after(10):
        for status in (500, 504):
            async with (
                remote_stub(
                    Script(status=status, body=b'{"error":"x"}'), ssl_context=transport.ssl_context
                ) as a,
                remote_stub(ssl_context=transport.ssl_context) as b,
                pool_of(transport, a, b, cooldown_secs=30) as pool,
            ):
                assert await answer(pool) == (status, b'{"error":"x"}')
                assert (len(a.requests), len(b.requests)) == (1, 0)
                assert pool.statistics()[0].cooling_for is not None
                assert (await answer(pool))[0] == 200  # a cools: b first
                assert (len(a.requests), len(b.requests)) == (1, 1)


async def test_when_every_replica_refuses_the_last_answer_or_error_comes_back(
    transport: Transport,
) -> None:
    with trio.fail_after(10):
        async with (
            remote_stub(
                Script(status=503, body=b'{"a":1}'), ssl_context=transport.ssl_context
            ) as a,
            remote_stub(
                Script(status=502, body=b'{"b":2}'), ssl_context=transport.ssl_context
            ) as b,
            pool_of(transport, a, b, cooldown_secs=30) as pool,
        ):
            assert await answer(pool) == (502, b'{"b":2}')
            # Both cool: neither is skipped (never starve), soonest recovery first.
            assert all(s.cooling_for is not None for s in pool.statistics())
            assert pool.soonest_recovery() is not None
            assert await answer(pool) == (502, b'{"b":2}')  # a cooled first: it goes first
            assert (len(a.requests), len(b.requests)) == (2, 2)
        async with remote_stub(ssl_context=transport.ssl_context) as gone:
            pass
        async with pool_of(transport, gone, connect_timeout_secs=1) as pool:
            with pytest.raises(RemoteConnectError, match="could not connect"):
                await answer(pool)


async def test_in_flight_requests_steer_new_ones(transport: Transport) -> None:
    """While one slow stream holds a, the next requests go to b (least in flight)."""
    slow = Script(events=['{"n":0}'], stall_after=1, stall_for=30)
    with trio.fail_after(10):
        async with (
            remote_stub(slow, ssl_context=transport.ssl_context) as a,
            remote_stub(ssl_context=transport.ssl_context) as b,
            pool_of(transport, a, b) as pool,
        ):
            async with pool.send(CHAT, BODY) as held:
                assert held.status_code == 200
                a.script = Script()
                for _ in range(4):
                    assert (await answer(pool))[0] == 200
                assert (len(a.requests), len(b.requests)) == (1, 4)
                assert [s.in_flight for s in pool.statistics()] == [1, 0]
            assert [s.in_flight for s in pool.statistics()] == [0, 0]


def test_urls_and_retry_after_parsing() -> None:
    assert remote_url("http://h:8000/v1", CHAT) == "http://h:8000/v1/chat/completions"
    assert remote_url("http://h/openai/v1", "/v1/embeddings") == "http://h/openai/v1/embeddings"
    assert remote_url("http://h:8080/v1", "/tokenize") == "http://h:8080/tokenize"
    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert retry_after_seconds({"retry-after": "-3"}) == 0
    assert retry_after_seconds({"retry-after": "1e9"}) == 600
    assert retry_after_seconds({"retry-after": "nan"}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "x", "retry-after": "9"}) == 9
    date = "Thu, 01 Jan 1970 00:01:40 GMT"
    assert retry_after_seconds({"retry-after": date}, now_epoch=90.0) == 10
    assert retry_after_seconds({}) is None


async def test_a_stall_before_the_head_cools_but_is_not_sent_again(transport: Transport) -> None:
    """The replica took the request and may be working on it (an answer that is not
    streamed comes whole at its end): another replica would do it twice."""
    with trio.fail_after(10):
        async with (
            remote_stub(Script(stall_before_head=5), ssl_context=transport.ssl_context) as a,
            remote_stub(ssl_context=transport.ssl_context) as b,
            pool_of(transport, a, b, idle_timeout_secs=0.3, cooldown_secs=30) as pool,
        ):
            with pytest.raises(RemoteStalledError):
                await answer(pool)
            assert (len(a.requests), len(b.requests)) == (1, 0)
            assert pool.statistics()[0].cooling_for is not None
            assert await answer(pool) == (200, Script().body)  # a cools: b now
            assert len(b.requests) == 1


async def test_a_key_variable_the_operator_did_not_list_is_never_sent(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTE_TEST_LISTED_KEY", "k-listed")
    monkeypatch.setenv("REMOTE_TEST_OTHER_SECRET", "k-other")
    with trio.fail_after(10):
        async with remote_stub(ssl_context=transport.ssl_context) as a:
            spec = RemoteSpec.from_dict(
                {"base_url": a.base_url, "api_key_env": "REMOTE_TEST_OTHER_SECRET",
                 **transport.fields},
                source="test",
            )  # fmt: skip
            async with open_remote_clients() as clients:
                pool = ReplicaPool("p", spec, clients, key_envs={"REMOTE_TEST_LISTED_KEY"})
                with pytest.raises(RemoteKeyRefusedError) as caught:
                    await answer(pool)
                assert "BODHI_REMOTE_KEY_ENVS" in caught.value.message
                assert "k-other" not in caught.value.message
                assert a.requests == []  # nothing sent at all
                listed = attrs.evolve(spec, api_key_env="REMOTE_TEST_LISTED_KEY")
                pool = ReplicaPool("p", listed, clients, key_envs={"REMOTE_TEST_LISTED_KEY"})
                assert (await answer(pool))[0] == 200
                assert a.requests[-1].headers["authorization"] == "Bearer k-listed"
