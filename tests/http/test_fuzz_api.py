"""Schemathesis against the live server's own ``/openapi.json`` (issue 6, bad input).

One real server (Hypercorn on port 0, the fake llama-server so loads are quick,
an API key) is fuzzed operation by operation with schema-valid and
schema-violating requests. Every answer must be documented, match its schema,
be a 4xx envelope for bad input and never a 5xx or a traceback; an error's
(status, type, code) must be a row of docs/api.md's table and its ``param`` a field
the operation takes. Afterwards the disk holds nothing but valid alias files and the
server's own log and run files.

Operations whose only input is a free-form path parameter have no schema-violating
value (Hypothesis raises ``Unsatisfiable``): they are listed in ``NO_NEGATIVE`` and
get hostile names instead; any other operation that cannot be fuzzed fails the test.

Schemathesis is synchronous (``requests``), so it runs in a worker thread while
the server runs in the test's Trio loop.
"""

from __future__ import annotations

import json
import re
import traceback
from collections import Counter
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from api_errors import ENVELOPE_KEYS, documented_fields, envelope_problem
from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._demo import DEMO_ALIAS
from bodhi_trio._http._app import create_app
from bodhi_trio._http._ollama._errors import is_ollama_path
from bodhi_trio._http._openapi import openapi_document
from bodhi_trio._http._openapi_llama import LLAMA_ROUTES
from bodhi_trio._http._routes import Routes
from bodhi_trio._http._security import AccessPolicy
from httpserver import running_server
from paths import FAKE_LLAMA_SERVER

pytestmark = pytest.mark.reliability

FAKE = str(FAKE_LLAMA_SERVER)
KEY = "fuzz-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 50  # per operation and generation mode
# Streams that never end are read for STREAM_READ seconds each, so fewer examples.
STREAMING = {
    "GET /bodhi/v1/events": 2,
    "GET /bodhi/v1/server/logs": 10,
    # Each valid body starts a pull job (a worker process) that fails once the Hub is
    # found unreachable; a few are enough.
    "POST /bodhi/v1/pull": 5,
    "POST /api/pull": 5,
}
STREAM_READ = 0.5
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', '.py", line ')
# Only a free-form path parameter: nothing violates its schema (see the docstring).
NO_NEGATIVE = {
    "GET /v1/models/{name}",
    "GET /bodhi/v1/aliases/{name}",
    "DELETE /bodhi/v1/aliases/{name}",
    "GET /ui/{name}",  # the page's files: hostile names must not reach the package's files
}
# ...so these instead: names that try to escape, hide, inject or overflow, and the file
# name (not the name) of the demo alias. None is an alias: each is a 4xx envelope.
HOSTILE_NAMES = [
    "..", "../../etc/passwd", "..%2F..%2Fetc", ".hidden", "a\x00b", "a\r\nX-Evil: 1",
    "a b", "x" * 300, "demo--tiny", "demo--tiny.yaml", "%FF%FE", "\u00e9t\u00e9", "a/b",
]  # fmt: skip


def bad_answer(label: str, status: int, content_type: str, text: str) -> str | None:
    """Why this answer breaks the bad-input contract, or None."""
    if any(marker in text for marker in TRACEBACK_MARKERS):
        return "a traceback in the body"
    if status < 400:
        return None
    method, path = label.split(" ", 1)
    if path.startswith("/upstream/") and not is_our_envelope(text):
        return None  # the child's own answer, relayed as it gave it (any status or type)
    if not content_type.startswith("application/json"):
        return f"error status {status} with Content-Type {content_type!r}"
    try:
        body = json.loads(text)
    except ValueError:
        return f"error status {status} with a body that is not JSON"
    if is_ollama_path(path):
        return ollama_problem(path, status, body)
    document = openapi_document()
    fields = documented_fields(document, method, path) if path in document["paths"] else None
    # llama-server's own errors are relayed unchanged on the inference routes.
    relay_allowed = label.startswith("POST /v1/") or path in LLAMA_ROUTES
    problem = envelope_problem(status, body, relay_allowed=relay_allowed, fields=fields)
    if problem is not None:
        return problem
    if status >= 500:
        return f"server error {status}"
    return None


