"""The upstream HTTP/1.1 client against small loopback servers of our own."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.lowlevel
import trio.testing

from bodhi_trio._core._address import Address
from bodhi_trio._exceptions import UpstreamError
from bodhi_trio._transport._loopback import UpstreamPool, probe, send_upstream
from bodhi_trio._transport._pool import UpstreamConnection
from bodhi_trio._transport._whole import AnswerBudget
from deadlines import wall_deadline

Handler = Callable[[trio.SocketStream], Awaitable[None]]


def local(port: int) -> Address:
    return Address.tcp("127.0.0.1", port)


async def read_request(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))  # fmt: skip
    while len(body) < length:
        more = await stream.receive_some(65536)
        if not more:  # the peer left mid-body
            break
        body += more
    return data


async def serve(nursery: trio.Nursery, handler: Handler) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_keep_alive_connection_is_reused() -> None:
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        while await read_request(stream):
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, UpstreamPool() as pool:
            port = await serve(nursery, handler)
            for _ in range(3):
                async with send_upstream(pool, local(port), "/v1/x", b"{}") as response:
                    assert response.status_code == 200
                    assert await response.aread() == b"ok"
            assert connections == 1
            nursery.cancel_scope.cancel()


async def test_stale_pooled_connection_is_replaced_once() -> None:
    connections = 0
    requests = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections, requests
        connections += 1
        if await read_request(stream):
            requests += 1
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        # ...and close it without saying so: the next request on it finds it dead

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, UpstreamPool() as pool:
            port = await serve(nursery, handler)
            async with send_upstream(pool, local(port), "/v1/x", b"{}") as response:
                assert await response.aread() == b"ok"
            assert (connections, requests, pool.idle_count(local(port))) == (1, 1, 1)
            for sent in (2, 3):
                # The pooled connection is dead: one retry, on one fresh connection.
                async with send_upstream(pool, local(port), "/v1/x", b"{}") as response:
                    assert await response.aread() == b"ok"
                assert (connections, requests) == (sent, sent)
            nursery.cancel_scope.cancel()


async def test_a_failed_retry_is_not_retried_again() -> None:
    """The fresh connection of the one retry fails before answering too: that is the
    error, not a third attempt."""
    connections = 0
    requests = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections, requests
        connections += 1
        if await read_request(stream):
            requests += 1
            if connections == 1:  # the first answers (and is pooled, then dies)
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        # every later one closes without a byte

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, UpstreamPool() as pool:
            port = await serve(nursery, handler)
            async with send_upstream(pool, local(port), "/v1/x", b"{}") as response:
                assert await response.aread() == b"ok"
            with pytest.raises(UpstreamError, match="closed the connection before answering"):
                async with send_upstream(pool, local(port), "/v1/x", b"{}"):
                    pass
            # the stale pooled one (dead: the request never arrived) plus one fresh one
            assert (connections, requests) == (2, 2)
            assert pool.idle_count(local(port)) == 0
            nursery.cancel_scope.cancel()


async def test_leaving_mid_body_closes_the_connection() -> None:
    closed = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                await stream.send_all(b"5\r\nhello\r\n")
                await trio.sleep(0.01)
        except trio.BrokenResourceError:
            closed.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, UpstreamPool() as pool:
            port = await serve(nursery, handler)
            async with send_upstream(pool, local(port), "/v1/x", b"{}") as response:
                async for chunk in response:
                    assert chunk.startswith(b"hello")
                    break
            await closed.wait()
            assert pool.idle_count(local(port)) == 0  # nothing went back to the pool
            nursery.cancel_scope.cancel()


async def test_connection_dropped_mid_body_is_an_upstream_error() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, UpstreamPool() as pool:
            port = await serve(nursery, handler)
            received: list[bytes] = []

            async def read_all() -> None:
                async with send_upstream(pool, local(port), "/v1/x", b"{}") as response:
                    async for chunk in response:
                        received.append(chunk)

            with pytest.raises(UpstreamError, match="broke off"):
                await read_all()
            assert received == [b"hello"]
            nursery.cancel_scope.cancel()


async def test_nothing_listening_is_an_upstream_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        async with UpstreamPool() as pool:
            with trio.fail_after(10), pytest.raises(UpstreamError, match="cannot connect"):
                async with send_upstream(pool, local(port), "/v1/x", b"{}"):
                    pass


async def test_body_chunks_arrive_exactly_as_sent() -> None:
    events = [b'data: {"n": %d}\n\n' % i for i in range(50)] + [b"data: [DONE]\n\n"]

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        for event in events:
            await stream.send_all(b"%x\r\n%s\r\n" % (len(event), event))
        await stream.send_all(b"0\r\n\r\n")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, UpstreamPool() as pool:
            port = await serve(nursery, handler)
            async with send_upstream(pool, local(port), "/v1/x", b"{}") as response:
                assert response.headers["content-type"] == "text/event-stream"
                body = await response.aread()
            assert body == b"".join(events)
            nursery.cancel_scope.cancel()


async def test_connection_close_and_unframed_bodies_are_not_pooled() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nuntil the end",  # no framing: the body ends with the connection
    ]

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(answers.pop(0))
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, UpstreamPool() as pool:
            port = await serve(nursery, handler)
            for expected in (b"ok", b"until the end"):
                async with send_upstream(pool, local(port), "/v1/x", b"{}") as response:
                    assert await response.aread() == expected
                assert pool.idle_count(local(port)) == 0
            nursery.cancel_scope.cancel()


async def test_informational_answers_are_skipped() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        await stream.send_all(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, UpstreamPool() as pool:
            port = await serve(nursery, handler)
            async with send_upstream(pool, local(port), "/v1/x", b"{}") as response:
                assert (response.status_code, await response.aread()) == (201, b"new")
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX", "broke off"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "broke off"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed response"),
        (b"HTTP/1.1 200 OK\r\n", "closed the connection before answering"),
    ],
)
async def test_malformed_or_cut_answers_are_upstream_errors(answer: bytes, match: str) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(answer)
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, UpstreamPool() as pool:
            port = await serve(nursery, handler)
            with pytest.raises(UpstreamError, match=match):
                async with send_upstream(pool, local(port), "/v1/x", b"{}") as response:
                    await response.aread()
            assert pool.idle_count(local(port)) == 0
            nursery.cancel_scope.cancel()


async def test_a_reused_connection_that_answered_garbage_is_not_retried() -> None:
    connections = 0
    requests = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections, requests
        connections += 1
        while await read_request(stream):
            requests += 1
            if requests == 1:
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            else:  # it got the request, and answers nonsense: a retry would run it twice
                await stream.send_all(b"SSH-2.0-OpenSSH\r\n\r\n")
                await stream.aclose()
                return

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, UpstreamPool() as pool:
            port = await serve(nursery, handler)
            async with send_upstream(pool, local(port), "/v1/x", b"{}") as response:
                assert await response.aread() == b"ok"
            with pytest.raises(UpstreamError, match="malformed"):
                async with send_upstream(pool, local(port), "/v1/x", b"{}"):
                    pass
            assert (connections, requests) == (1, 2)  # no retry on a fresh connection
            nursery.cancel_scope.cancel()


async def test_a_request_larger_than_the_socket_takes_arrives_whole() -> None:
    """A request goes out in one write when it fits (``UpstreamConnection.send``); a
    large one, to a server that reads slowly, is written partly at once and the rest the
    usual way: every byte arrives once, in order."""
    body = bytes(range(256)) * 16384  # 4 MiB: more than any socket buffer here
    received: list[bytes] = []

    async def slow_reader(stream: trio.SocketStream) -> None:
        data = b""
        while len(data.partition(b"\r\n\r\n")[2]) < len(body):
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
            if len(data) % 65536 < 4096:
                await trio.lowlevel.checkpoint()  # let the sender find the buffer full
        received.append(data)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, slow_reader)
            async with (
                UpstreamPool() as pool,
                send_upstream(pool, local(port), "/x", body) as response,
            ):
                assert (response.status_code, await response.aread()) == (200, b"ok")
            nursery.cancel_scope.cancel()
    head, _, sent = received[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /x HTTP/1.1\r\n")
    assert sent == body


async def test_a_paced_stream_is_read_without_reads_that_find_nothing(
    monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """A read first tries the socket and waits only if nothing is there; once a read had
    to wait over 0.1 ms (a token's pace) the next waits first, so a paced stream
    costs no failed read per token. Bytes that were there at once switch it back."""
    ours, theirs = trio.socket.socketpair()
    empty_reads: list[int] = []
    real_read = os.read

    def read(fd: int, size: int) -> bytes:
        try:
            return real_read(fd, size)
        except BlockingIOError:
            if fd == ours.fileno():
                empty_reads.append(fd)
            raise

    monkeypatch.setattr(os, "read", read)
    connection = UpstreamConnection(local(1), trio.SocketStream(ours))
    with wall_deadline(10), theirs:
        async with trio.open_nursery() as nursery:

            async def paced() -> None:
                for index in range(5):
                    await trio.testing.wait_all_tasks_blocked()  # the reader waits
                    mock_clock.jump(0.02)
                    await theirs.send(b"token %d" % index)

            nursery.start_soon(paced)
            pieces = [await connection.receive() for _ in range(5)]
        assert pieces == [b"token %d" % index for index in range(5)]
        assert len(empty_reads) == 1  # only the first read found nothing
        await theirs.send(b"at once")
        await trio.testing.wait_all_tasks_blocked()
        assert await connection.receive() == b"at once"  # waited first: there at once
        assert not connection.paced
        await theirs.send(b"again")
        assert await connection.receive() == b"again"  # read first
        assert len(empty_reads) == 1
    await connection.stream.aclose()


@pytest.mark.parametrize("paced", [False, True], ids=["read-first", "paced"])
async def test_a_read_on_a_connection_closed_under_it_is_an_upstream_error(paced: bool) -> None:
    """The producer leaving closes the connection; a read that comes after (the body's
    next) fails as a broken connection, on either path (a paced one waits first, and
    Trio's wait refuses a closed socket's -1 with a ValueError)."""
    ours, theirs = trio.socket.socketpair()
    connection = UpstreamConnection(local(1), trio.SocketStream(ours), paced=paced)
    with theirs:
        await connection.stream.aclose()
        # (the read-first path meets EBADF: broke; the paced one the -1: was closed)
        with trio.fail_after(5), pytest.raises(UpstreamError, match=r"broke|was closed"):
            await connection.receive()


async def test_a_health_probe_is_never_charged_to_the_request_that_started_it() -> None:
    """A child's watch starts inside the request that loads it and inherits its context;
    a full answers budget there must not fail the server's own health reads."""

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"status":"ok"}')

    budget = AnswerBudget(1)
    with trio.fail_after(10), budget.charging():
        async with trio.open_nursery() as nursery:
            port = await serve(nursery, handler)
            answer = await probe(local(port), "/health", within=5)
            nursery.cancel_scope.cancel()
    assert answer is not None
    assert (answer.status, answer.body) == (200, b'{"status":"ok"}')
    assert budget.statistics().refused == 0
