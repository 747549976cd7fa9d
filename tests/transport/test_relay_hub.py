"""``RelayHub``: one task relays the paced tokens of every parked stream; a stream's task
wakes only for what the hub cannot do alone, and a cancelled, closed or orphaned stream
loses nothing. (The relay's other cases run on both loops in ``test_relay_to.py``.)"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing
from test_relay_to import (
    DONE,
    END,
    EVENTS,
    HEAD,
    Sink,
    chunk,
    paced_response,
    relay_hub,
    response_from,
    settled,
    written,
)
from test_upstream import read_request

from bodhi_trio._exceptions import UpstreamError
from bodhi_trio._transport._loopback import HTTPResponse
from bodhi_trio._transport._relay_hub import TAKES_AFTER, RelayHub, RelayHubStatistics
from deadlines import wall_deadline


@asynccontextmanager
async def serving_hub() -> AsyncIterator[RelayHub]:
    async with relay_hub(serving=True) as hub:
        assert hub is not None
        yield hub


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_the_hub_writes_each_paced_token_as_its_chunk(
    mock_clock: trio.testing.MockClock,
) -> None:
    sink = Sink()
    files_before = open_files()
    with wall_deadline(10):
        async with (
            serving_hub() as hub,
            paced_response(mock_clock, EVENTS, [chunk(DONE) + END], hub) as response,
        ):
            await response.relay_to(sink, hub)
            assert list(response.tail) == [*EVENTS[-2:], DONE]
            # the first paced read is the stream's own (it learns the pace from it);
            # every later token the hub's, without waking the stream's task
            assert hub.statistics() == RelayHubStatistics(parked=0, relayed=len(EVENTS) - 2)
    assert sink.calls[:2] == [("payload", EVENTS[0]), ("payload", EVENTS[1])]
    assert sink.calls[2:-1] == [("chunk", chunk(event)) for event in EVENTS[2:]]
    assert sink.calls[-1] == ("payload", DONE)
    assert open_files() == files_before  # the hub's copies of the sockets closed, its own too


async def test_a_stream_parks_only_once_its_pace_is_steady(
    mock_clock: trio.testing.MockClock,
) -> None:
    """One read that had to wait does not make a stream the hub's (a fast stream's would
    go to the thread and straight back): its own loop writes ``TAKES_AFTER`` paced tokens
    whole in a row first, and again after a chunk cut across reads sent it back."""
    steady = TAKES_AFTER
    assert steady >= 2  # one wait, or two, is no pace
    events = [b'data: {"n": %d}\n\n' % n for n in range(2 * steady + 6)]
    first = events[: steady + 4]  # with the head; learning the pace; its own `steady`; 2 hub
    cut = chunk(events[steady + 4])
    split = [cut[:5], cut[5:]]  # back to its own loop
    again = [chunk(event) for event in events[steady + 5 :]]  # its own `steady`, then 1 hub
    hub = RelayHub()
    sink = Sink()
    with wall_deadline(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            async with paced_response(mock_clock, first, [*split, *again, END], hub) as response:
                await response.relay_to(sink, hub)
            assert hub.statistics() == RelayHubStatistics(parked=0, relayed=3)
            nursery.cancel_scope.cancel()
    assert written(sink.calls) == b"".join(events)


async def test_tokens_that_piled_up_stay_in_the_hub(mock_clock: trio.testing.MockClock) -> None:
    """A read of several whole chunks (tokens that came while the hub or the stream was
    busy) is written as it came, in one write, and the stream stays parked: sent back to
    its own loop, it would write ``TAKES_AFTER`` tokens there before parking again."""
    events = [b'data: {"n": %d}\n\n' % n for n in range(11)]
    first = events[:7]  # with the head; learning the pace; 5 to the hub
    piled = b"".join(chunk(event) for event in events[7:10])
    sink = Sink()
    with wall_deadline(10):
        async with (
            serving_hub() as hub,
            paced_response(mock_clock, first, [piled, chunk(events[10]) + END], hub) as response,
        ):
            await response.relay_to(sink, hub)
            assert hub.statistics() == RelayHubStatistics(parked=0, relayed=5 + 1)
    assert sink.calls[-2:] == [("chunk", piled), ("payload", events[10])]
    assert written(sink.calls) == b"".join(events)


@attrs.define
class ClosedSink(Sink):
    """A :class:`Sink` that has no socket to give the hub (its client's connection is
    closing, or its response does not frame chunks)."""

    def fileno(self) -> int:
        return -1


@pytest.mark.parametrize("why", ["no socket", "no files left"])
async def test_a_stream_the_hub_cannot_take_relays_itself(
    mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    sink = ClosedSink() if why == "no socket" else Sink()
    if why == "no files left":

        def no_files(fd: int) -> int:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        monkeypatch.setattr(os, "dup", no_files)  # the hub copies sockets with it
    with wall_deadline(10):
        async with (
            serving_hub() as hub,
            paced_response(mock_clock, EVENTS, [END], hub) as response,
        ):
            await response.relay_to(sink, hub)
            assert hub.statistics() == RelayHubStatistics(parked=0, relayed=0)
    # its own loop wrote each paced token as the chunk it came in
    assert sink.calls[2:] == [("chunk", chunk(event)) for event in EVENTS[2:]]


@attrs.define
class SocketSink(Sink):
    """A :class:`Sink` whose whole chunks go to a socket (``number``), as the server's
    writer's do: to the hub's copy of it when the hub writes."""

    number: int = -1

    def fileno(self) -> int:
        return self.number

    def write_chunk_now(self, chunks: bytes, payload: bytes, fd: int = -1) -> bytes | None:
        return chunks[os.write(fd if fd >= 0 else self.number, chunks) :]


async def test_a_client_socket_closed_under_the_hub_never_gets_another_clients_token(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The hub's thread writes to its own copy of the client's socket: the run loop
    closing the socket and the kernel giving its number to a newcomer sends the token to
    the old socket's peer (or nowhere), never to the newcomer."""
    client, peer = socket.socketpair()
    sink = SocketSink(number=client.fileno())
    sent_third = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(HEAD + chunk(EVENTS[0]))
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(0.02)
        await stream.send_all(chunk(EVENTS[1]))  # the stream learns it is paced: parks
        await sent_third.wait()
        await stream.send_all(chunk(EVENTS[2]))  # the hub's to write
        await settled(hub)
        await stream.send_all(END)
        await trio.sleep_forever()

    with wall_deadline(10), peer:
        async with serving_hub() as hub, response_from(handler) as response:

            async def swap_the_socket() -> None:
                number = client.fileno()
                client.close()  # the run loop closes it; the hub is not told
                while number not in [side.fileno() for side in newcomers]:  # the lowest free
                    assert len(newcomers) < 64, "the number was never given out again"
                    newcomers.extend(socket.socketpair())
                sent_third.set()

            newcomers: list[socket.socket] = []
            try:
                assert await relay_until_all_blocked(response, sink, hub, swap_the_socket) is None
                for side in newcomers:
                    with pytest.raises(BlockingIOError):
                        side.recv(100, socket.MSG_DONTWAIT)
            finally:
                for side in newcomers:
                    side.close()
            assert peer.recv(100, socket.MSG_DONTWAIT) == chunk(EVENTS[2])


