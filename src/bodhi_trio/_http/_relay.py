"""The relay of a streamed completion: llama-server's SSE bytes to the client, unchanged.

Three parties share one :class:`Relay`:

- The **producer** (:func:`relay_upstream`, a task in the server's root nursery)
  holds the slot's read side and the upstream request. It publishes
  llama-server's head (and, if that is not a 200, its whole error body), then
  waits until the body has read the response to its end, or for an
  interruption (a swap's drain timeout, a crash, shutdown): then it closes the
  upstream connection and lets go of the slot at once, even if the client is
  stuck (a client that stopped reading blocks the write, never the slot).
- The **route** waits, up to the keep-alive interval, for that head: a failure
  becomes a proper status; a slow load gets an early 200 instead.
- The **body** (:class:`~bodhi_trio._http._relay_body.RelayBody`), iterated once the
  headers are sent (by the completion route, :mod:`._completion_route`, or by Quart for
  the pass-through and the Ollama routes), sends keep-alive comments while the model
  still loads, then reads the upstream response itself and returns each piece as it
  arrives: nothing queued between the upstream read and the client write (the relay's
  fast path). Given the request's body writer (``writer``), it writes the pieces itself
  in one loop instead (``RelayBody._pump``), the first from the request's task and the
  rest from a task of its own, with one keep-alive scope per interval instead of a
  timeout scope per read, and without the body's iteration and the ASGI message per
  piece in between. At the end it lets the producer release the slot, and returns the
  one error event a failure owes. Its ``aclose`` (the iterator's, or the request
  scope's when nobody got that far) cancels the producer, which closes the upstream
  connection, so llama-server stops generating.

The producer never raises (its errors are recorded for the body). Only one of the
request's task, the body's own task under it, and the server's relay hub (only while that
task is parked in it, :mod:`bodhi_trio._transport._relay_hub`) writes to the client at a
time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from bodhi_trio._exceptions import AnswersOverBudgetError, BodhiError
from bodhi_trio._http._sse import error_event
from bodhi_trio._transport._whole import error_text, parse_whole

if TYPE_CHECKING:
    from bodhi_trio._transport._loopback import UpstreamResponse

__all__ = [
    "ErrorRenderer",
    "Relay",
    "RelayHead",
    "answered_ok",
    "relay_upstream",
    "start_relay",
]

logger = logging.getLogger("bodhi_trio.relay")


@attrs.frozen
class RelayHead:
    """llama-server's answer: status, headers, and the whole body if it is not a 200."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""


ErrorRenderer = Callable[[BodhiError | Mapping[str, Any]], bytes]
"""Turns a failure into the one SSE event that ends a stream (:func:`._sse.error_event`)."""


def answered_ok(status: int, headers: Mapping[str, str]) -> bool:
    """A completion's rule for what to stream: llama-server's 200 (else its error body)."""
    return status == 200


@final
@attrs.define(eq=False)
class Relay:
    """What the producer, the route and the body of one streamed completion share.

    Args:
        keepalive: Seconds without bytes before a ``: keep-alive`` comment (0: off).
        streams: Given llama-server's status and headers, whether the body streams
            the response (else the producer reads it whole into :attr:`head`).
        render_error: The stream's closing error event (the dialect's shape).
    """

    keepalive: float
    streams: Callable[[int, Mapping[str, str]], bool] = answered_ok
    render_error: ErrorRenderer = error_event
    producer: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    head: RelayHead | None = None
    response: UpstreamResponse | None = None  # a streamed body, for the body to read
    failure: BodhiError | None = None
    early: bool = False  # the client got its 200 before llama-server answered
    answered: trio.Event = attrs.field(factory=trio.Event)  # head or failure known
    done_reading: trio.Event = attrs.field(factory=trio.Event)  # the body is done with it
    finished: trio.Event = attrs.field(factory=trio.Event)  # the producer let go

    def owed_event(self, read_error: BodhiError | None = None) -> bytes | None:
        """The error event the stream must end with, once the producer finished.

        An interruption the producer saw (a swap, a crash, shutdown) wins over the
        broken read it caused.
        """
        if self.failure is not None:
            return self.render_error(self.failure)
        if read_error is not None:
            return self.render_error(read_error)
        head = self.head
        if head is not None and head.status != 200 and self.early:
            try:
                upstream = parse_whole(head.body)
                error = upstream["error"] if isinstance(upstream.get("error"), dict) else upstream
            except (ValueError, AttributeError, AnswersOverBudgetError):
                error = {"message": error_text(head.body)}
            error.setdefault("type", "upstream_error")
            error.setdefault("code", head.status)
            return self.render_error(error)
        return None


async def relay_upstream(
    forward: AbstractAsyncContextManager[UpstreamResponse], relay: Relay
) -> None:
    """The producer: run the upstream request and hold it while the body reads it.

    Never raises: failures are recorded in ``relay.failure`` for the body.

    Cancellation (``relay.producer``, or an interruption of the slot's read
    hold): leaving ``forward`` closes the upstream connection at once, so
    llama-server stops generating and a read the body is blocked in fails.
    """
    try:
        with relay.producer:
            async with forward as response:
                status, headers = response.status_code, response.headers
                if not relay.streams(status, headers):
                    body = await response.aread()
                    relay.head = RelayHead(status, dict(headers), body)
                    return
                relay.head = RelayHead(status, dict(headers))
                relay.response = response
                relay.answered.set()
                await relay.done_reading.wait()
    except BodhiError as exc:
        relay.failure = exc
    except Exception as exc:
        logger.exception("relaying a completion failed")
        relay.failure = BodhiError(f"internal error: {exc!r}")
    finally:
        relay.answered.set()
        relay.finished.set()


async def start_relay(
    nursery: trio.Nursery,
    forward: AbstractAsyncContextManager[UpstreamResponse],
    keepalive: float,
    *,
    wait: float,
    streams: Callable[[int, Mapping[str, str]], bool] = answered_ok,
    render_error: ErrorRenderer = error_event,
) -> Relay:
    """Start a relay's producer in ``nursery`` and wait up to ``wait`` seconds for
    llama-server's answer (its head, or a failure); the route then decides what to send.

    ``streams`` and ``render_error`` are :class:`Relay`'s.

    Cancellation (the client left while it waited): the producer is cancelled too; a
    load it started still completes.
    """
    relay = Relay(keepalive, streams=streams, render_error=render_error)
    nursery.start_soon(relay_upstream, forward, relay)
    try:
        with trio.move_on_after(wait):
            await relay.answered.wait()
    except BaseException:
        relay.producer.cancel()
        raise
    return relay
