"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

It describes every route of :func:`._app.create_app` with the contract in
``docs/api.md``: request bodies as the fields the server checks (unknown fields
pass through on the OpenAI routes), every error as the one envelope
``{"error": {"message", "type", "code", "param"}}``, SSE bodies as
``text/event-stream``, and the bearer API key. Built once; treat the result as
read-only (callers that want to change it take a deep copy).
"""

from __future__ import annotations

import copy
import functools

from bodhi_trio._http._ollama._openapi import ollama_paths
from bodhi_trio._http._openapi_llama import llama_paths
from bodhi_trio._http._openapi_pulls import pull_paths
from bodhi_trio._http._openapi_schemas import (
    SCHEMAS,
    STRING,
    STRINGS,
    Json,
    completion_body,
    object_schema,
    ref,
)
from bodhi_trio._http._openapi_schemas import (
    json_content as _json,  # short: the paths table below is wide
)

__all__ = ["openapi_document"]

_STATUS_TEXT = {
    400: "Bad request: invalid JSON, field, alias or query parameter",
    401: "Missing or wrong API key",
    403: "Foreign Host or Origin; or an API key on a route that needs an admin key",
    404: "No such alias or model file; or no such route (a name with a newline or '..')",
    409: "The alias (or one stored in the same file) exists",
    413: "Body larger than BODHI_MAX_BODY_BYTES",
    429: "server_busy: BODHI_MAX_QUEUE requests for this model admitted already (Retry-After)",
    500: "llama-server missing or failed to start",
    501: "Relayed from llama-server (e.g. embeddings not enabled)",
    502: "llama-server unreachable or its connection broke",
    503: "Shutting down, the response was interrupted, the model is larger than the"
    " memory budget (insufficient_memory), or answers read whole for requests in flight"
    " hold BODHI_MAX_ANSWERS_BYTES (answers_over_budget); Retry-After",
}


# Each event (schemathesis checks SSE bodies event by event); comments are not events.
_SSE_EVENT = object_schema(
    {"data": STRING, "event": STRING, "id": STRING, "retry": {"type": "integer"}},
    "data",
    closed=False,
)
_SSE: Json = {"text/event-stream": {"schema": _SSE_EVENT}}


def _errors(statuses: list[int], *, relay: bool) -> Json:
    """Error responses; on relaying routes llama-server's own error bodies may appear too."""
    envelope = ref("ErrorEnvelope")
    schema = {"anyOf": [envelope, ref("UpstreamError")]} if relay else envelope
    return {str(status): _json(schema, _STATUS_TEXT[status]) for status in statuses}


_NAME_PARAM: Json = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "An alias name (any text; names no alias can have are 404, or 400 on PUT)",
    "schema": {"type": "string", "minLength": 1},
}


def _operation(
    summary: str,
    responses: Json,
    errors: tuple[int, ...] = (),
    *,
    body: Json | None = None,
    body_required: bool = True,
    parameters: list[Json] | None = None,
    relay: bool = False,
    public: bool = False,
) -> Json:
    """One operation; 403 (Host/Origin) always, 401 unless ``public``."""
    operation: Json = {"summary": summary}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        }
    statuses = sorted({*errors, 403, *(() if public else (401,))})
    operation["responses"] = {**responses, **_errors(statuses, relay=relay)}
    if public:
        operation["security"] = []
    return operation


def _completion(summary: str, schema: Json, *, streams: bool) -> Json:
    ok = {"application/json": {"schema": {"type": "object"}}, **(_SSE if streams else {})}
    responses = {"200": {"description": "llama-server's answer, relayed", "content": ok}}
    errors = (400, 404, 413, 429, 500, 501, 502, 503)
    return _operation(summary, responses, errors, body=schema, relay=True)


def _query(name: str, schema: Json, description: str) -> Json:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}  # fmt: skip


