"""HTTP/1.1 response framing (`_http1`): heads and chunked bodies, split every way."""

from __future__ import annotations

import pytest

from bodhi_trio._core._http1 import ChunkedDecoder, FramingError, parse_head

EVENTS = [b'data: {"n": %d}\n\n' % i for i in range(20)] + [b"data: [DONE]\n\n"]
BODY = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in EVENTS) + b"0\r\n\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 5, 17, 64, len(BODY)])
def test_chunked_body_decodes_the_same_for_any_split(step: int) -> None:
    decoder, out = ChunkedDecoder(), b""
    for i in range(0, len(BODY), step):
        assert not decoder.done
        out += decoder.feed(BODY[i : i + step])
    assert decoder.done
    assert out == b"".join(EVENTS)
    assert decoder.leftover == b""


def test_all_complete_chunks_of_one_read_come_out_at_once() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(BODY[:-5]) == b"".join(EVENTS)  # everything but the last chunk
    assert not decoder.done
    assert decoder.feed(BODY[-5:]) == b""
    assert decoder.done


def test_one_whole_chunk_per_read_as_llama_server_writes_them() -> None:
    # the usual read (one event, one chunk) takes a shorter way: it must agree with the rest
    decoder = ChunkedDecoder()
    framed = [b"%x\r\n%s\r\n" % (len(e), e) for e in EVENTS]
    assert [decoder.feed(chunk) for chunk in framed[:3]] == EVENTS[:3]
    assert decoder.feed(b"4\r\na\r\nb\r\n") == b"a\r\nb"  # a CRLF inside the payload
    assert decoder.feed(framed[3][:7]) + decoder.feed(framed[3][7:]) == EVENTS[3]
    assert decoder.feed(framed[4] + framed[5]) == EVENTS[4] + EVENTS[5]
    assert decoder.feed(b"0005\r\nhello\r\n") == b"hello"
    assert decoder.feed(b"0\r\n\r\n") == b""
    assert decoder.done


@pytest.mark.parametrize(
    "data",
    [
        b"5\r\nhelloXY",  # no CRLF after the payload
        b"5;x=y\r\nhello\r\n",  # an extension: the decoder's way
        b"0000000000000005\r\nhello\r\n",  # 16 digits
        b" 5\r\nhello\r\n",
        b"0\r\n\r\n",  # the end is never handed on as it came
        b"5\r\nhello\r\n5\r\nworld\r\n",  # two chunks
    ],
)
def test_only_one_whole_chunk_with_a_payload_is_whole(data: bytes) -> None:
    assert ChunkedDecoder().whole_chunk(data) == 0


@pytest.mark.parametrize(
    ("data", "payload"),
    [
        (b"5\r\nhello\r\n", b"hello"),
        (b"5\r\nhello\r\n5\r\nworld\r\n", b"helloworld"),
        (b"5\r\nhello\r\n4\r\na\r\nb\r\n0004\r\n\r\n\r\n\r\n", b"helloa\r\nb\r\n\r\n"),
        (b"5\r\nhello\r\n0\r\n\r\n", None),  # the last chunk: the decoder must see it
        (b"5\r\nhello\r\n5\r\nwor", None),  # cut
        (b"5\r\nhello\r\n5;x=1\r\nworld\r\n", None),  # an extension
        (b"5\r\nhello\r\nworld", None),  # not a size line
        (b"5\r\nhellox\r\n", None),  # a payload longer than its size
        (b"", None),
    ],
)
def test_a_run_of_whole_chunks_gives_its_payload(data: bytes, payload: bytes | None) -> None:
    """Tokens that piled up in one read, handed on framed as they came: only a run of
    whole chunks with payloads, else the decoder's way."""
    assert ChunkedDecoder().whole_chunks(data) == payload
    if payload is not None:
        assert ChunkedDecoder().feed(data) == payload


def test_a_read_that_looks_whole_mid_chunk_is_not() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"a\r\nab") == b"ab"  # 8 of the chunk's 10 bytes still to come
    looks_whole = b"3\r\nxyz\r\n"  # ... and they happen to read like a chunk
    assert decoder.whole_chunk(looks_whole) == 0
    assert decoder.whole_chunks(looks_whole + looks_whole) is None
    assert decoder.feed(looks_whole) == looks_whole[:8]
    assert decoder.feed(b"\r\n0\r\n\r\n") == b""
    assert decoder.done


def test_extensions_trailers_and_what_follows() -> None:
    decoder = ChunkedDecoder()
    body = b"5;name=value\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1 200"
    assert decoder.feed(body) == b"hello"
    assert decoder.done
    assert decoder.leftover == b"HTTP/1.1 200"


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n",  # not hex
        b"-5\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
        b"5\r\nhelloXX",  # payload not followed by CRLF
        b"5\r\nhel",  # (split) ... then garbage where the CRLF belongs
        b"1" * 5000,  # a size line that never ends
    ],
)
def test_malformed_chunks_are_framing_errors(body: bytes) -> None:
    decoder = ChunkedDecoder()

    def feed_all() -> None:
        decoder.feed(body)
        decoder.feed(b"lo??")

    with pytest.raises(FramingError):
        feed_all()


def test_head_fields() -> None:
    head = parse_head(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nX-A: 1\r\nx-a:  2 \r\nServer: llama.cpp"
    )
    assert head.status == 200
    assert head.headers["content-type"] == "text/event-stream"
    assert head.headers["x-a"] == "1, 2"
    assert (head.chunked, head.length, head.keep_alive, head.delimited) == (True, None, True, True)


@pytest.mark.parametrize(
    ("raw", "keep_alive", "length"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2", True, 2),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2", False, 2),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2", False, 2),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2", True, 2),
        (b"HTTP/1.1 204 No Content", True, 0),
        (b"HTTP/1.1 200 OK", True, None),  # until the connection closes
    ],
)
def test_head_keep_alive_and_length(raw: bytes, keep_alive: bool, length: int | None) -> None:
    head = parse_head(raw)
    assert (head.keep_alive, head.length) == (keep_alive, length)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK",
        b"ICY 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 200 OK\r\nno colon here",
        b"HTTP/1.1 200 OK\r\nbad name: x",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1e3",
        "HTTP/1.1 200 OK\r\nContent-Length: \u00b2".encode("latin-1"),
    ],
)
def test_malformed_heads_are_framing_errors(raw: bytes) -> None:
    with pytest.raises(FramingError):
        parse_head(raw)
