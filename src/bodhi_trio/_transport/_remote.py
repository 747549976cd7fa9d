"""Requests to remote OpenAI-compatible servers: one pooled client per origin.

The loopback transport (:mod:`._loopback`) talks to our own children over Unix
sockets; this one talks to servers elsewhere, over HTTP or HTTPS. Its timeouts are
never a total: ``connect`` bounds the TCP and TLS handshake, ``idle`` bounds each
wait for bytes (the head, then the body), so a healthy ten-minute stream is never
cut and a stalled one ends.

Two clients behind one :meth:`RemoteClients.send`:

- plain ``http://`` remotes (no proxy in the environment, no CA bundle, an ASCII
  URL): our own HTTP/1.1 client (:mod:`._remote_plain`), which relays at the local
  relay's speed;
- HTTPS, proxied remotes and aliases with a CA bundle: httpx (:mod:`._remote_httpx`:
  TLS, proxies from the environment).

Errors come out as :class:`~bodhi_trio._exceptions.UpstreamError` subclasses whose
messages name what failed (connect, TLS, stall) and the URL, never a header: the
key travels in ``Authorization`` and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import final

import trio

from bodhi_trio._exceptions import RemoteConnectError, RemoteStalledError
from bodhi_trio._transport._remote_base import RemoteResponse, RemoteTimeouts
from bodhi_trio._transport._remote_httpx import HttpxClients
from bodhi_trio._transport._remote_plain import PlainClient, PlainTarget, proxied

__all__ = [
    "RemoteClients",
    "RemoteConnectError",
    "RemoteResponse",
    "RemoteStalledError",
    "RemoteTimeouts",
    "open_remote_clients",
]


@final
class RemoteClients:
    """The remote clients of one context: make it with :func:`open_remote_clients`."""

    def __init__(self, plain: PlainClient | None) -> None:
        self._plain = plain  # None: the environment names a proxy (httpx's job)
        self._httpx = HttpxClients()

    @asynccontextmanager
    async def send(
        self,
        url: str,
        body: bytes,
        *,
        headers: Sequence[tuple[str, str]],
        timeouts: RemoteTimeouts,
        ca_bundle: str | None = None,
        method: str = "POST",
    ) -> AsyncIterator[RemoteResponse]:
        """Send ``body`` to ``url``; yield once the response head is in.

        Raises:
            RemoteConnectError: Never reached it (nothing was sent: safe to retry).
            RemoteStalledError: No head within the idle timeout.
            UpstreamError: Any other transport failure.

        Cancellation: leaving the block closes the response at once (a stream not
        read to its end closes its connection, so the remote stops generating).
        """
        # (an alias's ca_bundle is read, and so checked, by httpx even for http://)
        ours = self._plain if ca_bundle is None else None
        target = PlainTarget.of(url) if ours is not None else None
        if ours is not None and target is not None:
            answer = await ours.send(target, url, body, headers, timeouts, method)
            try:
                yield answer
            finally:
                await ours.release(answer)
            return
        async with self._httpx.send(
            url, body, headers=headers, timeouts=timeouts, ca_bundle=ca_bundle, method=method
        ) as response:
            yield response

    async def aclose(self) -> None:
        """Close every idle connection and client. Idempotent.

        Cancellation: shielded and bounded.
        """
        if self._plain is not None:
            await self._plain.aclose()
        await self._httpx.aclose()


@asynccontextmanager
async def open_remote_clients() -> AsyncIterator[RemoteClients]:
    """The remote clients, with the plain client's idle watchdog running in a nursery of
    their own; on exit the watchdog stops and every connection is closed.

    Cancellation: the exit is shielded and bounded.
    """
    plain = None if proxied() else PlainClient()
    clients = RemoteClients(plain)
    async with trio.open_nursery() as nursery:
        if plain is not None:
            nursery.start_soon(plain.serve_watchdog, name="remote idle watchdog")
        try:
            yield clients
        finally:
            nursery.cancel_scope.cancel()
            await clients.aclose()