def _build() -> Json:
    state = {"200": _json(ref("State"))}
    alias = {"200": _json(ref("Alias"))}
    chat = completion_body(
        ["model", "messages"],
        {"messages": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
    )
    text = completion_body(["model", "prompt"], {"prompt": {"type": ["string", "array"]}})
    embed = completion_body(["model", "input"], {"input": {"type": ["string", "array"]}})
    logs_params = [
        _query("lines", {"type": "integer"}, "How many recent lines (0..1000; default 100)"),
        _query("follow", STRING, "'true', '1' or 'yes' streams as SSE; anything else does not"),
        _query("alias", STRING, "Only this alias's children's output (404 for no such alias)"),
    ]
    lines = object_schema({"lines": STRINGS}, "lines")
    load_body = object_schema({"alias": {"type": "string", "minLength": 1}}, "alias", closed=False)
    # The server strips and lower-cases the name, then wants [a-z0-9_]+.
    variant = {"type": "string", "pattern": r"^\s*[A-Za-z0-9_]+\s*$"}
    variant_body = object_schema({"variant": variant}, "variant", closed=False)
    pong = object_schema({"message": {"const": "pong"}}, "message", closed=False)
    health = {
        "allOf": [ref("State"), object_schema({"status": {"const": "ok"}}, "status", closed=False)]
    }
    paths: Json = {
        "/v1/chat/completions": {"post": _completion("OpenAI chat completion", chat, streams=True)},
        "/v1/completions": {"post": _completion("OpenAI text completion", text, streams=True)},
        "/v1/embeddings": {"post": _completion("OpenAI embeddings", embed, streams=False)},
        "/v1/models": {"get": _operation("Every alias", {"200": _json(ref("ModelList"))})},
        "/v1/models/{name}": {
            "get": _operation("One alias as a model", {"200": _json(ref("Model"))}, (400, 404),
                              parameters=[_NAME_PARAM]),
        },
        "/ping": {"get": _operation("Liveness (no API key)", {"200": _json(pong)}, public=True)},
        "/health": {"get": _operation("State plus status ok", {"200": _json(health)})},
        "/metrics": {
            "get": _operation(
                "Prometheus text: requests, latencies, tokens, loads, memory by alias",
                {"200": {"description": "OK", "content": {"text/plain": {"schema": {}}}}},
            )
        },
        "/ui/{name}": {
            "get": _operation(
                "The page's script and style (no API key)",
                {"200": {"description": "OK", "content": {
                    "text/javascript": {"schema": {}}, "text/css": {"schema": {}},
                    "text/html": {"schema": {}}}}},
                (404,),
                parameters=[{"name": "name", "in": "path", "required": True,
                             "schema": {"type": "string", "minLength": 1}}],
                public=True,
            )
        },
        "/openapi.json": {
            "get": _operation("This document",
                              {"200": _json(object_schema({}, "openapi", "paths", closed=False))}),
        },
        "/bodhi/v1/state": {"get": _operation("The slot state", state)},
        "/bodhi/v1/events": {
            "get": _operation("SSE: one event per slot change",
                              {"200": {"description": "OK", "content": _SSE}}),
        },
        "/bodhi/v1/server/load": {
            "post": _operation("Load an alias beside the others", state,
                               (400, 404, 413, 429, 500, 502, 503), body=load_body),
        },
        "/bodhi/v1/server/stop": {
            "post": _operation("Stop one model ({alias}), or every model (no body)", state,
                               (400, 404, 413, 503), body=load_body, body_required=False),
        },
        "/bodhi/v1/server/variant": {
            "put": _operation("Switch the exec variant", state, (400, 413, 500, 503),
                              body=variant_body),
        },
        "/bodhi/v1/server/logs": {
            "get": _operation(
                "Recent llama-server output; follow=true streams it",
                {"200": {"description": "OK",
                         "content": {**_json(lines)["content"], **_SSE}}},
                (400, 404),
                parameters=logs_params,
            ),
        },
        "/bodhi/v1/aliases": {
            "get": _operation("Every alias, and the files skipped",
                              {"200": _json(ref("AliasList"))}, (400,)),
            "post": _operation("Create an alias", {"201": _json(ref("Alias"), "Created")},
                               (400, 409, 413), body=ref("AliasInput")),
        },
        "/bodhi/v1/aliases/{name}": {
            "parameters": [_NAME_PARAM],
            "get": _operation("Read an alias", alias, (400, 404)),
            "put": _operation("Create or replace an alias", alias, (400, 404, 409, 413),
                              body=ref("AliasPutInput")),
            "delete": _operation("Delete an alias", {"204": {"description": "Deleted"}},
                                 (400, 404)),
        },
    }  # fmt: skip
    paths.update(llama_paths())  # llama-server's other routes and /upstream/
    paths.update(ollama_paths())
    paths.update(pull_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bodhi-trio",
            "version": "0.1.0",
            "description": "A local OpenAI-compatible LLM server over llama-server (docs/api.md).",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "One of BODHI_API_KEYS or BODHI_ADMIN_KEYS (only when keys are set);"
                        " changing aliases or the server, and reading its logs, need an admin"
                        " key (docs/api.md#who-may-call-what)"
                    ),
                }
            },
        },
        "security": [{"bearer": []}],
    }


@functools.cache
def _document() -> Json:
    return _build()


def openapi_document() -> Json:
    """The OpenAPI document (a fresh deep copy of the one built at first use)."""
    return copy.deepcopy(_document())
