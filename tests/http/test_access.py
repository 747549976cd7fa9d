"""Who may do what (SPEC section 15): API keys, admin keys, and the route classification."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import httpx
import pytest
import trio

from bodhi_trio._config._settings import load_settings
from bodhi_trio._exceptions import (
    AdminKeyRequiredError,
    AuthenticationError,
    ForbiddenError,
    SettingsError,
)
from bodhi_trio._http._app import create_app
from bodhi_trio._http._routes import Routes
from bodhi_trio._http._security import Access, AccessPolicy, machine_host_names
from bodhi_trio._http._serve import check_bind
from httpserver import running_server
from paths import FAKE_LLAMA_SERVER

FAKE = str(FAKE_LLAMA_SERVER)
API_KEY = "api-key-3f9c"
ADMIN_KEY = "admin-key-7d21"
LOCAL = {"host": "127.0.0.1:1135"}

UPSTREAM = "/upstream/<name>/<path:path>"
# Every route the app serves and what it needs; a new route must be added here on purpose.
EXPECTED_ACCESS = {
    ("GET", "/ping"): Access.PUBLIC,
    ("GET", "/ui/<name>"): Access.PUBLIC,  # the page's files: no data in them
    ("GET", "/metrics"): Access.API,
    ("POST", "/v1/chat/completions"): Access.API,
    ("POST", "/v1/completions"): Access.API,
    ("POST", "/v1/embeddings"): Access.API,
    # llama-server's other routes: model routes like the OpenAI ones.
    ("POST", "/v1/responses"): Access.API,
    ("POST", "/v1/messages"): Access.API,
    ("POST", "/v1/messages/count_tokens"): Access.API,
    ("POST", "/v1/rerank"): Access.API,
    ("POST", "/infill"): Access.API,
    ("POST", "/tokenize"): Access.API,
    ("POST", "/detokenize"): Access.API,
    ("POST", "/apply-template"): Access.API,
    # ...and the pass-through to a child, which reaches every route of it.
    ("GET", UPSTREAM): Access.ADMIN,
    ("POST", UPSTREAM): Access.ADMIN,
    ("PUT", UPSTREAM): Access.ADMIN,
    ("PATCH", UPSTREAM): Access.ADMIN,
    ("DELETE", UPSTREAM): Access.ADMIN,
    ("GET", "/v1/models"): Access.API,
    ("GET", "/v1/models/<path:name>"): Access.API,
    ("GET", "/health"): Access.API,
    ("GET", "/openapi.json"): Access.API,
    ("GET", "/bodhi/v1/state"): Access.API,
    ("GET", "/bodhi/v1/events"): Access.API,
    ("GET", "/bodhi/v1/aliases"): Access.API,
    ("GET", "/bodhi/v1/aliases/<path:name>"): Access.API,
    ("POST", "/bodhi/v1/aliases"): Access.ADMIN,
    ("PUT", "/bodhi/v1/aliases/<path:name>"): Access.ADMIN,
    ("DELETE", "/bodhi/v1/aliases/<path:name>"): Access.ADMIN,
    ("POST", "/bodhi/v1/server/load"): Access.ADMIN,
    ("POST", "/bodhi/v1/server/stop"): Access.ADMIN,
    ("PUT", "/bodhi/v1/server/variant"): Access.ADMIN,
    ("GET", "/bodhi/v1/server/logs"): Access.ADMIN,
    # Ollama's API: liveness is public like /ping; changes need an admin key.
    ("GET", "/"): Access.PUBLIC,
    ("GET", "/api/version"): Access.API,
    ("GET", "/api/tags"): Access.API,
    ("GET", "/api/ps"): Access.API,
    ("POST", "/api/show"): Access.API,
    ("POST", "/api/chat"): Access.API,
    ("POST", "/api/generate"): Access.API,
    ("POST", "/api/embed"): Access.API,
    ("POST", "/api/embeddings"): Access.API,
    ("POST", "/api/pull"): Access.ADMIN,
    ("POST", "/api/copy"): Access.ADMIN,
    ("DELETE", "/api/delete"): Access.ADMIN,
    # Getting models: pulls need an admin key, listing them too.
    ("POST", "/bodhi/v1/pull"): Access.ADMIN,
    ("GET", "/bodhi/v1/pulls"): Access.ADMIN,
    ("GET", "/bodhi/v1/pulls/<pull_id>"): Access.ADMIN,
    ("DELETE", "/bodhi/v1/pulls/<pull_id>"): Access.ADMIN,
}


def test_every_registered_route_is_classified() -> None:
    app: Any = create_app(Mock(spec=Routes), Mock(spec=AccessPolicy), max_body_bytes=1)
    served = {
        (method, rule.rule)
        for rule in app.app.url_map.iter_rules()
        for method in rule.methods
        if method not in ("HEAD", "OPTIONS")
    }
    assert set(app.route_access) == served
    assert dict(app.route_access) == EXPECTED_ACCESS


def bearer(key: str) -> dict[str, str]:
    return {**LOCAL, "authorization": f"Bearer {key}"}


def outcome(policy: AccessPolicy, headers: dict[str, str], access: Access) -> str:
    try:
        policy.check(headers, access)
    except AdminKeyRequiredError:
        return "403"
    except AuthenticationError:
        return "401"
    return "ok"


@pytest.mark.parametrize(
    ("api_keys", "admin_keys", "headers", "expected"),
    [
        # both kinds: an API key is refused on admin routes only
        ((API_KEY,), (ADMIN_KEY,), bearer(API_KEY), ("ok", "ok", "403")),
        ((API_KEY,), (ADMIN_KEY,), bearer(ADMIN_KEY), ("ok", "ok", "ok")),
        ((API_KEY,), (ADMIN_KEY,), {**LOCAL, "x-api-key": ADMIN_KEY}, ("ok", "ok", "ok")),
        ((API_KEY,), (ADMIN_KEY,), bearer("nope"), ("ok", "401", "401")),
        ((API_KEY,), (ADMIN_KEY,), LOCAL, ("ok", "401", "401")),
        # a key listed as both is an admin key
        ((API_KEY, ADMIN_KEY), (ADMIN_KEY,), bearer(ADMIN_KEY), ("ok", "ok", "ok")),
        # only API keys (as before admin keys existed): they are admin keys
        ((API_KEY,), (), bearer(API_KEY), ("ok", "ok", "ok")),
        ((API_KEY,), (), LOCAL, ("ok", "401", "401")),
        # only admin keys: auth is on, and only they work
        ((), (ADMIN_KEY,), bearer(ADMIN_KEY), ("ok", "ok", "ok")),
        ((), (ADMIN_KEY,), bearer(API_KEY), ("ok", "401", "401")),
        ((), (ADMIN_KEY,), LOCAL, ("ok", "401", "401")),
        # no keys: no auth
        ((), (), LOCAL, ("ok", "ok", "ok")),
    ],
)
def test_policy_by_configured_keys(
    api_keys: tuple[str, ...],
    admin_keys: tuple[str, ...],
    headers: dict[str, str],
    expected: tuple[str, str, str],
) -> None:
    policy = AccessPolicy("127.0.0.1", api_keys, admin_keys=admin_keys)
    got = tuple(outcome(policy, headers, a) for a in (Access.PUBLIC, Access.API, Access.ADMIN))
    assert got == expected


@pytest.mark.parametrize(
    ("site", "access", "allowed", "refused"),
    [
        ("cross-site", Access.API, (), True),  # <img src=...> on another site's page
        ("cross-site", Access.ADMIN, (), True),
        ("cross-site", Access.PUBLIC, (), False),  # a link to the page itself
        ("cross-site", Access.API, ("*",), False),  # the operator allows every origin
        ("same-origin", Access.ADMIN, (), False),  # the page's own requests
        ("none", Access.ADMIN, (), False),  # typed into the address bar
        (None, Access.ADMIN, (), False),  # not a browser
    ],
)
def test_a_cross_site_request_without_an_origin_is_refused(
    site: str | None, access: Access, allowed: tuple[str, ...], refused: bool
) -> None:
    """Browsers send no Origin on a GET from an <img> or a link; Sec-Fetch-Site still
    tells another site's page (with keys unset, nothing else would stop it)."""
    policy = AccessPolicy("127.0.0.1", allowed_origins=frozenset(allowed))
    headers = {"host": "127.0.0.1:1135"} | ({} if site is None else {"sec-fetch-site": site})
    if refused:
        with pytest.raises(ForbiddenError, match="another site's page"):
            policy.check(headers, access)
    else:
        policy.check(headers, access)
    with_origin = headers | {"origin": "http://localhost:3000"}  # a local page's fetch
    policy.check(with_origin, access)