@asynccontextmanager
async def held_response(
    clock: trio.testing.MockClock, go_on: trio.Event
) -> AsyncIterator[HTTPResponse]:
    """A response: the head with EVENTS[0], EVENTS[1] once the reader waits (20 ms later by
    ``clock``: paced), EVENTS[2] and the end only once ``go_on`` is set."""

    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await stream.send_all(HEAD + chunk(EVENTS[0]))
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(0.02)
        await stream.send_all(chunk(EVENTS[1]))
        await go_on.wait()
        await stream.send_all(chunk(EVENTS[2]) + END)
        await trio.sleep_forever()

    async with response_from(handler) as response:
        yield response


async def parked(hub: RelayHub) -> None:
    for _ in range(100):
        if hub.statistics().parked:
            return
        await trio.testing.wait_all_tasks_blocked()
    pytest.fail("the stream never parked in the hub")


async def test_a_stream_cancelled_while_parked_leaves_the_hub_and_loses_nothing(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The keep-alive's deadline (or the client leaving) cancels a parked stream: it leaves
    the hub, and the next call relays on from where it stood."""
    sink, go_on = Sink(), trio.Event()
    with wall_deadline(10):
        async with serving_hub() as hub, held_response(mock_clock, go_on) as response:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:

                    async def cancel_once_parked() -> None:
                        await parked(hub)
                        scope.cancel()

                    nursery.start_soon(cancel_once_parked)
                    await response.relay_to(sink, hub)
            assert scope.cancelled_caught
            assert hub.statistics().parked == 0
            assert response.connection.waiting_since is None
            go_on.set()
            await response.relay_to(sink, hub)
    assert written(sink.calls) == b"".join(EVENTS[:3])


async def relay_until_all_blocked(
    response: HTTPResponse, sink: Sink, hub: RelayHub, act: Callable[[], Awaitable[None]]
) -> BaseException | None:
    """``response.relay_to(sink, hub)`` in a task, and ``act`` once it is parked; then what
    the relay raised (None: it returned). A relay still waiting after every task and the
    hub's thread have waited a hundred times over (its stream forgotten) fails the test
    instead of hanging it (the mock clock never times out)."""
    ended: list[BaseException | None] = []

    async def relay() -> None:
        try:
            await response.relay_to(sink, hub)
        except UpstreamError as exc:
            ended.append(exc)
        else:
            ended.append(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay)
        await parked(hub)
        await act()
        for _ in range(100):  # the server may have more to send once all wait
            if ended:
                break
            await settled(hub)
        else:
            nursery.cancel_scope.cancel()
            pytest.fail("the relay still waits: nobody woke its parked stream")
    return ended[0]


@pytest.mark.parametrize("how", ["closed", "aborted"])
async def test_a_connection_closed_while_parked_is_an_upstream_error(
    mock_clock: trio.testing.MockClock, how: str
) -> None:
    """Trio cannot wake a reader it does not know of: the connection's close wakes it."""
    sink, go_on = Sink(), trio.Event()
    with wall_deadline(10):
        async with serving_hub() as hub, held_response(mock_clock, go_on) as response:

            async def close() -> None:
                if how == "closed":
                    await response.connection.aclose()  # as the producer leaving does
                else:
                    await response.connection.abort(UpstreamError("stalled, as the watchdog says"))

            error = await relay_until_all_blocked(response, sink, hub, close)
            assert hub.statistics().parked == 0
    assert isinstance(error, UpstreamError)
    assert ("closed" if how == "closed" else "stalled") in str(error)
    assert written(sink.calls) == b"".join(EVENTS[:2])


async def test_a_stream_parked_when_the_hub_stops_goes_on_by_itself(
    mock_clock: trio.testing.MockClock,
) -> None:
    sink, go_on = Sink(), trio.Event()
    hub, hub_scope = RelayHub(takes_after=0), trio.CancelScope()

    async def run_hub(task_status: trio.TaskStatus[None]) -> None:
        with hub_scope:
            await hub.serve(task_status=task_status)

    async def stop_the_hub() -> None:
        hub_scope.cancel()
        go_on.set()

    with wall_deadline(10):
        async with held_response(mock_clock, go_on) as response, trio.open_nursery() as nursery:
            await nursery.start(run_hub)
            assert await relay_until_all_blocked(response, sink, hub, stop_the_hub) is None
    assert not hub.serving
    assert hub.statistics() == RelayHubStatistics(parked=0, relayed=0)
    assert written(sink.calls) == b"".join(EVENTS[:3])


async def test_a_hub_that_fails_stops_and_its_streams_go_on_by_themselves(
    mock_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failure of the hub's own (a bug) must not take the relay nursery, and with it the
    server, down: it is logged, the hub stops, and a parked stream relays itself."""
    sink, go_on = Sink(), trio.Event()
    hub = RelayHub(takes_after=0)

    def broken(parked: object) -> bool:
        raise RuntimeError("a bug in the hub")

    async def break_the_hub() -> None:
        monkeypatch.setattr(hub, "_step", broken)
        go_on.set()  # EVENTS[2] wakes the hub, which fails

    with wall_deadline(10):
        async with held_response(mock_clock, go_on) as response, trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            assert await relay_until_all_blocked(response, sink, hub, break_the_hub) is None
            assert not hub.serving
    assert written(sink.calls) == b"".join(EVENTS[:3])
    assert "the relay hub failed" in caplog.text
