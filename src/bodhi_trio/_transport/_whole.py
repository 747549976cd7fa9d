"""Reading an answer whole, with a limit for each answer and a budget for all of them.

A non-streamed completion, embeddings and an error body are read into memory before they
are answered or translated. A server that sends without end (a remote alias pointing at
the wrong place, or at someone else's server) must not take the memory of the process,
and every model's child with it: past :data:`MAX_ANSWER_BYTES` the read fails.

One answer under that limit is not the whole risk: a client that asks for many large
answers at once (embeddings of thousands of inputs, every token's log-probabilities)
would have them all held together. An :class:`AnswerBudget` bounds the bytes held by all
requests together: the server charges every HTTP request's whole reads to its budget
(:meth:`AnswerBudget.charging`) until the request ends, and a read that would go past the
budget fails with :class:`~bodhi_trio.AnswersOverBudgetError` (503, retry later). It
never waits for room: a request holding part of the budget while waiting for more could
wait on another doing the same.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import AsyncIterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, final

import attrs

from bodhi_trio._exceptions import AnswersOverBudgetError, UpstreamError

__all__ = [
    "ANSWERS_BUDGET_BYTES",
    "MAX_ANSWER_BYTES",
    "AnswerBudget",
    "AnswerBudgetStatistics",
    "ERROR_TEXT_BYTES",
    "error_text",
    "parse_whole",
    "parsed_size",
    "read_whole",
    "uncharged",
]

MAX_ANSWER_BYTES = 256 * 1024 * 1024
"""The largest answer read whole (embeddings of thousands of inputs fit with room)."""

ANSWERS_BUDGET_BYTES = 4 * MAX_ANSWER_BYTES
"""The bytes of answers the server holds whole at once, by default: four of the largest."""


@final
@attrs.frozen
class AnswerBudgetStatistics:
    """What :meth:`AnswerBudget.statistics` returns.

    Attributes:
        limit: The budget, in bytes.
        held: Bytes of answers read whole that requests in flight hold now.
        refused: Reads refused so far because they would have gone past ``limit``.
    """

    limit: int
    held: int
    refused: int


@final
@attrs.define(eq=False)
class AnswerBudget:
    """The bytes of answers read whole that the requests in flight may hold together.

    Args:
        limit: The budget, in bytes.
    """

    limit: int = ANSWERS_BUDGET_BYTES
    _held: int = attrs.field(default=0, init=False)
    _refused: int = attrs.field(default=0, init=False)

    def charging(self) -> AbstractContextManager[None]:
        """Inside the block, and in the tasks started from it, every :func:`read_whole`
        is charged to this budget; at its end what they read is given back.

        A task started inside that outlives the block (the supervision of a child whose
        load a request began inherits the request's context) reads uncharged once the block
        ended: nothing would give its bytes back then, and it may well be long-lived.
        """
        return _Charge(self)  # a class, not a generator: one per request, on the hot path

    def statistics(self) -> AnswerBudgetStatistics:
        """The budget, what is held of it, and how many reads it refused."""
        return AnswerBudgetStatistics(self.limit, self._held, self._refused)

    def _take(self, size: int) -> None:
        if self._held + size > self.limit:
            self._refused += 1
            raise AnswersOverBudgetError(
                f"answers read whole for requests in flight hold {self._held} of"
                f" {self.limit} bytes; {size} more do not fit: retry later"
            )
        self._held += size

    def _give_back(self, size: int) -> None:
        self._held -= size


@final
@attrs.define(eq=False)
class _Charge:
    """What one :meth:`AnswerBudget.charging` block's reads hold of the budget."""

    budget: AnswerBudget
    held: int = 0
    closed: bool = False
    _token: contextvars.Token[_Charge | None] | None = None

    def __enter__(self) -> None:
        self._token = _current_charge.set(self)

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _current_charge.reset(self._token)
        self.close()

    def take(self, size: int) -> None:
        if self.closed:  # a task the block started outlived it (see ``charging``)
            return
        self.budget._take(size)
        self.held += size

    def give_back(self, size: int) -> None:
        size = min(size, self.held)
        self.held -= size
        self.budget._give_back(size)

    def close(self) -> None:
        self.closed = True
        self.give_back(self.held)


_current_charge: contextvars.ContextVar[_Charge | None] = contextvars.ContextVar(
    "bodhi_trio_answer_charge", default=None
)


@contextmanager
def uncharged() -> Iterator[None]:
    """Inside the block, :func:`read_whole` is charged to nothing: for the server's own
    reads (a child's health), which a request that started them must not be able to fail."""
    token = _current_charge.set(None)
    try:
        yield
    finally:
        _current_charge.reset(token)


async def read_whole(pieces: AsyncIterable[bytes], peer: str) -> bytes:
    """Every piece of ``pieces`` joined, charged to the current
    :meth:`AnswerBudget.charging` block if there is one (until that block ends).

    Raises:
        UpstreamError: More than :data:`MAX_ANSWER_BYTES` came (502), or the read failed.
        AnswersOverBudgetError: The answer would go past the budget it is charged to
            (503); what it had taken is given back.

    Cancellation: what was read is dropped and given back; the caller closes the response.
    """
    limit = MAX_ANSWER_BYTES
    charge = _current_charge.get()
    parts: list[bytes] = []
    size = 0
    try:
        async for piece in pieces:
            size += len(piece)
            if size > limit:
                raise UpstreamError(f"the answer from {peer} is larger than {limit} bytes")
            if charge is not None:
                charge.take(len(piece))
            parts.append(piece)
    except BaseException:
        if charge is not None:
            charge.give_back(sum(map(len, parts)))
        raise
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parsed_size(data: bytes) -> int:
    """About the most memory parsing ``data`` as JSON takes, beyond ``data`` itself.

    Parsed, JSON takes more than its bytes, and how much more depends on its tokens (each
    bound here measured with ``tracemalloc``, tests/transport/test_whole.py): the text
    decoded whole and each string built in pieces (twice the bytes for ASCII prose; 8
    times for prose with one emoji, whose text Python then keeps in 4 bytes a
    character), an object 64-232 bytes (25 times its bytes for a body of ``{},``), a list
    56-96, every value a pointer in its container and, but for the smallest, an object of
    its own (a float 24, a string 49 and its characters), every key an entry in its
    object. One count per kind of token (``bytes.count``: an eighth of the parse) bounds
    it for any body.
    """
    count = data.count
    plain = data.isascii() and not count(b"\\u")  # 1 byte a character, decoded and parsed
    return (
        (len(data) * 9 // 4 if plain else len(data) * 9)
        + 232 * count(b"{")
        + 96 * count(b"[")
        + 48 * count(b",")
        + 64 * count(b":")
        + 32 * count(b'"')
    )


def parse_whole(data: bytes) -> Any:
    """``data``, an answer read whole, parsed as JSON, once what parsing it may take
    (:func:`parsed_size`) is charged to the current :meth:`AnswerBudget.charging` block,
    beside the answer's bytes, until that block ends. A body built to be small as bytes and
    large as objects (a remote's, someone else's) is then refused before it is parsed.

    Raises:
        AnswersOverBudgetError: The parsed answer would go past the budget (503).
        ValueError: ``data`` is not JSON.
    """
    charge = _current_charge.get()
    if charge is not None:
        charge.take(parsed_size(data))
    return json.loads(data)


ERROR_TEXT_BYTES = 4096
"""The most of an answer that is not JSON (or too large to parse) an error quotes."""


def error_text(body: bytes) -> str:
    """The start of ``body`` (at most :data:`ERROR_TEXT_BYTES`), as text to quote in an
    error: an answer that is not JSON may be of any size."""
    return body[:ERROR_TEXT_BYTES].decode(errors="replace")
