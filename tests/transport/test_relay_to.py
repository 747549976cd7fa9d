"""``HTTPResponse.relay_to``: a llama-server body written to a sink in one loop, a paced
token's whole chunk handed on framed as it came."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import cast

import attrs
import pytest
import trio
import trio.testing
from test_upstream import read_request, serve

from bodhi_trio._core._address import Address
from bodhi_trio._exceptions import UpstreamError
from bodhi_trio._http._chunk_writer import ChunkWriter
from bodhi_trio._http._relay import Relay
from bodhi_trio._http._relay_body import RelayBody
from bodhi_trio._http._sse import KEEPALIVE
from bodhi_trio._transport._loopback import HTTPResponse, UpstreamPool, send_upstream
from bodhi_trio._transport._relay_hub import RelayHub
from bodhi_trio._transport._response import HEAD_BYTES
from deadlines import wall_deadline

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENTS = [b'data: {"n": %d}\n\n' % n for n in range(6)]
DONE = b"data: [DONE]\n\n"
END = b"0\r\n\r\n"
_NOWHERE = os.open(os.devnull, os.O_WRONLY)  # what a Sink's "socket" is, for the hub to copy


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@attrs.define
class Sink:
    """Records what reached it, and which way; ``take``: how much of a whole chunk
    ``write_chunk_now`` writes (None: all of it; -1: none, the sink frames its own)."""

    take: int | None = None
    calls: list[tuple[str, bytes]] = attrs.field(factory=list)

    async def __call__(self, payload: bytes) -> None:
        self.calls.append(("payload", payload))

    def fileno(self) -> int:
        return _NOWHERE

    def write_chunk_now(self, chunks: bytes, payload: bytes, fd: int = -1) -> bytes | None:
        assert payload == unframed(chunks)
        if self.take is not None and self.take < 0:
            return None
        taken = chunks if self.take is None else chunks[: self.take]
        self.calls.append(("chunk", taken))
        return chunks[len(taken) :]

    async def write_rest(self, rest: bytes) -> None:
        self.calls.append(("rest", rest))


def unframed(chunks: bytes) -> bytes:
    """The payload of a run of whole chunks."""
    payload = b""
    while chunks:
        eol = chunks.index(b"\r\n")
        start = eol + 2
        stop = start + int(chunks[:eol], 16)
        payload, chunks = payload + chunks[start:stop], chunks[stop + 2 :]
    return payload


def written(calls: list[tuple[str, bytes]]) -> bytes:
    """The payload that reached the sink, whichever way."""
    out = b""
    for way, data in calls:
        out += data if way == "payload" else unframed(data)
    return out


async def settled(hub: RelayHub | None) -> None:
    """Every task blocked and, with a ``hub``, its thread waiting with nothing to read (so
    what is sent next is a read of its own)."""
    await trio.testing.wait_all_tasks_blocked()
    if hub is not None:
        await hub.wait_idle()
        await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def paced_response(
    clock: trio.testing.MockClock,
    events: list[bytes],
    last: list[bytes],
    hub: RelayHub | None = None,
) -> AsyncIterator[HTTPResponse]:
    """A response whose head comes with the first event, then each event in a write of
    its own once the reader waits (20 ms later, by the mock clock: a model's pace), then
    the ``last`` writes, each once the reader (or the ``hub`` relaying it) waits."""

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(HEAD + chunk(events[0]))
        for data in [chunk(event) for event in events[1:]] + last:
            await settled(hub)
            clock.jump(0.02)
            await stream.send_all(data)
        await trio.sleep_forever()

    async with response_from(handler) as response:
        yield response


@asynccontextmanager
async def response_from(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[HTTPResponse]:
    """The response of a server that answers with ``handler``, to one request."""
    async with trio.open_nursery() as nursery, UpstreamPool() as pool:
        port = await serve(nursery, handler)
        try:
            address = Address.tcp("127.0.0.1", port)
            async with send_upstream(pool, address, "/x", b"{}") as response:
                assert isinstance(response, HTTPResponse)
                yield response
        finally:  # the server too, whatever the test raised (the mock clock never times out)
            nursery.cancel_scope.cancel()


async def test_a_paced_token_goes_on_as_the_chunk_it_came_in(
    mock_clock: trio.testing.MockClock,
) -> None:
    sink = Sink()
    with wall_deadline(10):
        async with paced_response(mock_clock, EVENTS, [chunk(DONE) + END]) as response:
            await response.relay_to(sink)
            assert list(response.tail) == [*EVENTS[-2:], DONE]
    assert written(sink.calls) == b"".join(EVENTS) + DONE
    # the first event came with the head, and the first paced one was read before the
    # read learnt that the stream is paced: decoded; then each token's chunk as it came;
    # the last read held a chunk and the end: decoded
    assert sink.calls[:2] == [("payload", EVENTS[0]), ("payload", EVENTS[1])]
    assert sink.calls[2:-1] == [("chunk", chunk(event)) for event in EVENTS[2:]]
    assert sink.calls[-1] == ("payload", DONE)


@asynccontextmanager
async def relay_hub(serving: bool) -> AsyncIterator[RelayHub | None]:
    """A serving :class:`RelayHub` (stopped on leaving), or None: the relay's own loop."""
    if not serving:
        yield None
        return
    hub = RelayHub(takes_after=0)  # the hub's from the first paced read (one test: the rule)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        yield hub
        nursery.cancel_scope.cancel()
    assert not hub.serving


BOTH_LOOPS = pytest.mark.parametrize("hubbed", [False, True], ids=["own loop", "relay hub"])


@BOTH_LOOPS
@pytest.mark.parametrize("take", [-1, 5], ids=["sink frames its own", "socket took part"])
async def test_a_chunk_the_sink_cannot_write_whole_at_once_is_not_lost(
    mock_clock: trio.testing.MockClock, take: int, hubbed: bool
) -> None:
    sink = Sink(take=take)
    with wall_deadline(10):
        async with (
            relay_hub(hubbed) as hub,
            paced_response(mock_clock, EVENTS, [END], hub) as response,
        ):
            await response.relay_to(sink, hub)
            if hub is not None:  # it woke the stream for each: nothing written by itself
                assert hub.statistics().relayed == 0
    if take < 0:
        assert sink.calls == [("payload", event) for event in EVENTS]
    else:
        raw = b"".join(chunk(d) if way == "payload" else d for way, d in sink.calls)
        assert raw == b"".join(chunk(event) for event in EVENTS)
        assert ("rest", chunk(EVENTS[-1])[5:]) in sink.calls


@BOTH_LOOPS
async def test_a_chunk_split_across_reads_goes_the_decoders_way(
    mock_clock: trio.testing.MockClock, hubbed: bool
) -> None:
    whole = chunk(EVENTS[3])
    sink = Sink()
    with wall_deadline(10):
        async with (
            relay_hub(hubbed) as hub,
            paced_response(
                mock_clock, EVENTS[:3], [whole[:7], whole[7:], chunk(EVENTS[4]), END], hub
            ) as response,
        ):
            await response.relay_to(sink, hub)
            if hub is not None:  # the split chunk woke the stream; the hub took the next
                assert hub.statistics().relayed == 2  # EVENTS[2] and EVENTS[4]
    assert written(sink.calls) == b"".join(EVENTS[:5])
    # each part as it came, decoded (a piece is what a read brought), then whole chunks again
    assert sink.calls[-3:] == [
        ("payload", EVENTS[3][:3]),
        ("payload", EVENTS[3][3:]),
        ("chunk", chunk(EVENTS[4])),
    ]


@pytest.mark.parametrize("how", ["closed", "aborted"])
async def test_a_connection_closed_under_the_wait_is_an_upstream_error(
    mock_clock: trio.testing.MockClock, how: str
) -> None:
    sink = Sink()
    with wall_deadline(10):
        async with (
            paced_response(mock_clock, EVENTS[:3], []) as response,
            trio.open_nursery() as nursery,
        ):

            async def close_once_it_waits() -> None:
                while len(sink.calls) < 3:  # the server paces on the same signal
                    await trio.testing.wait_all_tasks_blocked()
                assert sink.calls[-1] == ("chunk", chunk(EVENTS[2]))  # paced, waiting
                if how == "closed":
                    await response.connection.aclose()  # as the producer leaving does
                else:
                    await response.connection.abort(UpstreamError("stalled, as the watchdog says"))

            nursery.start_soon(close_once_it_waits)
            with pytest.raises(UpstreamError, match="closed" if how == "closed" else "stalled"):
                await response.relay_to(sink)


async def test_a_close_after_the_wake_up_reads_nothing_from_the_number_reused(
    mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer closes the connection after the reader's wake-up was scheduled, and a
    new socket takes the number: the reader must not read it."""
    sink = Sink()
    newcomer: list[socket.socket] = []
    real_wait = trio.lowlevel.wait_readable

    with wall_deadline(10):
        async with paced_response(mock_clock, EVENTS[:3], [chunk(EVENTS[3])]) as response:
            connection = response.connection

            async def woken_then_closed(fd: int) -> None:
                await real_wait(fd)
                if sink.calls[-1:] == [("chunk", chunk(EVENTS[2]))]:  # woken for EVENTS[3]
                    await connection.aclose()
                    ours, theirs = socket.socketpair()  # likely the number just freed
                    theirs.send(b"not llama-server's")
                    newcomer.extend((ours, theirs))

            monkeypatch.setattr(trio.lowlevel, "wait_readable", woken_then_closed)
            with pytest.raises(UpstreamError, match="was closed"):
                await response.relay_to(sink)
    ours, theirs = newcomer
    with ours, theirs:
        assert ours.recv(100, socket.MSG_DONTWAIT) == b"not llama-server's"  # still there
    assert sink.calls[-1] == ("chunk", chunk(EVENTS[2]))


async def test_relay_arrived_writes_what_came_with_the_head_without_waiting(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The first event came with the head: it goes out at once, and nothing waits for the
    next (which the server sends only once the reader waits: never, here)."""
    sink = Sink()
    with wall_deadline(10):
        async with paced_response(mock_clock, EVENTS[:2], [END]) as response:
            await response.relay_arrived(sink)
            assert sink.calls == [("payload", EVENTS[0])]
            assert list(response.tail) == [EVENTS[0]]
            complete = [response.complete]
            await response.relay_arrived(sink)  # nothing more has arrived: nothing written
            assert sink.calls == [("payload", EVENTS[0])]
            await response.relay_to(sink)  # the rest, as before
            complete.append(response.complete)
    assert complete == [False, True]
    assert written(sink.calls) == EVENTS[0] + EVENTS[1]


async def test_a_burst_behind_the_head_is_not_read_before_its_first_events_go_out() -> None:
    """The head came with 1,000 events queued behind it (a fast stream): the first read
    takes at most :data:`HEAD_BYTES`, so the events that came with the head go out before
    the rest is read (a read of the whole burst copies it all first, and a fast writer
    keeps such a read going)."""
    events = [b'data: {"n": %d, "pad": "%s"}\n\n' % (n, b"x" * 200) for n in range(1000)]
    burst = HEAD + b"".join(chunk(event) for event in events) + END

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(burst)
        await trio.sleep_forever()

    sink = Sink()
    with trio.fail_after(10):
        async with response_from(handler) as response:
            await response.relay_arrived(sink)
            first = written(sink.calls)
            await response.relay_to(sink)
    assert 0 < len(first) < HEAD_BYTES
    assert first.count(b"data: ") < 20  # ~17 of these in 4 KiB; a 64 KiB read brings ~270
    assert written(sink.calls) == b"".join(events)


@attrs.define
class TimedSink(Sink):
    """A :class:`Sink` that notes when each write came (the mock clock)."""

    times: list[float] = attrs.field(factory=list)

    async def __call__(self, payload: bytes) -> None:
        self.times.append(round(trio.current_time(), 6))
        await super().__call__(payload)

    def write_chunk_now(self, chunks: bytes, payload: bytes, fd: int = -1) -> bytes | None:
        self.times.append(round(trio.current_time(), 6))
        return super().write_chunk_now(chunks, payload, fd)


async def test_the_spliced_relay_keeps_alive_only_after_a_whole_silent_interval(
    mock_clock: trio.testing.MockClock,
) -> None:
    """``RelayBody._splice`` (a response written to one of our connections): its keep-alive
    counts from the last piece; pieces 0.6 s apart in a 1 s interval get none, a 1 s pause
    one, a pause inside an event none (it would corrupt the event)."""
    steps = [  # (seconds of silence, then what the server writes)
        (0.6, chunk(b"data: 2\n\n")),
        (0.6, chunk(b"data: 3\n\n")),
        (1.0, b""),  # a whole interval silent: one keep-alive
        (0.5, chunk(b"data: 4")),  # half an event
        (1.5, b""),  # silent mid-event: nothing may be written
        (0.5, chunk(b"\n\n") + END),  # its end
    ]

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(HEAD + chunk(b"data: 1\n\n"))
        for silence, data in steps:
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(silence)
            if data:
                await stream.send_all(data)
        await trio.sleep_forever()

    sink = TimedSink()
    body = RelayBody(Relay(keepalive=1.0))
    with wall_deadline(10):
        async with trio.open_nursery() as nursery, UpstreamPool() as pool:
            port = await serve(nursery, handler)
            address = Address.tcp("127.0.0.1", port)
            async with send_upstream(pool, address, "/x", b"{}") as response:
                assert isinstance(response, HTTPResponse)
                await body._splice(response, cast(ChunkWriter, sink))
            nursery.cancel_scope.cancel()
    assert list(zip(sink.times, [data for _, data in sink.calls], strict=True)) == [
        (0.0, b"data: 1\n\n"),
        (0.6, b"data: 2\n\n"),  # the first paced read: decoded
        (1.2, chunk(b"data: 3\n\n")),
        (2.2, KEEPALIVE),
        (2.7, chunk(b"data: 4")),
        (4.7, b"\n\n"),
    ]
    assert body._mid_event is False
