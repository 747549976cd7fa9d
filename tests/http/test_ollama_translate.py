"""The Ollama translation functions alone: requests to OpenAI bodies, answers and stream
chunks back, keep_alive and options parsing, NDJSON framing of a relayed stream."""

from __future__ import annotations

import datetime
import json
import math
import random
import time
from typing import Any

import pytest
import trio
from test_relay import FakeResponse, fake_forward

from bodhi_trio._exceptions import AliasNotFoundError, InvalidRequestError, ServerBusyError
from bodhi_trio._http._ollama import _responses, _stream
from bodhi_trio._http._ollama._errors import is_ollama_path, ollama_error
from bodhi_trio._http._ollama._keep_alive import parse_keep_alive
from bodhi_trio._http._ollama._requests import (
    chat_request,
    embed_input,
    embed_request,
    generate_request,
    options_fields,
)
from bodhi_trio._http._ollama._responses import (
    MAX_TOOL_CALL_BYTES,
    MAX_TOOL_CALLS,
    Kind,
    Metrics,
    StreamTranslator,
    chat_answer,
    generate_answer,
    normalized,
    rfc3339,
)
from bodhi_trio._http._ollama._stream import NdjsonBody
from bodhi_trio._http._relay import Relay, relay_upstream
from bodhi_trio._http._relay_body import RelayBody

USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        (0.0, 0.0),
        (300, 300.0),
        (2.5, 2.5),
        ("0", 0.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5s", 1.5),
        ("2h45m30.5s", 9930.5),
        (-1, -1.0),
        ("-5m", -1.0),
        (10**12, -1.0),  # beyond 31 years: never
        (10**400, -1.0),  # past a float's range too (it raised OverflowError: a 500)
        (-(10**400), -1.0),
    ],
)
def test_keep_alive_values(value: object, seconds: float | None) -> None:
    result = parse_keep_alive(value)
    assert result == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("", 'time: invalid duration ""'),
        ("m", 'time: invalid duration "m"'),
        (True, "keep_alive must be a number"),
        ([5], "keep_alive must be a number"),
    ],
)
def test_bad_keep_alive_is_400(value: object, message: str) -> None:
    with pytest.raises(InvalidRequestError, match="^" + message.replace("(", r"\(")):
        parse_keep_alive(value)


def test_options_map_to_request_fields() -> None:
    fields = options_fields(
        {
            "num_predict": 12,
            "temperature": 0.5,
            "top_k": 40.0,  # floats pass for integers
            "top_p": 1,
            "min_p": 0.05,
            "typical_p": 0.9,
            "repeat_penalty": 1.1,
            "repeat_last_n": 64,
            "presence_penalty": 0.2,
            "frequency_penalty": 0.3,
            "seed": 7,
            "stop": "END",
            "num_keep": 4,
            "num_ctx": 4096,  # load-time: ignored
            "use_mmap": True,
            "mirostat": 2,  # unknown: ignored
            "temperature_unused": None,
        }
    )
    assert fields == {
        "max_tokens": 12,
        "temperature": 0.5,
        "top_k": 40,
        "top_p": 1.0,
        "min_p": 0.05,
        "typical_p": 0.9,
        "repeat_penalty": 1.1,
        "repeat_last_n": 64,
        "presence_penalty": 0.2,
        "frequency_penalty": 0.3,
        "seed": 7,
        "stop": ["END"],
        "n_keep": 4,
    }
    assert isinstance(fields["top_k"], int)
    assert options_fields({"num_predict": -1, "stop": ["a", "b"]}) == {"stop": ["a", "b"]}
    assert options_fields(None) == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": "40"}, 'option "top_k" must be of type integer'),
        ({"temperature": True}, 'option "temperature" must be of type float'),
        ({"stop": [1]}, 'option "stop" must be of type array of strings'),
        ({"num_ctx": "big"}, 'option "num_ctx" must be of type integer'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"temperature": 10**400}, 'option "temperature" must be of type float'),  # no 500
        ({"top_k": 1e300 * 1e300}, 'option "top_k" must be of type integer'),  # inf
        ([1], "options must be an object"),
    ],
)
def test_wrong_option_types_are_400(options: object, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        options_fields(options)


def test_chat_request_streams_by_default_and_asks_for_usage() -> None:
    request = chat_request({"model": "m", "messages": USER, "keep_alive": "1m"}, "m")
    assert request.endpoint == "/v1/chat/completions"
    assert request.stream
    assert request.keep_alive == 60
    assert request.body == {
        "model": "m",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    quiet = chat_request({"model": "m", "messages": USER, "stream": False, "tools": []}, "m")
    assert not quiet.stream
    assert "stream" not in quiet.body
    assert "tools" not in quiet.body  # the client always sends an empty list
    assert chat_request({"model": "m", "messages": []}, "m").empty


def test_format_think_and_tools() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = chat_request(
        {"model": "m", "messages": USER, "format": schema, "think": False, "tools": [tool]},
        "m",
    ).body
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"schema": schema}}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["tools"] == [tool]
    json_mode = chat_request({"model": "m", "messages": USER, "format": "json"}, "m").body
    assert json_mode["response_format"] == {"type": "json_object"}
    with pytest.raises(InvalidRequestError, match="invalid format"):
        chat_request({"model": "m", "messages": USER, "format": "yaml"}, "m")
    with pytest.raises(InvalidRequestError, match="think value"):
        chat_request({"model": "m", "messages": USER, "think": "lots"}, "m")


