"""``/metrics`` (Prometheus text) and the console's request and model lines (issue 15),
against the real llama-server on the demo model."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from bodhi_trio._config._demo import DEMO_ALIAS
from bodhi_trio._core._state import EventKind, ServerEvent, ServerState
from bodhi_trio._http._log_format import JsonLogFormatter
from bodhi_trio._http._observe import Observer, unload_cause
from bodhi_trio._http._request_scope import note_request
from bodhi_trio._http._usage import tokens_in_tail
from httpserver import running_server

pytestmark = pytest.mark.llama

CHAT = "/v1/chat/completions"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, by name and sorted labels."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def metrics(
    client: httpx.AsyncClient,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_one_chat_is_counted_with_its_tokens_and_its_load(
    tmp_path: Path, hub_cache: Path
) -> None:
    with trio.fail_after(60):
        async with (
            running_server(tmp_path / "home", hub_cache) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            before = await metrics(client)
            assert (
                value(before, "bodhi_requests_total", alias=DEMO_ALIAS, route=CHAT, status="200")
                == 0
            )
            body = {"model": DEMO_ALIAS, "messages": [{"role": "user", "content": "hi"}]}
            response = await client.post(CHAT, json={**body, "max_tokens": 9})
            assert response.status_code == 200
            usage = response.json()["usage"]
            found = await metrics(client)
            labels = {"alias": DEMO_ALIAS, "route": CHAT, "status": "200"}
            assert value(found, "bodhi_requests_total", **labels) == 1
            completion = value(found, "bodhi_tokens_total", alias=DEMO_ALIAS, kind="completion")
            assert completion == usage["completion_tokens"]
            prompt = value(found, "bodhi_tokens_total", alias=DEMO_ALIAS, kind="prompt")
            assert prompt == usage["prompt_tokens"]
            assert value(found, "bodhi_model_loads_total", alias=DEMO_ALIAS) == 1
            assert value(found, "bodhi_model_load_seconds_count", alias=DEMO_ALIAS) == 1
            assert value(found, "bodhi_request_duration_seconds_count", route=CHAT) == 1
            assert value(found, "bodhi_model_state", alias=DEMO_ALIAS, state="ready") == 1
            assert value(found, "bodhi_in_flight", alias=DEMO_ALIAS) == 0
            assert value(found, "bodhi_model_memory_bytes", alias=DEMO_ALIAS) > 0

            # a stream: its tokens come from the usage chunk at its end
            stream = {**body, "max_tokens": 7, "stream": True}
            stream["stream_options"] = {"include_usage": True}
            async with client.stream("POST", CHAT, json=stream) as streamed:
                raw = b"".join([chunk async for chunk in streamed.aiter_bytes()])
            usage_line = [line for line in raw.split(b"\n") if b'"usage"' in line][-1]
            streamed_tokens = json.loads(usage_line[5:])["usage"]["completion_tokens"]
            found = await metrics(client)
            assert value(found, "bodhi_requests_total", **labels) == 2
            assert (
                value(found, "bodhi_tokens_total", alias=DEMO_ALIAS, kind="completion")
                == completion + streamed_tokens
            )
            assert value(found, "bodhi_request_ttfb_seconds_count", route=CHAT) == 2


async def test_labels_stay_bounded_and_unloads_have_causes(tmp_path: Path, hub_cache: Path) -> None:
    """A request naming a random model does not become a label; a stop is counted."""
    with trio.fail_after(60):
        async with (
            running_server(tmp_path / "home", hub_cache) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            body = {"model": "no-such-model-4711", "messages": [{"role": "user", "content": "x"}]}
            assert (await client.post(CHAT, json=body)).status_code == 404
            await client.post("/bodhi/v1/server/load", json={"alias": DEMO_ALIAS})
            await client.post("/bodhi/v1/server/stop", json={"alias": DEMO_ALIAS})
            response = await client.get("/metrics")
            assert "no-such-model-4711" not in response.text
            found = samples(response.text)
            assert value(found, "bodhi_requests_total", alias="", route=CHAT, status="404") == 1
            assert value(found, "bodhi_model_unloads_total", alias=DEMO_ALIAS, cause="stop") == 1
            assert (
                value(found, "bodhi_requests_total", alias="", route="unmatched", status="404") == 0
            )


async def test_each_request_and_model_change_logs_one_line(
    tmp_path: Path, hub_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bodhi_trio")
    with trio.fail_after(60):
        async with (
            running_server(tmp_path / "home", hub_cache) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            body = {"model": DEMO_ALIAS, "messages": [{"role": "user", "content": "x"}]}
            assert (await client.post(CHAT, json={**body, "max_tokens": 3})).status_code == 200
            ghost = {"alias": "ghost:1", "repo": "nobody/nothing", "filename": "none.gguf"}
            assert (await client.post("/bodhi/v1/aliases", json=ghost)).status_code == 201
            missing = await client.post(CHAT, json={**body, "model": "ghost:1"})
            assert missing.status_code == 404
            refused = await client.post(CHAT, json={**body, "stream": "yes"})
            assert refused.status_code == 400
            stop = await client.post("/bodhi/v1/server/stop", json={"alias": DEMO_ALIAS})
            assert stop.status_code == 200
    access = [r for r in caplog.records if r.name == "bodhi_trio.access"]
    chats = [r for r in access if getattr(r, "path", None) == CHAT]
    assert [r.getMessage().split()[2:4] for r in chats] == [
        [DEMO_ALIAS, "200"],
        ["ghost:1", "404"],
        [DEMO_ALIAS, "400"],  # refused, and still counted by the alias it named
    ]
    stops = [r for r in access if getattr(r, "path", None) == "/bodhi/v1/server/stop"]
    assert [r.getMessage().split()[2:4] for r in stops] == [[DEMO_ALIAS, "200"]]
    line = chats[0].getMessage()
    assert line.startswith(f"POST {CHAT} {DEMO_ALIAS} 200 ttfb="), line
    assert line.endswith("B"), line
    doc = json.loads(JsonLogFormatter().format(chats[0]))
    assert (doc["method"], doc["status"], doc["alias"]) == ("POST", 200, DEMO_ALIAS)
    assert isinstance(doc["duration_ms"], float)
    assert doc["bytes"] > 0
    models = [r.getMessage() for r in caplog.records if r.name == "bodhi_trio.models"]
    assert any(m.startswith(f"loaded {DEMO_ALIAS} (pid ") for m in models), models
    # A load that never happened is not an unload.
    assert not any("ghost:1" in m for m in models if m.startswith("unloaded")), models
    # One line for the stop: the models logger's, no other logger's beside it.
    assert [m for m in models if m.startswith(f"unloaded {DEMO_ALIAS}")] == [
        f"unloaded {DEMO_ALIAS} (stop requested)"
    ], models
    others = [r for r in caplog.records if r.name not in ("bodhi_trio.access", "bodhi_trio.models")]
    assert not [r.getMessage() for r in others if DEMO_ALIAS in r.getMessage()]
    assert any(m.startswith("did not load ghost:1: ") for m in models), models


async def test_the_load_time_is_the_childs_start_not_its_wait_for_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A load that waited 60 s for an eviction and started in 0.25 s took 0.25 s: the
    time comes with the start's event (its ``load_secs``), not from the loading one."""
    caplog.set_level(logging.INFO, logger="bodhi_trio.models")
    observer = Observer(lambda: ServerState("cpu"), lambda alias: alias == "a:1")
    loading = ServerEvent(EventKind.LOADING, "a:1", "cpu", time=1000.0)
    start = ServerEvent(EventKind.START, "a:1", "cpu", {"pid": 7, "load_secs": 0.25}, time=1060.0)
    for event in (loading, start):
        if event.kind in Observer.EVENT_KINDS:
            await observer.on_event(event)
    found = samples(observer.render().decode())
    assert value(found, "bodhi_model_load_seconds_sum", alias="a:1") == 0.25
    assert [r.getMessage() for r in caplog.records] == ["loaded a:1 (pid 7) in 0.25 s"]


