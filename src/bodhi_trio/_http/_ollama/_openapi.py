"""The Ollama routes' part of the OpenAPI document (merged into :mod:`.._openapi`).

Request bodies list the fields the routes check (others are ignored, as Ollama does);
every error is Ollama's ``{"error": "<text>"}``; streamed answers are
``application/x-ndjson`` lines.
"""

from __future__ import annotations

from typing import Any

from bodhi_trio._http._openapi_schemas import STRING_OR_STRINGS, json_content, object_schema

__all__ = ["ollama_paths"]

_Json = dict[str, Any]

_NULLABLE_STRING: _Json = {"type": ["string", "null"]}
_NUMBER: _Json = {"type": ["number", "null"]}
_BOOLEAN: _Json = {"type": ["boolean", "null"]}
_NAME: _Json = {"type": "string", "minLength": 1, "examples": ["demo:tiny"]}
_STOP: _Json = STRING_OR_STRINGS
_OPTIONS: _Json = {
    "type": ["object", "null"],
    "description": "Sampling options become request fields; load-time ones (num_ctx, num_batch,"
    " num_gpu, main_gpu, num_thread, use_mmap) are ignored; unknown keys are ignored",
    "properties": {
        **{
            key: _NUMBER
            for key in (
                "num_predict", "num_keep", "temperature", "top_k", "top_p", "min_p", "typical_p",
                "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty", "seed",
                "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread",
            )
        },
        "use_mmap": _BOOLEAN,
        "stop": _STOP,
    },
}  # fmt: skip
_KEEP_ALIVE: _Json = {
    "type": ["number", "string", "null"],
    "description": "Seconds, or a Go duration ('5m', '1h30m', '300ms'); 0 unloads after the"
    " request; negative never unloads",
}
_FORMAT: _Json = {"anyOf": [{"enum": ["json", ""]}, {"type": "object"}, {"type": "null"}]}
_THINK: _Json = {
    "anyOf": [{"type": ["boolean", "null"]}, {"enum": ["low", "medium", "high", "max"]}]
}
_MESSAGE: _Json = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "minLength": 1},
        "content": _NULLABLE_STRING,
        "thinking": _NULLABLE_STRING,
        "tool_name": _NULLABLE_STRING,
        "images": {"type": ["array", "null"], "maxItems": 0},
        "tool_calls": {"type": ["array", "null"], "items": {"type": "object"}},
    },
}
_ERROR: _Json = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_ERROR_TEXT = {
    400: "Bad request: invalid JSON, field type or option; a pull of a name that is not"
    " hf.co/REPO[:QUANT], or of a quant no GGUF of the repo matches",
    401: "Missing or wrong API key",
    403: "Foreign Host or Origin; or an API key on a route that needs an admin key",
    404: "model 'x' not found; a pull's repo, revision or file not on the Hub",
    409: "The destination conflicts with another alias stored in the same file; a pull's"
    " alias names another model; a pull was cancelled",
    413: "Body larger than BODHI_MAX_BODY_BYTES",
    500: "llama-server missing or failed to start",
    501: "Relayed from llama-server (embeddings not enabled)",
    502: "llama-server unreachable or its connection broke; a download failed",
    503: "Queue full, shutting down, interrupted, or larger than the memory budget",
}
_INFERENCE_ERRORS = (400, 404, 413, 500, 501, 502, 503)


def _object(properties: _Json, *required: str) -> _Json:
    """An object schema open to other fields (Ollama's clients send more than it reads)."""
    return object_schema(properties, *required, closed=False)


def _operation(
    summary: str,
    ok: _Json,
    errors: tuple[int, ...] = (),
    *,
    body: _Json | None = None,
    public: bool = False,
) -> _Json:
    operation: _Json = {"summary": summary}
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    statuses = sorted({*errors, 403, *(() if public else (401,))})
    operation["responses"] = {
        **ok,
        **{str(status): json_content(_ERROR, _ERROR_TEXT[status]) for status in statuses},
    }
    if public:
        operation["security"] = []
    return operation


def _streaming(summary: str, body: _Json) -> _Json:
    answer = {"type": "object", "required": ["done"]}
    ok = {
        "200": {
            "description": "One object (stream: false, or a load), or NDJSON lines",
            "content": {
                "application/json": {"schema": answer},
                "application/x-ndjson": {"schema": {"type": "object"}},
            },
        }
    }
    return _operation(summary, ok, _INFERENCE_ERRORS, body=body)


def _pull_body() -> _Json:
    name: _Json = {
        "type": "string",
        "description": "hf.co/OWNER/REPO[:QUANT] (also huggingface.co/...; QUANT defaults to"
        " Q4_K_M); any other name is refused with 400: only Hugging Face GGUF repos can be"
        " pulled",
        "examples": ["hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"],
    }
    return _object(
        {
            "model": name,
            "name": {**name, "description": "The legacy spelling of model"},
            "stream": _BOOLEAN,
            "insecure": {**_BOOLEAN, "description": "Accepted and ignored"},
        }
    )


