"""Routes: what each HTTP route does, without the web framework.

Routes in :mod:`._app` only parse the path and hand the raw body here; every
method returns a :class:`Reply` (status, headers, bytes or a streaming body)
or raises a :class:`BodhiError`, which the app maps to an error response at
one boundary.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from bodhi_trio._config._aliases import Alias
from bodhi_trio._context._endpoints import STREAMING_ENDPOINTS
from bodhi_trio._context._open import ENDPOINTS, SharedContext, required_string
from bodhi_trio._context._routing import ROUTED_ATTEMPTS, ROUTING_HEADERS
from bodhi_trio._core._state import SlotStatus
from bodhi_trio._exceptions import InvalidRequestError, RequestTooLargeError
from bodhi_trio._http._event_streams import EventStreams
from bodhi_trio._http._passthrough import passthrough
from bodhi_trio._http._relay import start_relay
from bodhi_trio._http._relay_body import RelayBody
from bodhi_trio._http._request_scope import close_with_request, note_request, request_body_writer
from bodhi_trio._http._sse import (
    SSE_HEADERS,
    DirectStream,
    anthropic_error_event,
    compact_json,
    error_event,
    keepalive_interval,
)
from bodhi_trio._http._usage import note_usage
from bodhi_trio._llama._logtail import LogTail

if TYPE_CHECKING:
    from bodhi_trio._transport._relay_hub import RelayHub

__all__ = [
    "INTEGER_FIELDS",
    "NUMBER_FIELDS",
    "Reply",
    "Routes",
    "parse_json_body",
    "validate_completion_request",
]

INTEGER_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed")
"""Optional completion request fields that must be integers when given."""
NUMBER_FIELDS = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
"""Optional completion request fields that must be numbers when given."""

_JSON = {"Content-Type": "application/json"}
_OPENAI = frozenset(("/v1/chat/completions", "/v1/completions", "/v1/embeddings"))
_MAX_LOG_LINES = 1000


@attrs.frozen
class Reply:
    """An HTTP answer: ``body`` is bytes or an async iterator of bytes (streamed)."""

    status: int
    headers: Mapping[str, str]
    body: bytes | AsyncIterator[bytes]

    @classmethod
    def json(cls, value: object, status: int = 200, *, headers: Mapping[str, str] = _JSON) -> Reply:
        return cls(status, headers, compact_json(value).encode())


def routed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``x-bodhi-routed-*`` headers of a remote or fallback answer (``_routing``), and
    its ``Retry-After`` (an answer passed on verbatim keeps it: the client's retry then
    lands when the target recovers)."""
    if ROUTED_ATTEMPTS not in headers:
        return {}
    names = (*ROUTING_HEADERS, "retry-after", "retry-after-ms")
    return {name: headers[name] for name in names if name in headers}


_ANSWER_TYPES = frozenset({"application/json", "text/event-stream", "text/plain"})
"""What an inference route's answer may be, whoever answered (llama-server: JSON)."""


def _answer_content_type(headers: Mapping[str, str]) -> str:
    """The ``Content-Type`` of an upstream's whole answer, as we send it on: its own when
    it is one an inference route gives; else ``text/plain``. A remote is anyone's server:
    a ``text/html`` answer passed on would be a page of its making on our origin."""
    declared = headers.get("content-type", "application/json")
    if declared.partition(";")[0].strip().lower() in _ANSWER_TYPES:
        return declared
    return "text/plain; charset=utf-8"


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")  # 1e400: llama-server would get Infinity
    return number


