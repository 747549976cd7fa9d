"""The request scope: bodies registered in a request are closed when it ends, however it ends.

Registering a body where no request scope runs is an error, not a no-op: nothing would ever
close that body, and its producer (a relay holding a slot, a listener) would leak quietly.
"""

from __future__ import annotations

import attrs
import pytest
import trio

from bodhi_trio._http._request_scope import close_with_request, request_scope


@attrs.define
class Body:
    closes: int = 0

    async def aclose(self) -> None:
        self.closes += 1


def test_registering_a_body_outside_a_request_scope_raises() -> None:
    with pytest.raises(RuntimeError, match=r"outside request_scope\(\).*Body"):
        close_with_request(Body())


async def test_registering_after_the_scope_ended_raises() -> None:
    async with request_scope():
        pass
    with pytest.raises(RuntimeError, match="outside request_scope"):
        close_with_request(Body())


async def test_bodies_are_closed_when_the_request_ends() -> None:
    first, second = Body(), Body()
    async with request_scope():
        close_with_request(first)
        close_with_request(second)
        assert (first.closes, second.closes) == (0, 0)
    assert (first.closes, second.closes) == (1, 1)


async def test_bodies_are_closed_when_the_request_is_cancelled_or_fails() -> None:
    cancelled, failed = Body(), Body()
    with trio.move_on_after(0):
        async with request_scope():
            close_with_request(cancelled)
            await trio.sleep_forever()
    assert cancelled.closes == 1
    with pytest.raises(ValueError, match="route failed"):
        await _failing_request(failed)
    assert failed.closes == 1


async def test_tasks_the_request_spawns_register_with_it() -> None:
    body = Body()
    async with request_scope():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_register, body)
        assert body.closes == 0
    assert body.closes == 1


async def test_nested_scopes_close_their_own_bodies() -> None:
    outer, inner = Body(), Body()
    async with request_scope():
        async with request_scope():
            close_with_request(inner)
        assert inner.closes == 1
        close_with_request(outer)  # the outer scope is current again
        assert outer.closes == 0
    assert (outer.closes, inner.closes) == (1, 1)


async def _register(body: Body) -> None:
    close_with_request(body)


async def _failing_request(body: Body) -> None:
    async with request_scope():
        close_with_request(body)
        raise ValueError("route failed")
