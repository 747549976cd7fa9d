"""Reading an answer whole, with a limit.

A non-streamed completion, embeddings and an error body are read into memory before they
are answered or translated. A server that sends without end (a remote alias pointing at
the wrong place, or at someone else's server) must not take the memory of the process,
and every model's child with it: past :data:`MAX_ANSWER_BYTES` the read fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

from bodhi_trio._exceptions import UpstreamError

__all__ = ["MAX_ANSWER_BYTES", "read_whole"]

MAX_ANSWER_BYTES = 256 * 1024 * 1024
"""The largest answer read whole (embeddings of thousands of inputs fit with room)."""


async def read_whole(pieces: AsyncIterable[bytes], peer: str) -> bytes:
    """Every piece of ``pieces`` joined.

    Raises:
        UpstreamError: More than :data:`MAX_ANSWER_BYTES` came (502), or the read failed.

    Cancellation: what was read is dropped; the caller closes the response.
    """
    limit = MAX_ANSWER_BYTES
    parts: list[bytes] = []
    size = 0
    async for piece in pieces:
        size += len(piece)
        if size > limit:
            raise UpstreamError(f"the answer from {peer} is larger than {limit} bytes")
        parts.append(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)
