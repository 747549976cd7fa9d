"""The Quart-Trio app: thin routes over :class:`Routes`, errors mapped once.

Each route parses its path and query, passes the raw body on, and turns the
:class:`Reply` into a response. Every :class:`BodhiError`, every HTTP error from
the framework (unknown route, wrong method, body too large) and anything
unexpected becomes ``{"error": {"message", "type", "code", "param"}}`` with its
status through :func:`._errors.error_reply`, here in the error handler; under Ollama's
paths (``/``, ``/api/...``, registered from :mod:`._ollama`) Ollama's
``{"error": "<text>"}``.

The completion routes (``POST`` on :data:`ENDPOINTS`) are registered here too (their
access, and a request under an ASGI ``root_path``), but the middleware answers them
without Quart (:mod:`._completion_route`), with the same checks, limits and errors.

Who may call what is declared where each route is registered (``access=``, an
:class:`Access`), so a new route cannot be added without deciding it; the
resulting table is ``create_app(...).route_access``.

Framework traps handled here: ``RESPONSE_TIMEOUT`` (default 60 s) would cut long
streams, so it is off; ``BODY_TIMEOUT`` bounds a slow upload instead.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, final

from quart import Response, g, request
from quart_trio import QuartTrio

from bodhi_trio._context._endpoints import UPSTREAM_METHODS
from bodhi_trio._context._open import ENDPOINTS
from bodhi_trio._exceptions import (
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
)
from bodhi_trio._http._completion_route import (
    BodyHandler,
    CompletionRoute,
    declares_body,
    refuse_declared_body,
)
from bodhi_trio._http._errors import error_reply
from bodhi_trio._http._observe import PROMETHEUS_CONTENT_TYPE, Observer
from bodhi_trio._http._ollama._errors import is_ollama_path
from bodhi_trio._http._ollama._routes import OllamaRoutes, register_ollama_routes
from bodhi_trio._http._openapi import openapi_document
from bodhi_trio._http._page import page_asset, wants_page
from bodhi_trio._http._pull_routes import PullRoutes, register_pull_routes
from bodhi_trio._http._request_scope import note_request
from bodhi_trio._http._routes import Reply, Routes
from bodhi_trio._http._security import Access, refuse_repeated_access_headers
from bodhi_trio._transport._whole import AnswerBudget

if TYPE_CHECKING:
    from bodhi_trio._http._security import AccessPolicy

__all__ = ["create_app"]

_BODY_TIMEOUT = 60.0


def _to_response(reply: Reply) -> Response:
    response = Response(reply.body, status=reply.status, headers=dict(reply.headers))
    response.timeout = None  # never cut a stream (the default is 60 s)
    if reply.status == 204:
        del response.headers["Content-Type"]  # Quart's default type: there is no content
    return response


@final
class _RequestScoped:
    """ASGI middleware: each request runs in its request scope (whatever it registered with
    ``close_with_request`` is closed when it ends, even if the framework never touched its
    body), measured and logged by the :class:`Observer`; the completion routes are answered
    by a :class:`CompletionRoute`, everything else by the app. What a request reads whole
    from an upstream is charged to ``answers`` until it ends.

    Attributes:
        app: The Quart-Trio app.
        route_access: What each ``(method, rule)`` the app serves needs (see :class:`Access`).
        observer: The metrics and request log.
        answers: The budget of answers read whole that requests in flight hold together.
    """

    def __init__(
        self,
        app: QuartTrio,
        route_access: Mapping[tuple[str, str], Access],
        observer: Observer,
        completion: CompletionRoute,
        answers: AnswerBudget,
    ) -> None:
        self.app = app
        self.route_access = route_access
        self.observer = observer
        self.answers = answers
        self._completion = completion
        self._observed = observer.middleware(self._dispatch)

    async def _dispatch(self, scope: Any, receive: Any, send: Any) -> None:
        # The completion routes skip Quart (see _completion_route); the rest is the app's.
        if scope["type"] == "http" and self._completion.serves(scope):
            await self._completion(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @property
    def fast_paths(self) -> frozenset[str]:
        """The completion routes' paths: their simple requests may skip Hypercorn's
        request machinery too (:mod:`._fast_path`)."""
        return frozenset(self._completion.access)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with self.answers.charging():
            await self._observed(scope, receive, send)


def create_app(
    routes: Routes,
    policy: AccessPolicy,
    *,
    max_body_bytes: int,
    observer: Observer | None = None,
    answers: AnswerBudget | None = None,
) -> _RequestScoped:
    """The ASGI app for one context (the Quart-Trio app inside a request-scope middleware).

    Args:
        routes: What the routes do.
        policy: API keys and Host/Origin rules, checked before every route.
        max_body_bytes: Larger request bodies get 413.
        observer: Metrics and the request log; by default one that counts requests but
            hears no model events (the server passes one it subscribed to them).
        answers: The budget of answers read whole for requests in flight (by default
            :data:`~bodhi_trio._transport._whole.ANSWERS_BUDGET_BYTES`).
    """
    if observer is None:
        observer = Observer(lambda: routes.ctx.state, lambda _alias: False)
    app = QuartTrio("bodhi_trio", static_folder=None)  # no /static/ route: nothing to serve
    app.config.update(
        RESPONSE_TIMEOUT=None,
        BODY_TIMEOUT=_BODY_TIMEOUT,
        MAX_CONTENT_LENGTH=max_body_bytes,
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=None,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    # "//" in a path (e.g. an alias name "/etc/passwd") would get an HTML 308 redirect
    # from the router; without merging it is a plain 404 envelope like any unknown path.
    app.url_map.merge_slashes = False

    access_by_endpoint: dict[str, Access] = {}
    route_access: dict[tuple[str, str], Access] = {}

    def access_of(endpoint: str | None) -> Access:
        if endpoint is None:
            return Access.API  # no such route: any valid key, then 404/405
        return access_by_endpoint.get(endpoint, Access.ADMIN)  # unclassified: fail closed

    @app.before_request
    async def check_access() -> Response | None:
        pairs = [(k.lower(), v) for k, v in request.headers.items()]
        headers = dict(pairs)
        refuse_repeated_access_headers(pairs, headers)
        origin = headers.get("origin")
        if request.method == "OPTIONS":
            if origin is None:
                raise InvalidRequestError("OPTIONS is only for CORS preflight requests")
            if not policy.origin_allowed(origin):
                raise ForbiddenError(f"requests from the web origin {origin!r} are not allowed")
            return _preflight(origin)
        policy.check(headers, access_of(request.endpoint))
        return None

    @app.after_request
    async def add_cors(response: Response) -> Response:
        response.headers.update(policy.cors_headers(request.headers.get("origin")))
        return response

    @app.after_request
    async def close_if_body_unread(response: Response) -> Response:
        # Answered before the body was read (unknown route, wrong method, key, Host,
        # too large): Hypercorn keeps the connection open but never answers another
        # request on it, so a keep-alive client would hang. Tell it to reconnect.
        declared = declares_body(request.content_length, request.headers.get("transfer-encoding"))
        if declared and not g.get("bodhi_body_read", False):
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(Exception)
    async def on_error(error: Exception) -> Response:
        return _to_response(error_reply(error, ollama=is_ollama_path(request.path)))

    async def body() -> bytes:
        refuse_declared_body(request.content_length, max_body_bytes)
        data: bytes = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        g.bodhi_body_read = True
        return data

    def route(
        rule: str, methods: list[str], handler: Callable[..., Awaitable[Reply]], *, access: Access
    ) -> None:
        async def view(**kwargs: Any) -> Response:
            note_request(route=rule)  # the metrics' route label: the rule, never the path
            return _to_response(await handler(**kwargs))

        endpoint = rule + ",".join(methods)
        app.add_url_rule(rule, endpoint=endpoint, view_func=view, methods=methods)
        access_by_endpoint[endpoint] = access
        route_access.update({(method, rule): access for method in methods})

    async def completion_for(endpoint: str) -> Reply:
        return await routes.completion(endpoint, await body())

    for endpoint in ENDPOINTS:
        route(
            endpoint,
            ["POST"],
            lambda endpoint=endpoint: completion_for(endpoint),
            access=Access.API,
        )

    async def upstream(name: str, path: str) -> Reply:
        # Method, decoded path, raw query, body and its type go on as they are;
        # SharedContext.upstream checks them before anything loads.
        query = request.query_string.decode("latin-1")
        content_type = request.headers.get("content-type")
        return await routes.upstream(name, request.method, path, query, await body(), content_type)

    # The pass-through (docs/api.md): admin only, since it reaches every route of the
    # child (slots, props, LoRA adapters). GET also answers HEAD (the router adds it).
    passed = [method for method in UPSTREAM_METHODS if method != "HEAD"]
    route("/upstream/<name>/<path:path>", passed, upstream, access=Access.ADMIN)

    async def ping() -> Reply:
        return Reply.json({"message": "pong"})

    async def logs() -> Reply:
        args = request.args
        return await routes.logs(args.get("lines"), args.get("follow"), args.get("alias"))

    async def stop() -> Reply:
        return await routes.stop(await body())

    async def load() -> Reply:
        return await routes.load(await body())

    async def variant() -> Reply:
        return await routes.variant(await body())

    async def alias_create() -> Reply:
        # With "file": an alias for a local GGUF (_pull_routes); else the usual create.
        return await pull_routes.alias_create(await body(), routes.alias_create)

    async def alias_put(name: str) -> Reply:
        return await routes.alias_put(name, await body())

    ollama = OllamaRoutes(routes.ctx, routes.nursery, routes.hub)
    register_ollama_routes(route, ollama, body)

    async def root() -> Reply:
        # A browser gets the page; Ollama's liveness probes (and curl) "Ollama is running".
        if wants_page(request.headers.get("accept")):
            return page_file("index.html")
        return await ollama.root()

    def page_file(name: str) -> Reply:
        found = page_asset(name)
        if found is None:
            raise NotFoundError(f"no page file {name!r}")
        data, headers = found
        return Reply(200, headers, data)

    async def ui(name: str) -> Reply:
        return page_file(name)

    async def metrics() -> Reply:
        return Reply(200, {"Content-Type": PROMETHEUS_CONTENT_TYPE}, observer.render())

    # The page's files hold no data (it reads the API with the user's key): public.
    route("/", ["GET"], root, access=Access.PUBLIC)
    route("/ui/<name>", ["GET"], ui, access=Access.PUBLIC)
    route("/metrics", ["GET"], metrics, access=Access.API)
    pull_routes = PullRoutes(routes.ctx, routes.nursery)
    register_pull_routes(route, pull_routes, body)

    openapi = Reply.json(openapi_document())  # serialised once

    async def openapi_json() -> Reply:
        return openapi

    # access: API = inference and reading state/models/aliases; ADMIN = changes the
    # server or its aliases, or shows the child's logs (they can hold prompts).
    route("/ping", ["GET"], ping, access=Access.PUBLIC)
    route("/openapi.json", ["GET"], openapi_json, access=Access.API)
    route("/health", ["GET"], routes.health, access=Access.API)
    route("/v1/models", ["GET"], routes.models, access=Access.API)
    route("/v1/models/<path:name>", ["GET"], routes.model, access=Access.API)
    route("/bodhi/v1/state", ["GET"], routes.state, access=Access.API)
    route("/bodhi/v1/events", ["GET"], routes.events, access=Access.API)
    route("/bodhi/v1/server/load", ["POST"], load, access=Access.ADMIN)
    route("/bodhi/v1/server/stop", ["POST"], stop, access=Access.ADMIN)
    route("/bodhi/v1/server/variant", ["PUT"], variant, access=Access.ADMIN)
    route("/bodhi/v1/server/logs", ["GET"], logs, access=Access.ADMIN)
    route("/bodhi/v1/aliases", ["GET"], routes.aliases_list, access=Access.API)
    route("/bodhi/v1/aliases", ["POST"], alias_create, access=Access.ADMIN)
    route("/bodhi/v1/aliases/<path:name>", ["GET"], routes.alias_get, access=Access.API)
    route("/bodhi/v1/aliases/<path:name>", ["PUT"], alias_put, access=Access.ADMIN)
    route("/bodhi/v1/aliases/<path:name>", ["DELETE"], routes.alias_delete, access=Access.ADMIN)
    handlers: dict[str, BodyHandler] = {
        endpoint: functools.partial(routes.completion, endpoint) for endpoint in ENDPOINTS
    }
    handlers.update(ollama.inference())
    completion_access = {rule: route_access[("POST", rule)] for rule in handlers}
    completion = CompletionRoute(handlers, policy, completion_access, max_body_bytes, _BODY_TIMEOUT)
    return _RequestScoped(
        app, route_access, observer, completion, AnswerBudget() if answers is None else answers
    )


def _preflight(origin: str) -> Response:
    response = Response(b"", status=204)
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Api-Key"
    response.headers["Access-Control-Max-Age"] = "600"
    response.headers["Vary"] = "Origin"
    del response.headers["Content-Type"]  # Quart's default type: there is no content
    return response
