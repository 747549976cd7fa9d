"""Ollama request bodies to llama-server's OpenAI ones: pure functions, no I/O.

Every function raises :class:`InvalidRequestError` (400) with Ollama's wording where
Ollama has one (``option "top_k" must be of type integer``, ``time: missing unit in
duration "300"``, ``invalid input type``).

What maps to what:

- ``options``: the sampling ones become request fields (``num_predict`` →
  ``max_tokens``, ``num_keep`` → ``n_keep``, the others by their own name, which
  llama-server reads); the load-time ones (``num_ctx``, ``num_batch``, ``num_gpu``,
  ``main_gpu``, ``num_thread``, ``use_mmap``) are type-checked, then ignored with a log
  line (a model's launch flags come from its alias); unknown keys are ignored.
- ``format``: ``"json"`` → ``response_format: {"type": "json_object"}``; a JSON schema →
  ``{"type": "json_schema", "json_schema": {"schema": ...}}``. A ``raw`` generate goes to
  ``/v1/completions``, which reads no ``response_format``: there ``json_schema`` carries
  it (``{"type": "object"}`` for ``"json"``).
- ``think``: ``false`` → ``chat_template_kwargs: {"enable_thinking": false}``; a level
  (``"low"``...) → ``{"reasoning_effort": level}``; ``true`` → the template's default.
- ``tools`` and tool messages: Ollama's object ``arguments`` → OpenAI's JSON string with an
  ``id``; a ``tool`` message's ``tool_name`` finds the id of the call it answers.
- ``images``, ``suffix``, ``template``: 400 (not supported).
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, final

import attrs

from bodhi_trio._context._open import required_string
from bodhi_trio._exceptions import InvalidRequestError
from bodhi_trio._http._ollama._keep_alive import parse_keep_alive

__all__ = [
    "OpenAIRequest",
    "chat_request",
    "embed_dimensions",
    "embed_input",
    "embed_request",
    "generate_request",
    "model_name",
    "options_fields",
]

logger = logging.getLogger("bodhi_trio.ollama")

# Ollama option -> (request field, expected type).
_SAMPLING: Mapping[str, tuple[str, str]] = {
    "num_predict": ("max_tokens", "integer"),
    "num_keep": ("n_keep", "integer"),
    "temperature": ("temperature", "float"),
    "top_k": ("top_k", "integer"),
    "top_p": ("top_p", "float"),
    "min_p": ("min_p", "float"),
    "typical_p": ("typical_p", "float"),
    "repeat_penalty": ("repeat_penalty", "float"),
    "repeat_last_n": ("repeat_last_n", "integer"),
    "presence_penalty": ("presence_penalty", "float"),
    "frequency_penalty": ("frequency_penalty", "float"),
    "seed": ("seed", "integer"),
    "stop": ("stop", "array of strings"),
}
_LOAD_TIME: Mapping[str, str] = {
    "num_ctx": "integer",
    "num_batch": "integer",
    "num_gpu": "integer",
    "main_gpu": "integer",
    "num_thread": "integer",
    "use_mmap": "boolean",
}
_THINK_LEVELS = frozenset({"low", "medium", "high", "max"})


@attrs.frozen
class OpenAIRequest:
    """What an Ollama inference request becomes.

    Attributes:
        endpoint: The llama-server route (one of ``ENDPOINTS``).
        body: Its JSON body; ``model`` is the alias the name resolved to.
        stream: Whether the client wants NDJSON (Ollama streams unless ``stream: false``).
        keep_alive: Seconds for :meth:`SharedContext.forward` (``None``: the default).
        empty: No prompt, no messages, no input: load (or, with ``keep_alive`` 0, unload).
        truncate: Embeddings: cut an input longer than the model takes at once (Ollama's
            default) rather than refuse it.
    """

    endpoint: str
    body: dict[str, Any]
    stream: bool
    keep_alive: float | None
    empty: bool
    truncate: bool = True


def _option_value(key: str, value: object, kind: str) -> object:
    """``value`` checked against Ollama's type for ``key`` (floats pass for integers)."""
    wrong = InvalidRequestError(f'option "{key}" must be of type {kind}', param="options")
    if kind == "boolean":
        if not isinstance(value, bool):
            raise wrong
        return value
    if kind == "array of strings":
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong
    try:
        return int(value) if kind == "integer" else float(value)
    except (OverflowError, ValueError):  # an integer past a float's range, say
        raise wrong from None