def test_token_counts_come_from_the_end_of_a_response() -> None:
    usage = b'data: {"choices":[],"usage":{"completion_tokens":12,"prompt_tokens":5}}\n\n'
    assert tokens_in_tail(b"data: [x]\n\n" + usage + b"data: [DONE]\n\n") == (5, 12)
    assert tokens_in_tail(b'{"timings":{"prompt_n":3,"predicted_n":7}}') == (3, 7)
    assert tokens_in_tail(b"data: [DONE]\n\n") == (None, None)


@pytest.mark.parametrize(
    "count", [b"1" + b"0" * 400, b"1" + b"0" * 300, b"1000000000", b"1.5e300", b"12e3"]
)
def test_a_count_that_is_no_count_is_not_taken(count: bytes) -> None:
    """A remote's answer is anyone's: 10**400 tokens made the request's record fail (an
    overflow in the counter: its log line and latencies lost), 10**300 would have set the
    token counter to infinity. A count of more than 9 digits, or not an integer, is none;
    the other count of the answer is still taken."""
    usage = b'{"usage":{"prompt_tokens":%s,"completion_tokens":7}}' % count
    assert tokens_in_tail(usage) == (None, 7)
    assert tokens_in_tail(b'{"usage":{"prompt_tokens":999999999}}') == (999_999_999, None)


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        ("evicted to make room for 'b'", "eviction"),
        ("idle for 300 s", "idle"),
        ("variant change to cuda", "variant"),
        ("stop requested", "stop"),
    ],
)
def test_unload_causes_are_a_bounded_set(reason: str, cause: str) -> None:
    assert unload_cause(reason) == cause


