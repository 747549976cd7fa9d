"""Requests to the llama-server child over loopback HTTP.

One ``httpx.AsyncClient`` per context. Its read timeout is off (a long prefill
sends nothing for minutes); deadlines are the callers' Trio scopes. Closing a
response before its end closes the connection, which is how llama-server learns
that the client left and stops generating.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import final

import attrs
import httpx
import trio

from ._exceptions import UpstreamError

__all__ = ["UpstreamResponse", "open_upstream_client", "send_upstream"]

_CLOSE_TIMEOUT = 2.0


def open_upstream_client() -> httpx.AsyncClient:
    """The client for talking to llama-server children (use it with ``async with``)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=60.0),
        # Far above llama-server's slots: cancelled requests may leak pool slots
        # (encode/httpcore#1093), and keep-alive connections make the next request cheap.
        limits=httpx.Limits(max_connections=1024, max_keepalive_connections=64),
        trust_env=False,  # loopback only: never a proxy from the environment
    )


@final
@attrs.define(eq=False)
class UpstreamResponse:
    """A llama-server response whose headers have arrived; the body is still to read.

    Attributes:
        status_code: The HTTP status llama-server answered with.
        headers: Its response headers.
    """

    _response: httpx.Response

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self._response.headers

    @property
    def is_event_stream(self) -> bool:
        content_type: str = self.headers.get("content-type", "")
        return content_type.startswith("text/event-stream")

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body bytes exactly as llama-server sent them (chunked framing removed).

        Raises:
            UpstreamError: The connection broke before the body was complete.
        """
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamError(f"llama-server response broke off: {exc!r}") from exc

    async def aread(self) -> bytes:
        """The whole body.

        Raises:
            UpstreamError: The connection broke before the body was complete.
        """
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"llama-server response broke off: {exc!r}") from exc


@asynccontextmanager
async def send_upstream(
    client: httpx.AsyncClient, base_url: str, path: str, body: bytes
) -> AsyncIterator[UpstreamResponse]:
    """POST ``body`` (JSON) to ``base_url + path`` and yield once headers arrive.

    Raises:
        UpstreamError: llama-server could not be reached or broke the connection.

    Cancellation: leaving the block (by cancellation or early exit) closes the
    connection at once, so llama-server stops generating.
    """
    request = client.build_request(
        "POST", base_url + path, content=body, headers={"content-type": "application/json"}
    )
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise UpstreamError(f"llama-server did not answer {path}: {exc!r}") from exc
    try:
        yield UpstreamResponse(response)
    finally:
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await response.aclose()