def _pull_ok() -> _Json:
    progress = _object(
        {
            "status": {
                "type": "string",
                "description": "'pulling manifest', 'pulling <file>', 'verifying sha256 digest',"
                " 'writing manifest', then 'success'",
            },
            "digest": {"type": "string", "description": "The GGUF file's name"},
            "total": {"type": "integer", "minimum": 1},
            "completed": {"type": "integer", "minimum": 1},
            "error": {"type": "string", "description": "The last line of a pull that failed"},
        }
    )
    success = _object({"status": {"const": "success"}}, "status")
    return {
        "description": "NDJSON progress; a failure after the first line is one"
        ' {"error": "<text>"} line. With stream false: {"status": "success"}, or the'
        " pull's error with its status",
        "content": {
            "application/json": {"schema": success},
            "application/x-ndjson": {"schema": progress},
        },
    }


def ollama_paths() -> _Json:
    """The ``paths`` entries of the Ollama routes."""
    common: _Json = {
        "model": _NAME,
        "stream": _BOOLEAN,
        "format": _FORMAT,
        "options": _OPTIONS,
        "keep_alive": _KEEP_ALIVE,
        "think": _THINK,
    }
    chat = _object(
        {
            **common,
            "messages": {"type": ["array", "null"], "items": _MESSAGE},
            "tools": {"type": ["array", "null"]},
        },
        "model",
    )
    generate = _object(
        {
            **common,
            "prompt": _NULLABLE_STRING,
            "system": _NULLABLE_STRING,
            "raw": _BOOLEAN,
            "suffix": {"enum": ["", None]},
            "template": {"enum": ["", None]},
            "images": {"type": ["array", "null"], "maxItems": 0},
        },
        "model",
    )
    embed = _object(
        {
            "model": _NAME,
            "input": STRING_OR_STRINGS,
            "truncate": _BOOLEAN,
            "dimensions": {"type": ["integer", "null"], "minimum": 1},
            "options": _OPTIONS,
            "keep_alive": _KEEP_ALIVE,
        },
        "model",
    )
    embeddings = _object(
        {"model": _NAME, "prompt": _NULLABLE_STRING, "options": _OPTIONS,
         "keep_alive": _KEEP_ALIVE},
        "model",
    )  # fmt: skip
    named = _object({"model": _NAME, "name": _NAME, "verbose": _BOOLEAN})
    models = json_content(
        _object({"models": {"type": "array", "items": {"type": "object"}}}, "models")
    )
    done = {"200": {"description": "Done (empty body)"}}
    return {
        "/": {
            "get": _operation(
                "Liveness: 'Ollama is running'; a browser (Accept: text/html) gets the page"
                " (no API key)",
                {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {}}, "text/html": {"schema": {}}},
                    }
                },
                public=True,
            )
        },
        "/api/version": {
            "get": _operation(
                "The Ollama API level served",
                {"200": json_content(_object({"version": {"type": "string"}}, "version"))},
            )
        },
        "/api/tags": {"get": _operation("Every alias as an Ollama model", {"200": models})},
        "/api/ps": {"get": _operation("The models loaded or loading", {"200": models})},
        "/api/show": {
            "post": _operation(
                "One model: details, model_info (GGUF metadata), capabilities",
                {"200": json_content({"type": "object", "required": ["model_info"]})},
                (400, 404, 413),
                body=named,
            )
        },
        "/api/chat": {"post": _streaming("Chat (NDJSON unless stream is false)", chat)},
        "/api/generate": {"post": _streaming("Generate (NDJSON unless stream is false)", generate)},
        "/api/embed": {
            "post": _operation(
                "Embeddings, L2-normalised",
                {"200": json_content(_object({"embeddings": {"type": "array"}}, "embeddings"))},
                _INFERENCE_ERRORS,
                body=embed,
            )
        },
        "/api/embeddings": {
            "post": _operation(
                "One embedding, not normalised (legacy)",
                {"200": json_content(_object({"embedding": {"type": "array"}}, "embedding"))},
                _INFERENCE_ERRORS,
                body=embeddings,
            )
        },
        "/api/pull": {
            "post": _operation(
                "Pull a Hugging Face GGUF (hf.co/REPO[:QUANT]) as a server pull job: NDJSON"
                " progress unless stream is false; the name then works on every route",
                {"200": _pull_ok()},
                (400, 404, 409, 413, 502, 503),
                body=_pull_body(),
            )
        },
        "/api/copy": {
            "post": _operation(
                "Copy an alias to a new name",
                done,
                (400, 404, 409, 413),
                body=_object({"source": _NAME, "destination": _NAME}, "source", "destination"),
            )
        },
        "/api/delete": {"delete": _operation("Delete an alias", done, (400, 404, 413), body=named)},
    }
