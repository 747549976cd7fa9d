"""HTTP/1.1 response framing, for our own clients: the head, and chunked bodies.

Why not h11 here: it turns every chunk into an event object through a state
machine, and relaying thousands of small SSE chunks a second that parse was the
largest single cost of the relay (profiled: a quarter of its CPU on short
streams). Here a chunked body is decoded with ``bytes.find`` over whatever
arrived, and every complete chunk in it is handed on at once.

Only what a client of llama-server needs: a status line, headers, and a body
framed by ``Transfer-Encoding: chunked``, ``Content-Length`` or the end of the
connection. Malformed framing raises :class:`FramingError`.

It lives in the core layer, below everything that reads responses, because it does
no I/O and imports nothing of ours: the child's readiness probe (``_llama``), the pooled
upstream client (``_transport``) and the benchmark client (``_bench``) all read their
heads with :func:`split_head`.
"""

from __future__ import annotations

import re
from typing import final

import attrs

__all__ = [
    "FIELD_NAME",
    "MAX_HEAD_BYTES",
    "MAX_INFORMATIONAL_HEADS",
    "BodyDecoder",
    "ChunkedDecoder",
    "FramingError",
    "ResponseHead",
    "parse_head",
    "split_head",
]

MAX_HEAD_BYTES = 65536
"""The most a response's heads may take together, its informational (1xx) heads with it."""
MAX_INFORMATIONAL_HEADS = 8
"""Informational heads before the final one, at most (llama-server sends none: we never
send ``Expect``); a peer that sends more is refused, not read for ever."""
_MAX_SIZE_LINE = 4096
_MAX_TRAILER_BYTES = 65536
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9]{2})(?: (.*))?")  # 100-599, RFC 9110
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A header's name: an RFC 9110 token, as h11 reads and writes it."""


class FramingError(ValueError):
    """The peer's bytes are not a well-formed HTTP/1.1 response."""


@attrs.frozen
class ResponseHead:
    """A response's status line and headers (names lower-case, repeats joined with ``, ``).

    Attributes:
        status: The status code.
        headers: The header fields.
        length: ``Content-Length``, or ``None`` (chunked, or until the connection ends).
        chunked: The body uses chunked framing.
        keep_alive: The connection may carry another request after this response.
    """

    status: int
    headers: dict[str, str]
    length: int | None
    chunked: bool
    keep_alive: bool

    @property
    def informational(self) -> bool:
        """A 1xx answer: another head follows it."""
        return 100 <= self.status < 200

    @property
    def delimited(self) -> bool:
        """The body's end is known without the connection closing."""
        return self.chunked or self.length is not None


def parse_head(head: bytes) -> ResponseHead:
    """Parse a response head: everything before the blank line that ends it.

    Raises:
        FramingError: Not a valid HTTP/1.x status line and header block.
    """
    lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise FramingError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or FIELD_NAME.fullmatch(name) is None:
            raise FramingError(f"malformed header line: {line[:80]!r}")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    status = int(match.group(2))
    tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
    keep_alive = "close" not in tokens and (match.group(1) == b"1" or "keep-alive" in tokens)
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = None
    if not chunked and "content-length" in headers:
        declared = headers["content-length"].split(",")[0].strip()
        if not (declared.isascii() and declared.isdigit()):  # "²".isdigit() is true
            raise FramingError(f"bad Content-Length: {headers['content-length']!r}")
        length = int(declared)
    if status in (204, 304) or 100 <= status < 200:
        length, chunked = 0, False
    return ResponseHead(status, headers, length, chunked, keep_alive)


def split_head(data: bytes) -> tuple[ResponseHead, bytes] | None:
    """The first final (non-1xx) response head at the start of ``data``, and the bytes
    after it (the start of the body); ``None`` while the head is not complete.

    Call it again with more bytes appended until it returns a head. The informational
    heads before it count towards :data:`MAX_HEAD_BYTES` with it, and are at most
    :data:`MAX_INFORMATIONAL_HEADS`: a peer that sends them without end is refused
    within a bounded read, and each call's work is bounded by that read.

    Raises:
        FramingError: A head is malformed, none ended within :data:`MAX_HEAD_BYTES`, or
            more than :data:`MAX_INFORMATIONAL_HEADS` informational heads came first.
    """
    start = 0
    for _ in range(MAX_INFORMATIONAL_HEADS + 1):
        end = data.find(b"\r\n\r\n", start, MAX_HEAD_BYTES + 4)
        if end < 0:
            if len(data) > MAX_HEAD_BYTES:
                raise FramingError(f"no end of the response head in {MAX_HEAD_BYTES} bytes")
            return None
        head = parse_head(data[start:end])
        start = end + 4
        if not head.informational:
            return head, data[start:]
    raise FramingError(f"more than {MAX_INFORMATIONAL_HEADS} informational (1xx) heads")