def is_our_envelope(text: str) -> bool:
    """Whether ``text`` is our error envelope (not an answer a child gave)."""
    try:
        body = json.loads(text)
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and set(error) == ENVELOPE_KEYS


def ollama_problem(path: str, status: int, body: Any) -> str | None:
    """Ollama's routes answer every error with ``{"error": "<text>"}`` (docs/api.md)."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], str):
        return f"error status {status} without Ollama's error shape"
    if not body["error"]:
        return f"error status {status} without a message"
    if status >= 500 and (status, path) != (502, "/api/pull"):  # a download that failed
        return f"server error {status}"
    return None


# Random names are never aliases; half of the valid requests of these name real ones,
# so loads, relays (chat, streams, embeddings) and variant switches happen too.
KNOWN_NAMES = {
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/embeddings",
    "GET /v1/models/{name}",
    "POST /bodhi/v1/server/load",
    "PUT /bodhi/v1/server/variant",
    "GET /bodhi/v1/aliases/{name}",
    "POST /api/show",
    *(f"POST {path}" for path in LLAMA_ROUTES),
    *(
        f"{method} /upstream/{{name}}/{{path}}"
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
    ),
}


def with_known_names(case: schemathesis.Case[Any]) -> schemathesis.Case[Any]:
    if isinstance(case.body, dict):
        for field, value in {"model": DEMO_ALIAS, "alias": DEMO_ALIAS, "variant": "cpu"}.items():
            if field in case.body:
                case.body[field] = value
        case.body.pop("ignore_eos", None)  # the fake would then stream max_tokens tokens
    if case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = DEMO_ALIAS
    return case


def fuzz_operation(
    operation: Any, mode: GenerationMode, base_url: str, seen: Counter[str]
) -> list[str]:
    """Run one operation's examples; the failures (one line each plus details)."""
    label = f"{operation.method.upper()} {operation.path}"
    timeout = STREAM_READ if label in STREAMING else 30.0
    examples = STREAMING.get(label, EXAMPLES)
    found: list[str] = []

    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE and label in KNOWN_NAMES:
        strategy = st.one_of(strategy, strategy.map(with_known_names))

    @given(case=strategy)
    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),  # no shrinking: bounded time
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case[Any]) -> None:
        response = case.call(base_url=base_url, headers=AUTH, timeout=timeout)
        content_type = response.headers.get("content-type", [""])[0]
        seen[f"{label} {mode.value} {response.status_code}"] += 1
        problem = bad_answer(label, response.status_code, content_type, response.text)
        try:
            case.validate_response(response, checks=CHECKS, headers=AUTH)
        except (Exception, BaseExceptionGroup) as exc:  # FailureGroup; go on fuzzing
            problem = problem or f"schemathesis: {exc}"
        if problem is not None and len(found) < 3:
            found.append(
                f"{label} [{mode.value}] {problem}\n  request: {case.as_curl_command()}"
                f"\n  response {response.status_code}: {response.text[:300]!r}"
            )

    run()
    return found


def hostile_names(operation: Any, base_url: str, seen: Counter[str]) -> list[str]:
    """An operation of ``NO_NEGATIVE`` with each of ``HOSTILE_NAMES``: the failures."""
    label = f"{operation.method.upper()} {operation.path}"
    found: list[str] = []
    for name in HOSTILE_NAMES:
        if name == ".." and operation.path == "/ui/{name}":
            continue  # the client resolves /ui/.. to / (the page or "Ollama is running")
        case = operation.Case(path_parameters={"name": name})
        response = case.call(base_url=base_url, headers=AUTH, timeout=30)
        content_type = response.headers.get("content-type", [""])[0]
        seen[f"{label} hostile {response.status_code}"] += 1
        problem = bad_answer(label, response.status_code, content_type, response.text)
        if not 400 <= response.status_code < 500:
            problem = problem or f"status {response.status_code} for a name no alias has"
        try:
            case.validate_response(response, checks=CHECKS, headers=AUTH)
        except (Exception, BaseExceptionGroup) as exc:
            problem = problem or f"schemathesis: {exc}"
        if problem is not None:
            found.append(f"{label} [hostile {name!r}] {problem}: {response.text[:300]!r}")
    return found