def test_tool_calls_and_tool_results_get_matching_ids() -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "time", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "12:00", "tool_name": "time"},
        {"role": "tool", "content": "sunny", "tool_name": "weather"},
    ]
    body = chat_request({"model": "m", "messages": messages}, "m").body
    assistant, first, second = body["messages"][1:]
    calls = assistant["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == ['{"city": "Paris"}', "{}"]
    assert all(c["type"] == "function" and c["id"] for c in calls)
    assert first == {
        "role": "tool",
        "content": "12:00",
        "tool_call_id": calls[1]["id"],
        "name": "time",
    }
    assert second["tool_call_id"] == calls[0]["id"]


def reference_ids(messages: list[dict[str, Any]]) -> list[str | None]:
    """The tool-call ids each message gets, by the rule's plain statement (a scan of the
    unanswered calls per tool message), to check the indexed one against."""
    unanswered: list[tuple[str, str]] = []
    ids: list[str | None] = []
    for position, message in enumerate(messages):
        for index, call in enumerate(message.get("tool_calls") or []):
            call_id = call.get("id") or f"call_{position}_{index}"
            unanswered.append((call["function"]["name"], call_id))
        if message["role"] != "tool":
            ids.append(None)
            continue
        given, name = message.get("tool_call_id"), message.get("tool_name")
        for i, (function, call_id) in enumerate(unanswered):
            if call_id == given or (not isinstance(given, str) and function == name):
                ids.append(unanswered.pop(i)[1])
                break
        else:
            if isinstance(given, str) and given:
                ids.append(given)
            else:
                ids.append(unanswered.pop(0)[1] if unanswered else f"call_{position}")
    return ids


def test_tool_results_find_their_calls_as_the_rule_says() -> None:
    """Random conversations: ids given, repeated or missing, names matching or not."""
    rng = random.Random(17)
    for _ in range(300):
        messages: list[dict[str, Any]] = []
        for _ in range(rng.randrange(1, 12)):
            if rng.random() < 0.4:
                calls = [
                    {"function": {"name": rng.choice("ab")}}
                    | ({"id": rng.choice(["x", "y", "z"])} if rng.random() < 0.5 else {})
                    for _ in range(rng.randrange(1, 4))
                ]
                messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            else:
                message: dict[str, Any] = {"role": "tool", "content": "r"}
                if rng.random() < 0.5:
                    message["tool_call_id"] = rng.choice(["x", "y", "q", "", 5])
                if rng.random() < 0.5:
                    message["tool_name"] = rng.choice(["a", "b", "c", ["a"]])
                messages.append(message)
        body = chat_request({"model": "m", "messages": messages}, "m").body
        got = [m.get("tool_call_id") for m in body["messages"]]
        assert got == reference_ids(messages), messages


def test_many_unmatched_tool_results_translate_in_one_pass() -> None:
    """20,000 calls and 20,000 answers naming none of them: a scan per answer held the
    event loop for 37 s (every other request waited); each now finds its call at once."""
    calls = [{"function": {"name": "f"}} for _ in range(20_000)]
    answers = [{"role": "tool", "content": "", "tool_call_id": "z"} for _ in range(20_000)]
    messages = [{"role": "assistant", "content": "", "tool_calls": calls}, *answers]
    body = chat_request({"model": "m", "messages": messages}, "m").body
    assert {m["tool_call_id"] for m in body["messages"][1:]} == {"z"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "images are not supported"),  # noqa: E501
        ({"messages": "hi"}, "messages must be an array"),
        ({"messages": [{"content": "x"}]}, "needs a role"),
        ({"messages": [{"role": "user", "content": 5}]}, "content must be a string"),
        ({"messages": USER, "stream": "yes"}, "stream must be a boolean"),
        ({"messages": USER, "options": {"seed": "x"}}, 'option "seed"'),
        ({"messages": USER, "tools": [5]}, "tools must be an array of objects"),
        ({"messages": USER, "logprobs": "x"}, "logprobs must be a boolean"),
        ({"messages": USER, "top_logprobs": "x"}, "top_logprobs must be an integer"),
    ],
)  # fmt: skip
def test_bad_chat_bodies_are_400(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        chat_request({"model": "m", **body}, "m")


def test_generate_raw_goes_to_completions_else_a_chat_with_the_system() -> None:
    raw = generate_request({"model": "m", "prompt": "[INST] x", "raw": True, "stream": False}, "m")
    assert (raw.endpoint, raw.body) == ("/v1/completions", {"model": "m", "prompt": "[INST] x"})
    chat = generate_request({"model": "m", "prompt": "x", "system": "be brief"}, "m")
    assert chat.endpoint == "/v1/chat/completions"
    assert chat.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "x"},
    ]
    assert generate_request({"model": "m"}, "m").empty
    assert generate_request({"model": "m", "prompt": ""}, "m").empty
    for field, value in (("suffix", "end"), ("template", "{{ .Prompt }}"), ("images", ["x"])):
        with pytest.raises(InvalidRequestError, match="not supported"):
            generate_request({"model": "m", "prompt": "x", field: value}, "m")
    for context in ("x", [1, "2"]):
        with pytest.raises(InvalidRequestError, match="context must be an array of integers"):
            generate_request({"model": "m", "prompt": "x", "context": context}, "m")


