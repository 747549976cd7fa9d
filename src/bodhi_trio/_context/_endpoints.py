"""Which llama-server routes the context forwards, with which alias defaults, and the
checked request target of a pass-through (``/upstream/{alias}/{path}``).

Every route of :data:`ENDPOINTS` takes a JSON body whose ``model`` names an alias.
An alias's ``request_params`` are generation defaults in OpenAI's spelling; each
route gets only the ones it understands, under the name it reads them by
(:data:`PARAM_NAMES`), so nothing reaches llama-server that the route would
misread or refuse:

- chat and text completions: all of them, as named;
- ``/v1/responses`` (OpenAI Responses): ``temperature``, ``top_p``, ``user``, and
  ``max_tokens`` as ``max_output_tokens``;
- ``/v1/messages`` (Anthropic): ``temperature``, ``top_p``, ``max_tokens``, and
  ``stop`` as ``stop_sequences`` (always a list);
- ``/infill``: all but ``user`` (llama-server's native sampling fields);
- embeddings, token counting, rerank, tokenize, detokenize, apply-template: none.

A length default is left out when the request sets its length under any name the
route reads (:data:`LENGTH_FIELDS`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bodhi_trio._exceptions import InvalidRequestError

if TYPE_CHECKING:
    from bodhi_trio._config._aliases import RequestParams

__all__ = [
    "ENDPOINTS",
    "LENGTH_FIELDS",
    "PARAM_NAMES",
    "STREAMING_ENDPOINTS",
    "UPSTREAM_METHODS",
    "fill_request_params",
    "required_string",
    "upstream_target",
]

_ALL = {
    "frequency_penalty": "frequency_penalty",
    "max_tokens": "max_tokens",
    "presence_penalty": "presence_penalty",
    "seed": "seed",
    "stop": "stop",
    "temperature": "temperature",
    "top_p": "top_p",
    "user": "user",
}
_NONE: Mapping[str, str] = {}

PARAM_NAMES: Mapping[str, Mapping[str, str]] = {
    "/v1/chat/completions": _ALL,
    "/v1/completions": _ALL,
    "/v1/embeddings": _NONE,
    "/v1/responses": {
        "temperature": "temperature",
        "top_p": "top_p",
        "user": "user",
        "max_tokens": "max_output_tokens",
    },
    "/v1/messages": {
        "temperature": "temperature",
        "top_p": "top_p",
        "max_tokens": "max_tokens",
        "stop": "stop_sequences",
    },
    "/v1/messages/count_tokens": _NONE,
    "/v1/rerank": _NONE,
    "/infill": {key: name for key, name in _ALL.items() if key != "user"},
    "/tokenize": _NONE,
    "/detokenize": _NONE,
    "/apply-template": _NONE,
}
"""Per route: alias ``request_params`` key -> the request field it fills."""

LENGTH_FIELDS: Mapping[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("max_tokens", "max_completion_tokens"),
    "/v1/completions": ("max_tokens", "max_completion_tokens"),
    "/v1/responses": ("max_output_tokens",),
    "/v1/messages": ("max_tokens",),
    "/infill": ("n_predict", "max_tokens", "max_completion_tokens"),
}
"""Per route: the request fields that set the length; any of them present keeps the
alias's ``max_tokens`` out."""

ENDPOINTS: tuple[str, ...] = tuple(PARAM_NAMES)
"""The llama-server routes :meth:`SharedContext.forward` accepts (and the HTTP app serves)."""

STREAMING_ENDPOINTS = frozenset(
    ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/infill")
)
"""The routes where ``"stream": true`` makes llama-server answer with Server-Sent Events."""

UPSTREAM_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
"""The methods a pass-through may use (no CONNECT, TRACE or OPTIONS)."""

# A path segment may hold any text but control characters and backslashes (which some
# servers read as "/"); "." and ".." and empty segments are refused, not resolved.
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f\\]")
# RFC 3986 query characters, "%" only as the start of an escape.
_QUERY = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
_CONTENT_TYPE = re.compile(r"[\x20-\x7e]{1,256}")
_MAX_TARGET = 8192


def fill_request_params(
    endpoint: str, request: Mapping[str, Any], params: RequestParams
) -> Mapping[str, Any]:
    """``request`` with the alias's defaults that ``endpoint`` understands filled in.

    Only fields the request lacks are filled (present with ``null`` counts as present);
    other fields and their order are untouched, filled ones are appended.

    Returns:
        ``request`` itself when nothing applies, else a new dict.
    """
    names = PARAM_NAMES.get(endpoint, _NONE)
    if not names:
        return request
    result: dict[str, Any] | None = None
    for key, value in params.to_dict().items():
        field = names.get(key)
        if field is None or field in request:
            continue
        if key == "max_tokens" and any(f in request for f in LENGTH_FIELDS.get(endpoint, ())):
            continue
        if field == "stop_sequences" and isinstance(value, str):
            value = [value]
        if result is None:
            result = dict(request)
        result[field] = value
    return request if result is None else result


def required_string(value: object, field: str) -> str:
    """``value`` if it is a non-empty string: a request's ``model`` (or another field
    that names something).

    Raises:
        InvalidRequestError: It is missing, empty or not a string; ``param`` is ``field``.
    """
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"'{field}' is required and must be a string", param=field)
    return value


def upstream_target(method: str, path: str, query: str, content_type: str | None) -> str:
    """Check a pass-through to a child; return its request target, ``/path?query``.

    Args:
        method: The request method.
        path: The path under the child, already percent-decoded, without its leading
            ``/`` (``"props"``, ``"v1/models"``).
        query: The raw query string (still percent-encoded), or ``""``.
        content_type: The body's content type, if any.

    Returns:
        The target, percent-encoded again: nothing in it can end the request line
        or start another header, and it cannot leave the child's own paths.

    Raises:
        InvalidRequestError: A method not in :data:`UPSTREAM_METHODS`; a control
            character or backslash, an empty, ``.`` or ``..`` segment in the path; a
            query character outside RFC 3986; a target over 8 KiB; a content type
            that is not printable ASCII of at most 256 characters.
    """
    if method not in UPSTREAM_METHODS:
        raise InvalidRequestError(f"the method {method!r} cannot be passed through")
    if content_type is not None and not _CONTENT_TYPE.fullmatch(content_type):
        raise InvalidRequestError("the Content-Type must be printable ASCII, at most 256")
    segments = path.split("/")
    if _BAD_PATH_CHAR.search(path) or any(s in ("", ".", "..") for s in segments):
        raise InvalidRequestError(
            "the upstream path must be non-empty segments without '.', '..',"
            " backslashes or control characters",
            param="path",
        )
    if not _QUERY.fullmatch(query):
        raise InvalidRequestError("the query string holds characters that must be escaped")
    target = "/" + quote(path, safe=_PATH_SAFE) + (f"?{query}" if query else "")
    if len(target) > _MAX_TARGET:
        raise InvalidRequestError(f"the upstream path and query exceed {_MAX_TARGET} bytes")
    return target
