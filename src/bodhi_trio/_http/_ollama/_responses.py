"""llama-server's OpenAI answers to Ollama objects: pure functions, no I/O.

Shapes the official ``ollama`` client relies on: ``created_at`` an RFC 3339 string
(UTC, ``Z``); counts and durations integers, durations in nanoseconds;
``tool_calls[].function.arguments`` a JSON object; ``done_reason`` ``stop`` or
``length``.

Metrics of the last object: ``prompt_eval_count`` and ``eval_count`` from llama-server's
``usage`` (else its ``timings``); ``prompt_eval_duration`` and ``eval_duration`` from its
``timings`` (``prompt_ms``, ``predicted_ms``); ``total_duration`` from our own clock
(the request arriving to the answer ending); ``load_duration`` the rest of it: the time
spent waiting for the model (loading, queueing) and relaying.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, final

import attrs

from bodhi_trio._exceptions import UpstreamError
from bodhi_trio._http._sse import compact_json

__all__ = [
    "MAX_TOOL_CALLS",
    "MAX_TOOL_CALL_BYTES",
    "Metrics",
    "StreamTranslator",
    "chat_answer",
    "created_at",
    "empty_answer",
    "generate_answer",
    "normalized",
    "ollama_tool_calls",
    "rfc3339",
]

Kind = Literal["chat", "generate"]
"""``/api/chat`` answers with ``message``; ``/api/generate`` with ``response``."""


def rfc3339(timestamp: float) -> str:
    """A Unix time as RFC 3339 in UTC with a ``Z``, e.g. ``2026-12-01T20:25:39.123456Z``."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


_kept_second: list[tuple[int, str]] = [(-1, "")]
"""The last whole second :func:`created_at` wrote, and its text up to the fraction."""


def created_at() -> str:
    """Now, as :func:`rfc3339` writes it.

    Every streamed object carries it, so it is made from the second's text, kept until
    the next second, and the microseconds (a fifth of the time of a ``datetime`` made and
    formatted each time). Safe from any thread: the second and its text change together.
    """
    second, micro = divmod(round(time.time() * 1_000_000), 1_000_000)
    kept, text = _kept_second[0]
    if second != kept:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _kept_second[0] = (second, text)
    return f"{text}.{micro:06d}Z"


def _ns(milliseconds: object) -> int:
    if isinstance(milliseconds, bool) or not isinstance(milliseconds, int | float):
        return 0
    return max(0, round(milliseconds * 1_000_000))


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


@attrs.define
class Metrics:
    """What the last object reports; fed from llama-server's ``usage`` and ``timings``.

    Args:
        started_ns: ``time.perf_counter_ns()`` when the request arrived.
    """

    started_ns: int
    usage: Mapping[str, Any] = attrs.field(factory=dict)
    timings: Mapping[str, Any] = attrs.field(factory=dict)

    def take(self, answer: Mapping[str, Any]) -> None:
        """Keep the ``usage`` and ``timings`` of an answer or a stream chunk, if it has them."""
        if isinstance(answer.get("usage"), Mapping):
            self.usage = answer["usage"]
        if isinstance(answer.get("timings"), Mapping):
            self.timings = answer["timings"]

    def fields(self, now_ns: int) -> dict[str, int]:
        """The metrics, integers (durations in nanoseconds), as of ``now_ns``."""
        timings = self.timings
        prompt = _count(self.usage.get("prompt_tokens"))
        if prompt is None:
            prompt = (_count(timings.get("prompt_n")) or 0) + (_count(timings.get("cache_n")) or 0)
        generated = _count(self.usage.get("completion_tokens"))
        if generated is None:
            generated = _count(timings.get("predicted_n")) or 0
        prompt_ns = _ns(timings.get("prompt_ms"))
        eval_ns = _ns(timings.get("predicted_ms"))
        total = max(0, now_ns - self.started_ns)
        return {
            "total_duration": total,
            "load_duration": max(0, total - prompt_ns - eval_ns),
            "prompt_eval_count": prompt,
            "prompt_eval_duration": prompt_ns,
            "eval_count": generated,
            "eval_duration": eval_ns,
        }


def _arguments(text: object) -> dict[str, Any]:
    """OpenAI's ``arguments`` (a JSON string) as the object Ollama sends."""
    if isinstance(text, Mapping):
        return dict(text)
    try:
        value = json.loads(text) if isinstance(text, str) and text.strip() else {}
    except ValueError:
        return {"arguments": text}  # not JSON: still an object, the text kept
    return value if isinstance(value, dict) else {"value": value}


