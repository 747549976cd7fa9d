"""Many streams held open through our own HTTP/1.1 client, for the fault tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from bodhi_trio._core._address import Address
from bodhi_trio._transport._loopback import UpstreamPool, send_upstream

ONE_ERROR_EVENT_LAST = "one error event, last"
DONE_LAST = "no error event, [DONE] last"


def outcome(status: int, received: bytes) -> str:
    """How one stream ended: ``ONE_ERROR_EVENT_LAST``, ``DONE_LAST`` or something else."""
    events = [e for e in received.decode().split("\n\n") if e.startswith("data: ")]
    errors = [e for e in events if e.startswith('data: {"error"')]
    if status != 200:
        return f"status {status}"
    if len(errors) == 1 and events[-1] == errors[0]:
        return ONE_ERROR_EVENT_LAST
    if not errors and events and events[-1] == "data: [DONE]":
        return DONE_LAST
    return f"unexpected: {len(errors)} errors, last {events[-1][:60] if events else 'nothing'}"


@attrs.define
class Streams:
    """The outcome of each stream, filled in as they end."""

    outcomes: list[str] = attrs.field(factory=list)


@asynccontextmanager
async def streams_in_flight(server_url: str, body: bytes, count: int) -> AsyncIterator[Streams]:
    """POST ``body`` ``count`` times to ``server_url``'s chat route; yield once every
    stream has its first bytes; on leaving, wait until every stream has ended."""
    address = Address.tcp("127.0.0.1", int(server_url.rsplit(":", 1)[1]))
    streams = Streams()
    streaming = 0
    all_streaming = trio.Event()

    async def one(pool: UpstreamPool) -> None:
        nonlocal streaming
        async with send_upstream(pool, address, "/v1/chat/completions", body) as response:
            received = b""
            async for chunk in response:
                if not received:
                    streaming += 1
                    if streaming == count:
                        all_streaming.set()
                received += chunk
        streams.outcomes.append(outcome(response.status_code, received))

    async with UpstreamPool() as pool, trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one, pool)
        await all_streaming.wait()
        yield streams
