"""Fallback chains: an alias, then the aliases its ``fallback`` names, local or remote.

For a request whose alias is remote or names fallbacks, the targets are tried in
order, healthy ones first (a remote alias whose replicas all cool goes after the
others, soonest recovery first; none is ever skipped for cooling). Each attempt
sends the request with that target's ``model`` and ``request_params``. What comes
back is classified on its status alone, before its body is read:

- 2xx: committed; its body streams to the client as it arrives.
- 400 and 422: the request itself is wrong; returned as it is, no further target.
- anything else (401, 404, 429, 5xx…), a connection failure, a local model that is
  busy, too big or failed to start: the next target. A response's body is kept
  (bounded) so that if every target fails, the last answer goes back verbatim.

When no target answered at all, the client gets a 502 ``upstream_unavailable``
naming each failure, with ``Retry-After`` when every remote target cools (an alias
without fallbacks: its own error, as a local alias's would be). An
embedding request falls back only to an alias that gives the same vectors (the same
model, and for a local one the same pooling, normalisation, adapters and RoPE:
``Alias.embedding_identity``): vectors of different models or poolings are not
comparable, and a silent switch would corrupt an index.
After the first byte of a committed body there is no failover: a failure then is
one error event at the end of the stream, as for local models.

Fallback is one level deep: a fallback target's own ``fallback`` is not followed,
so chains cannot loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import attrs

from bodhi_trio._config._aliases import Alias
from bodhi_trio._context._endpoints import fill_request_params
from bodhi_trio._exceptions import BodhiError, InvalidRequestError, UpstreamUnavailableError
from bodhi_trio._transport._loopback import UpstreamResponse

if TYPE_CHECKING:
    from bodhi_trio._context._replicas import ReplicaPool

__all__ = [
    "ROUTED_ALIAS",
    "ROUTED_ATTEMPTS",
    "ROUTED_MODEL",
    "ROUTING_HEADERS",
    "FallbackRouter",
    "UpstreamUnavailableError",
    "encode_request",
]

logger = logging.getLogger("bodhi_trio.routing")

ROUTED_ALIAS = "x-bodhi-routed-alias"
ROUTED_MODEL = "x-bodhi-routed-model"
ROUTED_ATTEMPTS = "x-bodhi-router-attempts"
ROUTING_HEADERS = (ROUTED_ALIAS, ROUTED_MODEL, ROUTED_ATTEMPTS)
TERMINAL_STATUSES = frozenset({400, 422})
_KEPT_ERROR_BODY = 1 << 20


def encode_request(request: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(request).encode()
    except RecursionError as exc:  # parsed fine, but too deep to encode from down here
        raise InvalidRequestError("the request body is nested too deeply") from exc


@final
@attrs.define(eq=False)
class BufferedResponse:
    """A failed target's answer, read whole, to hand back if nothing better comes."""

    status_code: int
    headers: Mapping[str, str]
    body: bytes

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        if self.body:
            yield self.body

    async def aread(self) -> bytes:
        return self.body


@final
@attrs.define(eq=False)
class RoutedResponse:
    """A committed response with the routing headers added (the body as it was)."""

    inner: UpstreamResponse
    extra: Mapping[str, str]

    @property
    def status_code(self) -> int:
        return self.inner.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        headers = {name.lower(): value for name, value in self.inner.headers.items()}
        headers.update(self.extra)
        return headers

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.inner.__aiter__()

    async def aread(self) -> bytes:
        return await self.inner.aread()


LocalForward = Callable[
    [Alias, str, Mapping[str, Any], float | None], AbstractAsyncContextManager[UpstreamResponse]
]
"""Sends a request to a local alias's child (loading it first, with this keep-alive),
yielding its response."""


