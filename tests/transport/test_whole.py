"""Answers read whole: each under its limit, all of a server's requests under one budget."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel

from bodhi_trio._exceptions import AnswersOverBudgetError, UpstreamError
from bodhi_trio._transport import _whole
from bodhi_trio._transport._whole import AnswerBudget, read_whole


class pieces:  # read as a function; a class, not a generator: nothing left to close
    def __init__(self, *sizes: int) -> None:
        self._sizes = list(sizes)

    def __aiter__(self) -> pieces:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self._sizes:
            raise StopAsyncIteration
        return b"x" * self._sizes.pop(0)


def held(budget: AnswerBudget) -> int:
    return budget.statistics().held


async def test_what_a_block_reads_is_held_until_it_ends() -> None:
    budget = AnswerBudget(1000)
    with budget.charging():
        assert await read_whole(pieces(300, 200), "up") == b"x" * 500
        assert held(budget) == 500
        await read_whole(pieces(400), "up")
        assert held(budget) == 900
    assert budget.statistics() == _whole.AnswerBudgetStatistics(limit=1000, held=0, refused=0)


async def test_a_read_past_the_budget_fails_and_gives_back_what_it_took() -> None:
    budget = AnswerBudget(1000)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            first_holds, over = trio.Event(), trio.Event()

            async def first() -> None:  # another request, holding 600 meanwhile
                with budget.charging():
                    await read_whole(pieces(600), "up")
                    first_holds.set()
                    await over.wait()
                    assert held(budget) == 600  # the refused read took nothing of it

            nursery.start_soon(first)
            await first_holds.wait()
            with budget.charging():
                await read_whole(pieces(100), "up")
                message = "hold 900 of 1000 bytes; 200 more do not fit"
                with pytest.raises(AnswersOverBudgetError, match=message):
                    await read_whole(pieces(200, 200), "up")
                assert held(budget) == 700  # its first 200 given back, the earlier 100 kept
            assert held(budget) == 600
            over.set()
    assert budget.statistics().held == 0
    assert budget.statistics().refused == 1


async def test_the_error_is_a_503_to_retry() -> None:
    budget = AnswerBudget(10)
    with budget.charging(), pytest.raises(AnswersOverBudgetError) as caught:
        await read_whole(pieces(11), "up")
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (
        503,
        "answers_over_budget",
        1,
    )


async def test_one_answer_past_its_own_limit_is_the_upstreams_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_whole, "MAX_ANSWER_BYTES", 100)
    budget = AnswerBudget(1000)
    with budget.charging():
        with pytest.raises(UpstreamError, match="larger than 100 bytes"):
            await read_whole(pieces(60, 60), "up")
        assert held(budget) == 0


async def test_a_cancelled_read_gives_back_what_it_took() -> None:
    budget = AnswerBudget(1000)
    reading = trio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * 300
        reading.set()
        await trio.sleep_forever()

    with trio.fail_after(5), budget.charging():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_whole, slow(), "up")
            await reading.wait()
            assert held(budget) == 300
            nursery.cancel_scope.cancel()
        assert held(budget) == 0


async def test_a_task_that_outlives_its_block_reads_uncharged() -> None:
    """A long-lived task started inside a request (a child's watch, when the request
    began its load) inherits the request's charge: once the request ended it reads as if
    outside a block, neither failing nor holding bytes nothing would give back."""
    budget = AnswerBudget(1000)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            go, done = trio.Event(), trio.Event()

            async def watch() -> None:
                await read_whole(pieces(600), "up")  # while the block lives: charged
                go.set()
                await done.wait()
                await read_whole(pieces(900), "up")  # after it: uncharged
                await read_whole(pieces(900), "up")
                done.set()

            with budget.charging():
                nursery.start_soon(watch)  # the task inherits the block's charge
                await go.wait()
                assert held(budget) == 600
            assert held(budget) == 0
            done.set()
    assert budget.statistics() == _whole.AnswerBudgetStatistics(limit=1000, held=0, refused=0)


async def test_outside_a_block_nothing_is_charged() -> None:
    budget = AnswerBudget(10)
    assert await read_whole(pieces(100), "up") == b"x" * 100
    assert held(budget) == 0


SHAPES = {
    "empty objects": b"[" + b"{}," * 20_000 + b"{}]",
    "empty lists": b"[" + b"[]," * 20_000 + b"[]]",
    "zeros": b"[" + b"0," * 20_000 + b"0]",
    "floats (embeddings)": b"[" + b"0.012345678," * 20_000 + b"1.5]",
    "short strings": b"[" + b'"ab",' * 20_000 + b'"ab"]',
    "one-key objects": b"[" + b'{"a":1},' * 20_000 + b"{}]",
    "an object of many keys": b"{" + b",".join(b'"k%d":%d' % (n, n) for n in range(20_000)) + b"}",
    "deep lists": b"[" * 500 + b"]" * 500,
    "prose": json.dumps({"content": "The capital of France is Paris. " * 5_000}).encode(),
    "prose and one emoji": ('{"content": "' + "Paris. " * 20_000 + '\U0001f600"}').encode(),
    "escaped emoji": b'["' + b"\\ud83d\\ude00" * 20_000 + b'"]',
    "prose and one escaped emoji": b'["' + b"Paris. " * 20_000 + b'\\ud83d\\ude00"]',
    "prose and one accent": ('["' + "Paris. " * 20_000 + '\u00e9"]').encode(),
    "a chat answer": json.dumps(
        {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
    ).encode(),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_what_a_parsed_answer_takes_is_bounded_by_its_parsed_size(shape: str) -> None:
    """What the JSON parser allocates for a body never goes past what is charged for it:
    the shapes that cost the most per byte (25 times for ``{},``) as well as the usual."""
    data = SHAPES[shape]
    tracemalloc.start()
    try:
        parsed = json.loads(data)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed is not None
    assert peak <= _whole.parsed_size(data)


async def test_a_parsed_answer_is_charged_for_its_objects_before_it_is_parsed() -> None:
    """A body small as bytes and large as objects is refused before it is parsed: the
    bytes fit the budget, what parsing them would take does not."""
    junk = SHAPES["empty objects"]
    budget = AnswerBudget(len(junk) * 10)
    with budget.charging():
        with pytest.raises(AnswersOverBudgetError):
            _whole.parse_whole(junk)
        assert held(budget) == 0
        answer = SHAPES["a chat answer"]
        assert _whole.parse_whole(answer)["usage"]["total_tokens"] == 7
        assert held(budget) == _whole.parsed_size(answer)  # until the block ends
    assert held(budget) == 0
