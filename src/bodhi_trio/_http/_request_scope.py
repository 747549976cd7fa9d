"""One HTTP request's lifetime: the response bodies it must close when it ends, and what
the request's route notes about it for the metrics and the request log line.

A client can leave after a route returned a streaming body but before the
framework began to iterate it; the framework then never closes that body, and
its producer (a relay holding a model slot, a state listener, a log follower)
would wait forever. A route therefore registers each streaming body with
:func:`close_with_request`, and the ASGI middleware around the app runs every
request inside :func:`request_scope`, which closes what was registered when the
request ends, however it ends.

The registry is a context variable: tasks the request spawns inherit it
(context variables are copied into child tasks, and the list object is shared).
The same goes for the :class:`RequestNote` (:func:`note_request`): a route notes its
rule and alias, and whoever reads a response's usage notes its tokens; the middleware
leaves in it the writer a relay uses to write body pieces itself
(:func:`request_body_writer`).
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

__all__ = [
    "ASGIApp",
    "RequestNote",
    "close_request_bodies",
    "close_with_request",
    "note_request",
    "request_bodies",
    "request_body_writer",
    "request_scope",
]

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
"""An ASGI application: ``await app(scope, receive, send)``."""


@attrs.define(eq=False)
class RequestNote:
    """What a request's handlers learnt about it (all optional).

    Attributes:
        route: The route's rule, e.g. ``/v1/chat/completions`` (never the raw path).
        alias: The model the request named.
        prompt_tokens: From the response's usage, if it had one.
        completion_tokens: The same.
        body_writer: Writes one piece of the response body, once its head was sent,
            without the framework in between (see ``_connection.body_writer``); set by
            the middleware.
    """

    route: str | None = None
    alias: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    body_writer: Callable[[bytes], Awaitable[None]] | None = None


_request_note: contextvars.ContextVar[RequestNote | None] = contextvars.ContextVar(
    "bodhi_trio_request_note", default=None
)


def note_request(
    *,
    route: str | None = None,
    alias: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> None:
    """Note facts about the current request (the fields given); outside a request
    scope (a library caller), nothing happens."""
    note = _request_note.get()
    if note is None:
        return
    if route is not None:
        note.route = route
    if alias is not None:
        note.alias = alias
    if prompt_tokens is not None:
        note.prompt_tokens = prompt_tokens
    if completion_tokens is not None:
        note.completion_tokens = completion_tokens


def request_body_writer() -> Callable[[bytes], Awaitable[None]] | None:
    """The current request's :attr:`RequestNote.body_writer`, if there is one."""
    note = _request_note.get()
    return None if note is None else note.body_writer


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


async def close_request_bodies(bodies: list[_Closeable]) -> None:
    """Close ``bodies`` (a request's, from :func:`request_bodies`) now: the client left.

    Each ``aclose()`` is idempotent and never blocks; the request's end closes them again.
    """
    for body in list(bodies):
        await body.aclose()


def request_bodies() -> list[_Closeable]:
    """The bodies registered with the current request so far, and later (the list itself);
    outside a request scope, an empty list nothing is ever registered with."""
    bodies = _request_bodies.get()
    return [] if bodies is None else bodies


@asynccontextmanager
async def request_scope() -> AsyncIterator[RequestNote]:
    """One HTTP request's lifetime: bodies registered inside are closed at its end; yields
    the request's :class:`RequestNote`.

    Closing is shielded, so a cancelled request still closes its bodies; each
    ``aclose()`` is idempotent, so a body the framework already closed is fine.
    """
    bodies: list[_Closeable] = []
    note = RequestNote()
    token = _request_bodies.set(bodies)
    note_token = _request_note.set(note)
    try:
        yield note
    finally:
        _request_note.reset(note_token)
        _request_bodies.reset(token)
        with trio.CancelScope(shield=True):
            await close_request_bodies(bodies)
