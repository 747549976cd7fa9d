"""Ollama's embeddings from llama-server's, and its ``truncate``: an input longer than the
model takes at once is cut to fit (Ollama's default), or refused with Ollama's 400 when
``truncate`` is false.

llama-server embeds each input in one physical batch, within one slot's context, and
refuses a longer one by name: ``input (601 tokens) is too large to process. increase the
physical batch size (current batch size: 512)``, or ``... is larger than the max context
size (256 tokens)``. The request goes as it is first, so inputs that fit cost nothing
extra; only on that refusal are the inputs counted with the child's own ``/tokenize``,
and each longer one is sent as its first tokens (a list of token ids, which llama-server
embeds as given), the model's special tokens kept at both ends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from bodhi_trio._exceptions import InvalidRequestError, UpstreamError
from bodhi_trio._http._ollama._errors import json_answer, refusal_message, upstream_refusal
from bodhi_trio._http._usage import note_usage

if TYPE_CHECKING:
    from bodhi_trio._context._open import SharedContext
    from bodhi_trio._http._ollama._requests import OpenAIRequest
    from bodhi_trio._http._routes import Reply

__all__ = [
    "TOO_LONG_MESSAGE",
    "InputCutter",
    "Tokenize",
    "cut_tokens",
    "embeddings_answer",
    "forward_whole",
    "input_limit",
]

TOO_LONG_MESSAGE = "the input length exceeds the context length"
"""Ollama's answer (400) to an input too long for the model when ``truncate`` is false."""

_TOO_LONG = re.compile(
    r"input \(\d+ tokens\) is (?:too large to process\. increase the physical batch size"
    r" \(current batch size: (\d+)\)|larger than the max context size \((\d+) tokens\))"
)

_MOST_ADDED = 8
"""How many more tokens than bytes a text is taken to make: in llama.cpp's BPE, SentencePiece
and WordPiece tokenizers a token is at least one byte of the text (byte fallback included)
but for the model's special tokens and a leading space, a few at most. A text of ``limit -
8`` bytes or fewer is taken to fit without being counted, so a request of many short inputs
beside a long one costs ``/tokenize`` for the long ones only. A tokenizer that normalises a
text into more characters (T5's) could make a short text too long: then the refusal is
answered as it is, nothing lost but the cut."""

_ATTEMPTS = 3
"""The request, cut to the first limit llama-server names, then to a second, smaller one."""

logger = logging.getLogger("bodhi_trio.ollama")

Tokenize = Callable[[str, bool], Awaitable[list[int]]]
"""The child's tokens for a text, with (``True``) or without the model's special tokens;
a failure raises."""


def input_limit(body: bytes) -> int | None:
    """The most tokens one input may have, from llama-server's refusal of a longer one;
    ``None`` for any other refusal."""
    match = _TOO_LONG.search(refusal_message(body))
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


def cut_tokens(full: Sequence[int], text: Sequence[int], limit: int) -> list[int]:
    """``full`` (an input's tokens with the model's special ones around ``text``, its
    tokens without them) in ``limit`` tokens: the leading and trailing special tokens kept,
    the text cut at its end. Where the specials alone do not fit, the first ``limit``."""
    added = len(full) - len(text)
    if added < 0 or limit <= added:
        return list(full[:limit])
    start = next(
        (at for at in range(added + 1) if list(full[at : at + len(text)]) == list(text)), None
    )
    if start is None:  # the text's tokens are not a run of the whole: cut the whole
        return list(full[:limit])
    return [*full[:start], *text[: limit - added], *full[start + len(text) :]]