@final
@attrs.define(eq=False)
class FallbackRouter:
    """Runs fallback chains and owns the remote aliases' replica pools.

    Args:
        resolve: An alias by name (raises if there is none).
        local: Sends to a local alias (the scheduler's read hold, then loopback).
        pool_for: The replica pool of a remote alias (made, and probed, on first use).
        on_response: Told of each committed answer: alias, endpoint, status.
    """

    resolve: Callable[[str], Alias]
    local: LocalForward
    pool_for: Callable[[Alias], ReplicaPool]
    on_response: Callable[[str, str, int], None]

    def targets(self, alias: Alias, endpoint: str) -> list[Alias]:
        """``alias`` and its usable fallbacks, healthy first (see the module docstring)."""
        chain = [alias]
        vectors = alias.embedding_identity if endpoint == "/v1/embeddings" else None
        for name in alias.fallback:
            try:
                other = self.resolve(name)
            except BodhiError as exc:
                logger.warning("alias %s: fallback %s skipped: %s", alias.alias, name, exc.message)
                continue
            if vectors is not None and other.embedding_identity != vectors:
                continue  # different vectors: never a silent switch
            chain.append(other)
        recovery = {target.alias: self._recovery(target) for target in chain}
        healthy = [t for t in chain if recovery[t.alias] is None]
        cooling = sorted(
            (t for t in chain if recovery[t.alias] is not None),
            key=lambda t: recovery[t.alias] or 0.0,
        )
        return healthy + cooling

    def _recovery(self, alias: Alias) -> float | None:
        return self.pool_for(alias).soonest_recovery() if alias.remote is not None else None

    @asynccontextmanager
    async def _send(
        self, target: Alias, endpoint: str, request: Mapping[str, Any], keep_alive: float | None
    ) -> AsyncIterator[UpstreamResponse]:
        body = dict(fill_request_params(endpoint, request, target.request_params))
        if target.remote is not None:
            body["model"] = target.remote.model or target.alias
            async with self.pool_for(target).send(endpoint, encode_request(body)) as response:
                yield response
        else:
            body["model"] = target.alias
            sending = self.local(target, endpoint, body, keep_alive)
            async with sending as response:
                yield response

    @asynccontextmanager
    async def forward(
        self,
        alias: Alias,
        endpoint: str,
        request: Mapping[str, Any],
        *,
        keep_alive: float | None = None,
    ) -> AsyncIterator[UpstreamResponse]:
        """Run ``alias``'s chain; yield the committed response (see the module docstring).

        Raises:
            InvalidRequestError: The request is wrong for a target (not retried).
            UpstreamUnavailableError: No target answered.

        Cancellation: leaving the block closes the committed response and its
        connection; an attempt in progress is abandoned the same way.
        """
        chain = self.targets(alias, endpoint)
        failures: list[str] = []
        last_error: BodhiError | None = None
        last_answer: BufferedResponse | None = None
        async with AsyncExitStack() as committed:
            for attempt, target in enumerate(chain, start=1):
                final_target = attempt == len(chain)
                stack = AsyncExitStack()
                try:
                    response = await stack.enter_async_context(
                        self._send(target, endpoint, request, keep_alive)
                    )
                except InvalidRequestError:
                    await stack.aclose()
                    raise
                except BodhiError as exc:
                    await stack.aclose()
                    failures.append(f"{target.alias}: {exc.message}")
                    last_error = exc
                    continue
                except BaseException:
                    await stack.aclose()
                    raise
                status = response.status_code
                if 200 <= status < 300 or status in TERMINAL_STATUSES or final_target:
                    committed.push_async_exit(stack)
                    self.on_response(target.alias, endpoint, status)
                    yield RoutedResponse(response, _routing(target, attempt))
                    return
                try:
                    kept = await _read_bounded(response)
                except BodhiError:
                    kept = b""
                finally:
                    await stack.aclose()
                last_answer = BufferedResponse(
                    status, {k.lower(): v for k, v in response.headers.items()}, kept
                )
                failures.append(f"{target.alias}: HTTP {status}")
                logger.info(
                    "alias %s: %s answered %d; next target", alias.alias, target.alias, status
                )
            if last_answer is not None:
                self.on_response(alias.alias, endpoint, last_answer.status_code)
                yield RoutedResponse(last_answer, {ROUTED_ATTEMPTS: str(len(chain))})
                return
            if len(chain) == 1 and last_error is not None:
                raise last_error  # no fallback: its own error (stalled, TLS, busy...)
            soonest = [r for t in chain if (r := self._recovery(t)) is not None]
            all_cooling = bool(soonest) and len(soonest) == len(chain)
            raise UpstreamUnavailableError(
                "all targets failed: " + "; ".join(failures),
                retry_after=max(1, round(min(soonest))) if all_cooling else None,
            )


def _routing(target: Alias, attempt: int) -> dict[str, str]:
    model = target.remote.model or target.alias if target.remote is not None else target.alias
    return {ROUTED_ALIAS: target.alias, ROUTED_MODEL: model, ROUTED_ATTEMPTS: str(attempt)}


async def _read_bounded(response: UpstreamResponse) -> bytes:
    """A failed answer's body, at most :data:`_KEPT_ERROR_BODY` bytes of it."""
    kept = bytearray()
    async for piece in response:
        kept += piece[: _KEPT_ERROR_BODY - len(kept)]
        if len(kept) >= _KEPT_ERROR_BODY:
            break
    return bytes(kept)
