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
from typing import Any

from bodhi_trio._config._aliases import KEEP_ALIVE_MAX, REQUEST_PARAM_KEYS
from bodhi_trio._http._ollama._openapi import ollama_paths
from bodhi_trio._http._openapi_llama import llama_paths
from bodhi_trio._http._openapi_pulls import pull_paths
from bodhi_trio._http._routes import INTEGER_FIELDS, NUMBER_FIELDS

__all__ = ["openapi_document"]

_Json = dict[str, Any]

# Path-safe parts: [A-Za-z0-9_.-]+ but not "." or ".." (see _hf_cache._is_safe_part).
_PART = r"(?:[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.{3,})"
# A file name part: no "/", "\" or NUL, and not "", "." or "..".
_FILE_PART = r"(?:[^/\\\x00]*[^/\\\x00.][^/\\\x00]*|\.{3,})"
# [A-Za-z0-9._:-]{1,64}, no "..", not starting with "." (length via maxLength).
ALIAS_NAME_PATTERN = r"^[A-Za-z0-9_:-]+(?:\.[A-Za-z0-9_:-]+)*\.?$"

_ERROR_TYPES = [
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "conflict_error", "rate_limit_error", "internal_server_error", "service_unavailable",
    "upstream_error",
]  # fmt: skip

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
    503: "Shutting down, the response was interrupted, or the model is larger than the"
    " memory budget (insufficient_memory); Retry-After",
}


_STRING_OR_ARRAY: _Json = {"type": ["string", "array", "null"]}
_INTEGER: _Json = {"type": ["integer", "null"]}
_NUMBER: _Json = {"type": ["number", "null"]}


def _completion_body(required: list[str], extra: _Json) -> _Json:
    """The fields ``_routes.validate_completion_request`` checks; others pass through."""
    properties: _Json = {
        "model": {"type": "string", "minLength": 1, "examples": ["demo:tiny"]},
        **extra,
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {"type": ["object", "null"]},
        "stop": _STRING_OR_ARRAY,
    }
    for field in INTEGER_FIELDS:
        properties[field] = _INTEGER
    for field in NUMBER_FIELDS:
        properties[field] = _NUMBER
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": True,
    }


_KEEP_ALIVE: _Json = {
    "type": ["integer", "null"],
    "minimum": -1,
    "maximum": KEEP_ALIVE_MAX,
    "description": "Seconds loaded after the last response; -1 never unloads; null/absent:"
    " BODHI_KEEP_ALIVE_SECS",
}

_REQUEST_PARAMS: _Json = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "frequency_penalty": {**_NUMBER, "minimum": -2, "maximum": 2},
        "presence_penalty": {**_NUMBER, "minimum": -2, "maximum": 2},
        "temperature": {**_NUMBER, "minimum": 0, "maximum": 2},
        "top_p": {**_NUMBER, "minimum": 0, "maximum": 1},
        "max_tokens": {**_INTEGER, "minimum": 1},
        "seed": _INTEGER,
        "stop": {
            "anyOf": [
                {"type": ["string", "null"]},
                {"type": "array", "items": {"type": "string"}},
            ]
        },
        "user": {"type": ["string", "null"]},
    },
}
assert sorted(_REQUEST_PARAMS["properties"]) == sorted(REQUEST_PARAM_KEYS)


def _alias_input(*, alias_required: bool) -> _Json:
    """An alias object in a request body (``Alias.from_dict``); a create (``alias``
    required) may name a local GGUF ``file`` instead of ``repo``/``filename``."""
    schema: _Json = {
        "type": "object",
        "required": ["alias", "repo", "filename"] if alias_required else ["repo", "filename"],
        "additionalProperties": False,
        "properties": {
            "alias": {"$ref": "#/components/schemas/AliasName"},
            "repo": {"type": "string", "pattern": f"^{_PART}/{_PART}$"},
            "filename": {"type": "string", "pattern": f"^{_FILE_PART}(?:/{_FILE_PART})*$"},
            "snapshot": {"type": ["string", "null"], "pattern": f"^(?:{_PART}(?:/{_PART})*)?$"},
            "request_params": _REQUEST_PARAMS,
            "context_params": {
                "anyOf": [
                    {"type": ["string", "null"]},
                    {"type": "array", "items": {"type": "string"}},
                ]
            },
            "keep_alive_secs": _KEEP_ALIVE,
            # Keys older alias files carry: accepted and ignored.
            "source": {},
            "chat_template": {},
        },
    }
    if alias_required:  # _pull_routes.PullRoutes.alias_create
        schema["required"] = ["alias"]
        schema["properties"]["file"] = {"type": "string", "minLength": 1}
        schema["anyOf"] = [{"required": ["repo", "filename"]}, {"required": ["file"]}]
    return schema


