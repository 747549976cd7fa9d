"""Ollama's ``truncate`` for embeddings, the parts that need no llama-server: reading the
limit from llama-server's refusal, cutting an input's tokens with the model's special tokens
kept, and counting each text once (``_http/_ollama/_embed``). The real child's side is in
``test_ollama_truncate_llama.py``."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, cast

import attrs
import pytest
import trio

from bodhi_trio._exceptions import InvalidRequestError
from bodhi_trio._http._ollama._embed import (
    InputCutter,
    cut_tokens,
    embeddings_answer,
    input_limit,
)
from bodhi_trio._http._ollama._requests import OpenAIRequest
from bodhi_trio._http._routes import Reply


def refusal(message: str) -> bytes:
    return json.dumps({"error": {"code": 500, "message": message, "type": "server_error"}}).encode()


def test_the_limit_is_read_from_either_refusal_and_nothing_else() -> None:
    batch = "input (601 tokens) is too large to process. increase the physical batch size"
    assert input_limit(refusal(batch + " (current batch size: 512)")) == 512
    context = "input (300 tokens) is larger than the max context size (256 tokens). skipping"
    assert input_limit(refusal(context)) == 256
    assert input_limit(refusal("Input content cannot be empty")) is None
    assert input_limit(b"input (601 tokens) is too large, not JSON") is None
    assert input_limit(b"") is None


@pytest.mark.parametrize(
    ("full", "text", "limit", "cut"),
    [
        ([1, 10, 11, 12, 13], [10, 11, 12, 13], 3, [1, 10, 11]),  # a leading BOS kept
        ([1, 10, 11, 12, 13, 2], [10, 11, 12, 13], 4, [1, 10, 11, 2]),  # and a trailing EOS
        ([10, 11, 12, 13, 2], [10, 11, 12, 13], 3, [10, 11, 2]),  # a trailing SEP alone
        ([10, 11, 12], [10, 11, 12], 2, [10, 11]),  # no special tokens
        ([1, 10, 11, 2], [10, 11], 2, [1, 10]),  # the specials alone fill it: the first two
        ([1, 7, 8, 9], [10, 11, 12], 2, [1, 7]),  # the text's tokens are not a run of the whole
    ],
)
def test_an_input_is_cut_at_the_end_of_its_text_with_its_special_tokens_kept(
    full: list[int], text: list[int], limit: int, cut: list[int]
) -> None:
    assert cut_tokens(full, text, limit) == cut
    assert len(cut) == limit


class Counting:
    """A tokenizer: a token per word, a BOS in front with the special tokens."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    async def __call__(self, text: str, specials: bool) -> list[int]:
        self.calls.append((text, specials))
        words = [len(word) for word in text.split()]
        return [1, *words] if specials else words


async def test_only_the_long_inputs_are_cut_and_each_text_is_counted_once() -> None:
    tokenize = Counting()
    cutter = InputCutter(["a bb", "a bb ccc dddd", "eeeee"], tokenize)
    with trio.fail_after(5):
        assert await cutter.cut_to(3) == ["a bb", [1, 1, 2], "eeeee"]
        # a second, smaller limit (the other one llama-server names) cuts again
        assert await cutter.cut_to(2) == [[1, 1], [1, 1], "eeeee"]
        # nothing longer than the limit: the refusal was not about length
        assert await cutter.cut_to(12) is None
        # a text of 8 bytes fewer than the limit, or less, fits uncounted
        assert await cutter.cut_to(21) is None
    with_specials = [("a bb", True), ("a bb ccc dddd", True), ("eeeee", True)]
    without = [("a bb ccc dddd", False), ("a bb", False)]
    assert sorted(tokenize.calls) == sorted([*with_specials, *without])


async def test_a_text_too_short_to_be_long_is_not_counted() -> None:
    tokenize = Counting()
    short = "x" * 56  # 56 bytes + 8 <= 64: fits whatever the tokenizer
    cutter = InputCutter([short] * 1000 + ["ww " * 100], tokenize)
    with trio.fail_after(5):
        inputs = await cutter.cut_to(64)
    assert inputs is not None
    assert inputs[:1000] == [short] * 1000
    assert inputs[1000] == [1, *[2] * 63]
    assert tokenize.calls == [("ww " * 100, True), ("ww " * 100, False)]


# embeddings_answer against a scripted context: which requests go where, and when it stops.

BATCH_REFUSAL = refusal(
    "input (900 tokens) is too large to process. increase the physical batch size"
    " (current batch size: 512)"
)
CONTEXT_REFUSAL = refusal(
    "input (512 tokens) is larger than the max context size (256 tokens). skipping"
)
SMALLER_REFUSAL = refusal(
    "input (256 tokens) is larger than the max context size (128 tokens). skipping"
)
VECTORS = json.dumps({"data": [{"index": 0, "embedding": [1.0]}]}).encode()


@attrs.define
class Answer:
    status_code: int
    content: bytes

    async def aread(self) -> bytes:
        return self.content


