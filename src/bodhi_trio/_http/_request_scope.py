"""One HTTP request's lifetime: the response bodies it must close when it ends.

A client can leave after a route returned a streaming body but before the
framework began to iterate it; the framework then never closes that body, and
its producer (a relay holding a model slot, a state listener, a log follower)
would wait forever. A route therefore registers each streaming body with
:func:`close_with_request`, and the ASGI middleware around the app runs every
request inside :func:`request_scope`, which closes what was registered when the
request ends, however it ends.

The registry is a context variable: tasks the request spawns inherit it
(context variables are copied into child tasks, and the list object is shared).
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import trio

__all__ = ["close_with_request", "request_scope"]


class _Closeable(Protocol):
    async def aclose(self) -> None: ...


_request_bodies: contextvars.ContextVar[list[_Closeable] | None] = contextvars.ContextVar(
    "bodhi_trio_request_bodies", default=None
)


def close_with_request(body: _Closeable) -> None:
    """Make sure ``body`` is closed when its HTTP request ends, however it ends.

    Args:
        body: A response body with an idempotent, non-blocking ``aclose()``.

    Raises:
        RuntimeError: Not called inside :func:`request_scope`. Nothing would
            ever close ``body`` then, and its producer would leak, so this is a
            bug in the caller rather than something to skip quietly.
    """
    bodies = _request_bodies.get()
    if bodies is None:
        raise RuntimeError(
            "close_with_request() was called outside request_scope(): nothing would close"
            f" {type(body).__name__} when the request ends; call it from code that runs"
            " inside 'async with request_scope():'"
        )
    bodies.append(body)


@asynccontextmanager
async def request_scope() -> AsyncIterator[None]:
    """One HTTP request's lifetime: bodies registered inside are closed at its end.

    Closing is shielded, so a cancelled request still closes its bodies; each
    ``aclose()`` is idempotent, so a body the framework already closed is fine.
    """
    bodies: list[_Closeable] = []
    token = _request_bodies.set(bodies)
    try:
        yield
    finally:
        _request_bodies.reset(token)
        with trio.CancelScope(shield=True):
            for body in bodies:
                await body.aclose()  # idempotent, never blocks