def _object(properties: _Json, *required: str, closed: bool = True) -> _Json:
    schema: _Json = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> _Json:
    return {"$ref": f"#/components/schemas/{name}"}


_STRING: _Json = {"type": "string"}
_NULLABLE_STRING: _Json = {"type": ["string", "null"]}
_STRINGS: _Json = {"type": "array", "items": _STRING}

_SCHEMAS: _Json = {
    "ErrorEnvelope": _object(
        {
            "error": _object(
                {
                    "message": _STRING,
                    "type": {"type": "string", "enum": _ERROR_TYPES},
                    "code": _STRING,
                    "param": _NULLABLE_STRING,
                },
                "message", "type", "code", "param",
            )
        },
        "error",
    ),
    "UpstreamError": {
        **_object({"error": {"type": "object"}}, "error", closed=False),
        "description": "An error body of llama-server, relayed unchanged",
    },
    "AliasName": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": ALIAS_NAME_PATTERN},
    "Alias": _object(
        {
            "alias": _STRING,
            "repo": _STRING,
            "filename": _STRING,
            "snapshot": _STRING,
            "request_params": {"type": "object"},
            "context_params": _STRINGS,
            "keep_alive_secs": {"type": "integer", "minimum": -1, "maximum": KEEP_ALIVE_MAX},
        },
        "alias", "repo", "filename", "snapshot",
    ),
    "AliasInput": _alias_input(alias_required=True),
    "AliasPutInput": _alias_input(alias_required=False),
    "AliasList": _object(
        {
            "data": {"type": "array", "items": _ref("Alias")},
            "problems": {
                "type": "array",
                "items": _object({"file": _STRING, "reason": _STRING}, "file", "reason"),
            },
        },
        "data", "problems",
    ),
    "ModelState": _object(
        {
            "alias": _STRING,
            "state": {"enum": ["stopped", "loading", "ready", "stopping", "crashed", "hung"]},
            "pid": {"type": ["integer", "null"]},
            "port": {"type": "null"},
            "in_flight": {"type": "integer", "minimum": 0},
            "queued": {"type": "integer", "minimum": 0},
            "since": {"type": "number"},
            "last_used": {"type": ["number", "null"]},
            "expires_at": {"type": ["number", "null"]},
            "memory": {"type": ["integer", "null"], "minimum": 0},
            "error": _NULLABLE_STRING,
        },
        "alias", "state", "pid", "port", "in_flight", "queued", "since", "last_used",
        "expires_at", "memory", "error",
        closed=False,
    ),
    "State": _object(
        {
            "variant": _STRING,
            "memory": _object(
                {"budget": {"type": ["integer", "null"]}, "used": {"type": "integer"}},
                "budget", "used",
            ),
            "models": {"type": "array", "items": _ref("ModelState")},
        },
        "variant", "memory", "models",
        closed=False,
    ),
    "Model": _object(
        {
            "id": _STRING,
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": _STRING,
            "loaded": {"type": "boolean"},
        },
        "id", "object", "created", "owned_by", "loaded",
    ),
    "ModelList": _object(
        {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}},
        "object", "data",
    ),
}  # fmt: skip


def _json(schema: _Json, description: str = "OK") -> _Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# Each event (schemathesis checks SSE bodies event by event); comments are not events.
_SSE_EVENT = _object(
    {"data": _STRING, "event": _STRING, "id": _STRING, "retry": {"type": "integer"}},
    "data",
    closed=False,
)
_SSE: _Json = {"text/event-stream": {"schema": _SSE_EVENT}}