def test_admin_key_required_is_a_permission_error() -> None:
    error = AdminKeyRequiredError("x")
    assert isinstance(error, ForbiddenError)
    assert error.to_envelope()["error"] == {
        "message": "x",
        "type": "permission_error",
        "code": "admin_key_required",
        "param": None,
    }


def test_admin_keys_are_secret_settings(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path, env={"BODHI_API_KEYS": API_KEY, "BODHI_ADMIN_KEYS": f" {ADMIN_KEY}, ,k2 "}
    )
    assert settings.api_keys == (API_KEY,)
    assert settings.admin_keys == (ADMIN_KEY, "k2")
    assert "admin_keys=<2 hidden>" in repr(settings)
    policy = AccessPolicy("127.0.0.1", settings.api_keys, admin_keys=settings.admin_keys)
    for text in (repr(settings), repr(policy)):
        assert API_KEY not in text
        assert ADMIN_KEY not in text
    (tmp_path / "settings.yaml").write_text(f"BODHI_ADMIN_KEYS: {{{ADMIN_KEY}: 1}}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(home=tmp_path, env={})
    assert "BODHI_ADMIN_KEYS" in caught.value.message
    assert ADMIN_KEY not in caught.value.message


def test_admin_keys_alone_allow_a_network_bind(tmp_path: Path) -> None:
    check_bind(load_settings(home=tmp_path, env={"BODHI_HOST": "0.0.0.0", "BODHI_ADMIN_KEYS": "k"}))


def admin_calls() -> list[tuple[str, str, dict[str, Any]]]:
    """Every admin operation, as (method, path, request kwargs); the order matters."""
    alias = {"alias": "other", "repo": "r/r", "filename": "f.gguf"}
    return [
        ("GET", "/bodhi/v1/server/logs", {}),
        ("POST", "/bodhi/v1/aliases", {"json": alias}),
        ("PUT", "/bodhi/v1/aliases/other", {"json": alias}),
        ("DELETE", "/bodhi/v1/aliases/other", {}),
        ("PUT", "/bodhi/v1/server/variant", {"json": {"variant": "cpu"}}),
        ("POST", "/bodhi/v1/server/load", {"json": {"alias": "demo:tiny"}}),
        ("POST", "/bodhi/v1/server/stop", {}),
    ]


async def test_api_and_admin_keys_over_http(
    tmp_path: Path, hub_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    chat = {"model": "demo:tiny", "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(60):
        async with (
            running_server(
                tmp_path,
                hub_cache,
                BODHI_LLAMA_SERVER=FAKE,
                BODHI_API_KEYS=API_KEY,
                BODHI_ADMIN_KEYS=ADMIN_KEY,
            ) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            as_api = {"Authorization": f"Bearer {API_KEY}"}
            as_admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            refused = {
                f"{method} {path}": (await client.request(method, path, headers=as_api, **kw))
                for method, path, kw in admin_calls()
            }
            anonymous = await client.post("/bodhi/v1/server/load", json={"alias": "demo:tiny"})
            allowed = {
                f"{method} {path}": (await client.request(method, path, headers=as_admin, **kw))
                for method, path, kw in admin_calls()
            }
            read = {
                path: (await client.get(path, headers=as_api)).status_code
                for path in (
                    "/health",
                    "/openapi.json",
                    "/v1/models",
                    "/v1/models/demo:tiny",
                    "/bodhi/v1/state",
                    "/bodhi/v1/aliases",
                    "/bodhi/v1/aliases/demo:tiny",
                )
            }
            unknown = await client.get("/bodhi/v1/nothing", headers=as_api)
            unknown_anonymous = await client.get("/bodhi/v1/nothing")
            async with client.stream("GET", "/bodhi/v1/events", headers=as_api) as events:
                events_status = events.status_code
            completion = await client.post("/v1/chat/completions", json=chat, headers=as_api)
            admin_completion = await client.post(
                "/v1/chat/completions", json=chat, headers=as_admin
            )
    for call, response in refused.items():
        assert response.status_code == 403, call
        assert response.json()["error"]["type"] == "permission_error", call
        assert response.json()["error"]["code"] == "admin_key_required", call
    assert anonymous.status_code == 401
    assert {call: r.status_code for call, r in allowed.items()} == {
        "GET /bodhi/v1/server/logs": 200,
        "POST /bodhi/v1/aliases": 201,
        "PUT /bodhi/v1/aliases/other": 200,
        "DELETE /bodhi/v1/aliases/other": 204,
        "PUT /bodhi/v1/server/variant": 200,
        "POST /bodhi/v1/server/load": 200,
        "POST /bodhi/v1/server/stop": 200,
    }
    # No content, so no content type (Quart's default would be text/html).
    assert "content-type" not in allowed["DELETE /bodhi/v1/aliases/other"].headers
    assert set(read.values()) == {200}
    assert unknown.status_code == 404  # any valid key gets past the check to the 404
    assert unknown_anonymous.status_code == 401
    assert events_status == 200
    assert completion.status_code == 200
    assert admin_completion.status_code == 200
    assert API_KEY not in caplog.text
    assert ADMIN_KEY not in caplog.text


async def test_only_api_keys_are_admin_keys_over_http(tmp_path: Path, hub_cache: Path) -> None:
    alias = {"alias": "other", "repo": "r/r", "filename": "f.gguf"}
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache, BODHI_API_KEYS=API_KEY) as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            headers = {"Authorization": f"Bearer {API_KEY}"}
            created = await client.post("/bodhi/v1/aliases", json=alias, headers=headers)
            logs = await client.get("/bodhi/v1/server/logs", headers=headers)
            anonymous = await client.get("/bodhi/v1/server/logs")
    assert created.status_code == 201
    assert logs.status_code == 200
    assert anonymous.status_code == 401


async def test_only_admin_keys_turn_auth_on_over_http(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache, BODHI_ADMIN_KEYS=ADMIN_KEY) as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            anonymous = await client.get("/bodhi/v1/state")
            wrong = await client.get("/bodhi/v1/state", headers={"x-api-key": API_KEY})
            admin = await client.get("/bodhi/v1/server/logs", headers={"x-api-key": ADMIN_KEY})
            ping = await client.get("/ping")
    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert admin.status_code == 200
    assert ping.status_code == 200


async def test_an_origin_that_does_not_parse_is_a_403_over_http(
    tmp_path: Path, hub_cache: Path
) -> None:
    """A page cannot make the access check fail with a 500 (and a traceback in the log)."""
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache) as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            answers = [
                await client.get("/v1/models", headers={"origin": origin})
                for origin in ("http://[::1", "http://[zz]", "http://localhost:99999")
            ]
            preflight = await client.options(
                "/v1/models",
                headers={"origin": "http://[::1", "access-control-request-method": "GET"},
            )
    assert [answer.status_code for answer in answers] == [403, 403, 403]
    assert answers[0].json()["error"]["code"] == "forbidden"
    assert preflight.status_code == 403


async def test_a_header_the_check_reads_must_come_once_over_http(
    tmp_path: Path, hub_cache: Path
) -> None:
    """Two Origins (or keys) used to mean the last one: a proxy in front that appends its
    own to the client's could be read one way by it and another here. Now 400, on the
    completion routes and the app's alike."""
    twice = [
        [("origin", "http://evil.example"), ("origin", "http://localhost:3000")],
        [("authorization", "Bearer wrong"), ("authorization", f"Bearer {API_KEY}")],
        [("x-api-key", "wrong"), ("x-api-key", API_KEY)],
    ]
    chat = {"model": "demo:tiny", "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache, BODHI_API_KEYS=API_KEY) as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            answers = []
            for headers in twice:
                answers.append(await client.get("/v1/models", headers=headers))
                answers.append(
                    await client.post("/v1/chat/completions", json=chat, headers=headers)
                )
            once = await client.get("/v1/models", headers={"x-api-key": API_KEY})
    assert [answer.status_code for answer in answers] == [400] * 6
    assert {answer.json()["error"]["param"] for answer in answers} == {
        "origin",
        "authorization",
        "x-api-key",
    }
    assert once.status_code == 200


@pytest.mark.parametrize(
    ("bind", "host", "allowed"),
    [
        ("127.0.0.1", "127.0.0.1:1135", True),
        ("127.0.0.1", "localhost:1135", True),
        ("127.0.0.1", "[::1]:1135", True),
        ("127.0.0.1", "evil.example:1135", False),  # DNS rebinding
        ("127.0.0.1", "127.0.0.1.evil.example", False),
        ("127.0.0.1", "localhost:1135@evil.example", False),  # not host[:port]
        ("127.0.0.1", "[::1", False),
        ("127.0.0.1", "", False),
        ("127.0.0.1", "192.0.2.7:1135", False),  # bound to loopback: no other address
        # Bound beyond loopback: addresses and this machine's names, not another name.
        ("0.0.0.0", "evil.example:1135", False),  # rebinding to the machine's address
        ("0.0.0.0", "192.0.2.7:1135", True),
        ("0.0.0.0", "[2001:db8::7]:1135", True),
        ("0.0.0.0", "localhost:1135", True),
        ("0.0.0.0", "gpu-box:1135", True),  # the machine's host name
        ("0.0.0.0", "GPU-BOX.local:1135", True),
        ("0.0.0.0", "models.example:1135", True),  # an allowed origin's host
        ("0.0.0.0", "models.example.evil.example", False),
        ("0.0.0.0", "gpu-box:1135@evil.example", False),
        ("192.0.2.7", "192.0.2.7", True),
        ("192.0.2.7", "evil.example", False),
    ],
)
def test_host_names_this_server(bind: str, host: str, allowed: bool) -> None:
    policy = AccessPolicy(
        bind,
        allowed_origins=frozenset({"https://models.example:1135"}),
        host_names=frozenset({"gpu-box", "gpu-box.local"}),
    )
    if allowed:
        policy.check({"host": host}, Access.API)
    else:
        with pytest.raises(ForbiddenError, match="Host"):
            policy.check({"host": host}, Access.API)


def test_an_allowed_origin_that_does_not_parse_names_no_host() -> None:
    policy = AccessPolicy(
        "0.0.0.0", allowed_origins=frozenset({"http://[::1", "https://Models.Example"})
    )
    policy.check({"host": "models.example"}, Access.API)
    with pytest.raises(ForbiddenError, match="Host"):
        policy.check({"host": "evil.example"}, Access.API)


def test_every_origin_allowed_allows_every_host() -> None:
    policy = AccessPolicy("0.0.0.0", allowed_origins=frozenset({"*"}))
    policy.check({"host": "anything.example"}, Access.ADMIN)


def test_the_machines_host_names_need_no_lookup() -> None:
    name = socket.gethostname().lower()
    assert machine_host_names() == {name, f"{name}.local"}


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:3000", True),
        ("https://127.0.0.1", True),
        ("http://[::1]:8080", True),
        ("http://evil.example", False),
        ("http://evil.example\\@127.0.0.1", False),  # parsers disagree on such a host
        ("http://evil.example@127.0.0.1", False),
        ("http://127.0.0.1/path", False),  # not an origin: no browser sends it
        ("http://127.0.0.1?x", False),
        ("file://127.0.0.1", False),
        ("null", False),
        ("http://[::1", False),  # does not parse: refused (was a 500)
        ("http://[zz]:80", False),
        ("http://localhost:99999", False),  # no such port
        ("http://localhost:abc", False),
    ],
)
def test_a_loopback_origin_is_exactly_scheme_host_port(origin: str, allowed: bool) -> None:
    assert AccessPolicy("127.0.0.1").origin_allowed(origin) is allowed
