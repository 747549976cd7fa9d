"""A remote alias's replicas: least-in-flight balancing, passive and active health.

Each base URL of a remote alias is a :class:`Replica`. A request goes to the
replica with the fewest requests in flight (ties: the one chosen longest ago, so
one client's sequential requests spread too). A replica that refuses the
connection, fails the handshake, or answers 429, 502 or 503 cools down for
``cooldown_secs`` (or its ``Retry-After``, if longer and honoured) and the request goes
to the next replica: it was never accepted, so nothing is lost or done twice. One that
answers 500 or 504, or sends no head within the idle timeout, cools too, but the
request's answer is that one: the server may have taken it and be working on it (an
answer that is not streamed comes whole at the end), and another replica would do it
twice. Cooling
replicas are tried last, soonest recovery first, and never skipped (when all cool,
all are still tried). Once a head with another status is in, the pool commits to it: a
failure after that is the stream's, never a failover.

While any replica cools, the pool's probe task (in the context's root nursery)
sends ``GET {base}/models`` every ``probe_interval_secs``; a 2xx ends the
cooldown early.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, final
from urllib.parse import urlsplit

import attrs
import trio

from bodhi_trio._exceptions import (
    BodhiError,
    RemoteConnectError,
    RemoteKeyMissingError,
    RemoteKeyRefusedError,
    RemoteStalledError,
)
from bodhi_trio._transport._remote import RemoteClients, RemoteResponse, RemoteTimeouts

if TYPE_CHECKING:
    from bodhi_trio._config._remote import RemoteSpec

__all__ = [
    "RemoteKeyMissingError",
    "RemoteKeyRefusedError",
    "Replica",
    "ReplicaPool",
    "ReplicaStatistics",
    "remote_url",
    "retry_after_seconds",
]

logger = logging.getLogger("bodhi_trio.remote")

RETRY_ON_ANOTHER = frozenset({429, 502, 503})
"""Statuses with which a replica (or the gateway in front of it) says that it did not take
the request: too many, cannot reach the server behind, not available. The request goes to
the next replica."""
COOLS = RETRY_ON_ANOTHER | {500, 504}
"""Statuses that cool a replica. 500 and 504 are answered as they are, not retried: the
server (or the one behind a gateway that timed out) may have taken the request and may
still be working on it, and another replica would do it twice."""
_MAX_RETRY_AFTER = 600.0
_PROBE_READ_TIMEOUT = 10.0
_warned_plain_http: set[tuple[str, str]] = set()


@attrs.frozen
class ReplicaStatistics:
    """One replica's state, for ``/bodhi/v1/state`` and tests."""

    url: str
    in_flight: int
    cooling_for: float | None
    failures: int
    requests: int


@attrs.define(eq=False)
class Replica:
    """One base URL of a remote alias and its health."""

    url: str
    in_flight: int = 0
    cooling_until: float | None = None
    chosen_at: int = 0  # the pool's request counter when last chosen
    failures: int = 0
    requests: int = 0

    def cooling(self, now: float) -> bool:
        return self.cooling_until is not None and self.cooling_until > now

    def cooling_for(self, now: float) -> float | None:
        """Seconds of cooldown left (``None``: healthy)."""
        if self.cooling_until is None or self.cooling_until <= now:
            return None
        return self.cooling_until - now


def remote_url(base_url: str, endpoint: str) -> str:
    """``endpoint`` (one of ours, like ``/v1/chat/completions``) under a remote's base URL:
    ``/v1/...`` goes under the base (which carries the engine's prefix); llama-server's
    own routes (``/tokenize``) go under the server's root."""
    if endpoint.startswith("/v1/"):
        return base_url + endpoint[3:]
    return base_url.removesuffix("/v1") + endpoint


