"""The relay's producer and body against a fake upstream response (no sockets).

The fake ``forward`` does what ``SharedContext.forward`` does at its edges: it
yields the response inside the slot's read hold, closing "the connection" (the
fake's channel) when left, and raises ``ResponseInterruptedError`` when the
hold was interrupted (a swap's drain timeout, a crash, shutdown).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing

from bodhi_trio._exceptions import ResponseInterruptedError, UpstreamError
from bodhi_trio._http._relay import Relay, relay_upstream
from bodhi_trio._http._relay_body import RelayBody
from bodhi_trio._http._sse import KEEPALIVE
from deadlines import wall_deadline


@attrs.define(eq=False)
class FakeResponse:
    receive: trio.MemoryReceiveChannel[bytes]
    status_code: int = 200
    headers: dict[str, str] = attrs.field(factory=dict)

    def __aiter__(self) -> FakeResponse:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        except trio.ClosedResourceError as exc:  # "the connection" was closed under us
            raise UpstreamError("llama-server connection broke") from exc

    async def aread(self) -> bytes:
        return b"".join([piece async for piece in self])


@asynccontextmanager
async def fake_forward(
    response: FakeResponse, hold: trio.CancelScope, loaded: trio.Event
) -> AsyncIterator[FakeResponse]:
    await loaded.wait()
    with hold:
        try:
            yield response
        finally:
            response.receive.close()
    if hold.cancelled_caught:
        raise ResponseInterruptedError("swap: the response outlasted the drain timeout")


@attrs.define(eq=False)
class Rig:
    relay: Relay
    body: RelayBody
    upstream: trio.MemorySendChannel[bytes]
    hold: trio.CancelScope
    loaded: trio.Event


@asynccontextmanager
async def rig(*, early: bool = False, keepalive: float = 1.0) -> AsyncIterator[Rig]:
    send, receive = trio.open_memory_channel[bytes](100)
    hold, loaded = trio.CancelScope(), trio.Event()
    relay = Relay(keepalive)
    relay.early = early
    if not early:
        loaded.set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay_upstream, fake_forward(FakeResponse(receive), hold, loaded), relay)
        body = RelayBody(relay, prime=early)
        try:
            yield Rig(relay, body, send, hold, loaded)
        finally:
            await body.aclose()


async def test_pieces_as_they_come_then_the_slot_is_let_go_before_the_end() -> None:
    with trio.fail_after(5):
        async with rig() as r:
            await r.relay.answered.wait()
            await r.upstream.send(b"data: 1\n\n")
            assert await r.body.__anext__() == b"data: 1\n\n"
            await r.upstream.send(b"data: 2\n\n")
            await r.upstream.aclose()  # the end of llama-server's body
            assert await r.body.__anext__() == b"data: 2\n\n"
            with pytest.raises(StopAsyncIteration):
                await r.body.__anext__()
            assert r.relay.finished.is_set()  # before the client saw the end
            assert r.relay.failure is None


async def test_keepalives_while_loading_and_while_generation_pauses(
    mock_clock: trio.testing.MockClock,
) -> None:
    with wall_deadline(10):
        async with rig(early=True) as r:
            items: list[bytes] = []

            async def consume() -> None:
                items.extend([item async for item in r.body])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                for _ in range(2):  # loading
                    await trio.testing.wait_all_tasks_blocked()
                    mock_clock.jump(1.0)
                r.loaded.set()
                await trio.testing.wait_all_tasks_blocked()
                await r.upstream.send(b"data: 1\n\n")
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(1.0)  # a pause mid-generation
                await trio.testing.wait_all_tasks_blocked()
                await r.upstream.send(b"data: 2\n\n")
                await r.upstream.aclose()
        assert items == [KEEPALIVE] * 3 + [b"data: 1\n\n", KEEPALIVE, b"data: 2\n\n"]


async def test_the_pump_sends_a_keepalive_only_after_a_whole_silent_interval(
    mock_clock: trio.testing.MockClock,
) -> None:
    """With a writer (the OpenAI routes) the body writes its pieces itself; its
    keep-alive timer counts from the last write: pieces 0.6 s apart in a 1 s interval
    get none, a 1 s pause one, a pause inside an event none (it would corrupt it)."""
    with wall_deadline(10):
        written: list[tuple[float, bytes]] = []

        async def write(data: bytes) -> None:
            written.append((round(trio.current_time(), 6), data))

        async def drain(body: RelayBody) -> None:
            assert [item async for item in body] == []  # every piece went to the writer

        async with rig() as r:
            r.body.writer = write
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, r.body)
                for piece in (b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"):
                    await trio.testing.wait_all_tasks_blocked()
                    mock_clock.jump(0.6)
                    await r.upstream.send(piece)
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(1.0)  # a whole interval silent: one keep-alive
                await trio.testing.wait_all_tasks_blocked()
                await r.upstream.send(b"data: 4")  # half an event
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(1.5)  # silent mid-event: nothing may be written
                await trio.testing.wait_all_tasks_blocked()
                await r.upstream.send(b"\n\n")
                await r.upstream.aclose()
        assert written == [
            (0.6, b"data: 1\n\n"),
            (1.2, b"data: 2\n\n"),
            (1.8, b"data: 3\n\n"),
            (2.8, KEEPALIVE),
            (2.8, b"data: 4"),
            (4.3, b"\n\n"),
        ]


async def test_an_interruption_mid_read_ends_with_its_own_error() -> None:
    with trio.fail_after(5):
        async with rig() as r:
            await r.relay.answered.wait()
            await r.upstream.send(b"data: 1\n\n")
            assert await r.body.__anext__() == b"data: 1\n\n"
            async with trio.open_nursery() as nursery:
                ended: list[bytes] = []

                async def read_on() -> None:
                    ended.extend([item async for item in r.body])

                nursery.start_soon(read_on)
                await trio.testing.wait_all_tasks_blocked()
                r.hold.cancel()  # the drain timeout, while the body waits for bytes
            assert len(ended) == 1
            assert ended[0].startswith(b'data: {"error"')
            assert b"drain timeout" in ended[0]  # not "connection broke"


async def test_the_slot_is_let_go_while_the_client_write_is_stuck() -> None:
    """A client that stopped reading blocks Quart's write, not the producer: an
    interruption frees the slot without the body's help."""
    with trio.fail_after(5):
        async with rig() as r:
            await r.relay.answered.wait()
            await r.upstream.send(b"data: 1\n\n")
            assert await r.body.__anext__() == b"data: 1\n\n"
            # ...Quart is now stuck writing that piece; nobody calls the body.
            r.hold.cancel()
            await r.relay.finished.wait()
            assert isinstance(r.relay.failure, ResponseInterruptedError)