def _errors(statuses: list[int], *, relay: bool) -> _Json:
    """Error responses; on relaying routes llama-server's own error bodies may appear too."""
    envelope = _ref("ErrorEnvelope")
    schema = {"anyOf": [envelope, _ref("UpstreamError")]} if relay else envelope
    return {str(status): _json(schema, _STATUS_TEXT[status]) for status in statuses}


_NAME_PARAM: _Json = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "An alias name (any text; names no alias can have are 404, or 400 on PUT)",
    "schema": {"type": "string", "minLength": 1},
}


def _operation(
    summary: str,
    responses: _Json,
    errors: tuple[int, ...] = (),
    *,
    body: _Json | None = None,
    body_required: bool = True,
    parameters: list[_Json] | None = None,
    relay: bool = False,
    public: bool = False,
) -> _Json:
    """One operation; 403 (Host/Origin) always, 401 unless ``public``."""
    operation: _Json = {"summary": summary}
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


def _completion(summary: str, schema: _Json, *, streams: bool) -> _Json:
    ok = {"application/json": {"schema": {"type": "object"}}, **(_SSE if streams else {})}
    responses = {"200": {"description": "llama-server's answer, relayed", "content": ok}}
    errors = (400, 404, 413, 429, 500, 501, 502, 503)
    return _operation(summary, responses, errors, body=schema, relay=True)


def _query(name: str, schema: _Json, description: str) -> _Json:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}  # fmt: skip


def _build() -> _Json:
    state = {"200": _json(_ref("State"))}
    alias = {"200": _json(_ref("Alias"))}
    chat = _completion_body(
        ["model", "messages"],
        {"messages": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
    )
    text = _completion_body(["model", "prompt"], {"prompt": {"type": ["string", "array"]}})
    embed = _completion_body(["model", "input"], {"input": {"type": ["string", "array"]}})
    logs_params = [
        _query("lines", {"type": "integer"}, "How many recent lines (0..1000; default 100)"),
        _query("follow", _STRING, "'true', '1' or 'yes' streams as SSE; anything else does not"),
        _query("alias", _STRING, "Only this alias's children's output (404 for no such alias)"),
    ]
    lines = _object({"lines": _STRINGS}, "lines")
    load_body = _object({"alias": {"type": "string", "minLength": 1}}, "alias", closed=False)
    # The server strips and lower-cases the name, then wants [a-z0-9_]+.
    variant = {"type": "string", "pattern": r"^\s*[A-Za-z0-9_]+\s*$"}
    variant_body = _object({"variant": variant}, "variant", closed=False)
    pong = _object({"message": {"const": "pong"}}, "message", closed=False)
    health = {
        "allOf": [_ref("State"), _object({"status": {"const": "ok"}}, "status", closed=False)]
    }
    paths: _Json = {
        "/v1/chat/completions": {"post": _completion("OpenAI chat completion", chat, streams=True)},
        "/v1/completions": {"post": _completion("OpenAI text completion", text, streams=True)},
        "/v1/embeddings": {"post": _completion("OpenAI embeddings", embed, streams=False)},
        "/v1/models": {"get": _operation("Every alias", {"200": _json(_ref("ModelList"))})},
        "/v1/models/{name}": {
            "get": _operation("One alias as a model", {"200": _json(_ref("Model"))}, (400, 404),
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
                              {"200": _json(_object({}, "openapi", "paths", closed=False))}),
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
                              {"200": _json(_ref("AliasList"))}, (400,)),
            "post": _operation("Create an alias", {"201": _json(_ref("Alias"), "Created")},
                               (400, 409, 413), body=_ref("AliasInput")),
        },
        "/bodhi/v1/aliases/{name}": {
            "parameters": [_NAME_PARAM],
            "get": _operation("Read an alias", alias, (400, 404)),
            "put": _operation("Create or replace an alias", alias, (400, 404, 409, 413),
                              body=_ref("AliasPutInput")),
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
            "schemas": _SCHEMAS,
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
def _document() -> _Json:
    return _build()


def openapi_document() -> _Json:
    """The OpenAPI document (a fresh deep copy of the one built at first use)."""
    return copy.deepcopy(_document())
