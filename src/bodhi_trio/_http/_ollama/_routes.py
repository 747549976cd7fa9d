"""The Ollama routes: parse, translate, ``ctx.forward(...)``, translate back.

Inference (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``) goes
through :meth:`SharedContext.forward` with the request's ``keep_alive``; a streamed
answer is the relay of :mod:`.._relay` (the producer in the server's relay nursery
holds the model and the upstream response) read through :class:`NdjsonBody`. The
route waits for llama-server's answer before it sends the headers (through a load;
see :mod:`._stream` on keep-alive), so every failure before the first byte has its
status. Errors are raised like everywhere else; the app's one boundary renders them
as ``{"error": "<text>"}`` under these paths (:func:`._errors.ollama_error`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, final

import attrs
import trio

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._hub_refs import PullRequest
from bodhi_trio._context._open import required_string
from bodhi_trio._core._state import SlotStatus
from bodhi_trio._exceptions import (
    BodhiError,
    InvalidRequestError,
    UnavailableError,
    UpstreamError,
)
from bodhi_trio._http._ollama._embed import embeddings_answer, forward_whole
from bodhi_trio._http._ollama._errors import (
    json_answer,
    ollama_json,
    optional_bool,
    upstream_refusal,
)
from bodhi_trio._http._ollama._models import (
    ModelFacts,
    context_length,
    model_facts,
    ps_entry,
    resolve_model,
    show_answer,
    tags_entry,
)
from bodhi_trio._http._ollama._pull import SUCCESS, PullNdjsonBody, require_hub_ref
from bodhi_trio._http._ollama._requests import (
    OpenAIRequest,
    chat_request,
    embed_dimensions,
    embed_input,
    embed_request,
    generate_request,
    model_name,
)
from bodhi_trio._http._ollama._responses import (
    Kind,
    Metrics,
    StreamTranslator,
    chat_answer,
    empty_answer,
    generate_answer,
    normalized,
)
from bodhi_trio._http._ollama._stream import NDJSON_HEADERS, NdjsonBody
from bodhi_trio._http._relay import start_relay
from bodhi_trio._http._relay_body import RelayBody
from bodhi_trio._http._request_scope import close_with_request, request_body_writer
from bodhi_trio._http._routes import Reply, parse_json_body
from bodhi_trio._http._security import Access

if TYPE_CHECKING:
    from bodhi_trio._context._open import SharedContext
    from bodhi_trio._http._completion_route import BodyHandler
    from bodhi_trio._transport._relay_hub import RelayHub

__all__ = [
    "OLLAMA_VERSION",
    "OllamaRoutes",
    "register_ollama_routes",
]

OLLAMA_VERSION = "0.12.3"
"""The Ollama API level served, for ``GET /api/version`` (integrations gate on it)."""

_RUNNING = b"Ollama is running"
_TEXT = {"Content-Type": "text/plain; charset=utf-8"}


class RouteAdder(Protocol):
    """The app's ``route(rule, methods, handler, access=...)``."""

    def __call__(
        self, rule: str, methods: list[str], handler: Callable[..., Awaitable[Reply]], *,
        access: Access,
    ) -> None: ...  # fmt: skip