def retry_after_seconds(headers: Mapping[str, str], now_epoch: float | None = None) -> float | None:
    """A response's ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), capped."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return min(value, _MAX_RETRY_AFTER)
    text = headers.get("retry-after")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        value = when.timestamp() - (now_epoch if now_epoch is not None else _epoch())
    if not math.isfinite(value):
        return None
    return min(max(value, 0.0), _MAX_RETRY_AFTER)


def _epoch() -> float:
    return time.time()


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@final
class ReplicaPool:
    """The replicas of one remote alias (see the module docstring).

    Args:
        alias: The alias's name (for logs).
        spec: Its ``remote:`` block.
        clients: The context's remote clients.
    """

    def __init__(
        self,
        alias: str,
        spec: RemoteSpec,
        clients: RemoteClients,
        *,
        key_envs: Collection[str] | None = None,
    ) -> None:
        self.alias = alias
        self.spec = spec
        self._clients = clients
        self._key_envs = key_envs
        self._replicas = [Replica(url) for url in spec.urls]
        self._counter = 0
        self._timeouts = RemoteTimeouts(spec.connect_timeout_secs, spec.idle_timeout_secs)
        self._cooling_changed = trio.Event()
        self.probes = trio.CancelScope()

    @property
    def replicas(self) -> Sequence[Replica]:
        return self._replicas

    def statistics(self) -> list[ReplicaStatistics]:
        now = trio.current_time()
        return [
            ReplicaStatistics(
                r.url,
                r.in_flight,
                r.cooling_for(now),
                r.failures,
                r.requests,
            )
            for r in self._replicas
        ]

    def soonest_recovery(self) -> float | None:
        """Seconds until the first cooling replica recovers if all cool, else ``None``."""
        now = trio.current_time()
        if not all(r.cooling(now) for r in self._replicas):
            return None
        return min((r.cooling_until or now) - now for r in self._replicas)

    def order(self) -> list[Replica]:
        """Healthy replicas by (in flight, chosen longest ago); then cooling, soonest first."""
        now = trio.current_time()
        healthy = [r for r in self._replicas if not r.cooling(now)]
        cooling = [r for r in self._replicas if r.cooling(now)]
        healthy.sort(key=lambda r: (r.in_flight, r.chosen_at))
        cooling.sort(key=lambda r: r.cooling_until or now)
        return healthy + cooling

    def cool(self, replica: Replica, retry_after: float | None, why: str) -> None:
        seconds = self.spec.cooldown_secs
        if retry_after is not None and self.spec.honor_retry_after:
            seconds = max(seconds, retry_after)
        replica.cooling_until = trio.current_time() + seconds
        replica.failures += 1
        logger.warning(
            "remote %s: replica %s cools for %.0f s: %s", self.alias, replica.url, seconds, why
        )
        self._cooling_changed.set()

    def recover(self, replica: Replica) -> None:
        if replica.cooling_until is not None:
            logger.info("remote %s: replica %s is back", self.alias, replica.url)
        replica.cooling_until = None

    def _headers(self) -> list[tuple[str, str]]:
        headers = [("Content-Type", "application/json"), *self.spec.headers]
        name = self.spec.api_key_env
        if name is not None:
            if self._key_envs is not None and name not in self._key_envs:
                raise RemoteKeyRefusedError(
                    f"remote alias {self.alias!r}: its api_key_env {name} is not one of"
                    " BODHI_REMOTE_KEY_ENVS, the variables remote aliases may send; the"
                    " operator adds it there"
                )
            # Surrounding whitespace is never part of a key (a file's final newline).
            key = (os.environ.get(name) or "").strip()
            if not key:
                raise RemoteKeyMissingError(
                    f"remote alias {self.alias!r}: the environment variable {name}"
                    " (its api_key_env) is not set"
                )
            if not (key.isascii() and key.isprintable()):
                # Said without the value: a line break would reframe the request, and
                # the HTTP client's own error would quote the header, key and all.
                raise RemoteKeyMissingError(
                    f"remote alias {self.alias!r}: the environment variable {name}"
                    " (its api_key_env) holds a line break, a control character or"
                    " non-ASCII text, which a header cannot carry"
                )
            header = self.spec.api_key_header
            headers.append(("Authorization", f"Bearer {key}") if header is None else (header, key))
        return headers

    def _warn_plain_http(self, url: str) -> None:
        if self.spec.api_key_env is None or not url.startswith("http://") or _is_loopback(url):
            return
        if (self.alias, url) in _warned_plain_http:
            return
        _warned_plain_http.add((self.alias, url))
        logger.warning(
            "remote %s: its API key goes over plain http to %s (not loopback); use https",
            self.alias,
            url,
        )

    @asynccontextmanager
    async def send(self, endpoint: str, body: bytes) -> AsyncIterator[RemoteResponse]:
        """Send to the best replica; on a refusal before acceptance, to the next.

        Yields the first response that was accepted (any status but those of
        :data:`RETRY_ON_ANOTHER`), or the last replica's answer whatever it is.

        Raises:
            RemoteKeyMissingError: The key's variable is not set (nothing sent).
            UpstreamError: No replica answered; the last failure's message.

        Cancellation: leaving the block closes the response (and its connection).
        """
        headers = self._headers()
        order = self.order()
        last_error: BodhiError | None = None
        async with AsyncExitStack() as committed:
            for position, replica in enumerate(order):
                last = position == len(order) - 1
                url = remote_url(replica.url, endpoint)
                self._warn_plain_http(url)
                attempt = AsyncExitStack()
                self._counter += 1
                replica.chosen_at = self._counter
                replica.requests += 1
                replica.in_flight += 1
                attempt.callback(_leave, replica)
                try:
                    response = await attempt.enter_async_context(
                        self._clients.send(
                            url,
                            body,
                            headers=headers,
                            timeouts=self._timeouts,
                            ca_bundle=self.spec.ca_bundle,
                        )
                    )
                except RemoteConnectError as exc:  # never reached it: the next replica
                    await attempt.aclose()
                    self.cool(replica, None, exc.message)
                    last_error = exc
                    continue
                except RemoteStalledError as exc:
                    # It may be working on it (a long answer that is not streamed): another
                    # replica would do it twice. Cooled; the error is the request's.
                    await attempt.aclose()
                    self.cool(replica, None, exc.message)
                    raise
                except BaseException:
                    await attempt.aclose()
                    raise
                status = response.status_code
                if status in COOLS:
                    self.cool(replica, retry_after_seconds(response.headers), f"HTTP {status}")
                    if status in RETRY_ON_ANOTHER and not last:
                        await attempt.aclose()
                        continue
                elif 200 <= status < 300:
                    self.recover(replica)
                committed.push_async_exit(attempt)
                yield response
                return
            assert last_error is not None
            raise last_error

    async def serve_probes(self, current: Callable[[], bool] = lambda: True) -> None:
        """While any replica cools, probe it every ``probe_interval_secs``; a 2xx to
        ``GET {base}/models`` ends its cooldown. Runs until :attr:`probes` is cancelled, or
        until ``current()`` says, before a round, that the alias is gone or no longer this
        remote (its URLs and key are then contacted no more).

        Cancellation: a probe in progress is abandoned (its connection closed).
        """
        with self.probes:
            while True:
                now = trio.current_time()
                if not any(r.cooling(now) for r in self._replicas):
                    self._cooling_changed = trio.Event()
                    await self._cooling_changed.wait()
                    continue
                await trio.sleep(self.spec.probe_interval_secs)
                if not current():
                    return
                for replica in self._replicas:
                    if replica.cooling(trio.current_time()) and await self._probe(replica):
                        self.recover(replica)

    async def _probe(self, replica: Replica) -> bool:
        timeouts = RemoteTimeouts(self.spec.connect_timeout_secs, _PROBE_READ_TIMEOUT)
        try:
            headers = [h for h in self._headers() if h[0] != "Content-Type"]
            async with self._clients.send(
                replica.url + "/models",
                b"",
                headers=headers,
                timeouts=timeouts,
                ca_bundle=self.spec.ca_bundle,
                method="GET",
            ) as response:
                return 200 <= response.status_code < 300
        except BodhiError:
            return False


def _leave(replica: Replica) -> None:
    replica.in_flight -= 1
