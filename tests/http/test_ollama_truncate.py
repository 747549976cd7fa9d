"""Ollama's ``truncate`` for embeddings, the parts that need no llama-server: reading the
limit from llama-server's refusal, cutting an input's tokens with the model's special tokens
kept, and counting each text once (``_http/_ollama/_embed``). The real child's side is in
``test_ollama_truncate_llama.py``."""

from __future__ import annotations

import json

import pytest
import trio

from bodhi_trio._http._ollama._embed import InputCutter, cut_tokens, input_limit


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