def ollama_tool_calls(calls: object) -> list[dict[str, Any]]:
    """OpenAI tool calls (``id``, string ``arguments``) as Ollama's (object ``arguments``)."""
    if not isinstance(calls, list):
        return []
    result = []
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            continue
        converted: dict[str, Any] = {
            "function": {
                "name": function.get("name") or "",
                "arguments": _arguments(function.get("arguments")),
            }
        }
        if isinstance(call.get("id"), str):
            converted["id"] = call["id"]
        result.append(converted)
    return result


def _done_reason(finish_reason: object) -> str:
    return "length" if finish_reason == "length" else "stop"


_json_string = json.encoder.encode_basestring_ascii
"""A string as ``json.dumps`` writes it (``ensure_ascii``): the quotes and the escapes."""


def _first_choice(answer: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        return choices[0]
    return {}


def _head(model: str) -> dict[str, Any]:
    return {"model": model, "created_at": created_at()}


def chat_answer(
    model: str, answer: Mapping[str, Any], metrics: Metrics, now_ns: int
) -> dict[str, Any]:
    """A non-streamed ``/v1/chat/completions`` answer as ``/api/chat``'s."""
    metrics.take(answer)
    choice = _first_choice(answer)
    message = choice.get("message")
    message = message if isinstance(message, Mapping) else {}
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("reasoning_content"):
        out["thinking"] = message["reasoning_content"]
    if calls := ollama_tool_calls(message.get("tool_calls")):
        out["tool_calls"] = calls
    return {
        **_head(model),
        "message": out,
        "done": True,
        "done_reason": _done_reason(choice.get("finish_reason")),
        **metrics.fields(now_ns),
    }


def generate_answer(
    model: str, answer: Mapping[str, Any], metrics: Metrics, now_ns: int
) -> dict[str, Any]:
    """A non-streamed chat or text completion as ``/api/generate``'s."""
    metrics.take(answer)
    choice = _first_choice(answer)
    message = choice.get("message")
    out: dict[str, Any] = {**_head(model)}
    if isinstance(message, Mapping):  # a chat completion
        out["response"] = message.get("content") or ""
        if message.get("reasoning_content"):
            out["thinking"] = message["reasoning_content"]
    else:
        out["response"] = choice.get("text") or ""
    out.update(done=True, done_reason=_done_reason(choice.get("finish_reason")))
    return {**out, **metrics.fields(now_ns)}


def empty_answer(model: str, kind: Kind, reason: Literal["load", "unload"]) -> dict[str, Any]:
    """The answer to an empty request: the model was loaded (or unloaded)."""
    body: dict[str, Any] = {"response": ""}
    if kind == "chat":
        body = {"message": {"role": "assistant", "content": ""}}
    return {**_head(model), **body, "done": True, "done_reason": reason}


def normalized(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to unit length (L2); all zeros stay zeros."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


MAX_TOOL_CALLS = 128
"""Tool calls one streamed answer may make (llama-server's models make a few)."""

MAX_TOOL_CALL_BYTES = 1024 * 1024
"""Characters of the names and arguments of a streamed answer's tool calls together: they
are kept until the choice finishes, then the arguments parsed (up to 30 times their size)."""


@attrs.define
class _GatheredCall:
    """One tool call of a stream, as its fragments arrive."""

    id: str | None = None
    name: list[str] = attrs.field(factory=list)
    arguments: list[str] = attrs.field(factory=list)

    def as_openai(self) -> dict[str, Any]:
        """The whole call, as OpenAI's non-streamed answer has it."""
        function = {"name": "".join(self.name), "arguments": "".join(self.arguments)}
        return {"id": self.id, "function": function}


@final
@attrs.define
class StreamTranslator:
    """llama-server's stream chunks (parsed ``data:`` payloads) as Ollama objects.

    Each content or thinking delta becomes one ``done: false`` object as it arrives;
    tool calls, which OpenAI streams in fragments, become one object once the choice
    finishes; the last object (``done: true``, ``done_reason``, metrics) comes at the
    end, after llama-server's usage chunk.

    Args:
        model: The name the client asked for (echoed in every object).
        kind: ``chat`` or ``generate``.
        metrics: Collects usage and timings; knows when the request arrived.
    """

    model: str
    kind: Kind
    metrics: Metrics
    done_reason: str = "stop"
    _calls: dict[int, _GatheredCall] = attrs.field(factory=dict)
    _call_bytes: int = 0  # the characters of every call's name and arguments so far
    # A token's line around its time and its text (see lines()).
    _line_head: str = attrs.field(init=False)
    _line_middle: str = attrs.field(init=False)
    _line_tail: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._line_head = '{"model":' + json.dumps(self.model) + ',"created_at":"'
        chat = self.kind == "chat"
        field = '"message":{"role":"assistant","content":' if chat else '"response":'
        self._line_middle = '",' + field
        self._line_tail = '},"done":false}\n' if chat else ',"done":false}\n'

    def lines(self, payload: Mapping[str, Any]) -> list[bytes]:
        """:meth:`chunk`'s objects as NDJSON lines (compact JSON, one per line).

        The usual chunk, one token of text and nothing else, is written from a template:
        the same bytes as its object encoded, in a third of the time (a stream's every
        token comes this way, in the relay hub's thread for a paced stream).
        """
        choice = _first_choice(payload)
        delta = choice.get("delta")
        if delta is None:  # a text completion
            text = choice.get("text")
        elif (
            isinstance(delta, Mapping)
            and delta.get("reasoning_content") is None
            and delta.get("tool_calls") is None
        ):
            text = delta.get("content")
        else:
            text = None
        if type(text) is str and text and choice.get("finish_reason") is None:
            self.metrics.take(payload)
            text = _json_string(text)
            line = self._line_head + created_at() + self._line_middle + text + self._line_tail
            return [line.encode()]
        return [(compact_json(obj) + "\n").encode() for obj in self.chunk(payload)]

    def _object(self, content: str, thinking: str | None = None, **extra: Any) -> dict[str, Any]:
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            message.update(extra)
            return {**_head(self.model), "message": message, "done": False}
        out: dict[str, Any] = {**_head(self.model), "response": content}
        if thinking:
            out["thinking"] = thinking
        return {**out, "done": False}

    def chunk(self, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The objects one llama-server chunk gives (often one, sometimes none)."""
        self.metrics.take(payload)
        choice = _first_choice(payload)
        if not choice:
            return []
        out: list[dict[str, Any]] = []
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            content, thinking = delta.get("content"), delta.get("reasoning_content")
            self._gather_calls(delta.get("tool_calls"))
        else:  # a text completion
            content, thinking = choice.get("text"), None
        content = content if isinstance(content, str) else ""
        thinking = thinking if isinstance(thinking, str) else None
        if content or thinking:
            out.append(self._object(content, thinking))
        if choice.get("finish_reason") is not None:
            self.done_reason = _done_reason(choice["finish_reason"])
            if self._calls and self.kind == "chat":
                calls = [self._calls[i].as_openai() for i in sorted(self._calls)]
                self._calls = {}
                out.append(self._object("", tool_calls=ollama_tool_calls(calls)))
        return out

    def _gather_calls(self, fragments: object) -> None:
        """Add a delta's tool-call fragments to the calls they continue.

        Raises:
            UpstreamError: The answer's calls went past :data:`MAX_TOOL_CALLS` or
                :data:`MAX_TOOL_CALL_BYTES` (kept until the choice finishes, they would
                otherwise grow without bound).
        """
        if not isinstance(fragments, list):
            return
        for fragment in fragments:
            if not isinstance(fragment, Mapping):
                continue
            index = fragment.get("index", len(self._calls))
            key = index if isinstance(index, int) else len(self._calls)
            call = self._calls.get(key)
            if call is None:
                if len(self._calls) >= MAX_TOOL_CALLS:
                    raise UpstreamError(f"the answer makes more than {MAX_TOOL_CALLS} tool calls")
                call = self._calls[key] = _GatheredCall()
            if isinstance(fragment.get("id"), str):
                call.id = fragment["id"]
            function = fragment.get("function")
            if isinstance(function, Mapping):
                for field, parts in (("name", call.name), ("arguments", call.arguments)):
                    if isinstance(text := function.get(field), str):
                        self._call_bytes += len(text)
                        if self._call_bytes > MAX_TOOL_CALL_BYTES:
                            raise UpstreamError(
                                "the answer's tool calls are longer than"
                                f" {MAX_TOOL_CALL_BYTES} characters"
                            )
                        parts.append(text)

    def last(self, now_ns: int) -> dict[str, Any]:
        """The ``done: true`` object that ends the stream."""
        body = self._object("")
        return {
            **body,
            "done": True,
            "done_reason": self.done_reason,
            **self.metrics.fields(now_ns),
        }
