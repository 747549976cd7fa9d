"""A remote alias's API key goes to its remote in ``Authorization`` and nowhere else: not
to another target, not into logs, log files, alias listings, error bodies, the state or
the metrics; our own clients' keys never go to a remote. Plain http to a host that is
not loopback warns (once)."""

from __future__ import annotations

import json
import logging
import ssl
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from remote_helpers import chat, remote_alias

from bodhi_trio._config._remote import RemoteSpec
from bodhi_trio._context._replicas import ReplicaPool
from bodhi_trio._exceptions import UpstreamError
from bodhi_trio._transport._remote import open_remote_clients
from httpserver import running_server
from remote_stub import RemoteStub, Script, Transport, remote_stub

OUR_KEY = "our-api-key-5e1b"
KEY_VAR = "REMOTE_TEST_KEY_7C4"


def seen(stub: RemoteStub) -> str:
    """Everything a stub received, as text."""
    return json.dumps([[r.method, r.target, r.headers, r.body.decode()] for r in stub.requests])


def files_under(root: Path) -> list[str]:
    """Every file under ``root`` (BODHI_HOME: alias files, logs), as text."""
    return [p.read_text(errors="replace") for p in root.rglob("*") if p.is_file()]


async def test_the_key_goes_to_its_remote_only(
    tmp_path: Path, hub_cache: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, server_tls: ssl.SSLContext, transport: Transport,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    tls = transport.ssl_context
    key, old_key = f"sk-{uuid.uuid4().hex}", f"sk-{uuid.uuid4().hex}"
    texts: list[str] = []  # every answer our server gave
    as_client = {"Authorization": f"Bearer {OUR_KEY}"}
    with trio.fail_after(30):
        async with (
            remote_stub(ssl_context=tls) as keyed,
            remote_stub(ssl_context=tls) as plain,
            remote_stub(Script(), ssl_context=server_tls) as untrusted,
            remote_stub(ssl_context=tls) as gone,
            remote_stub(Script(stall_before_head=30), ssl_context=tls) as stalls,
        ):
            await gone.stop()
            fields: dict[str, Any] = {
                "api_key_env": KEY_VAR,
                "probe_interval_secs": 0.1,
                "cooldown_secs": 60,
                **transport.fields,
            }
            aliases = (
                remote_alias("keyed", keyed.base_url, fallback=("plain",), **fields),
                remote_alias("plain", plain.base_url, **transport.fields),
                remote_alias("untrusted", untrusted.base_url, **{**fields, "ca_bundle": None}),
                remote_alias("gone", gone.base_url, **fields),
                remote_alias("stalls", stalls.base_url, idle_timeout_secs=0.2, **fields),
                remote_alias(
                    "unset", plain.base_url, api_key_env="REMOTE_TEST_UNSET_VAR", **transport.fields
                ),
            )
            async with (
                running_server(
                    tmp_path,
                    hub_cache,
                    aliases=aliases,
                    BODHI_API_KEYS=OUR_KEY,
                    BODHI_REMOTE_KEY_ENVS=f"{KEY_VAR},REMOTE_TEST_UNSET_VAR",
                )
                as server,
                httpx.AsyncClient(base_url=server.url, headers=as_client, timeout=30) as http,
            ):  # fmt: skip

                async def call(model: str, **extra: object) -> httpx.Response:
                    response = await http.post("/v1/chat/completions", json=chat(model, **extra))
                    texts.append(f"{response.status_code} {response.headers} {response.text}")
                    return response

                # The key is read per request: a rotated one is used at once.
                monkeypatch.setenv(KEY_VAR, old_key)
                assert (await call("keyed")).status_code == 200
                monkeypatch.setenv(KEY_VAR, key)
                assert (await call("keyed")).status_code == 200
                assert (await call("keyed", stream=True)).status_code == 200
                assert [r.headers["authorization"] for r in keyed.requests] == [
                    f"Bearer {old_key}", f"Bearer {key}", f"Bearer {key}",
                ]  # fmt: skip

                # The remote refuses the key: the next target (no key of its own) gets
                # none; when it refuses too, its answer comes back.
                keyed.script = Script(status=401, body=b'{"error":"invalid api key"}')
                plain.script = Script(status=401, body=b'{"error":"no key given"}')
                refused = await call("keyed")
                assert refused.status_code == 401
                assert refused.json() == {"error": "no key given"}
                assert all("authorization" not in r.headers for r in plain.requests)

                # A 503 cools it; the probe carries the key too.
                keyed.script = Script(status=503, body=b"{}")
                await call("keyed")
                await keyed.wait_for(lambda rs: any(r.method == "GET" for r in rs))
                probes = [r for r in keyed.requests if r.method == "GET"]
                assert probes[0].target == "/v1/models"
                assert probes[0].headers["authorization"] == f"Bearer {key}"

                for model, words in [
                    ("untrusted", "certificate verify failed"),
                    ("gone", "could not connect"),
                    ("stalls", "sent nothing for 0.2 s"),
                    ("unset", "REMOTE_TEST_UNSET_VAR"),
                ]:
                    response = await call(model)
                    assert response.status_code == 502
                    assert words in response.json()["error"]["message"]

                for path in (
                    "/bodhi/v1/aliases", "/bodhi/v1/aliases/keyed", "/v1/models",
                    "/v1/models/keyed", "/bodhi/v1/state", "/metrics", "/api/tags", "/api/ps",
                    "/bodhi/v1/server/logs?lines=10000",
                ):  # fmt: skip
                    response = await http.get(path)
                    assert response.status_code == 200, path
                    texts.append(response.text)
                show = await http.post("/api/show", json={"model": "keyed"})
                texts.append(show.text)
                listed = (await http.get("/bodhi/v1/aliases/keyed")).json()
                assert KEY_VAR in json.dumps(listed)  # the variable's name, never its value

    # Our own clients' key reached no remote.
    for stub in (keyed, plain, untrusted, stalls):
        assert OUR_KEY not in seen(stub)
    assert key not in seen(plain)
    assert old_key not in seen(plain)
    assert key not in seen(stalls).replace(f"Bearer {key}", "")  # only in Authorization
    logged = [record.getMessage() for record in caplog.records] + [
        caplog.text,
        *(str(record.exc_info) for record in caplog.records if record.exc_info),
    ]
    assert any("cools" in line for line in logged)  # the failures above were logged
    on_disk = files_under(tmp_path)
    assert any(KEY_VAR in text for text in on_disk)  # the alias files name the variable
    for text in texts + logged + on_disk:
        assert key not in text
        assert old_key not in text


async def test_plain_http_to_a_host_elsewhere_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="bodhi_trio.remote")
    # 192.0.2.0/24 is TEST-NET-1: nothing answers there (the connect fails or times out).
    urls = {
        "http://192.0.2.1:9/v1": True,
        "https://192.0.2.1:9/v1": False,
        "http://127.0.0.1:9/v1": False,
        "http://localhost:9/v1": False,
    }
    with trio.fail_after(20):
        async with open_remote_clients() as clients:
            for url, warns in urls.items():
                for key_env in (KEY_VAR, None):
                    name = f"warn-{uuid.uuid4().hex[:8]}"
                    spec = RemoteSpec.from_dict(
                        {"base_url": url, "api_key_env": key_env, "connect_timeout_secs": 0.2},
                        source="t",
                    )
                    pool = ReplicaPool(name, spec, clients)
                    with pytest.MonkeyPatch.context() as env:
                        env.setenv(KEY_VAR, "sk-anything")
                        for _ in range(3):
                            with pytest.raises(UpstreamError):
                                async with pool.send("/v1/chat/completions", b"{}"):
                                    pass
                    warnings = [
                        r for r in caplog.records if name in r.getMessage() and "plain http" in
                        r.getMessage()
                    ]  # fmt: skip
                    assert len(warnings) == (1 if warns and key_env else 0), (url, key_env)
                    if warnings:
                        assert "sk-anything" not in warnings[0].getMessage()