async def test_an_alias_is_looked_up_once_for_its_label() -> None:
    """A request's alias becomes a label only if it is an alias; found once, it is not
    looked up again (a lookup reads the alias file's stat, per request)."""
    looked_up: list[str] = []

    def known_alias(name: str) -> bool:
        looked_up.append(name)
        return name == "real:alias"

    observer = Observer(lambda: ServerState("cpu"), known_alias)

    async def app(
        scope: object, receive: object, send: Callable[[object], Awaitable[None]]
    ) -> None:
        note_request(route=CHAT, alias=scope["alias"])  # type: ignore[index]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    async def send(message: object) -> None:
        pass

    observed = observer.middleware(app)
    with trio.fail_after(5):
        for alias in ("real:alias", "real:alias", "made:up", "made:up", "real:alias"):
            scope = {"type": "http", "method": "POST", "path": CHAT, "alias": alias}
            await observed(scope, None, send)
    assert looked_up == ["real:alias", "made:up", "made:up"]
    found = samples(observer.render().decode())
    assert value(found, "bodhi_requests_total", alias="real:alias", route=CHAT, status="200") == 3
    assert value(found, "bodhi_requests_total", alias="", route=CHAT, status="200") == 2


async def test_a_path_cannot_forge_a_log_line(
    tmp_path: Path, hub_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A percent-encoded newline or escape in a path (any web page can send one with an
    <img>) is written escaped: one request, one line."""
    caplog.set_level(logging.INFO, logger="bodhi_trio")
    forged = "/ping%0a2026-12-03 14:58:04,275 INFO bodhi_trio.serve: FORGED%1b[31m"
    with trio.fail_after(60):
        async with (
            running_server(tmp_path / "home", hub_cache) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            await client.get(forged)
    lines = [r.getMessage() for r in caplog.records if r.name == "bodhi_trio.access"]
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert "\x1b" not in lines[0]
    assert lines[0].startswith("GET /ping\\n2026-12-03 14:58:04,275 INFO"), lines[0]
    assert "FORGED\\x1b[31m" in lines[0]
