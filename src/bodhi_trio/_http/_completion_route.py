"""The completion routes answered straight from ASGI, without Quart's request machinery.

``POST`` on a route of :data:`ENDPOINTS`, or on one of Ollama's inference routes
(``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``), is the path every
token takes. Through Quart a request gets a request object, routing, before- and
after-request hooks and a response object, and Quart-Trio runs the handler in a task of
its own beside one that hands it the ASGI messages: CPU and scheduler rounds before the
first byte. Here the same steps run once, in order, in the task Hypercorn gave the
request:

1. Host, Origin and key: :meth:`AccessPolicy.check` with the access the app registered
   for the route (:attr:`Access.API`), as the app's ``check_access`` does for every route.
2. The body: a declared length over the limit is refused unread; otherwise it is read
   from ``receive`` up to the limit, within ``body_timeout`` (408 after it).
3. The route's handler (:meth:`Routes.completion`, or Ollama's), and its :class:`Reply`
   sent as ASGI messages (a stream's pieces mostly written by the relay itself,
   :mod:`._relay`).

Errors become answers through :func:`error_reply`, as in the app (in Ollama's shape under
its paths); the app's after-request rules apply too: the CORS headers for an allowed
``Origin``, and ``Connection: close`` when the body was left unread (Hypercorn would
otherwise never read the next request on that connection). The routes stay registered
in the app as well, which answers them when this path declines a request (an ASGI
``root_path``).

Cancellation: once the body is read (or left unread for an early error), a second task
waits for ``http.disconnect`` and cancels the answer when the client leaves (the relay's
producer with it, through the request scope). A client that leaves while sending its body
gets nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, final

import attrs
import trio
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

from bodhi_trio._exceptions import RequestTooLargeError
from bodhi_trio._http._errors import error_reply
from bodhi_trio._http._fast_path import FastExchange
from bodhi_trio._http._ollama._errors import is_ollama_path
from bodhi_trio._http._request_scope import (
    close_request_bodies,
    note_request,
    request_bodies,
)
from bodhi_trio._http._security import refuse_repeated_access_headers

if TYPE_CHECKING:
    from bodhi_trio._http._routes import Reply
    from bodhi_trio._http._security import Access, AccessPolicy

__all__ = ["BodyHandler", "CompletionRoute", "declares_body", "refuse_declared_body"]

BodyHandler = Callable[[bytes], Awaitable["Reply"]]
"""A route's handler: the request's body in, the answer out."""

_CLOSE = (b"connection", b"close")


@final
@attrs.frozen
class CompletionRoute:
    """``POST`` on the completion routes, as an ASGI application.

    Attributes:
        handlers: Each path's handler (:meth:`Routes.completion` for the routes of
            :data:`ENDPOINTS`, Ollama's for its inference routes).
        policy: Who may call them.
        access: What each path of ``handlers`` needs, as the app registered it (``POST``
            on it): the one table of who may call what.
        max_body_bytes: Larger request bodies get 413.
        body_timeout: Seconds a client may take to send its body (408 after).
    """

    handlers: Mapping[str, BodyHandler]
    policy: AccessPolicy
    access: Mapping[str, Access]
    max_body_bytes: int
    body_timeout: float

    def serves(self, scope: Mapping[str, Any]) -> bool:
        """Whether this route answers the HTTP request ``scope``."""
        return (
            scope["method"] == "POST"
            and scope["path"] in self.access
            and not scope.get("root_path")
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        endpoint: str = scope["path"]
        pairs = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in scope["headers"]
        ]
        headers = dict(pairs)
        extra: dict[str, str] = {}
        length = headers.get("content-length", "")
        declared = int(length) if length.isdigit() else None
        reply: Reply | None = None
        ollama = is_ollama_path(endpoint)
        try:
            refuse_repeated_access_headers(pairs, headers)
            extra = self.policy.cors_headers(headers.get("origin"))
            self.policy.check(headers, self.access[endpoint])
            note_request(route=endpoint)  # the metrics' route label, as the app's routes do
            raw = await self._body(declared, receive)
        except Exception as error:
            reply, raw = error_reply(error, ollama=ollama), b""
        else:
            if raw is None:
                return  # the client left while sending its body: nobody to answer
        async with trio.open_nursery() as nursery:
            # It also reads what the client still sends (a body left unread): Hypercorn's
            # queue to the app is bounded, and its last send waits for room in it.
            nursery.start_soon(
                _cancel_on_disconnect, receive, nursery.cancel_scope, request_bodies()
            )
            # An early error is answered with the body unread: a keep-alive client must
            # reconnect (Hypercorn would never read its next request on this connection).
            close = reply is not None and declares_body(declared, headers.get("transfer-encoding"))
            if reply is None:
                try:
                    reply = await self.handlers[endpoint](raw)
                except Exception as error:
                    reply = error_reply(error, ollama=ollama)
            await _send_reply(send, reply, extra, close=close)
            nursery.cancel_scope.cancel()

    async def _body(self, declared: int | None, receive: Any) -> bytes | None:
        """The request body, or None if the client left before it was whole.

        Raises:
            RequestTooLargeError: Declared larger than ``max_body_bytes``.
            RequestEntityTooLarge: Found larger (413, as Quart's own).
            RequestTimeout: Not whole within ``body_timeout`` (408).
        """
        limit = self.max_body_bytes
        refuse_declared_body(declared, limit)
        parts: list[bytes] = []
        size = 0
        queued = _queued_messages(receive)
        first = queued()
        if first is not None and first["type"] == "http.request":
            whole: bytes = first.get("body", b"")
            if not first.get("more_body", False) and len(whole) <= limit:
                return whole  # the usual request: its body came with it, no wait to bound
        with trio.move_on_after(self.body_timeout):
            while True:
                message, first = first or queued() or await receive(), None
                if message["type"] != "http.request":
                    return None  # http.disconnect
                data: bytes = message.get("body", b"")
                size += len(data)
                if size > limit:
                    raise RequestEntityTooLarge()
                parts.append(data)
                if not message.get("more_body", False):
                    return parts[0] if len(parts) == 1 else b"".join(parts)
        raise RequestTimeout()


def _queued_messages(receive: Any) -> Callable[[], Any]:
    """A function giving the next message already queued for ``receive``, or None.

    Hypercorn hands the app its channel's ``receive``; a small body is queued whole by
    the time the app runs (the request, its data and its end came in one read), and
    taking it with ``receive_nowait`` spares a scheduler round per message. The fast
    path's ``receive`` has the whole body at once too. For any other ``receive``: always
    None (the caller awaits ``receive`` then).
    """
    channel = getattr(receive, "__self__", None)
    if not isinstance(channel, (trio.MemoryReceiveChannel, FastExchange)):
        return lambda: None

    def queued() -> Any:
        try:
            return channel.receive_nowait()
        except trio.WouldBlock:
            return None

    return queued


def refuse_declared_body(declared: int | None, limit: int) -> None:
    """Refuse, unread, a body whose ``Content-Length`` is over ``limit`` (413).

    Raises:
        RequestTooLargeError: It is.
    """
    if declared is not None and declared > limit:
        raise RequestTooLargeError(
            f"the request body is larger than {limit} bytes (BODHI_MAX_BODY_BYTES)"
        )


def declares_body(declared: int | None, transfer_encoding: str | None) -> bool:
    """Whether a request with these ``Content-Length`` and ``Transfer-Encoding`` has a
    body (answered with it unread, its connection must close)."""
    return (declared or 0) > 0 or transfer_encoding is not None


async def _cancel_on_disconnect(receive: Any, scope: trio.CancelScope, bodies: list[Any]) -> None:
    """Cancel ``scope`` when the client leaves (Hypercorn's ``http.disconnect``), closing
    the request's ``bodies`` first: a relay's producer then closes the upstream request
    at its next turn, without waiting for the relay to see the cancellation (on a busy
    server every turn of the loop is one more wait for every task).

    It first lets the tasks already due run (the relay's producer, started beside it):
    the wait it sets up is not what the client's first byte waits for.
    """
    await trio.lowlevel.cancel_shielded_checkpoint()
    while (await receive())["type"] != "http.disconnect":
        pass
    await close_request_bodies(bodies)
    scope.cancel()


async def _send_reply(send: Any, reply: Reply, extra: Mapping[str, str], *, close: bool) -> None:
    """Send ``reply`` with the ``extra`` headers (and ``Connection: close`` if ``close``).

    A streamed body is closed when it ends or this is cancelled (shielded: ``aclose``
    never blocks)."""
    headers = [(name.lower().encode(), value.encode()) for name, value in reply.headers.items()]
    body = reply.body
    if isinstance(body, bytes):
        headers.append((b"content-length", str(len(body)).encode()))
    headers.extend((name.lower().encode(), value.encode()) for name, value in extra.items())
    if close:
        headers.append(_CLOSE)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    if isinstance(body, bytes):
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    await _send_stream(send, body)


async def _send_stream(send: Any, body: AsyncIterator[bytes]) -> None:
    try:
        async for piece in body:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