def fuzz(base_url: str, seen: Counter[str]) -> tuple[list[str], set[str]]:
    """Every operation of the served document; the failures and the operations."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=AUTH, timeout=10)
    # Unknown query parameters are ignored by design; the key is sent, never fuzzed.
    schema.config.generation.update(allow_extra_parameters=False, with_security_parameters=False)
    assert schema.raw_schema == openapi_document()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    unsatisfiable: set[str] = set()
    for operation in operations:
        has_input = bool(operation.body) or bool(list(operation.iter_parameters()))
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_input else [])
        for mode in modes:
            try:
                failures += fuzz_operation(operation, mode, base_url, seen)
            except Unsatisfiable:
                unsatisfiable.add(f"{operation.label} [{mode.value}]")
            except Exception:
                failures.append(f"{operation.label} [{mode.value}]: {traceback.format_exc()}")
        if operation.label in NO_NEGATIVE:
            failures += hostile_names(operation, base_url, seen)
    # Exactly the listed operations could not be fuzzed negatively, and nothing else
    # could not be fuzzed at all: a dropped operation is a failure, not a skip.
    expected = {f"{label} [{GenerationMode.NEGATIVE.value}]" for label in NO_NEGATIVE}
    if unsatisfiable != expected:
        failures.append(
            f"Unsatisfiable: {sorted(unsatisfiable)}, expected exactly {sorted(expected)}"
        )
    return failures, {operation.label for operation in operations}


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_schemathesis_every_operation(
    tmp_path: Path, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    # Fuzzed pulls (their worker processes inherit this) must never reach the real Hub:
    # the discard port refuses at once.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with trio.fail_after(150):
        async with running_server(
            home,
            hub_cache,
            BODHI_LLAMA_SERVER=FAKE,
            BODHI_API_KEYS=KEY,
            BODHI_SSE_KEEPALIVE_SECS="0.1",
            BODHI_STOP_GRACE_SECS="1",
        ) as server:
            before = files_under(home)
            hub_before = files_under(hub_cache)
            seen: Counter[str] = Counter()
            failures, labels = await trio.to_thread.run_sync(
                fuzz, server.url, seen, abandon_on_cancel=True
            )
    print("\n".join(f"{count:4} {key}" for key, count in sorted(seen.items())))
    # Schemathesis leaves out the document's own route (fetched above instead).
    assert labels | {"GET /openapi.json"} == app_routes()
    assert not failures, "\n\n".join(failures)
    # Nothing but the home directory was written next to it; the hub cache is untouched.
    assert names_in(tmp_path) == ["home"]
    assert files_under(hub_cache) == hub_before
    # Outside aliases/, only the server's own log and run records may change.
    after = files_under(home)
    changed = {
        name
        for name in before.keys() | after.keys()
        if before.get(name) != after.get(name)
        and not name.startswith(("aliases/", "logs/", "run/"))
    }
    assert changed == set()
    # Every alias file left by successful writes is a valid alias in its own file.
    aliases_dir = home / "aliases"
    assert all(not p.name.startswith(".") for p in aliases_dir.iterdir())  # no temp files
    assert all(p.is_file() and p.suffix == ".yaml" for p in aliases_dir.iterdir())
    aliases, problems = AliasStore(aliases_dir).load()
    assert problems == []
    assert len(aliases) == len(list(aliases_dir.iterdir()))


def app_routes() -> set[str]:
    """Every ``METHOD /path`` the app serves, in OpenAPI spelling."""
    app: Any = create_app(Mock(spec=Routes), Mock(spec=AccessPolicy), max_body_bytes=1)
    app = getattr(app, "app", app)  # the Quart app inside any ASGI middleware
    routes: set[str] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)  # <path:name> -> {name}
        routes |= {f"{m} {path}" for m in rule.methods if m not in ("HEAD", "OPTIONS")}
    return routes


def test_the_document_covers_every_route() -> None:
    document = openapi_document()
    documented = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert documented == app_routes()
    assert openapi_document() == document  # deterministic
    assert json.loads(json.dumps(document)) == document  # plain JSON


def env(error_type: str, code: str, param: str | None = None) -> str:
    return json.dumps({"error": {"message": "m", "type": error_type, "code": code, "param": param}})


ENV = env("invalid_request_error", "invalid_request")
UPSTREAM = '{"error":{"code":%d,"message":"m","type":"t"}}'
JSON = "application/json"
NOT_ENVELOPE = "error status %d without the exact envelope"
TRACEBACK = 'Traceback (most recent call last):\n  File "/a.py", line 1, in <module>'
LOAD = "POST /bodhi/v1/server/load"
CHAT = "POST /v1/chat/completions"


# Known answers for the checks themselves: each problem they must see, and none where
# the answer keeps the documented contract.
@pytest.mark.parametrize(
    ("label", "status", "content_type", "text", "problem"),
    [
        ("GET /ping", 200, JSON, '{"message":"pong"}', None),
        ("GET /x", 400, JSON, ENV, None),
        ("GET /x", 400, "text/html", "<h1>Bad</h1>", "error status 400 with Content-Type 'text/html'"),  # noqa: E501
        ("GET /x", 404, JSON, '{"error":{"message":"m"}}', NOT_ENVELOPE % 404),
        ("GET /x", 422, JSON, "[1]", NOT_ENVELOPE % 422),
        ("POST /v1/completions", 400, JSON, '"x"', NOT_ENVELOPE % 400),
        ("POST /v1/completions", 400, JSON, "{]", "error status 400 with a body that is not JSON"),
        ("GET /x", 500, JSON, env("internal_server_error", "internal_error"), "server error 500"),
        ("POST /v1/embeddings", 501, JSON, UPSTREAM % 501, "server error 501"),
        ("POST /v1/embeddings", 404, JSON, UPSTREAM % 404, None),
        ("GET /x", 200, "text/plain", TRACEBACK, "a traceback in the body"),
        # Ollama's routes: their own shape
        ("POST /api/chat", 404, JSON, '{"error":"model \'x\' not found"}', None),
        ("POST /api/chat", 400, JSON, ENV, "error status 400 without Ollama's error shape"),
        ("POST /api/chat", 500, JSON, '{"error":"boom"}', "server error 500"),
        ("POST /api/pull", 502, JSON, '{"error":"the Hub is unreachable"}', None),
        ("POST /api/pull", 501, JSON, '{"error":"later"}', "server error 501"),
        # not in docs/api.md's table: an unknown code, a code under another status or type
        ("GET /x", 400, JSON, env("t", "c"), "undocumented error: 400 't' 'c'"),
        ("GET /x", 404, JSON, ENV, "undocumented error: 404 'invalid_request_error' 'invalid_request'"),  # noqa: E501
        ("GET /x", 400, JSON, env("not_found_error", "invalid_request"), "undocumented error: 400 'not_found_error' 'invalid_request'"),  # noqa: E501
        # relayed: only on inference routes, and with the status as its code
        ("POST /v1/embeddings", 404, JSON, UPSTREAM % 400, "relayed error with code 400 under status 404"),  # noqa: E501
        ("GET /bodhi/v1/state", 404, JSON, UPSTREAM % 404, NOT_ENVELOPE % 404),
        # param: a field the operation takes ("model" for an unknown alias, everywhere)
        (CHAT, 400, JSON, env("invalid_request_error", "invalid_request", "messages"), None),
        (LOAD, 400, JSON, env("invalid_request_error", "invalid_request", "alias"), None),
        (LOAD, 400, JSON, env("invalid_request_error", "invalid_request", "model"), "error param 'model' names no field of the request"),  # noqa: E501
        (LOAD, 404, JSON, env("not_found_error", "alias_not_found", "model"), None),
        (LOAD, 404, JSON, env("not_found_error", "alias_not_found", "alias"), "alias_not_found with param 'alias', documented as 'model'"),  # noqa: E501
    ],
)  # fmt: skip
def test_the_answer_checks_catch_what_they_should(
    label: str, status: int, content_type: str, text: str, problem: str | None
) -> None:
    assert bad_answer(label, status, content_type, text) == problem
