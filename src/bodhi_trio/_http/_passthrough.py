"""The pass-through, ``/upstream/{alias}/{path}``: any request to an alias's child,
its answer back as the child gave it.

The request is checked and sent by :meth:`SharedContext.upstream` (method, path,
query and content type only). The answer goes through the relay (:mod:`._relay`),
so the model stays held while it streams and a client that leaves closes the
upstream request: an event stream (``text/event-stream``) is relayed piece by piece,
with keep-alive comments between events; any other body is read whole first, so a
child that breaks off mid-body gives a proper 502 rather than a cut-short answer.
The child's headers come back but the hop-by-hop ones (RFC 9110 §7.6.1, and those
its ``Connection`` names), the framing ones our server sets itself
(``Content-Length``, ``Date``, ``Server``) and its CORS headers: which web pages may
read answers is this server's decision, not the child's.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from bodhi_trio._http._relay import start_relay
from bodhi_trio._http._relay_body import RelayBody
from bodhi_trio._http._request_scope import close_with_request, request_body_writer

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    import trio

    from bodhi_trio._transport._loopback import UpstreamResponse
    from bodhi_trio._transport._relay_hub import RelayHub

__all__ = ["passthrough", "relayed_headers"]

_NOT_RELAYED = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
        "content-length", "date", "server",
    }
)  # fmt: skip


def _is_event_stream(status: int, headers: Mapping[str, str]) -> bool:
    content_type = headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The child's response headers (lower-case names) that go back to the client."""
    named = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    return {
        name: value
        for name, value in headers.items()
        if name not in _NOT_RELAYED and name not in named and not name.startswith("access-control-")
    }


async def passthrough(
    nursery: trio.Nursery,
    forward: AbstractAsyncContextManager[UpstreamResponse],
    keepalive: float,
    hub: RelayHub | None = None,
) -> tuple[int, dict[str, str], bytes | AsyncIterator[bytes]]:
    """Run ``forward`` (a :meth:`SharedContext.upstream` request) and answer with what
    the child answered: status, headers, and the body whole or streamed (an event
    stream's paced tokens by ``hub``, if given).

    Raises:
        BodhiError: The request was refused (400), the alias is unknown (404), the
            model could not load, or the child could not be reached or broke off
            before the end of a body that is not an event stream (502).

    Cancellation (the client left): the upstream request is closed; a load it
    started still completes.
    """
    relay = await start_relay(nursery, forward, keepalive, wait=math.inf, streams=_is_event_stream)
    if relay.failure is not None:
        raise relay.failure
    head = relay.head
    assert head is not None  # answered without a failure
    headers = relayed_headers(head.headers)
    if relay.response is None:
        return head.status, headers, head.body
    headers.setdefault("cache-control", "no-cache")
    headers.setdefault("x-accel-buffering", "no")
    stream = RelayBody(relay, writer=request_body_writer(), hub=hub)
    close_with_request(stream)
    return head.status, headers, stream