def options_fields(options: object) -> dict[str, Any]:
    """The request fields Ollama's ``options`` set (see the module docstring)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidRequestError("options must be an object", param="options")
    fields: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in _SAMPLING:
            field, kind = _SAMPLING[key]
            checked = _option_value(key, value, kind)
            if key == "num_predict" and isinstance(checked, int) and checked < 0:
                continue  # -1 unbounded, -2 fill the context: llama-server's default
            fields[field] = checked
        elif key in _LOAD_TIME:
            _option_value(key, value, _LOAD_TIME[key])
            logger.info(
                "option %r ignored: load-time settings come from the alias's context_params", key
            )
        else:
            logger.debug("unknown option %r ignored", key)
    return fields


def _format_field(value: object, *, chat: bool) -> dict[str, Any]:
    """``format`` as a chat completion's ``response_format``, or (``chat`` false) as the
    ``json_schema`` a plain completion reads."""
    if value is None or value == "":
        return {}
    if value == "json":
        if not chat:
            return {"json_schema": {"type": "object"}}
        return {"response_format": {"type": "json_object"}}
    if isinstance(value, Mapping):
        if not chat:
            return {"json_schema": value}
        return {"response_format": {"type": "json_schema", "json_schema": {"schema": value}}}
    raise InvalidRequestError(
        'invalid format: expected "json" or a valid JSON schema', param="format"
    )


def _think_fields(value: object) -> dict[str, Any]:
    if value is None or value is True:
        return {}
    if value is False:
        return {"chat_template_kwargs": {"enable_thinking": False}}
    if isinstance(value, str) and value in _THINK_LEVELS:
        return {"chat_template_kwargs": {"reasoning_effort": value}}
    raise InvalidRequestError(
        f"think value {json.dumps(value)} is not supported: use true, false, or a level"
        " (low, medium, high, max)",
        param="think",
    )


def _optional(body: Mapping[str, Any], field: str, kinds: tuple[type, ...], what: str) -> Any:
    """``body[field]`` if it is absent, null or of ``kinds`` (a bool is no number)."""
    value = body.get(field)
    if value is None:
        return None
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise InvalidRequestError(f"{field} must be {what}", param=field)
    return value


def _no_images(value: object) -> None:
    if value:
        raise InvalidRequestError("images are not supported", param="images")


def _common(
    body: Mapping[str, Any], model: str, *, chat: bool = True
) -> tuple[dict[str, Any], bool, float | None]:
    """The fields chat and generate share: the upstream body so far (for a chat
    completion, or a plain one if not ``chat``), stream, keep_alive."""
    stream = _optional(body, "stream", (bool,), "a boolean")
    _optional(body, "logprobs", (bool,), "a boolean")  # not sent on: checked as Ollama does
    _optional(body, "top_logprobs", (int,), "an integer")
    request: dict[str, Any] = {"model": model}
    request.update(options_fields(body.get("options")))
    request.update(_format_field(body.get("format"), chat=chat))
    return request, stream is not False, parse_keep_alive(body.get("keep_alive"))


def _streamed(request: dict[str, Any], stream: bool) -> dict[str, Any]:
    if stream:
        # Usage and timings come in the last chunk only when asked for.
        request.update(stream=True, stream_options={"include_usage": True})
    return request


def _tool_arguments(arguments: object) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments if arguments is not None else {})


def _chat_messages(messages: object) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI ones; tool calls get ids, tool results find them."""
    if not isinstance(messages, list):
        raise InvalidRequestError("messages must be an array", param="messages")
    converted: list[dict[str, Any]] = []
    unanswered = _Unanswered()
    for message in messages:
        if not isinstance(message, Mapping):
            raise InvalidRequestError("each message must be an object", param="messages")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequestError("each message needs a role (a string)", param="messages")
        content = _optional(message, "content", (str,), "a string")
        _no_images(message.get("images"))
        out: dict[str, Any] = {"role": role, "content": content or ""}
        thinking = message.get("thinking")
        if isinstance(thinking, str) and thinking:
            out["reasoning_content"] = thinking
        calls = message.get("tool_calls")
        if calls:
            out["tool_calls"] = _openai_tool_calls(calls, len(converted), unanswered)
        if role == "tool":
            out["tool_call_id"] = _answered_call(message, unanswered, len(converted))
            if isinstance(message.get("tool_name"), str):
                out["name"] = message["tool_name"]
        converted.append(out)
    return converted


def _openai_tool_calls(
    calls: object, position: int, unanswered: _Unanswered
) -> list[dict[str, Any]]:
    if not isinstance(calls, list) or not all(isinstance(c, Mapping) for c in calls):
        raise InvalidRequestError("tool_calls must be an array of objects", param="messages")
    result = []
    for index, call in enumerate(calls):
        function = call.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise InvalidRequestError("each tool call needs function.name", param="messages")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call_{position}_{index}"
        unanswered.add(function["name"], call_id)
        result.append(
            {
                "id": call_id,
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": _tool_arguments(function.get("arguments")),
                },
            }
        )
    return result


@final
class _Unanswered:
    """The tool calls no tool message has answered yet, oldest first.

    Found by id, by function name or as the oldest, each in amortised constant time: a
    body may hold tens of thousands of calls and answers, and a scan of all calls per
    answer would hold the event loop for minutes (the translation runs on it).
    """

    def __init__(self) -> None:
        self._calls: dict[int, str] = {}  # sequence number -> call id, while unanswered
        self._order: collections.deque[int] = collections.deque()
        self._by_id: dict[str, collections.deque[int]] = {}
        self._by_name: dict[str, collections.deque[int]] = {}
        self._added = 0

    def add(self, function: str, call_id: str) -> None:
        number = self._added = self._added + 1
        self._calls[number] = call_id
        self._order.append(number)
        self._by_id.setdefault(call_id, collections.deque()).append(number)
        self._by_name.setdefault(function, collections.deque()).append(number)

    def take_id(self, call_id: str) -> str | None:
        """The oldest unanswered call with this id, now answered."""
        return self._take(self._by_id.get(call_id))

    def take_name(self, function: str) -> str | None:
        """The oldest unanswered call of this function, now answered."""
        return self._take(self._by_name.get(function))

    def take_oldest(self) -> str | None:
        """The oldest unanswered call, now answered."""
        return self._take(self._order)

    def _take(self, numbers: collections.deque[int] | None) -> str | None:
        while numbers:  # answered ones are dropped as they come up: each once
            call_id = self._calls.pop(numbers.popleft(), None)
            if call_id is not None:
                return call_id
        return None