@final
@attrs.define(eq=False)
class OllamaRoutes:
    """The Ollama route handlers over one :class:`SharedContext`.

    Args:
        ctx: The models.
        nursery: Where relay producers run (one per streamed answer).
        hub: Where streamed answers' paced tokens are translated and written, if the
            server runs one.
    """

    ctx: SharedContext
    nursery: trio.Nursery
    hub: RelayHub | None = None

    # ------------------------------------------------------------------ liveness

    async def root(self) -> Reply:
        """``GET|HEAD /``: what Ollama's liveness probes look for."""
        return Reply(200, _TEXT, _RUNNING)

    async def version(self) -> Reply:
        return ollama_json({"version": OLLAMA_VERSION})

    # ------------------------------------------------------------------ models

    async def tags(self) -> Reply:
        """``GET /api/tags``: every alias."""
        aliases, _problems = self.ctx.aliases.load()
        # Let go on cancel (the client left, shutdown): a header read on a hung mount would
        # otherwise hold the request.
        facts = await trio.to_thread.run_sync(
            lambda: [model_facts(self.ctx, a) for a in aliases], abandon_on_cancel=True
        )
        return ollama_json({"models": [tags_entry(f) for f in facts]})

    async def ps(self) -> Reply:
        """``GET /api/ps``: the models loaded or loading, the latest to expire first."""
        resident = [
            m for m in self.ctx.state.models if m.status in (SlotStatus.LOADING, SlotStatus.READY)
        ]

        def gather() -> list[tuple[ModelFacts, int | None]]:
            found = []
            for model in resident:
                try:
                    alias = self.ctx.resolve_alias(model.alias)
                except BodhiError:  # deleted or broken since it loaded
                    alias = Alias(model.alias, "unknown/unknown", "unknown.gguf")
                facts = model_facts(self.ctx, alias)
                found.append((facts, context_length(self.ctx, facts)))
            return found

        gathered = await trio.to_thread.run_sync(gather, abandon_on_cancel=True)
        now = time.time()
        cpu = self.ctx.exec_variant == "cpu"
        entries = [
            ps_entry(facts, model, context, cpu=cpu, now=now)
            for model, (facts, context) in zip(resident, gathered, strict=True)
        ]
        entries.sort(key=lambda pair: pair[0], reverse=True)
        return ollama_json({"models": [entry for _expires, entry in entries]})

    async def show(self, raw: bytes) -> Reply:
        """``POST /api/show``."""
        body = parse_json_body(raw)
        alias = resolve_model(self.ctx, model_name(body))
        verbose = optional_bool(body, "verbose")
        facts = await trio.to_thread.run_sync(model_facts, self.ctx, alias, abandon_on_cancel=True)
        return ollama_json(show_answer(facts, verbose=bool(verbose)))

    async def delete(self, raw: bytes) -> Reply:
        """``DELETE /api/delete``: remove the alias file (a loaded model stays loaded)."""
        alias = resolve_model(self.ctx, model_name(parse_json_body(raw)))
        self.ctx.aliases.delete(alias.alias)
        return Reply(200, {}, b"")

    async def copy(self, raw: bytes) -> Reply:
        """``POST /api/copy``: the source alias under a new name (replacing one of that
        name); ``x:latest`` is stored as ``x``."""
        body = parse_json_body(raw)
        source = resolve_model(self.ctx, required_string(body.get("source"), "source"))
        destination = required_string(body.get("destination"), "destination")
        name = destination.removesuffix(":latest") or destination
        copied = Alias.from_dict({**source.to_dict(), "alias": name}, source="destination")
        self.ctx.aliases.put(copied)
        return Reply(200, {}, b"")

    async def pull(self, raw: bytes) -> Reply:
        """``POST /api/pull``: start or join the server's pull job for an
        ``hf.co/REPO[:QUANT]`` name and stream its progress as Ollama's NDJSON
        (:mod:`._pull`); with ``"stream": false`` the last object, or the job's error
        with its status. Errors found before the job starts (a name that is not a
        Hugging Face repo, an alias conflict) are raised here, before any byte.

        Cancellation (the client left): only the watch ends; the job is the server's.
        """
        body = parse_json_body(raw)
        name = model_name(body)
        stream = optional_bool(body, "stream")
        optional_bool(body, "insecure")  # ignored: the Hub is the server's HF_ENDPOINT
        job = self.ctx.pulls.start_or_join(PullRequest.from_ref(require_hub_ref(name)))
        if stream is False:
            final = await job.wait()
            if final.error is not None:  # the job keeps it: raise it without old frames
                raise final.error.with_traceback(None)
            return ollama_json({"status": SUCCESS})
        lines = PullNdjsonBody(job.watch())
        close_with_request(lines)
        return Reply(200, NDJSON_HEADERS, lines)

    # ------------------------------------------------------------------ inference

    def inference(self) -> dict[str, BodyHandler]:
        """The inference routes (``POST``), each with its handler of the request body:
        the app's completion route answers them past Quart as it does OpenAI's."""
        return {
            "/api/chat": self.chat,
            "/api/generate": self.generate,
            "/api/embed": self.embed,
            "/api/embeddings": self.embeddings,
        }

    async def chat(self, raw: bytes) -> Reply:
        """``POST /api/chat``."""
        return await self._complete(raw, "chat")

    async def generate(self, raw: bytes) -> Reply:
        """``POST /api/generate``."""
        return await self._complete(raw, "generate")

    async def _complete(self, raw: bytes, kind: Kind) -> Reply:
        started = time.perf_counter_ns()
        body = parse_json_body(raw)
        name = model_name(body)
        build = chat_request if kind == "chat" else generate_request
        request = build(body, name)  # 400s before 404s, as Ollama binds first
        request.body["model"] = resolve_model(self.ctx, name).alias
        if request.empty:
            reason = await self._load_or_unload(request)
            return ollama_json(empty_answer(name, kind, reason))
        metrics = Metrics(started)
        if request.stream:
            return await self._streamed(request, StreamTranslator(name, kind, metrics))
        answer = await self._forward_json(request)
        if isinstance(answer, Reply):
            return answer
        translate = chat_answer if kind == "chat" else generate_answer
        return ollama_json(translate(name, answer, metrics, time.perf_counter_ns()))

    async def _load_or_unload(self, request: OpenAIRequest) -> Literal["load", "unload"]:
        """An empty request: load the model (``"load"``); with ``keep_alive`` 0 unload
        it once its in-flight responses ended (``"unload"``), as Ollama does: other
        clients' responses are never cut (stopping a model at once is an admin's route)."""
        alias = request.body["model"]
        if request.keep_alive == 0:
            await self.ctx.unload_when_idle(alias)
            return "unload"
        await self.ctx.load(alias, keep_alive=request.keep_alive)
        return "load"

    async def _forward_json(self, request: OpenAIRequest) -> dict[str, Any] | Reply:
        """llama-server's whole JSON answer, or its refusal as an Ollama error reply."""
        status, content = await forward_whole(self.ctx, request)
        if status != 200:
            return upstream_refusal(status, content)
        return json_answer(status, content)

    async def _streamed(self, request: OpenAIRequest, translator: StreamTranslator) -> Reply:
        """Start the relay and answer once llama-server did (after any load).

        Cancellation (the client left): the relay's producer is cancelled too; a load
        it started still completes.
        """
        forward = self.ctx.forward(request.endpoint, request.body, keep_alive=request.keep_alive)
        relay = await start_relay(self.nursery, forward, 0, wait=math.inf)
        if relay.failure is not None:
            raise relay.failure  # nothing sent yet: a proper status
        head = relay.head
        if head is None:  # the relay nursery was cancelled: shutdown
            raise UnavailableError("bodhi-trio is shutting down", retry_after=5)
        if head.status != 200:
            return upstream_refusal(head.status, head.body)
        relayed = RelayBody(relay, hub=self.hub)
        stream = NdjsonBody(relayed, translator, writer=request_body_writer())
        close_with_request(stream)
        return Reply(200, NDJSON_HEADERS, stream)

    # ------------------------------------------------------------------ embeddings

    async def embed(self, raw: bytes) -> Reply:
        """``POST /api/embed``: unit-length (L2) vectors; an empty input loads the model."""
        started = time.perf_counter_ns()
        body = parse_json_body(raw)
        name = model_name(body)
        dimensions = embed_dimensions(body)
        request = embed_request(body, name, embed_input(body.get("input")), normalize=True)
        result = await self._embeddings(request, name, started)
        if isinstance(result, Reply):
            return result
        vectors, fields = result
        if dimensions is not None:
            vectors = [normalized(vector[:dimensions]) for vector in vectors]
        return ollama_json({"model": name, "embeddings": vectors, **fields})

    async def embeddings(self, raw: bytes) -> Reply:
        """``POST /api/embeddings`` (legacy): one vector, not normalised."""
        started = time.perf_counter_ns()
        body = parse_json_body(raw)
        name = model_name(body)
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidRequestError("prompt must be a string", param="prompt")
        request = embed_request(body, name, [prompt] if prompt else [], normalize=False)
        result = await self._embeddings(request, name, started)
        if isinstance(result, Reply):
            return result
        vectors, _fields = result
        return ollama_json({"embedding": vectors[0] if vectors else []})

    async def _embeddings(
        self, request: OpenAIRequest, name: str, started: int
    ) -> tuple[list[list[float]], dict[str, int]] | Reply:
        """The vectors, in input order, and the metrics (none for an empty request: the
        model is loaded all the same, as Ollama does); or llama-server's refusal."""
        alias = resolve_model(self.ctx, name)
        request.body["model"] = alias.alias
        # llama-server's own field (OpenAI refuses a field it does not know): a remote's
        # vectors are made unit length here if they are to be
        unit = alias.remote is not None and request.body.pop("embd_normalize") == 2
        if request.empty:
            await self.ctx.load(request.body["model"], keep_alive=request.keep_alive)
            return [], {}
        answer = await embeddings_answer(self.ctx, request)
        if isinstance(answer, Reply):
            return answer
        data = answer.get("data")
        if not isinstance(data, list):
            raise UpstreamError("llama-server's embeddings answer has no data")
        ordered = sorted(data, key=lambda item: item.get("index", 0))
        vectors = [list(item["embedding"]) for item in ordered]
        if unit:
            vectors = [normalized(vector) for vector in vectors]
        metrics = Metrics(started)
        metrics.take(answer)
        fields = metrics.fields(time.perf_counter_ns())
        keep = ("total_duration", "load_duration", "prompt_eval_count")
        return vectors, {key: fields[key] for key in keep}