@pytest.mark.parametrize("bad", ["\r\nX-Injected: 1", "-\r-", "-\n-", "\u00e9", "\u20ac", "\x7f"])
async def test_a_key_that_cannot_be_a_header_is_refused_unseen(
    tmp_path: Path, hub_cache: Path, transport: Transport, bad: str,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A key must not reframe the request, nor show up in the error that says so."""
    caplog.set_level(logging.DEBUG)
    key = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_VAR, key + bad)
    with trio.fail_after(30):
        async with remote_stub(ssl_context=transport.ssl_context) as stub:
            keyed = remote_alias("keyed", stub.base_url, api_key_env=KEY_VAR, **transport.fields)
            async with (
                running_server(
                    tmp_path, hub_cache, aliases=(keyed,), BODHI_REMOTE_KEY_ENVS=KEY_VAR
                ) as server,
                httpx.AsyncClient() as http,
            ):
                response = await http.post(server.url + "/v1/chat/completions", json=chat("keyed"))
    assert response.status_code == 502
    assert KEY_VAR in response.json()["error"]["message"]
    assert key not in response.text
    assert key not in caplog.text
    assert stub.requests == []


async def test_a_key_read_from_a_file_may_end_in_a_line_break(
    tmp_path: Path, hub_cache: Path, transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_VAR, " sk-from-a-file\r\n")
    with trio.fail_after(30):
        async with remote_stub(ssl_context=transport.ssl_context) as stub:
            keyed = remote_alias("keyed", stub.base_url, api_key_env=KEY_VAR, **transport.fields)
            async with (
                running_server(
                    tmp_path, hub_cache, aliases=(keyed,), BODHI_REMOTE_KEY_ENVS=KEY_VAR
                ) as server,
                httpx.AsyncClient() as http,
            ):
                response = await http.post(server.url + "/v1/chat/completions", json=chat("keyed"))
    assert response.status_code == 200
    assert stub.requests[0].headers["authorization"] == "Bearer sk-from-a-file"


async def test_a_key_goes_in_the_header_the_alias_names(
    tmp_path: Path, hub_cache: Path, transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azure OpenAI reads its key from ``api-key``, Anthropic's API from ``x-api-key``:
    ``api_key_header`` sends it there, as it is, and nowhere else (no ``Authorization``),
    and the alias as listed names the header and the variable, never the key."""
    key = f"sk-azure-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_VAR, key)
    with trio.fail_after(30):
        async with remote_stub(ssl_context=transport.ssl_context) as stub:
            azure = remote_alias(
                "azure",
                stub.base_url,
                api_key_env=KEY_VAR,
                api_key_header="api-key",
                **transport.fields,
            )
            async with (
                running_server(
                    tmp_path, hub_cache, aliases=(azure,), BODHI_REMOTE_KEY_ENVS=KEY_VAR
                ) as server,
                httpx.AsyncClient(base_url=server.url, timeout=30) as http,
            ):
                response = await http.post("/v1/chat/completions", json=chat("azure"))
                listed = await http.get("/bodhi/v1/aliases/azure")
    assert response.status_code == 200
    (request,) = stub.requests
    assert request.headers["api-key"] == key
    assert "authorization" not in request.headers
    assert listed.json()["remote"]["api_key_header"] == "api-key"
    assert key not in listed.text
    assert all(key not in text for text in files_under(tmp_path))