def _answered_call(message: Mapping[str, Any], unanswered: _Unanswered, position: int) -> str:
    """The id of the call a tool message answers: its own ``tool_call_id``, else the
    oldest unanswered call of its ``tool_name``, else the oldest unanswered call."""
    given = message.get("tool_call_id")
    name = message.get("tool_name")
    found = None
    if isinstance(given, str):
        found = unanswered.take_id(given)
        if found is None and given:
            return given
    elif isinstance(name, str):
        found = unanswered.take_name(name)
    if found is None:
        found = unanswered.take_oldest()
    return f"call_{position}" if found is None else found


def chat_request(body: Mapping[str, Any], model: str) -> OpenAIRequest:
    """``POST /api/chat`` as ``/v1/chat/completions`` for alias ``model``."""
    request, stream, keep_alive = _common(body, model)
    raw_messages = body.get("messages")
    messages = _chat_messages([] if raw_messages is None else raw_messages)
    tools = _optional(body, "tools", (list,), "an array")
    if tools and not all(isinstance(tool, Mapping) for tool in tools):
        raise InvalidRequestError("tools must be an array of objects", param="tools")
    if tools:
        request["tools"] = tools
    request.update(_think_fields(body.get("think")))
    request["messages"] = messages
    return OpenAIRequest(
        "/v1/chat/completions", _streamed(request, stream), stream, keep_alive, not messages
    )


def generate_request(body: Mapping[str, Any], model: str) -> OpenAIRequest:
    """``POST /api/generate``: ``raw`` → ``/v1/completions`` with the prompt as is; else
    a chat of the ``system`` and the prompt as a user message."""
    raw = _optional(body, "raw", (bool,), "a boolean")
    request, stream, keep_alive = _common(body, model, chat=not raw)
    prompt = _optional(body, "prompt", (str,), "a string") or ""
    system = _optional(body, "system", (str,), "a string")
    context = _optional(body, "context", (list,), "an array of integers")
    if context and not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
        raise InvalidRequestError("context must be an array of integers", param="context")
    if _optional(body, "suffix", (str,), "a string"):
        raise InvalidRequestError(
            "suffix is not supported (no fill-in-the-middle on this server)", param="suffix"
        )
    if _optional(body, "template", (str,), "a string"):
        raise InvalidRequestError(
            "template is not supported: the model's own chat template is used; send a"
            " formatted prompt with raw: true instead",
            param="template",
        )
    _no_images(body.get("images"))
    if raw:
        request["prompt"] = prompt
        endpoint = "/v1/completions"
    else:
        request.update(_think_fields(body.get("think")))
        messages = [{"role": "system", "content": system}] if system else []
        request["messages"] = [*messages, {"role": "user", "content": prompt}]
        endpoint = "/v1/chat/completions"
    return OpenAIRequest(endpoint, _streamed(request, stream), stream, keep_alive, not prompt)


def embed_input(value: object) -> list[str]:
    """``/api/embed``'s ``input``: a string or an array of strings (empty ones kept out
    only when the whole input is an empty string)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidRequestError("invalid input type", param="input")


def embed_dimensions(body: Mapping[str, Any]) -> int | None:
    """``/api/embed``'s ``dimensions``: how many leading components to keep."""
    value = _optional(body, "dimensions", (int,), "a positive integer")
    if value is not None and value <= 0:
        raise InvalidRequestError("dimensions must be a positive integer", param="dimensions")
    return None if value is None else int(value)


def embed_request(
    body: Mapping[str, Any], model: str, inputs: Sequence[str], *, normalize: bool
) -> OpenAIRequest:
    """``/api/embed`` (normalised) or ``/api/embeddings`` (not) as ``/v1/embeddings``."""
    request: dict[str, Any] = {
        "model": model,
        "input": list(inputs),
        # llama-server's own switch: 2 is the Euclidean (L2) norm, -1 none.
        "embd_normalize": 2 if normalize else -1,
    }
    truncate = _optional(body, "truncate", (bool,), "a boolean") is not False
    options_fields(body.get("options"))  # checked; nothing in it applies to embeddings
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    return OpenAIRequest("/v1/embeddings", request, False, keep_alive, not inputs, truncate)


def model_name(body: Mapping[str, Any], field: str = "model") -> str:
    """The model a body names: ``model``, or the legacy ``name``."""
    value = body.get(field)
    if value is None and field == "model":
        value = body.get("name")
    return required_string(value, field)