def register_ollama_routes(
    route: RouteAdder, ollama: OllamaRoutes, body: Callable[[], Awaitable[bytes]]
) -> None:
    """Register the Ollama routes on the app (``route`` is its registration function,
    ``body`` its request-body reader). ``GET`` rules answer ``HEAD`` too.

    Access: ``/`` (:meth:`OllamaRoutes.root`, registered by the app, which also serves
    the page there) is public like ``/ping`` (Ollama's liveness probes send no key);
    inference and reading need an API key; ``delete``, ``copy`` and ``pull`` an admin key.
    """

    def with_body(handler: BodyHandler) -> Callable[[], Awaitable[Reply]]:
        async def view() -> Reply:
            return await handler(await body())

        return view

    # "/" is registered by the app: Ollama's answer, or the page for a browser
    route("/api/version", ["GET"], ollama.version, access=Access.API)
    route("/api/tags", ["GET"], ollama.tags, access=Access.API)
    route("/api/ps", ["GET"], ollama.ps, access=Access.API)
    for path, handler in (("/api/show", ollama.show), *ollama.inference().items()):
        route(path, ["POST"], with_body(handler), access=Access.API)
    route("/api/pull", ["POST"], with_body(ollama.pull), access=Access.ADMIN)
    route("/api/copy", ["POST"], with_body(ollama.copy), access=Access.ADMIN)
    route("/api/delete", ["DELETE"], with_body(ollama.delete), access=Access.ADMIN)
