"""The relay of a streamed completion: llama-server's SSE bytes to the client, unchanged.

Three parties share one :class:`Relay`:

- The **producer** (:func:`relay_upstream`, a task in the server's root nursery)
  holds the slot's read side and the upstream request. It publishes
  llama-server's head (and, if that is not a 200, its whole error body), waits
  until the client has its response headers, then writes every piece of body it
  reads straight to the client through the request's raw ASGI ``send``: one
  task, one read and one write per piece, nothing queued in between (the
  relay's fast path; it bought a third of the relay's CPU per event).
- The **route** waits, up to the keep-alive interval, for that head: a failure
  becomes a proper status; a slow load gets an early 200 instead.
- The **body** (:class:`RelayBody`), iterated by Quart once it sent the
  headers, lets the producer write, sends keep-alive comments while the model
  still loads, and ends when the producer does, with the one error event owed
  by a failure. Its ``aclose`` (Quart's, or the request scope's when Quart never
  got that far) cancels the producer, which closes the upstream connection.

The producer never raises (its errors are recorded for the body), and only one
party writes body bytes at a time: the body until the producer takes over, the
producer after, and the body again once the producer has finished.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ._exceptions import BodhiError
from ._sse import KEEPALIVE, error_event

if TYPE_CHECKING:
    from ._upstream import UpstreamResponse

__all__ = ["ASGISend", "Relay", "RelayBody", "RelayHead", "relay_upstream"]

logger = logging.getLogger("bodhi_trio.relay")

ASGISend = Callable[[dict[str, Any]], Awaitable[None]]


def _interval(keepalive: float) -> float:
    return keepalive if keepalive > 0 else math.inf


@attrs.frozen
class RelayHead:
    """llama-server's answer: status, headers, and the whole body if it is not a 200."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""


@final
@attrs.define(eq=False)
class Relay:
    """What the producer, the route and the body of one streamed completion share.

    Args:
        send: The request's raw ASGI ``send`` (from :func:`._sse.request_send`).
        keepalive: Seconds without bytes before a ``: keep-alive`` comment (0: off).
    """

    send: ASGISend
    keepalive: float
    producer: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    head: RelayHead | None = None
    failure: BodhiError | None = None
    early: bool = False  # the client got its 200 before llama-server answered
    writing: bool = False  # the producer writes the body now
    answered: trio.Event = attrs.field(factory=trio.Event)  # head or failure known
    may_write: trio.Event = attrs.field(factory=trio.Event)  # the client has its headers
    took_over: trio.Event = attrs.field(factory=trio.Event)  # writing, or finished
    finished: trio.Event = attrs.field(factory=trio.Event)

    def owed_event(self) -> bytes | None:
        """The error event the stream must end with, once the producer finished."""
        if self.failure is not None:
            return error_event(self.failure)
        head = self.head
        if head is not None and head.status != 200 and self.early:
            try:
                upstream = json.loads(head.body)
                error = upstream["error"] if isinstance(upstream.get("error"), dict) else upstream
            except (ValueError, AttributeError):
                error = {"message": head.body.decode(errors="replace")}
            error.setdefault("type", "upstream_error")
            error.setdefault("code", head.status)
            return error_event(error)
        return None


async def relay_upstream(
    forward: AbstractAsyncContextManager[UpstreamResponse], relay: Relay
) -> None:
    """The producer: run the upstream request and write its body to the client.

    Never raises: failures are recorded in ``relay.failure`` for the body.

    Cancellation (``relay.producer``): leaving ``forward`` closes the upstream
    connection at once, so llama-server stops generating.
    """
    try:
        with relay.producer:
            async with forward as response:
                if response.status_code != 200:
                    body = await response.aread()
                    relay.head = RelayHead(response.status_code, dict(response.headers), body)
                    relay.answered.set()
                    return
                relay.head = RelayHead(200, dict(response.headers))
                relay.answered.set()
                await relay.may_write.wait()
                relay.writing = True
                relay.took_over.set()
                await _pump(response, relay.send, _interval(relay.keepalive))
    except BodhiError as exc:
        relay.failure = exc
    except Exception as exc:
        logger.exception("relaying a completion failed")
        relay.failure = BodhiError(f"internal error: {exc!r}")
    finally:
        relay.answered.set()
        relay.took_over.set()
        relay.finished.set()


async def _pump(response: UpstreamResponse, send: ASGISend, interval: float) -> None:
    """Every piece of ``response``'s body to the client as it arrives; a keep-alive
    comment after ``interval`` seconds without one. Returns at the body's end, or
    when the client is gone.

    The keep-alive timer covers only the wait for upstream bytes, never a write:
    a write cut short would lose bytes.
    """
    pieces = response.__aiter__()
    while True:
        piece = KEEPALIVE
        with trio.move_on_after(interval):
            try:
                piece = await pieces.__anext__()
            except StopAsyncIteration:
                return
        try:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        except OSError:  # some ASGI servers raise once the client left (Hypercorn drops it)
            return


@final
@attrs.define(eq=False)
class RelayBody:
    """The body Quart iterates for a streamed completion (see the module docstring).

    Args:
        relay: The shared state.
        prime: Start with a ``: keep-alive`` (the early answer while the model loads).
    """

    relay: Relay
    prime: bool = False
    _done: bool = False

    def __aiter__(self) -> RelayBody:
        return self

    async def __anext__(self) -> bytes:
        if self.prime:
            self.prime = False
            return KEEPALIVE
        relay = self.relay
        relay.may_write.set()  # Quart sent the headers: the producer may write
        while not self._done:
            if relay.writing:
                await relay.finished.wait()
            elif not relay.finished.is_set():
                with trio.move_on_after(_interval(relay.keepalive)):
                    await relay.took_over.wait()
                    continue
                if relay.writing or relay.finished.is_set():
                    # The timer fired in the round the producer took over: a keep-alive
                    # from here could land between two of its writes.
                    continue
                return KEEPALIVE  # still loading
            self._done = True
            owed = relay.owed_event()
            if owed is not None:
                return owed
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the producer (closing the upstream request). Never blocks."""
        self._done = True
        self.relay.producer.cancel()