async def test_a_refusal_after_the_early_answer_is_one_error_event() -> None:
    send, receive = trio.open_memory_channel[bytes](10)
    relay = Relay(1.0)
    relay.early = True
    refused = FakeResponse(receive, status_code=400)
    await send.send(b'{"error": {"message": "context too long", "code": 400}}')
    await send.aclose()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            loaded = trio.Event()
            loaded.set()
            nursery.start_soon(
                relay_upstream, fake_forward(refused, trio.CancelScope(), loaded), relay
            )
            items = [item async for item in RelayBody(relay)]
    assert len(items) == 1
    assert b"context too long" in items[0]
    assert b'"type":"upstream_error"' in items[0]


async def test_no_comment_inside_an_event_and_an_error_after_one_is_its_own(
    mock_clock: trio.testing.MockClock,
) -> None:
    with wall_deadline(10):
        async with rig() as r:
            items: list[bytes] = []

            async def consume() -> None:
                items.extend([item async for item in r.body])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await r.upstream.send(b'data: {"a"')  # half an event, then a long pause
                for _ in range(3):
                    await trio.testing.wait_all_tasks_blocked()
                    mock_clock.jump(1.0)
                await trio.testing.wait_all_tasks_blocked()
                r.hold.cancel()  # interrupted before the rest came
        assert items[0] == b'data: {"a"'
        assert KEEPALIVE not in items
        assert items[1].startswith(b'\n\ndata: {"error"')
        assert len(items) == 2


@pytest.mark.parametrize("failing_piece", [0, 2], ids=["the first", "a later one"])
async def test_a_writer_that_fails_fails_the_body_with_its_own_error(failing_piece: int) -> None:
    """The pump writes the pieces after the first from a task of its own; a writer's
    failure (a translating writer's bug) still comes out of the body as itself, not
    wrapped in a nursery's exception group, whichever piece it failed on."""
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        if len(written) == failing_piece:
            raise ValueError("the writer broke")
        written.append(data)

    with trio.fail_after(5):
        async with rig() as r:
            r.body.writer = write
            await r.relay.answered.wait()
            for n in range(4):
                await r.upstream.send(b"data: %d\n\n" % n)
            with pytest.raises(ValueError, match="the writer broke"):
                await r.body.__anext__()
    assert written == [b"data: %d\n\n" % n for n in range(failing_piece)]