def test_a_raw_generate_carries_its_format_as_the_json_schema_completions_read() -> None:
    """``/v1/completions`` reads no ``response_format`` (llama-server ignores it there)."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    for given, sent in (("json", {"type": "object"}), (schema, schema)):
        body = generate_request({"model": "m", "prompt": "x", "raw": True, "format": given}, "m")
        assert body.endpoint == "/v1/completions"
        assert body.body["json_schema"] == sent
        assert "response_format" not in body.body
    chat = generate_request({"model": "m", "prompt": "x", "format": "json"}, "m").body
    assert chat["response_format"] == {"type": "json_object"}
    assert "json_schema" not in chat


def test_embed_inputs() -> None:
    assert embed_input("a") == ["a"]
    assert embed_input(["a", "b"]) == ["a", "b"]
    assert embed_input(None) == embed_input("") == embed_input([]) == []
    with pytest.raises(InvalidRequestError, match="invalid input type"):
        embed_input(["a", 1])
    request = embed_request({"model": "m"}, "m", ["a"], normalize=False)
    assert request.body == {"model": "m", "input": ["a"], "embd_normalize": -1}
    assert embed_request({"model": "m"}, "m", ["a"], normalize=True).body["embd_normalize"] == 2
    assert normalized([3.0, 4.0]) == [0.6, 0.8]
    assert normalized([0.0, 0.0]) == [0.0, 0.0]


def parse_time(value: str) -> datetime.datetime:
    assert value.endswith("Z")
    return datetime.datetime.fromisoformat(value)


TIMINGS = {"prompt_n": 20, "cache_n": 3, "prompt_ms": 10.5, "predicted_n": 4, "predicted_ms": 2.25}
USAGE = {"prompt_tokens": 23, "completion_tokens": 4, "total_tokens": 27}


def test_non_streamed_chat_answer() -> None:
    answer = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "hmm",
                    "tool_calls": [
                        {"id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": '{"x": 1}'}},
                    ],
                },
            }
        ],
        "usage": USAGE,
        "timings": TIMINGS,
    }  # fmt: skip
    out = chat_answer("m:latest", answer, Metrics(0), 50_000_000)
    assert out["message"] == {
        "role": "assistant",
        "content": "",
        "thinking": "hmm",
        "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}, "id": "c1"}],
    }
    assert out["done"] is True
    assert out["done_reason"] == "stop"
    parse_time(out["created_at"])
    assert out["prompt_eval_count"] == 23
    assert out["eval_count"] == 4
    assert out["prompt_eval_duration"] == 10_500_000
    assert out["eval_duration"] == 2_250_000
    assert out["total_duration"] == 50_000_000
    assert out["load_duration"] == 50_000_000 - 10_500_000 - 2_250_000


def test_non_streamed_generate_answer_from_a_text_completion() -> None:
    answer = {"choices": [{"text": "abc", "finish_reason": "length"}], "timings": TIMINGS}
    out = generate_answer("m", answer, Metrics(0), 1)
    assert (out["response"], out["done_reason"]) == ("abc", "length")
    assert out["prompt_eval_count"] == 23  # prompt_n + cache_n without usage
    assert all(isinstance(out[k], int) for k in ("total_duration", "eval_duration"))


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_stream_translator_chat() -> None:
    translator = StreamTranslator("m", "chat", Metrics(0))
    assert translator.chunk(chunk({"role": "assistant", "content": None})) == []
    [one] = translator.chunk(chunk({"content": "Hel"}))
    assert one["message"] == {"role": "assistant", "content": "Hel"}
    assert one["done"] is False
    [thought] = translator.chunk(chunk({"reasoning_content": "think"}))
    assert thought["message"] == {"role": "assistant", "content": "", "thinking": "think"}
    fragments = [
        {"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a"'}},
        {"index": 0, "function": {"arguments": ": 2}"}},
    ]
    assert translator.chunk(chunk({"tool_calls": fragments[:1]})) == []
    [calls] = translator.chunk(chunk({"tool_calls": fragments[1:]}, "tool_calls"))
    assert calls["message"]["tool_calls"] == [
        {"function": {"name": "f", "arguments": {"a": 2}}, "id": "c1"}
    ]
    assert translator.chunk({"choices": [], "usage": USAGE, "timings": TIMINGS}) == []
    last = translator.last(20_000_000)
    assert last["done"] is True
    assert last["done_reason"] == "stop"
    assert last["message"] == {"role": "assistant", "content": ""}
    assert (last["prompt_eval_count"], last["eval_count"]) == (23, 4)


def test_stream_translator_generate_text_completion() -> None:
    translator = StreamTranslator("m", "generate", Metrics(0))
    [piece] = translator.chunk({"choices": [{"text": "ab", "finish_reason": None}]})
    assert piece["response"] == "ab"
    translator.chunk({"choices": [{"text": "", "finish_reason": "length"}], "timings": TIMINGS})
    last = translator.last(1)
    assert (last["response"], last["done_reason"]) == ("", "length")


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    "now", [0.0, 1764815466.0, 1764815466.513964, 1764815466.9999996, 4102444799.999999]
)
def test_created_at_is_now_as_rfc3339_writes_it(
    monkeypatch: pytest.MonkeyPatch, now: float
) -> None:
    """The second's text is kept between calls: each call's own second is written, even
    right after another second's."""
    monkeypatch.setattr(time, "time", lambda: now)
    assert _responses.created_at() == rfc3339(now)
    monkeypatch.setattr(time, "time", lambda: now + 61.25)
    assert _responses.created_at() == rfc3339(now + 61.25)


