"""The relay's body against its producer, on a virtual clock (no sockets)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from bodhi_trio._relay import Relay, RelayBody
from bodhi_trio._sse import KEEPALIVE


async def ignore(message: dict[str, Any]) -> None:
    pass


async def test_no_keepalive_from_the_body_once_the_producer_writes(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The keep-alive timer firing in the very round the producer takes over must not
    add a comment between the producer's writes (trio runs a round's tasks in random
    order, so both orders are tried)."""
    returned: list[tuple[bytes, bool]] = []
    for _ in range(40):
        relay = Relay(ignore, keepalive=1.0)
        body = RelayBody(relay)

        async def consume(relay: Relay = relay, body: RelayBody = body) -> None:
            try:
                item = await body.__anext__()
            except StopAsyncIteration:
                return
            returned.append((item, relay.writing))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(1.5)  # the body's timer is due...
            await trio.lowlevel.checkpoint()  # ...and fires in the round where we take over
            relay.writing = True
            relay.took_over.set()
            await trio.testing.wait_all_tasks_blocked()
            relay.finished.set()
        assert (KEEPALIVE, True) not in returned


async def test_keepalives_while_loading_then_the_owed_error(
    mock_clock: trio.testing.MockClock,
) -> None:
    from bodhi_trio._exceptions import UpstreamError

    relay = Relay(ignore, keepalive=1.0)
    relay.early = True
    body = RelayBody(relay, prime=True)
    assert await body.__anext__() == KEEPALIVE  # the early answer
    async with trio.open_nursery() as nursery:
        items: list[bytes] = []

        async def consume() -> None:
            items.extend([item async for item in body])

        nursery.start_soon(consume)
        for _ in range(3):
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
        relay.failure = UpstreamError("gone")
        relay.finished.set()
        relay.took_over.set()
    assert relay.may_write.is_set()
    assert items[:3] == [KEEPALIVE] * 3
    assert items[3].startswith(b'data: {"error"')
    assert b"gone" in items[3]
    assert len(items) == 4
