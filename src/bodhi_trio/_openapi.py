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

from ._aliases import REQUEST_PARAM_KEYS

__all__ = ["openapi_document"]

_Json = dict[str, Any]

# Path-safe parts: [A-Za-z0-9_.-]+ but not "." or ".." (see _hub._is_safe_part).
_PART = r"(?:[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.{3,})"
# A file name part: no "/", "\" or NUL, and not "", "." or "..".
_FILE_PART = r"(?:[^/\\\x00]*[^/\\\x00.][^/\\\x00]*|\.{3,})"
# [A-Za-z0-9._:-]{1,64}, no "..", not starting with "." (length via maxLength).
ALIAS_NAME_PATTERN = r"^[A-Za-z0-9_:-]+(?:\.[A-Za-z0-9_:-]+)*\.?$"

_ERROR_TYPES = [
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "conflict_error",
    "internal_server_error",
    "service_unavailable",
    "upstream_error",
]

_STATUS_TEXT = {
    400: "Bad request: invalid JSON, field, alias or query parameter",
    401: "Missing or wrong API key",
    403: "Foreign Host or Origin",
    404: "No such alias or model file",
    409: "The alias (or one stored in the same file) exists",
    413: "Body larger than BODHI_MAX_BODY_BYTES",
    500: "llama-server missing or failed to start",
    501: "Relayed from llama-server (e.g. embeddings not enabled)",
    502: "llama-server unreachable or its connection broke",
    503: "Shutting down, or the response was interrupted",
}


def _nullable(schema: _Json) -> _Json:
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": [*kinds, "null"]}


_STRING_OR_ARRAY: _Json = {"type": ["string", "array", "null"]}
_INTEGER: _Json = {"type": ["integer", "null"]}
_NUMBER: _Json = {"type": ["number", "null"]}


def _completion_body(required: list[str], extra: _Json) -> _Json:
    """The fields ``_router.validate_completion_request`` checks; others pass through."""
    properties: _Json = {
        "model": {"type": "string", "minLength": 1, "examples": ["demo:tiny"]},
        **extra,
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {"type": ["object", "null"]},
        "stop": _STRING_OR_ARRAY,
    }
    for field in ("max_tokens", "max_completion_tokens", "n", "seed"):
        properties[field] = _INTEGER
    for field in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        properties[field] = _NUMBER
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": True,
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
    """An alias object in a request body (``Alias.from_dict``)."""
    return {
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
            # BodhiApp's keys: accepted and ignored.
            "source": {},
            "chat_template": {},
        },
    }


_SCHEMAS: _Json = {
    "ErrorEnvelope": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code", "param"],
                "additionalProperties": False,
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "enum": _ERROR_TYPES},
                    "code": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                },
            }
        },
    },
    "UpstreamError": {
        "description": "An error body of llama-server, relayed unchanged",
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object"}},
    },
    "AliasName": {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": ALIAS_NAME_PATTERN,
    },
    "Alias": {
        "type": "object",
        "required": ["alias", "repo", "filename", "snapshot"],
        "additionalProperties": False,
        "properties": {
            "alias": {"type": "string"},
            "repo": {"type": "string"},
            "filename": {"type": "string"},
            "snapshot": {"type": "string"},
            "request_params": {"type": "object"},
            "context_params": {"type": "array", "items": {"type": "string"}},
        },
    },
    "AliasInput": _alias_input(alias_required=True),
    "AliasPutInput": _alias_input(alias_required=False),
    "AliasList": {
        "type": "object",
        "required": ["data", "problems"],
        "additionalProperties": False,
        "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Alias"}},
            "problems": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["file", "reason"],
                    "additionalProperties": False,
                    "properties": {"file": {"type": "string"}, "reason": {"type": "string"}},
                },
            },
        },
    },
    "State": {
        "type": "object",
        "required": ["state", "alias", "variant", "pid", "port", "in_flight", "since", "error"],
        "properties": {
            "state": {"enum": ["stopped", "loading", "ready", "stopping", "crashed"]},
            "alias": {"type": ["string", "null"]},
            "variant": {"type": "string"},
            "pid": {"type": ["integer", "null"]},
            "port": {"type": ["integer", "null"]},
            "in_flight": {"type": "integer", "minimum": 0},
            "since": {"type": "number"},
            "error": {"type": ["string", "null"]},
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by", "loaded"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
            "loaded": {"type": "boolean"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "additionalProperties": False,
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
        },
    },
}


def _ref(name: str) -> _Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: _Json, description: str = "OK") -> _Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_SSE: _Json = {"text/event-stream": {"schema": {"type": "string"}}}


def _errors(*statuses: int, relay: bool = False) -> _Json:
    """Error responses; on relaying routes llama-server's own error bodies may appear too."""
    schema = (
        {"anyOf": [_ref("ErrorEnvelope"), _ref("UpstreamError")]}
        if relay
        else _ref("ErrorEnvelope")
    )
    return {str(status): _json(schema, _STATUS_TEXT[status]) for status in statuses}