STREAM_CHUNKS: list[dict[str, Any]] = [
    chunk({"role": "assistant", "content": None}),
    chunk({"content": "Hel"}),
    chunk({"content": 'lo "there"\\ \u00e9\u4e2d\U0001f600 \n\t\x00'}),
    chunk({"role": "assistant", "content": "x"}),
    chunk({"content": ""}),
    chunk({"content": "a", "reasoning_content": "think"}),
    chunk({"reasoning_content": "think"}),
    chunk({"content": "a", "tool_calls": []}),
    chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"a": 1}'}}]}, "tool_calls"),
    chunk({"content": "end"}, "stop"),
    chunk({"content": 7}),
    {"choices": [{"text": "ab", "finish_reason": None}]},
    {"choices": [{"text": "", "finish_reason": "length"}], "timings": TIMINGS},
    {"choices": [{"delta": "not an object", "text": "t", "finish_reason": None}]},
    {"choices": [], "usage": USAGE, "timings": TIMINGS},
    {"choices": [{"delta": {"content": "u"}, "finish_reason": None}], "usage": USAGE},
    {"choices": "none"},
    {},
]


@pytest.mark.parametrize("kind", ["chat", "generate"])
@pytest.mark.parametrize("model", ["m", 'a "quoted" m\u00e9del', "100%s {x} %%d"])
def test_stream_lines_are_the_objects_as_compact_json(
    monkeypatch: pytest.MonkeyPatch, kind: Kind, model: str
) -> None:
    """The template the usual token's line is written from gives the bytes its object
    encoded would: chunk by chunk through a whole stream, whatever the chunk holds."""
    monkeypatch.setattr(_responses, "created_at", lambda: "2026-12-04T02:31:40.572970Z")
    by_objects = StreamTranslator(model, kind, Metrics(0))
    by_lines = StreamTranslator(model, kind, Metrics(0))
    for payload in STREAM_CHUNKS:
        objects = by_objects.chunk(payload)
        expected = [(json.dumps(o, separators=(",", ":")) + "\n").encode() for o in objects]
        assert by_lines.lines(payload) == expected, payload
    assert by_lines.last(5) == by_objects.last(5)


