"""The one request shape the fast path reads itself, and nothing else.

A completion request from a client library arrives as one read: ``POST`` on one of the
completion routes, HTTP/1.1, a handful of plain headers, a ``Content-Length`` body.
:func:`parse_simple_request` takes exactly that and returns ``None`` for anything else,
so that h11 (made strict by :mod:`._h11_strict`) reads it as before: a request split over
reads, a query string, a second request behind the first, ``Transfer-Encoding``,
``Expect``, ``Upgrade``, a ``Connection`` header other than ``keep-alive`` or ``close``,
a repeated ``Host`` or ``Content-Length``, obsolete line folding, a bare LF, a byte that is
not printable ASCII, a head over the size limit. What it accepts, h11 accepts too and reads
the same way (the same method, target, header names lowercased, values without the spaces
around them, and body), so a request means one thing whichever reads it: there is nothing
to smuggle between the two.
"""

from __future__ import annotations

import re
from typing import final

import attrs

from bodhi_trio._core._http1 import FIELD_NAME

__all__ = ["SimpleRequest", "parse_simple_request"]

# h11's field value, ASCII only (obs-text is h11's to read): visible characters with single
# spaces or tabs between them.
_VALUE = re.compile(rb"(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?")
_REFUSED = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"te", b"trailer"})
_MAX_HEADERS = 64
_MAX_LENGTH_DIGITS = 12


@final
@attrs.frozen
class SimpleRequest:
    """A whole ``POST`` request read from one buffer.

    Attributes:
        target: The path, as sent (one of the routes it was matched against).
        headers: ``(lowercased name, value)`` pairs in their order, as h11 gives them.
        body: The body, exactly ``Content-Length`` bytes.
        close: The client sent ``Connection: close``.
    """

    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    close: bool


def parse_simple_request(
    data: bytes, targets: frozenset[bytes], max_head: int
) -> SimpleRequest | None:
    """``data`` as one whole :class:`SimpleRequest` on one of ``targets``, or ``None``.

    Args:
        data: Everything the client sent since its connection went idle.
        targets: The paths taken here.
        max_head: The most bytes the request line and headers may take.
    """
    if not data.startswith(b"POST /"):
        return None
    end = data.find(b"\r\n\r\n", 0, max_head)
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    if len(lines) > _MAX_HEADERS + 1:
        return None
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[1] not in targets:
        return None
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    hosts = 0
    close = False
    for line in lines[1:]:
        name, colon, raw_value = line.partition(b":")
        value = raw_value.strip(b" \t")
        if not colon or not FIELD_NAME.fullmatch(name) or not _VALUE.fullmatch(value):
            return None
        name = name.lower()
        if name in _REFUSED:
            return None
        if name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                return None
            length = int(value)
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            token = value.lower()
            if token == b"close":
                close = True
            elif token != b"keep-alive":
                return None
        headers.append((name, value))
    body_start = end + 4
    if length is None or hosts != 1 or len(data) - body_start != length:
        return None
    return SimpleRequest(parts[1], headers, data[body_start:], close)
