"""``split_head``: the one reader of response heads (probe, upstream client, bench)."""

from __future__ import annotations

import pytest

from bodhi_trio._core._http1 import MAX_HEAD_BYTES, FramingError, split_head

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