MAX_JSON_VALUES = 250_000
"""The most values a request body may hold, counted by their separators (``,``, ``{``,
``[``; text inside strings counts too). Parsing is done whole on the event loop and
Python's objects are ten to thirty times the JSON's bytes: 32 MiB of ``{},`` took 1 GB and
stopped every stream for seconds. This is more than any model's context holds in prose
(a comma every few words) or in code, and base64 media has none."""


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        InvalidRequestError: Not UTF-8, not JSON, nested too deep, or not an object.
        RequestTooLargeError: More than :data:`MAX_JSON_VALUES` values (413).
    """
    # Each separator is a byte: a body shorter than the limit cannot pass it (not counted).
    if len(raw) > MAX_JSON_VALUES:
        values = raw.count(b",") + raw.count(b"{") + raw.count(b"[")
        if values > MAX_JSON_VALUES:
            raise RequestTooLargeError(
                f"the request body holds about {values} JSON values (commas, braces and"
                f" brackets counted); at most {MAX_JSON_VALUES} are read: split the request"
            )
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid UTF-8: {exc.reason}") from exc
    except ValueError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidRequestError("the request body is nested too deeply") from exc
    if not isinstance(value, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return value


def _check_type(body: Mapping[str, Any], field: str, kinds: tuple[type, ...], what: str) -> None:
    if field in body and body[field] is not None:
        value = body[field]
        if isinstance(value, bool) and bool not in kinds:
            raise InvalidRequestError(f"'{field}' must be {what}", param=field)
        if not isinstance(value, kinds):
            raise InvalidRequestError(f"'{field}' must be {what}", param=field)


def validate_completion_request(endpoint: str, body: Mapping[str, Any]) -> None:
    """Type checks on the fields bodhi-trio relies on or that are commonly mistyped.

    The OpenAI routes get the checks of docs/api.md; llama-server's other routes only
    ``model`` (a string) and ``stream`` (a boolean): llama-server judges the rest.

    Raises:
        InvalidRequestError: With ``param`` naming the field.
    """
    required_string(body.get("model"), "model")
    if endpoint not in _OPENAI:
        _check_type(body, "stream", (bool,), "a boolean")
        return
    if endpoint == "/v1/chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("'messages' must be a non-empty array", param="messages")
        if not all(isinstance(m, dict) for m in messages):
            raise InvalidRequestError("each message must be an object", param="messages")
        if not all(isinstance(m.get("role"), str) for m in messages):
            raise InvalidRequestError("each message needs a 'role' string", param="messages")
        _check_type(body, "tools", (list,), "an array of objects")
        if not all(isinstance(tool, dict) for tool in body.get("tools") or ()):
            raise InvalidRequestError("'tools' must be an array of objects", param="tools")
        _check_type(body, "tool_choice", (str, dict), "a string or an object")
        _check_type(body, "response_format", (dict,), "an object")
        _check_type(body, "logit_bias", (dict,), "an object")
    elif endpoint == "/v1/completions":
        if "prompt" not in body:
            raise InvalidRequestError("'prompt' is required", param="prompt")
        _check_type(body, "prompt", (str, list), "a string or an array")
    else:
        if "input" not in body:
            raise InvalidRequestError("'input' is required", param="input")
        _check_type(body, "input", (str, list), "a string or an array")
        _check_type(body, "dimensions", (int,), "an integer")
    _check_type(body, "stream", (bool,), "a boolean")
    _check_type(body, "user", (str,), "a string")
    _check_type(body, "stream_options", (dict,), "an object")
    for field in INTEGER_FIELDS:
        _check_type(body, field, (int,), "an integer")
    for field in NUMBER_FIELDS:
        _check_type(body, field, (int, float), "a number")
    _check_type(body, "stop", (str, list), "a string or an array of strings")


@final
@attrs.define(eq=False)
class Routes:
    """The route handlers over one :class:`SharedContext`.

    Args:
        ctx: The server slot.
        nursery: Where relay producers run (one per streamed completion).
        hub: Where streamed completions' paced tokens are relayed (one task for all), if
            the server runs one.
    """

    ctx: SharedContext
    nursery: trio.Nursery
    hub: RelayHub | None = None
    _event_streams: EventStreams = attrs.field(init=False)

    @_event_streams.default
    def _open_event_streams(self) -> EventStreams:
        return EventStreams(self.ctx)

    @property
    def _keepalive(self) -> float:
        return self.ctx.settings.sse_keepalive_secs

    # ------------------------------------------------------------------ OpenAI routes

    async def completion(self, endpoint: str, raw: bytes) -> Reply:
        """``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, and
        llama-server's other routes by the body's ``model`` (:data:`ENDPOINTS`)."""
        assert endpoint in ENDPOINTS
        body = parse_json_body(raw)
        if isinstance(body.get("model"), str):  # a refused request is counted by its alias too
            note_request(alias=body["model"])
        validate_completion_request(endpoint, body)
        if body.get("stream") is True and endpoint in STREAMING_ENDPOINTS:
            return await self._streamed(endpoint, body)
        async with self.ctx.forward(endpoint, body) as response:
            content = await response.aread()
        note_usage(content)
        content_type = _answer_content_type(response.headers)
        headers = {"Content-Type": content_type, **routed_headers(response.headers)}
        return Reply(response.status_code, headers, content)

    async def _streamed(self, endpoint: str, body: dict[str, Any]) -> Reply:
        """Start the relay (:mod:`._relay`) and answer once llama-server did, or early.

        Cancellation (the client left): the relay's producer is cancelled too.
        """
        relay = await start_relay(
            self.nursery,
            self.ctx.forward(endpoint, body),
            self._keepalive,
            wait=keepalive_interval(self._keepalive),
            render_error=anthropic_error_event if endpoint == "/v1/messages" else error_event,
        )
        if relay.failure is not None:
            raise relay.failure  # nothing sent yet: a proper status
        head = relay.head
        routed = routed_headers(head.headers) if head is not None else {}
        if head is not None and head.status != 200:  # llama-server refused: byte for byte
            content_type = _answer_content_type(head.headers)
            return Reply(head.status, {"Content-Type": content_type, **routed}, head.body)
        # Answered (200), or still loading after the keep-alive interval: then the
        # client gets its 200 now, comments while it waits, and a later failure
        # inside the stream.
        relay.early = head is None
        stream = RelayBody(relay, prime=relay.early, writer=request_body_writer(), hub=self.hub)
        close_with_request(stream)
        return Reply(200, {**SSE_HEADERS, **routed} if routed else SSE_HEADERS, stream)

    async def upstream(
        self, alias: str, method: str, path: str, query: str, raw: bytes, content_type: str | None
    ) -> Reply:
        """``/upstream/{alias}/{path}``: the request passed through to that alias's
        child as it is (:mod:`._passthrough`).

        Cancellation (the client left): the upstream request is closed too.
        """
        note_request(alias=alias)
        forward = self.ctx.upstream(
            alias, method, path, query=query, body=raw, content_type=content_type
        )
        status, headers, body = await passthrough(self.nursery, forward, self._keepalive, self.hub)
        return Reply(status, headers, body)

    async def models(self) -> Reply:
        """``GET /v1/models``: every alias as an OpenAI model object."""
        aliases, _problems = self.ctx.aliases.load()
        return Reply.json({"object": "list", "data": [self._model(a) for a in aliases]})

    async def model(self, name: str) -> Reply:
        """``GET /v1/models/{id}``."""
        return Reply.json(self._model(self.ctx.aliases.get(name)))

    def _model(self, alias: Alias) -> dict[str, object]:
        try:
            created = int(self.ctx.aliases.path_for(alias.alias).stat().st_mtime)
        except OSError:
            created = 0
        return {
            "id": alias.alias,
            "object": "model",
            "created": created,
            "owned_by": "remote" if alias.remote is not None else "bodhi-trio",
            "loaded": self.ctx.state.status_of(alias.alias) is SlotStatus.READY,
        }

    # ------------------------------------------------------------------ health

    async def health(self) -> Reply:
        """``GET /health``: 200 with a state summary."""
        return Reply.json({"status": "ok", **self.ctx.state.to_json()})

    # ------------------------------------------------------------------ app API

    async def state(self) -> Reply:
        state = self.ctx.state.to_json()
        remotes = self.ctx.remote_statistics()
        if remotes:  # the remote aliases in use: each replica's load and health
            state["remotes"] = [
                {"alias": alias, "replicas": [attrs.asdict(r) for r in replicas]}
                for alias, replicas in remotes.items()
            ]
        return Reply.json(state)

    async def events(self) -> Reply:
        """``GET /bodhi/v1/events``: one SSE event per state change (at most
        :data:`~._event_streams.MAX_EVENT_STREAMS` streams at once)."""
        stream = self._event_streams.open(self._keepalive)
        close_with_request(stream)
        return Reply(200, SSE_HEADERS, stream)

    async def load(self, raw: bytes) -> Reply:
        alias = required_string(parse_json_body(raw).get("alias"), "alias")
        note_request(alias=alias)
        state = await self.ctx.load(alias)
        return Reply.json(state.to_json())

    async def stop(self, raw: bytes) -> Reply:
        """``POST /bodhi/v1/server/stop``: ``{"alias"}`` stops that model; no body, all."""
        alias = None
        if raw:  # whitespace is not "no body": it is a body that is not JSON (400)
            alias = required_string(parse_json_body(raw).get("alias"), "alias")
            note_request(alias=alias)
            self.ctx.resolve_alias(alias)  # 404 alias_not_found for no such alias
        await self.ctx.stop(alias)
        return Reply.json(self.ctx.state.to_json())

    async def variant(self, raw: bytes) -> Reply:
        variant = required_string(parse_json_body(raw).get("variant"), "variant")
        state = await self.ctx.set_exec_variant(variant)
        return Reply.json(state.to_json())

    async def logs(self, lines: str | None, follow: str | None, alias: str | None = None) -> Reply:
        """``GET /bodhi/v1/server/logs``: the last lines (of every child, or of ``alias``'s);
        ``follow=true`` streams new ones."""
        try:
            count = 100 if lines is None else int(lines)
        except ValueError as exc:
            raise InvalidRequestError("'lines' must be an integer", param="lines") from exc
        count = max(0, min(count, _MAX_LOG_LINES))
        following = (follow or "").lower() in ("1", "true", "yes")
        log = self.ctx.log
        if alias is not None:
            named = self.ctx.resolve_alias(required_string(alias, "alias"))  # 404: none
            # followed before its first start: the log its child will write to (a remote
            # alias has no child: its follower gets the keep-alives)
            own = self.ctx.log_for(alias, made=following and named.remote is None)
            if own is None and not following:
                return Reply.json({"lines": []})
            log = own or LogTail()
        recent = log.tail(count)
        if not following:
            return Reply.json({"lines": recent})
        send, receive = trio.open_memory_channel[str](64)
        follower = trio.CancelScope()
        self.nursery.start_soon(_follow_log, log, recent, send, follower)
        stream = DirectStream(
            receive, lambda line: compact_json({"line": line}), self._keepalive, follower.cancel
        )
        close_with_request(stream)
        return Reply(200, SSE_HEADERS, stream)

    async def aliases_list(self) -> Reply:
        aliases, problems = self.ctx.aliases.load()
        return Reply.json(
            {
                "data": [a.to_dict() for a in aliases],
                "problems": [{"file": p.path.name, "reason": p.reason} for p in problems],
            }
        )

    async def alias_get(self, name: str) -> Reply:
        return Reply.json(self.ctx.aliases.get(name).to_dict())

    async def alias_create(self, raw: bytes) -> Reply:
        alias = Alias.from_dict(parse_json_body(raw), source="request body")
        self.ctx.aliases.create(alias)
        return Reply.json(alias.to_dict(), status=201)

    async def alias_put(self, name: str, raw: bytes) -> Reply:
        body = parse_json_body(raw)
        body.setdefault("alias", name)
        if body["alias"] != name:
            raise InvalidRequestError("'alias' in the body differs from the path", param="alias")
        alias = Alias.from_dict(body, source="request body")
        self.ctx.aliases.put(alias)
        return Reply.json(alias.to_dict())

    async def alias_delete(self, name: str) -> Reply:
        self.ctx.aliases.delete(name)
        return Reply(204, {}, b"")


async def _follow_log(
    log: LogTail, recent: list[str], send: trio.MemorySendChannel[str], scope: trio.CancelScope
) -> None:
    with scope, send:
        try:
            for line in recent:
                await send.send(line)
            seen = log.total
            while True:
                await log.wait_for_more(seen)
                lines, skipped = log.since(seen)
                seen = log.total
                if skipped:
                    await send.send(f"[bodhi-trio] {skipped} lines skipped (client too slow)")
                for line in lines:
                    await send.send(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
