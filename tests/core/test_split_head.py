"""``split_head``: the one reader of response heads (probe, upstream client, bench)."""

from __future__ import annotations

import pytest

from bodhi_trio._core._http1 import (
    MAX_HEAD_BYTES,
    MAX_INFORMATIONAL_HEADS,
    FramingError,
    split_head,
)

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize("cut", range(len(RESPONSE) - 5))
def test_an_incomplete_head_asks_for_more(cut: int) -> None:
    assert split_head(RESPONSE[:cut]) is None


def test_the_head_and_the_start_of_the_body() -> None:
    found = split_head(RESPONSE[:-2])
    assert found is not None
    head, rest = found
    assert (head.status, head.length, head.keep_alive, rest) == (200, 5, True, b"hel")


def test_informational_heads_are_skipped() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + RESPONSE
    assert split_head(data[: data.index(b"HTTP/1.1 200")]) is None
    found = split_head(data)
    assert found is not None
    assert (found[0].status, found[1]) == (200, b"hello")


def test_a_head_without_an_end_is_bounded() -> None:
    assert split_head(b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD_BYTES - 30)) is None
    with pytest.raises(FramingError, match="no end of the response head"):
        split_head(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES)


def test_a_malformed_head_raises() -> None:
    with pytest.raises(FramingError, match="status line"):
        split_head(b"SSH-2.0-OpenSSH\r\n\r\n")


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def test_informational_heads_are_bounded_in_number() -> None:
    """A peer that sends 1xx heads without end (each one small, none over the head limit)
    is refused once there are too many: before, every one was skipped and the bytes after
    it copied, so 4 MB of them held the event loop for seconds, and it never ended."""
    allowed = CONTINUE * MAX_INFORMATIONAL_HEADS
    found = split_head(allowed + RESPONSE)
    assert found is not None
    assert (found[0].status, found[1]) == (200, b"hello")
    assert split_head(allowed + CONTINUE[:-1]) is None
    with pytest.raises(FramingError, match="informational"):
        split_head(allowed + CONTINUE + RESPONSE)
    with pytest.raises(FramingError, match="informational"):
        split_head(CONTINUE * 200_000)  # 5 MB: refused after a few heads, not walked whole


def test_informational_heads_count_towards_the_head_limit() -> None:
    big = b"HTTP/1.1 103 Early Hints\r\nLink: " + b"a" * (MAX_HEAD_BYTES // 2) + b"\r\n\r\n"
    assert split_head(big + RESPONSE) is not None
    with pytest.raises(FramingError, match="no end of the response head"):
        split_head(big + big + RESPONSE)


@pytest.mark.parametrize("status", [b"000", b"099", b"600", b"999"])
def test_a_status_outside_100_to_599_is_malformed(status: bytes) -> None:
    """Passed on, such a status could not be sent to our client (a bare 500 and a
    traceback): it is the peer's malformed answer (a 502 where a route meets it)."""
    with pytest.raises(FramingError, match="status line"):
        split_head(b"HTTP/1.1 " + status + b" X\r\nContent-Length: 0\r\n\r\n")
