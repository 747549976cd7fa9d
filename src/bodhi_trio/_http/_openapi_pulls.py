"""The OpenAPI paths of the pull routes (:mod:`._pull_routes`), merged into the
document by :mod:`._openapi`. Bodies are described no stricter than the server
checks them (the fuzz tests require every schema violation to be refused)."""

from __future__ import annotations

from typing import Any

from bodhi_trio._http._openapi_schemas import json_content

__all__ = ["PULL_ID_PATTERN", "pull_paths"]

_Json = dict[str, Any]

PULL_ID_PATTERN = r"^[0-9a-f]{12}$"
"""What ``secrets.token_hex(6)`` makes: every pull id."""

_NULLABLE_STRING: _Json = {"type": ["string", "null"]}
_ENVELOPE: _Json = {"$ref": "#/components/schemas/ErrorEnvelope"}

_JOB: _Json = {
    "type": "object",
    "required": [
        "id", "state", "phase", "repo", "revision", "filename", "quant", "files", "aliases",
        "bytes_done", "bytes_total", "commit", "watchers", "error", "created", "finished",
    ],
    "properties": {
        "id": {"type": "string"},
        "state": {"enum": ["queued", "running", "done", "failed", "cancelled"]},
        "phase": {"type": "string"},
        "repo": {"type": "string"},
        "revision": {"type": "string"},
        "filename": _NULLABLE_STRING,
        "quant": _NULLABLE_STRING,
        "files": {"type": "array", "items": {"type": "string"}},
        "aliases": {"type": "array", "items": {"type": "string"}},
        "bytes_done": {"type": "integer", "minimum": 0},
        "bytes_total": {"type": ["integer", "null"], "minimum": 0},
        "commit": _NULLABLE_STRING,
        "watchers": {"type": "integer", "minimum": 0},
        "error": {"type": ["object", "null"]},
        "created": {"type": "number"},
        "finished": {"type": ["number", "null"]},
    },
    "additionalProperties": False,
}  # fmt: skip

_PULL_BODY: _Json = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "model": {
            **_NULLABLE_STRING,
            "examples": ["hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M"],
        },
        "repo": _NULLABLE_STRING,
        "filename": _NULLABLE_STRING,
        "revision": _NULLABLE_STRING,
        "alias": _NULLABLE_STRING,
        "stream": {"type": "boolean"},
    },
    "anyOf": [{"required": ["model"]}, {"required": ["repo", "filename"]}],
}

_STATUS = {
    400: "Bad body: not JSON, unknown field, both or neither form, bad repo, file, revision"
    " or alias; or (no stream) no GGUF file matches the quant (quant_not_found)",
    401: "Missing or wrong API key",
    403: "Foreign Host or Origin; or a key that is not an admin key",
    404: "No such pull; or (no stream) no such repo, revision or file on the Hub",
    409: "The alias names another model, or (no stream) the pull was cancelled",
    413: "Body larger than BODHI_MAX_BODY_BYTES",
    502: "(no stream) The download failed: the Hub unreachable, a size or sha256 mismatch",
    503: "Shutting down",
}


def _errors(*statuses: int) -> _Json:
    return {str(s): json_content(_ENVELOPE, _STATUS[s]) for s in sorted({*statuses, 401, 403})}


def pull_paths() -> _Json:
    """``/bodhi/v1/pull``, ``/bodhi/v1/pulls`` and ``/bodhi/v1/pulls/{pull_id}``."""
    sse_event = {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string"}},
    }
    pull_id = {
        "name": "pull_id",
        "in": "path",
        "required": True,
        "description": "A pull's id (from POST /bodhi/v1/pull or GET /bodhi/v1/pulls)",
        "schema": {"type": "string", "pattern": PULL_ID_PATTERN},
    }
    return {
        "/bodhi/v1/pull": {
            "post": {
                "summary": "Start or join the download of a model; SSE progress (admin)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _PULL_BODY}},
                },
                "responses": {
                    "200": {
                        "description": "The job's progress as SSE (one event per change, an"
                        " error event if it fails); with stream false, the finished job",
                        "content": {
                            "text/event-stream": {"schema": sse_event},
                            "application/json": {"schema": _JOB},
                        },
                    },
                    **_errors(400, 404, 409, 413, 502, 503),
                },
            }
        },
        "/bodhi/v1/pulls": {
            "get": {
                "summary": "Every pull job kept (running and the last finished ones)",
                "responses": {
                    "200": json_content(
                        {
                            "type": "object",
                            "required": ["data"],
                            "properties": {"data": {"type": "array", "items": _JOB}},
                            "additionalProperties": False,
                        }
                    ),
                    **_errors(),
                },
            }
        },
        "/bodhi/v1/pulls/{pull_id}": {
            "parameters": [pull_id],
            "get": {
                "summary": "One pull job",
                "responses": {"200": json_content(_JOB), **_errors(404)},
            },
            "delete": {
                "summary": "Cancel a pull (answers once its worker is gone)",
                "responses": {"200": json_content(_JOB, "The job, cancelled or already finished"),
                              **_errors(404)},
            },
        },
    }  # fmt: skip
