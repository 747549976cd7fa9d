"""The component schemas of the OpenAPI document (:mod:`._openapi`) and the small builders
its operations share: the bodies the server checks, aliases, state and models, and the one
error envelope."""

from __future__ import annotations

from typing import Any

from bodhi_trio._config._aliases import KEEP_ALIVE_MAX, REQUEST_PARAM_KEYS
from bodhi_trio._http._routes import INTEGER_FIELDS, NUMBER_FIELDS

__all__ = [
    "ALIAS_NAME_PATTERN",
    "SCHEMAS",
    "STRING",
    "STRING_OR_STRINGS",
    "STRINGS",
    "Json",
    "completion_body",
    "json_content",
    "object_schema",
    "ref",
]

Json = dict[str, Any]

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


_STRING_OR_ARRAY: Json = {"type": ["string", "array", "null"]}
STRING_OR_STRINGS: Json = {
    "anyOf": [{"type": ["string", "null"]}, {"type": "array", "items": {"type": "string"}}]
}
"""A string, null, or a list of strings (``stop``, ``context_params``, an input)."""
_INTEGER: Json = {"type": ["integer", "null"]}
_NUMBER: Json = {"type": ["number", "null"]}


def completion_body(required: list[str], extra: Json) -> Json:
    """The fields ``_routes.validate_completion_request`` checks; others pass through."""
    properties: Json = {
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


_KEEP_ALIVE: Json = {
    "type": ["integer", "null"],
    "minimum": -1,
    "maximum": KEEP_ALIVE_MAX,
    "description": "Seconds loaded after the last response; -1 never unloads; null/absent:"
    " BODHI_KEEP_ALIVE_SECS",
}

_REQUEST_PARAMS: Json = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        "frequency_penalty": {**_NUMBER, "minimum": -2, "maximum": 2},
        "presence_penalty": {**_NUMBER, "minimum": -2, "maximum": 2},
        "temperature": {**_NUMBER, "minimum": 0, "maximum": 2},
        "top_p": {**_NUMBER, "minimum": 0, "maximum": 1},
        "max_tokens": {**_INTEGER, "minimum": 1},
        "seed": _INTEGER,
        "stop": STRING_OR_STRINGS,
        "user": {"type": ["string", "null"]},
    },
}
assert sorted(_REQUEST_PARAMS["properties"]) == sorted(REQUEST_PARAM_KEYS)


def _alias_input(*, alias_required: bool) -> Json:
    """An alias object in a request body (``Alias.from_dict``); a create (``alias``
    required) may name a local GGUF ``file`` instead of ``repo``/``filename``."""
    schema: Json = {
        "type": "object",
        "required": ["alias", "repo", "filename"] if alias_required else ["repo", "filename"],
        "additionalProperties": False,
        "properties": {
            "alias": {"$ref": "#/components/schemas/AliasName"},
            "repo": {"type": "string", "pattern": f"^{_PART}/{_PART}$"},
            "filename": {"type": "string", "pattern": f"^{_FILE_PART}(?:/{_FILE_PART})*$"},
            "snapshot": {"type": ["string", "null"], "pattern": f"^(?:{_PART}(?:/{_PART})*)?$"},
            "request_params": _REQUEST_PARAMS,
            "context_params": STRING_OR_STRINGS,
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


def object_schema(properties: Json, *required: str, closed: bool = True) -> Json:
    schema: Json = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


STRING: Json = {"type": "string"}
_NULLABLE_STRING: Json = {"type": ["string", "null"]}
STRINGS: Json = {"type": "array", "items": STRING}

SCHEMAS: Json = {
    "ErrorEnvelope": object_schema(
        {
            "error": object_schema(
                {
                    "message": STRING,
                    "type": {"type": "string", "enum": _ERROR_TYPES},
                    "code": STRING,
                    "param": _NULLABLE_STRING,
                },
                "message", "type", "code", "param",
            )
        },
        "error",
    ),
    "UpstreamError": {
        **object_schema({"error": {"type": "object"}}, "error", closed=False),
        "description": "An error body of llama-server, relayed unchanged",
    },
    "AliasName": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": ALIAS_NAME_PATTERN},
    "Alias": object_schema(
        {
            "alias": STRING,
            "repo": STRING,
            "filename": STRING,
            "snapshot": STRING,
            "request_params": {"type": "object"},
            "context_params": STRINGS,
            "keep_alive_secs": {"type": "integer", "minimum": -1, "maximum": KEEP_ALIVE_MAX},
        },
        "alias", "repo", "filename", "snapshot",
    ),
    "AliasInput": _alias_input(alias_required=True),
    "AliasPutInput": _alias_input(alias_required=False),
    "AliasList": object_schema(
        {
            "data": {"type": "array", "items": ref("Alias")},
            "problems": {
                "type": "array",
                "items": object_schema({"file": STRING, "reason": STRING}, "file", "reason"),
            },
        },
        "data", "problems",
    ),
    "ModelState": object_schema(
        {
            "alias": STRING,
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
    "State": object_schema(
        {
            "variant": STRING,
            "memory": object_schema(
                {"budget": {"type": ["integer", "null"]}, "used": {"type": "integer"}},
                "budget", "used",
            ),
            "models": {"type": "array", "items": ref("ModelState")},
        },
        "variant", "memory", "models",
        closed=False,
    ),
    "Model": object_schema(
        {
            "id": STRING,
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": STRING,
            "loaded": {"type": "boolean"},
        },
        "id", "object", "created", "owned_by", "loaded",
    ),
    "ModelList": object_schema(
        {"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}},
        "object", "data",
    ),
}  # fmt: skip


def json_content(schema: Json, description: str = "OK") -> Json:
    """A response whose body is JSON of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}
