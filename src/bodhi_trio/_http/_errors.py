"""The one place where errors become HTTP answers.

Every :class:`BodhiError`, every HTTP error from the framework (unknown route, wrong
method, body too large, body too slow) and anything unexpected becomes
``{"error": {"message", "type", "code", "param"}}`` with its status; under Ollama's
paths (``ollama``) Ollama's ``{"error": "<text>"}`` and status. Both the Quart app
(:mod:`._app`) and the completion routes served without it (:mod:`._completion_route`)
answer errors through :func:`error_reply`, so the two cannot drift apart.
"""

from __future__ import annotations

import logging

from werkzeug.exceptions import HTTPException, MethodNotAllowed

from bodhi_trio._exceptions import BodhiError, RequestTooLargeError, error_envelope
from bodhi_trio._http._ollama._errors import OLLAMA_JSON, ollama_error
from bodhi_trio._http._routes import Reply
from bodhi_trio._http._sse import compact_json

__all__ = ["error_reply"]

logger = logging.getLogger("bodhi_trio.http")

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
}
_JSON = {"Content-Type": "application/json"}


def error_reply(error: BaseException, *, ollama: bool = False) -> Reply:
    """``error`` as an HTTP answer: our envelope, or (``ollama``) Ollama's shape; a
    :class:`BodhiError` with a ``retry_after`` (a cooling chain) adds ``Retry-After``.
    Anything that is neither a :class:`BodhiError` nor an HTTP error is logged with its
    traceback and answered 500 without its text."""
    if isinstance(error, HTTPException) and error.code == 413:
        error = RequestTooLargeError("the request body is too large")
    if isinstance(error, BodhiError):
        status, envelope = error.status, error.to_envelope()
    elif isinstance(error, HTTPException):
        status = error.code or 500
        code = (error.name or "error").lower().replace(" ", "_")
        error_type = _STATUS_TYPES.get(status, "internal_server_error")
        envelope = error_envelope(error.description or error.name, error_type, code)
    else:
        logger.error("unexpected error", exc_info=error)
        status, message = 500, "internal server error"
        envelope = error_envelope(message, "internal_server_error", "internal_error")
    body: object = envelope
    if ollama:
        status, body = ollama_error(error, status, envelope)
    headers = dict(OLLAMA_JSON if ollama else _JSON)
    retry_after = getattr(error, "retry_after", None)  # UnavailableError, a cooling chain
    if isinstance(error, BodhiError) and isinstance(retry_after, int):
        headers["Retry-After"] = str(retry_after)
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)  # a 405 names what is allowed
    return Reply(status, headers, compact_json(body).encode())