@attrs.define
class InputCutter:
    """Cuts an embedding request's texts to a limit, counting each text once.

    Attributes:
        texts: The request's inputs, in order.
        tokenize: The child's ``/tokenize``.
    """

    texts: Sequence[str]
    tokenize: Tokenize
    _with_specials: dict[int, list[int]] = attrs.field(factory=dict, init=False)
    _without: dict[int, list[int]] = attrs.field(factory=dict, init=False)

    async def cut_to(self, limit: int) -> list[str | list[int]] | None:
        """The inputs with each one longer than ``limit`` tokens as its cut tokens, the
        rest as they were; ``None`` if none was longer (the refusal was about something
        else). Cancellation: nothing is kept but the counts already taken."""
        inputs: list[str | list[int]] = []
        cut_any = False
        for index, text in enumerate(self.texts):
            if len(text.encode()) + _MOST_ADDED <= limit:
                inputs.append(text)
                continue
            full = await self._count(self._with_specials, index, text, specials=True)
            if len(full) <= limit:
                inputs.append(text)
                continue
            only = await self._count(self._without, index, text, specials=False)
            inputs.append(cut_tokens(full, only, limit))
            cut_any = True
        return inputs if cut_any else None

    async def _count(
        self, counted: dict[int, list[int]], index: int, text: str, *, specials: bool
    ) -> list[int]:
        if index not in counted:
            counted[index] = await self.tokenize(text, specials)
        return counted[index]


async def _whole(
    ctx: SharedContext, endpoint: str, body: dict[str, Any], keep_alive: float | None
) -> tuple[int, bytes]:
    async with ctx.forward(endpoint, body, keep_alive=keep_alive) as answer:
        return answer.status_code, await answer.aread()


async def forward_whole(ctx: SharedContext, request: OpenAIRequest) -> tuple[int, bytes]:
    """llama-server's status and whole body for ``request`` (its usage noted)."""
    status, content = await _whole(ctx, request.endpoint, request.body, request.keep_alive)
    note_usage(content)
    return status, content


async def embeddings_answer(ctx: SharedContext, request: OpenAIRequest) -> dict[str, Any] | Reply:
    """llama-server's embeddings for ``request``, the inputs longer than the model takes at
    once cut to fit (at most three requests: a second limit llama-server names may need a
    second cut), or Ollama's 400 for them when ``truncate`` is false; any other refusal as
    an Ollama error reply.

    Only a local alias of its own is cut: a remote alias or a fallback chain may tokenize
    on another target than the one that refused (another model's token ids), so its
    refusal is passed on as it is.

    Raises:
        InvalidRequestError: An input too long, and ``truncate`` false.
        BodhiError: What :meth:`SharedContext.forward` raises.

    Cancellation (the client left): the request or ``/tokenize`` in flight is closed as
    :meth:`SharedContext.forward` closes it; nothing else is held.
    """
    alias = ctx.resolve_alias(request.body["model"])
    cuttable = alias.remote is None and not alias.fallback
    cutter = InputCutter(list(request.body["input"]), _tokenizer(ctx, request))
    limit: int | None = None
    for attempt in range(_ATTEMPTS):
        status, content = await forward_whole(ctx, request)
        if status == 200:
            return json_answer(status, content)
        named = input_limit(content)
        if named is None:
            break
        if not request.truncate:
            raise InvalidRequestError(TOO_LONG_MESSAGE, param="input")
        if not cuttable or attempt == _ATTEMPTS - 1 or (limit is not None and named >= limit):
            break  # not ours to cut, no attempt left, or the last cut did not take
        limit = named
        try:
            inputs = await cutter.cut_to(limit)
        except UpstreamError:  # /tokenize did not answer with tokens: the refusal as it is
            break
        if inputs is None:
            break
        logger.warning(
            "embeddings for %s: %d of %d inputs cut to %d tokens (the most its child embeds"
            " at once; --ubatch-size and --batch-size raise it)",
            alias.alias,
            sum(isinstance(item, list) for item in inputs),
            len(inputs),
            limit,
        )
        request.body["input"] = inputs
    return upstream_refusal(status, content)


def _tokenizer(ctx: SharedContext, request: OpenAIRequest) -> Tokenize:
    """The ``/tokenize`` of the child serving the request's alias; raises UpstreamError
    if it does not answer with tokens."""

    async def tokenize(text: str, specials: bool) -> list[int]:
        body = {"model": request.body["model"], "content": text, "add_special": specials}
        status, content = await _whole(ctx, "/tokenize", body, request.keep_alive)
        tokens = json_answer(status, content).get("tokens") if status == 200 else None
        if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
            raise UpstreamError(f"/tokenize answered {status} without tokens")
        return tokens

    return tokenize
