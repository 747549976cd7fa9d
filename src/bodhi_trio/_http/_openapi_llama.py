"""The OpenAPI paths of llama-server's other routes (Responses, Anthropic Messages,
rerank, infill, tokenize, detokenize, apply-template) and of the pass-through
``/upstream/{name}/{path}``, merged into the document by :mod:`._openapi`.

Bodies are described as the server checks them, no stricter: a JSON object whose
``model`` is a string and whose ``stream`` is a boolean; every other field is
llama-server's to judge. What comes back is llama-server's, so the answers are
described loosely (any JSON object; SSE events on the streaming routes; on the
pass-through, anything).
"""

from __future__ import annotations

from typing import Any

from bodhi_trio._context._endpoints import STREAMING_ENDPOINTS, UPSTREAM_METHODS

__all__ = ["LLAMA_ROUTES", "llama_paths"]

_Json = dict[str, Any]

LLAMA_ROUTES: dict[str, str] = {
    "/v1/responses": "OpenAI Responses, relayed to llama-server",
    "/v1/messages": "Anthropic Messages, relayed to llama-server",
    "/v1/messages/count_tokens": "Anthropic token count, relayed to llama-server",
    "/v1/rerank": "Rerank documents (the child needs --reranking and a reranker)",
    "/infill": "Fill in the middle (a model with FIM tokens)",
    "/tokenize": "Text to token ids",
    "/detokenize": "Token ids to text",
    "/apply-template": "The prompt the chat template makes of messages",
}
"""Each route of ``_context._endpoints.ENDPOINTS`` beyond the three OpenAI ones."""

_RELAYED_ERROR: _Json = {
    "anyOf": [
        {"$ref": "#/components/schemas/ErrorEnvelope"},
        {"$ref": "#/components/schemas/UpstreamError"},
    ]
}
_SSE_EVENT: _Json = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}
_ERROR_TEXT = {
    400: "Bad JSON, or 'model'/'stream' of the wrong type; or refused by llama-server",
    401: "Missing or wrong API key",
    403: "Foreign Host or Origin; or an API key where an admin key is needed",
    404: "No such alias or model file (or relayed from llama-server)",
    413: "Body larger than BODHI_MAX_BODY_BYTES",
    429: "server_busy: BODHI_MAX_QUEUE requests for this model admitted already (Retry-After)",
    500: "llama-server missing or failed to start",
    501: "Relayed from llama-server (e.g. no FIM tokens, no --reranking)",
    502: "llama-server unreachable or its connection broke",
    503: "Shutting down, the response was interrupted, insufficient_memory or"
    " answers_over_budget (Retry-After)",
}


def _errors(statuses: tuple[int, ...], schema: _Json) -> _Json:
    return {
        str(status): {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": schema}},
        }
        for status in sorted({*statuses, 401, 403})
    }


def _relayed_route(path: str, summary: str) -> _Json:
    properties: _Json = {
        "model": {"type": "string", "minLength": 1, "examples": ["demo:tiny"]},
        "stream": {"type": ["boolean", "null"]},
    }
    ok: _Json = {"application/json": {"schema": {"type": "object"}}}
    if path in STREAMING_ENDPOINTS:
        ok["text/event-stream"] = {"schema": _SSE_EVENT}
    body = {"type": "object", "required": ["model"], "properties": properties}
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": {"description": "llama-server's answer, relayed", "content": ok},
                **_errors((400, 404, 413, 429, 500, 501, 502, 503), _RELAYED_ERROR),
            },
        }
    }


def _upstream() -> _Json:
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "The alias whose child gets the request (loaded first if need be)",
        "schema": {"type": "string", "minLength": 1},
    }
    path = {
        "name": "path",
        "in": "path",
        "required": True,
        "description": "The path under the child: no empty, '.' or '..' segments,"
        " backslashes or control characters; the query string is passed on as it is",
        "schema": {"type": "string", "minLength": 1, "pattern": r"^[^\x00-\x1f\x7f\\]+$"},
    }
    item: _Json = {"parameters": [name, path]}
    for method in UPSTREAM_METHODS:
        if method == "HEAD":  # served with GET
            continue
        operation: _Json = {
            "summary": f"{method} passed through to the alias's llama-server (admin)",
            "responses": {
                # Any status may be the child's, so none is ours alone to describe.
                "default": {
                    "description": "The child's answer (status, headers, body) as it gave"
                    " it; or ours, {error: {...}}: 400 a refused path, query or content"
                    " type, 401/403, 404 alias_not_found, 413, 429, 500, 502, 503"
                },
            },
        }
        if method in ("POST", "PUT", "PATCH"):
            operation["requestBody"] = {
                "required": False,
                "description": "Sent as it is, with its Content-Type",
                "content": {"application/json": {"schema": {}}},
            }
        item[method.lower()] = operation
    return item


def llama_paths() -> _Json:
    """The paths of :data:`LLAMA_ROUTES` and of ``/upstream/{name}/{path}``."""
    paths = {path: _relayed_route(path, summary) for path, summary in LLAMA_ROUTES.items()}
    paths["/upstream/{name}/{path}"] = _upstream()
    return paths