@attrs.define
class ScriptedContext:
    """A context whose child answers embeddings from ``answers`` in turn and tokenizes a
    word per token (its length) after a BOS (``1``)."""

    answers: list[tuple[int, bytes]]
    remote: object = None
    fallback: tuple[str, ...] = ()
    tokenize_status: int = 200
    sent: list[tuple[str, Any]] = attrs.field(factory=list)

    def resolve_alias(self, name: str) -> Any:
        return SimpleNamespace(alias=name, remote=self.remote, fallback=self.fallback)

    @asynccontextmanager
    async def forward(
        self, endpoint: str, body: dict[str, Any], *, keep_alive: float | None = None
    ) -> AsyncIterator[Answer]:
        await trio.lowlevel.checkpoint()
        if endpoint == "/tokenize":
            self.sent.append((endpoint, body["content"]))
            words = [len(word) for word in body["content"].split()]
            tokens = [1, *words] if body["add_special"] else words
            yield Answer(self.tokenize_status, json.dumps({"tokens": tokens}).encode())
            return
        self.sent.append((endpoint, copy.deepcopy(body["input"])))
        yield Answer(*self.answers.pop(0))

    def embeddings(self) -> list[Any]:
        return [inputs for endpoint, inputs in self.sent if endpoint == "/v1/embeddings"]


LONG_TEXT = "ab " * 600  # 1,800 bytes, 600 words


def embed_request(inputs: list[str], *, truncate: bool = True) -> OpenAIRequest:
    body = {"model": "m", "input": inputs, "embd_normalize": 2}
    return OpenAIRequest("/v1/embeddings", body, False, None, False, truncate)


async def answer(ctx: ScriptedContext, request: OpenAIRequest) -> Any:
    with trio.fail_after(5):
        return await embeddings_answer(cast("Any", ctx), request)


async def test_inputs_that_fit_cost_one_request_and_nothing_else() -> None:
    ctx = ScriptedContext([(200, VECTORS)])
    assert await answer(ctx, embed_request(["a cat", LONG_TEXT])) == json.loads(VECTORS)
    assert ctx.sent == [("/v1/embeddings", ["a cat", LONG_TEXT])]


async def test_a_second_smaller_limit_gets_a_second_cut_and_no_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = ScriptedContext([(500, BATCH_REFUSAL), (400, CONTEXT_REFUSAL), (200, VECTORS)])
    with caplog.at_level(logging.WARNING, logger="bodhi_trio.ollama"):
        assert await answer(ctx, embed_request(["a cat", LONG_TEXT])) == json.loads(VECTORS)
    first, second, third = ctx.embeddings()
    assert first == ["a cat", LONG_TEXT]
    assert second == ["a cat", [1, *[2] * 511]]
    assert third == ["a cat", [1, *[2] * 255]]
    # the long text counted once each way; "a cat" is too short to be long
    assert [sent for sent in ctx.sent if sent[0] == "/tokenize"] == [("/tokenize", LONG_TEXT)] * 2
    assert [r.getMessage() for r in caplog.records] == [
        "embeddings for m: 1 of 2 inputs cut to 512 tokens (the most its child embeds at once;"
        " --ubatch-size and --batch-size raise it)",
        "embeddings for m: 1 of 2 inputs cut to 256 tokens (the most its child embeds at once;"
        " --ubatch-size and --batch-size raise it)",
    ]


@pytest.mark.parametrize(
    "answers",
    [
        [(500, BATCH_REFUSAL), (500, BATCH_REFUSAL)],  # the cut did not take: the same limit
        [(500, BATCH_REFUSAL), (400, CONTEXT_REFUSAL), (400, SMALLER_REFUSAL)],  # no attempt left
    ],
)
async def test_a_cut_that_does_not_take_is_not_sent_again(
    answers: list[tuple[int, bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    ctx = ScriptedContext(list(answers))
    with caplog.at_level(logging.WARNING, logger="bodhi_trio.ollama"):
        reply = await answer(ctx, embed_request([LONG_TEXT]))
    assert isinstance(reply, Reply)
    assert (reply.status, ctx.answers) == (answers[-1][0], [])
    assert len(ctx.embeddings()) == len(answers)
    assert len(caplog.records) == len(answers) - 1  # a cut made is a cut sent


@pytest.mark.parametrize(
    "context",
    [
        ScriptedContext([(500, BATCH_REFUSAL)], remote=object()),  # a remote alias
        ScriptedContext([(500, BATCH_REFUSAL)], fallback=("other",)),  # a fallback chain
        ScriptedContext([(500, BATCH_REFUSAL)], tokenize_status=404),  # no /tokenize
        ScriptedContext([(500, refusal("Input content cannot be empty"))]),  # not the length
    ],
)
async def test_a_refusal_that_is_not_ours_to_cut_is_answered_as_it_is(
    context: ScriptedContext,
) -> None:
    status, content = context.answers[0]
    reply = await answer(context, embed_request([LONG_TEXT]))
    assert isinstance(reply, Reply)
    assert isinstance(reply.body, bytes)
    assert reply.status == status
    assert json.loads(reply.body)["error"] == json.loads(content)["error"]["message"]
    assert len(context.embeddings()) == 1


async def test_truncate_false_is_ollamas_400_before_anything_is_counted() -> None:
    ctx = ScriptedContext([(500, BATCH_REFUSAL)])
    with pytest.raises(InvalidRequestError, match=r"^the input length exceeds the context length$"):
        await answer(ctx, embed_request(["a cat", LONG_TEXT], truncate=False))
    assert ctx.sent == [("/v1/embeddings", ["a cat", LONG_TEXT])]
