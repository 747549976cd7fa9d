"""h11's server side made strict, and the error bodies of requests refused before the app.

:class:`StrictH11Connection` refuses what h11 parses but must not be served: a request line
naming another HTTP version than 1.0/1.1 (505), a request with both ``Content-Length``
and ``Transfer-Encoding`` (400, the smuggling vector), and a target that is not a path
(400: ``http://host/path``, whose host would stand in for ``Host`` unchecked). Raised as a
protocol error, each is answered by :class:`~._connection.Connection`'s protocol like a
request h11 cannot parse, with the envelope :func:`error_body` makes and the fixed messages
of :data:`PARSER_ERRORS`.
"""

from __future__ import annotations

from typing import final

import h11

from bodhi_trio._exceptions import error_envelope
from bodhi_trio._http._sse import compact_json

__all__ = ["PARSER_ERRORS", "Refused", "StrictH11Connection", "error_body"]

_HTTP_VERSIONS = frozenset({b"1.0", b"1.1"})

PARSER_ERRORS: dict[int, tuple[str, str]] = {
    400: ("malformed_request", "the request is not valid HTTP/1.1"),
    431: ("headers_too_large", "the request line and headers are too large"),
    501: ("unsupported_transfer_encoding", "only Transfer-Encoding: chunked is supported"),
    505: ("http_version_not_supported", "only HTTP/1.1 (and 1.0) is served"),
}
"""What a status from the parser means (the app never saw the request): code, message."""


def error_body(message: str, error_type: str, code: str) -> bytes:
    """The error envelope, serialised as the app serialises it."""
    return compact_json(error_envelope(message, error_type, code)).encode()


class Refused(h11.RemoteProtocolError):
    """A request h11 accepts but we do not; ``code`` and message go into the envelope."""

    def __init__(self, message: str, code: str, status: int) -> None:
        super().__init__(message, error_status_hint=status)
        self.code = code


@final
class StrictH11Connection(h11.Connection):
    """h11's server side, refusing requests that parse but must not be served."""

    def __init__(self, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self.refusal: Refused | None = None

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        event = super().next_event()
        if isinstance(event, h11.Request):
            # Raised as a protocol error, Hypercorn answers with _send_error_response and
            # closes, exactly as for a request h11 itself cannot parse.
            self.refusal = _refusal_of(event)
            if self.refusal is not None:
                raise self.refusal
        return event


def _refusal_of(request: h11.Request) -> Refused | None:
    if request.http_version not in _HTTP_VERSIONS:
        code, message = PARSER_ERRORS[505]
        return Refused(message, code, 505)
    if not request.target.startswith(b"/") and request.target != b"*":
        # Absolute form (http://host/path): its host would replace Host (RFC 9112
        # section 3.2.2) and go unchecked; a proxy routing by it could be told one server
        # and reach this one. Nobody sends it to a server that is not a proxy.
        return Refused(
            "the request target must be a path (origin form), as sent to a server that"
            " is not a proxy",
            "malformed_request",
            400,
        )
    names = {name for name, _ in request.headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        return Refused(
            "a request must not have both Content-Length and Transfer-Encoding"
            " (RFC 9112 section 6.3)",
            "conflicting_framing",
            400,
        )
    return None