def _body(schema: _Json) -> _Json:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


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
    *errors: int,
    body: _Json | None = None,
    parameters: list[_Json] | None = None,
    relay: bool = False,
    public: bool = False,
) -> _Json:
    operation: _Json = {"summary": summary}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = _body(body)
    statuses = sorted({*errors, 403, *(() if public else (401,))})
    operation["responses"] = {**responses, **_errors(*statuses, relay=relay)}
    if public:
        operation["security"] = []
    return operation


def _completion(summary: str, schema: _Json, *, streams: bool) -> _Json:
    ok = {"application/json": {"schema": {"type": "object"}}, **(_SSE if streams else {})}
    responses = {"200": {"description": "llama-server's answer, relayed", "content": ok}}
    return _operation(
        summary, responses, 400, 404, 413, 500, 501, 502, 503, body=schema, relay=True
    )


def _build() -> _Json:
    state = {"200": _json(_ref("State"))}
    chat = _completion_body(
        ["model", "messages"],
        {"messages": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
    )
    text = _completion_body(["model", "prompt"], {"prompt": {"type": ["string", "array"]}})
    embed = _completion_body(["model", "input"], {"input": {"type": ["string", "array"]}})
    logs_params = [
        {
            "name": "lines",
            "in": "query",
            "required": False,
            "description": "How many recent lines (clamped to 0..1000; default 100)",
            "schema": {"type": "integer"},
        },
        {
            "name": "follow",
            "in": "query",
            "required": False,
            "description": "'true', '1' or 'yes' streams the lines as SSE; anything else does not",
            "schema": {"type": "string"},
        },
    ]
    name_body = {
        "type": "object",
        "required": ["alias"],
        "properties": {"alias": {"type": "string", "minLength": 1}},
    }
    paths: _Json = {
        "/v1/chat/completions": {"post": _completion("OpenAI chat completion", chat, streams=True)},
        "/v1/completions": {"post": _completion("OpenAI text completion", text, streams=True)},
        "/v1/embeddings": {"post": _completion("OpenAI embeddings", embed, streams=False)},
        "/v1/models": {
            "get": _operation("Every alias as a model", {"200": _json(_ref("ModelList"))})
        },
        "/v1/models/{name}": {
            "get": _operation(
                "One alias as a model",
                {"200": _json(_ref("Model"))},
                400,
                404,
                parameters=[_NAME_PARAM],
            )
        },
        "/ping": {
            "get": _operation(
                "Liveness (no API key)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["message"],
                            "properties": {"message": {"const": "pong"}},
                        }
                    )
                },
                public=True,
            )
        },
        "/health": {
            "get": _operation(
                "State plus status ok",
                {
                    "200": _json(
                        {
                            "allOf": [
                                _ref("State"),
                                {
                                    "type": "object",
                                    "required": ["status"],
                                    "properties": {"status": {"const": "ok"}},
                                },
                            ]
                        }
                    )
                },
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This document",
                {"200": _json({"type": "object", "required": ["openapi", "paths"]})},
            )
        },
        "/bodhi/v1/state": {"get": _operation("The slot state", state)},
        "/bodhi/v1/events": {
            "get": _operation(
                "SSE: one event per slot change", {"200": {"description": "OK", "content": _SSE}}
            )
        },
        "/bodhi/v1/server/load": {
            "post": _operation("Load an alias", state, 400, 404, 413, 500, 502, 503, body=name_body)
        },
        "/bodhi/v1/server/stop": {"post": _operation("Stop the loaded model", state, 503)},
        "/bodhi/v1/server/variant": {
            "put": _operation(
                "Switch the exec variant",
                state,
                400,
                413,
                500,
                503,
                body={
                    "type": "object",
                    "required": ["variant"],
                    "properties": {
                        "variant": {"type": "string", "pattern": r"^\s*[A-Za-z0-9_]+\s*$"}
                    },
                },
            )
        },
        "/bodhi/v1/server/logs": {
            "get": _operation(
                "Recent llama-server output; follow streams it",
                {
                    "200": {
                        "description": "OK",
                        "content": {
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["lines"],
                                    "properties": {
                                        "lines": {"type": "array", "items": {"type": "string"}}
                                    },
                                }
                            )["content"],
                            **_SSE,
                        },
                    }
                },
                400,
                parameters=logs_params,
            )
        },
        "/bodhi/v1/aliases": {
            "get": _operation(
                "Every alias, and the files skipped", {"200": _json(_ref("AliasList"))}, 400
            ),
            "post": _operation(
                "Create an alias",
                {"201": _json(_ref("Alias"), "Created")},
                400,
                409,
                413,
                body=_ref("AliasInput"),
            ),
        },
        "/bodhi/v1/aliases/{name}": {
            "parameters": [_NAME_PARAM],
            "get": _operation("Read an alias", {"200": _json(_ref("Alias"))}, 400, 404),
            "put": _operation(
                "Create or replace an alias",
                {"200": _json(_ref("Alias"))},
                400,
                409,
                413,
                body=_ref("AliasPutInput"),
            ),
            "delete": _operation("Delete an alias", {"204": {"description": "Deleted"}}, 400, 404),
        },
    }
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
                    "description": "One of BODHI_API_KEYS (only when keys are set)",
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