def test_errors_in_ollamas_shape() -> None:
    envelope = ServerBusyError("busy").to_envelope()
    assert ollama_error(ServerBusyError("busy"), 429, envelope) == (503, {"error": "busy"})
    missing = AliasNotFoundError("x")
    assert ollama_error(missing, 404, missing.to_envelope()) == (
        404,
        {"error": "model 'x' not found"},
    )
    assert is_ollama_path("/")
    assert is_ollama_path("/api/chat")
    assert not is_ollama_path("/v1/chat/completions")
    assert not is_ollama_path("/apiary")


async def ndjson_lines(
    pieces: list[bytes], *, fail: bool = False, via_writer: bool = False
) -> list[dict[str, Any]]:
    """What :class:`NdjsonBody` makes of llama-server's SSE ``pieces`` (cut anywhere):
    returned piece by piece, or (``via_writer``) written as the relay reads them and only
    the last returned, as on a server's connection."""
    send, receive = trio.open_memory_channel[bytes](100)
    hold, loaded = trio.CancelScope(), trio.Event()
    loaded.set()
    relay = Relay(0)
    outs: list[bytes] = []

    async def write(lines: bytes) -> None:
        outs.append(lines)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                relay_upstream, fake_forward(FakeResponse(receive), hold, loaded), relay
            )
            await relay.answered.wait()
            translator = StreamTranslator("m", "chat", Metrics(0))
            writer = write if via_writer else None
            body = NdjsonBody(RelayBody(relay, writer=writer), translator, writer=writer)
            for piece in pieces:
                await send.send(piece)
            if fail:
                hold.cancel()  # interrupted (a crash, a drain timeout) mid-stream
            else:
                await send.aclose()
            async for out in body:
                outs.append(out)
            await body.aclose()
    for out in outs:
        assert out.endswith(b"\n")
        assert b"\n\n" not in out
        assert not out.startswith(b"data")
    return [json.loads(line) for out in outs for line in out.splitlines()]


def sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def test_ndjson_body_translates_events_cut_anywhere() -> None:
    stream = b"".join(
        [
            sse(chunk({"role": "assistant", "content": None})),
            sse(chunk({"content": "a"})),
            sse(chunk({"content": "b"})),
            sse(chunk({}, "length")),
            sse({"choices": [], "usage": USAGE, "timings": TIMINGS}),
            b"data: [DONE]\n\n",
        ]
    )
    pieces = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    lines = await ndjson_lines(pieces)
    assert [line["message"]["content"] for line in lines] == ["a", "b", ""]
    assert [line["done"] for line in lines] == [False, False, True]
    assert lines[-1]["done_reason"] == "length"
    assert lines[-1]["eval_count"] == 4