@final
class ChunkedDecoder:
    """Removes chunked framing from a body fed in arbitrary pieces.

    ``feed`` returns the payload bytes that arrived (possibly empty); ``done`` turns
    true after the last chunk and its trailers, and ``leftover`` holds whatever
    followed them.
    """

    __slots__ = ("_buf", "_crlf", "_need", "_trailer", "done", "leftover")

    def __init__(self) -> None:
        self._buf = b""
        self._need = 0  # payload bytes still owed by the current chunk
        self._crlf = False  # the CRLF after a chunk's payload is next
        self._trailer = False  # past the last chunk: trailer lines until a blank one
        self.done = False
        self.leftover = b""

    def whole_chunk(self, data: bytes) -> int:
        """Where the payload of ``data`` begins if ``data`` is exactly one whole chunk with a
        payload (a size line without extensions, the payload, CRLF) and the decoder is
        between chunks; else 0. Such a read needs no feeding: the decoder stays between
        chunks, and the chunk can be handed on framed as it came (the relay's way for a
        model's tokens, one per read).
        """
        if self._buf or self._need or self._crlf or self._trailer:
            return 0
        eol = data.find(b"\r\n")
        if eol > 0 and _HEX.fullmatch(data, 0, eol) is not None:
            size = int(data[:eol], 16)
            if size and len(data) == eol + size + 4 and data.endswith(b"\r\n"):
                return eol + 2
        return 0

    def whole_chunks(self, data: bytes) -> bytes | None:
        """The payload of ``data`` if it is a run of whole chunks with payloads (each as
        :meth:`whole_chunk` says of one) and the decoder is between chunks; else None.
        Such a read needs no feeding either: a model's tokens that piled up while the
        relay was busy (two or three events in one read) are handed on framed as they
        came, as one token is.
        """
        if self._buf or self._need or self._crlf or self._trailer:
            return None
        payloads: list[bytes] = []
        position, end = 0, len(data)
        while position < end:
            eol = data.find(b"\r\n", position)
            if eol <= position or _HEX.fullmatch(data, position, eol) is None:
                return None
            start = eol + 2
            stop = start + int(data[position:eol], 16)
            if stop == start or data[stop : stop + 2] != b"\r\n":  # the last chunk; or cut
                return None
            payloads.append(data[start:stop])
            position = stop + 2
        return b"".join(payloads) if payloads else None

    def feed(self, data: bytes) -> bytes:
        """Decode ``data`` (the next bytes received); return the payload in it.

        Raises:
            FramingError: The framing is malformed.
        """
        start = self.whole_chunk(data)
        if start:  # the usual read: one event, as llama-server writes it
            return data[start:-2]
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end and not self.done:
            if self._need:
                take = min(self._need, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._need -= take
                self._crlf = not self._need
                continue
            if self._crlf:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise FramingError("chunk payload not followed by CRLF")
                pos += 2
                self._crlf = False
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > _MAX_SIZE_LINE:
                    raise FramingError("chunk size line too long")
                break
            if self._trailer:
                if eol - pos > _MAX_TRAILER_BYTES:
                    raise FramingError("trailer too long")
                self.done = eol == pos
                pos = eol + 2
                continue
            line = buf[pos:eol]
            semicolon = line.find(b";")
            digits = line if semicolon < 0 else line[:semicolon].rstrip(b" \t")
            if _HEX.fullmatch(digits) is None:
                raise FramingError(f"bad chunk size line: {line[:40]!r}")
            size = int(digits, 16)
            pos = eol + 2
            if not size:
                self._trailer = True
            elif pos + size + 2 <= end:  # the whole chunk is here: the usual case
                if buf[pos + size : pos + size + 2] != b"\r\n":
                    raise FramingError("chunk payload not followed by CRLF")
                out.append(buf[pos : pos + size])
                pos += size + 2
            else:
                self._need = size
        if self.done:
            self.leftover, self._buf = buf[pos:], b""
        else:
            self._buf = buf[pos:]
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)


@final
class BodyDecoder:
    """A response body by the framing its head announced: chunked, ``Content-Length``, or
    until the connection closes. Feed it what each read brought; ``complete`` turns true at
    the body's end, and ``reusable`` says whether the connection may carry another request
    then (keep-alive, and nothing after the body).
    """

    __slots__ = ("_chunked", "_keep_alive", "_left", "_until_close", "complete", "reusable")

    def __init__(self, head: ResponseHead, pending: bytes) -> None:
        """``pending``: body bytes that arrived with the head (fed later, by the caller)."""
        self._keep_alive = head.keep_alive
        self._until_close = not head.delimited
        self._chunked = ChunkedDecoder() if head.chunked else None
        self._left = -1  # Content-Length bytes still to come; -1: until the connection closes
        self.complete = False
        self.reusable = False
        if self._chunked is None and head.length is not None:
            self._left = head.length
            self.complete = head.length == 0 and not pending
            self.reusable = self.complete and head.keep_alive

    @property
    def chunked(self) -> ChunkedDecoder | None:
        """The chunked decoder, for a chunked body."""
        return self._chunked

    def feed(self, data: bytes) -> bytes:
        """The payload in ``data`` (framing removed; possibly empty).

        Raises:
            FramingError: The chunked framing is malformed.
        """
        decoder = self._chunked
        if decoder is not None:
            payload = decoder.feed(data)
            if decoder.done:
                self.complete = True
                self.reusable = self._keep_alive and not decoder.leftover
            return payload
        if self._left < 0:
            return data
        payload = data[: self._left]
        self._left -= len(payload)
        if self._left == 0:
            self.complete = True
            self.reusable = self._keep_alive and len(payload) == len(data)
        return payload

    def at_eof(self) -> None:
        """The connection closed: the end of a body that runs until then.

        Raises:
            FramingError: The body's framing promised more.
        """
        if not self._until_close:
            raise FramingError("connection closed mid-body")
        self.complete = True
