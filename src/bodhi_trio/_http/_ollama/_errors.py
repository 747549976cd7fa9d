"""Ollama's error shape, and the checks its routes make of a body and of an answer.

Ollama's clients read an error as ``{"error": "<text>"}``; the app's one boundary
renders every error under Ollama's paths with :func:`ollama_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bodhi_trio._exceptions import (
    AliasNotFoundError,
    InvalidRequestError,
    ServerBusyError,
    UpstreamError,
)
from bodhi_trio._http._routes import Reply
from bodhi_trio._transport._whole import error_text, parse_whole

__all__ = [
    "OLLAMA_JSON",
    "is_ollama_path",
    "json_answer",
    "ollama_error",
    "ollama_json",
    "optional_bool",
    "refusal_message",
    "upstream_refusal",
]

OLLAMA_JSON = {"Content-Type": "application/json; charset=utf-8"}
"""The content type of Ollama's whole (not streamed) answers and errors."""


def is_ollama_path(path: str) -> bool:
    """Whether ``path`` is Ollama's (its errors are ``{"error": "<text>"}``)."""
    return path == "/" or path == "/api" or path.startswith("/api/")


def ollama_error(
    error: BaseException, status: int, envelope: Mapping[str, Any]
) -> tuple[int, dict[str, str]]:
    """An error (already rendered as our envelope) in Ollama's shape and status:
    ``model 'x' not found`` for an unknown alias, 503 for a full queue (not 429)."""
    message = str(envelope["error"]["message"])
    if isinstance(error, AliasNotFoundError):
        message = f"model '{error.alias}' not found"
    if isinstance(error, ServerBusyError):
        status = 503
    return status, {"error": message}


def refusal_message(body: bytes) -> str:
    """The message of llama-server's refusal (``{"error": {"message": ...}}``), or the
    start of a body that is not JSON."""
    text = error_text(body)
    try:
        parsed = parse_whole(body)
        error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        message = error.get("message", text) if isinstance(error, dict) else error
    except ValueError:  # not JSON (UnicodeDecodeError is one)
        message = text
    return str(message)


def upstream_refusal(status: int, body: bytes) -> Reply:
    """llama-server refused (a 4xx/5xx before any byte): its message, Ollama's shape."""
    message = refusal_message(body)
    return ollama_json({"error": message or f"llama-server answered {status}"}, status)


def optional_bool(body: Mapping[str, Any], field: str) -> bool | None:
    """``body[field]``, a boolean or absent (None). Raises InvalidRequestError else."""
    value = body.get(field)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequestError(f"{field} must be a boolean", param=field)
    return value


def ollama_json(value: object, status: int = 200) -> Reply:
    """``value`` as Ollama's JSON answer."""
    return Reply.json(value, status, headers=OLLAMA_JSON)


def json_answer(status: int, content: bytes) -> dict[str, Any]:
    """llama-server's whole answer, a JSON object. Raises UpstreamError if it is not one."""
    try:
        answer = parse_whole(content)
    except ValueError as exc:
        raise UpstreamError(f"llama-server answered {status} with a body that is not JSON") from exc
    if not isinstance(answer, dict):
        raise UpstreamError("llama-server answered with JSON that is not an object")
    return answer