@pytest.mark.parametrize("via_writer", [False, True])
async def test_ndjson_body_ends_with_one_error_line(via_writer: bool) -> None:
    start = [sse(chunk({"content": "a"})), b'data: {"choi']
    lines = await ndjson_lines(start, fail=True, via_writer=via_writer)
    assert lines[0]["message"]["content"] == "a"
    assert set(lines[-1]) == {"error"}
    assert "drain timeout" in lines[-1]["error"]
    assert len(lines) == 2
    upstream_error = sse({"error": {"code": 500, "message": "boom", "type": "server_error"}})
    after = [sse(chunk({"content": "b"})), b"data: [DONE]\n\n"]  # nothing after an error
    got = await ndjson_lines([upstream_error, *after], via_writer=via_writer)
    assert got == [{"error": "boom"}]


@pytest.mark.parametrize("via_writer", [False, True])
async def test_an_event_without_end_ends_the_stream_with_an_error_line(
    monkeypatch: pytest.MonkeyPatch, via_writer: bool
) -> None:
    """A server that never ends its event: its bytes are not kept past MAX_EVENT_BYTES
    (here 1,000); the stream ends with one error line."""
    monkeypatch.setattr(_stream, "MAX_EVENT_BYTES", 1000)
    endless = [b"data: " + b"x" * 600, b"x" * 600, b"x" * 600]
    lines = await ndjson_lines([sse(chunk({"content": "a"})), *endless], via_writer=via_writer)
    assert lines[0]["message"]["content"] == "a"
    assert lines[1:] == [{"error": "an event of the stream is larger than 1000 bytes"}]


def call(index: int, arguments: str = "", name: str = "") -> dict[str, Any]:
    return {"index": index, "function": {"name": name, "arguments": arguments}}


def test_tool_call_fragments_are_joined_in_order() -> None:
    translator = StreamTranslator("m", "chat", Metrics(0))
    pieces = ['{"text": "', *["ab" * 500] * 300, '"}']
    for piece in pieces:
        assert translator.chunk(chunk({"tool_calls": [call(0, piece)]})) == []
    assert translator.chunk(chunk({"tool_calls": [call(1, "{}", "g")]})) == []
    [calls] = translator.chunk(chunk({}, "tool_calls"))
    assert calls["message"]["tool_calls"] == [
        {"function": {"name": "", "arguments": {"text": "ab" * 150_000}}},
        {"function": {"name": "g", "arguments": {}}},
    ]


@pytest.mark.parametrize("via_writer", [False, True])
async def test_tool_calls_past_their_bounds_end_the_stream_with_an_error_line(
    via_writer: bool,
) -> None:
    """Tool calls are kept until their choice finishes: a server that sends calls without
    end (a new index in each fragment, or arguments that never finish) would have them
    grow without bound (the probe: 13.5 MB of fragments took 419 MB; 125 MiB of arguments
    80 s of CPU, each fragment copying the whole string). Past a bound, an error line."""
    many = [call(n) for n in range(_responses.MAX_TOOL_CALLS + 1)]
    start = [sse(chunk({"content": "a"})), sse(chunk({"tool_calls": many}))]
    lines = await ndjson_lines(start, via_writer=via_writer)
    assert lines[0]["message"]["content"] == "a"
    assert lines[1:] == [{"error": f"the answer makes more than {MAX_TOOL_CALLS} tool calls"}]
    long = "x" * (MAX_TOOL_CALL_BYTES // 4 + 1)
    endless = [sse(chunk({"tool_calls": [call(0, long)]}))] * 4
    lines = await ndjson_lines(endless, via_writer=via_writer)
    assert lines == [
        {"error": f"the answer's tool calls are longer than {MAX_TOOL_CALL_BYTES} characters"}
    ]


def test_metrics_are_integers_even_from_float_timings() -> None:
    fields = Metrics(0, timings={"prompt_ms": 0.3333, "predicted_ms": math.pi}).fields(10**9)
    assert all(isinstance(value, int) for value in fields.values())
