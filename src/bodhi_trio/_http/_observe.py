"""Seeing it work: Prometheus metrics and one console line per request and per model change.

Counted off the hot path. A request is measured by the ASGI middleware around the app
(:class:`Observer.middleware`): the time to its first body byte and to its end, its
status and bytes; its route and alias are noted by the route (see
``_request_scope.note_request``); it is recorded (counted and logged) once the server
next has nothing else to run (:meth:`Observer.serve`), not before the connection's next
request. Tokens come from the one usage/timings chunk at the
end of a stream (noted by whoever read it), never from parsing every event. Model loads,
unloads and crashes come from the context's state events (:meth:`Observer.on_event`, a
state listener). What is current (in flight, queued, memory, state) is read from the
context's state when ``/metrics`` is scraped, so nothing has to keep it in step.

Labels are bounded: a route label is the route's rule (never the raw path), and an alias
label is used only for an alias that exists (a request naming a random model would
otherwise grow the metrics without bound).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, final

import attrs
import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# trio.testing's name for it imports pytest where pytest is installed (168 modules); the
# test of the observer checks that this is the same function.
from trio._core._generated_run import wait_all_tasks_blocked

from bodhi_trio._core._state import EventKind, ServerEvent, ServerState
from bodhi_trio._http._h11_protocol import body_writer
from bodhi_trio._http._log_format import printable
from bodhi_trio._http._request_scope import RequestNote, request_scope

if TYPE_CHECKING:
    from bodhi_trio._http._request_scope import ASGIApp
    from bodhi_trio._transport._whole import AnswerBudget

__all__ = ["PROMETHEUS_CONTENT_TYPE", "Observer", "unload_cause"]

PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of ``/metrics``: Prometheus text format 0.0.4."""

access_log = logging.getLogger("bodhi_trio.access")
models_log = logging.getLogger("bodhi_trio.models")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_STATES = ("loading", "ready", "stopping", "crashed", "hung")

RECORD_WITHIN = 0.05
"""A finished request is recorded at most this many seconds after it ended (while
:meth:`Observer.serve` runs), even if the server is never idle in between."""


def unload_cause(reason: str) -> str:
    """A stop event's reason as a bounded label: eviction, idle, variant or stop."""
    if reason.startswith("evicted"):
        return "eviction"
    if reason.startswith("idle"):
        return "idle"
    if reason.startswith("variant"):
        return "variant"
    return "stop"


@final
class _StateCollector(Collector):
    """What is current, read from the context's state at scrape time."""

    def __init__(self, state: Callable[[], ServerState]) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not read the state (the context may not
        serve yet); the names are checked at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        in_flight = GaugeMetricFamily(
            "bodhi_in_flight", "Responses in flight at the model's child", labels=["alias"]
        )
        queued = GaugeMetricFamily(
            "bodhi_queued", "Requests waiting for the model (loading, draining)", labels=["alias"]
        )
        memory = GaugeMetricFamily(
            "bodhi_model_memory_bytes",
            "Memory the model is counted for: its estimate until loaded, then the child's RSS",
            labels=["alias"],
        )
        status = GaugeMetricFamily(
            "bodhi_model_state", "1 for the model's current state", labels=["alias", "state"]
        )
        for model in state.models:
            in_flight.add_metric([model.alias], model.in_flight)
            queued.add_metric([model.alias], model.queued)
            if model.memory is not None:
                memory.add_metric([model.alias], model.memory)
            for name in _STATES:
                status.add_metric([model.alias, name], float(model.status.value == name))
        budget = GaugeMetricFamily(
            "bodhi_memory_budget_bytes", "BODHI_MEMORY_BUDGET (absent: no limit)"
        )
        if state.memory_budget is not None:
            budget.add_metric([], state.memory_budget)
        used = GaugeMetricFamily("bodhi_memory_used_bytes", "Memory all resident models use")
        used.add_metric([], state.memory_used)
        yield from (in_flight, queued, memory, status, budget, used)


@final
class _AnswersCollector(Collector):
    """The answers budget (``BODHI_MAX_ANSWERS_BYTES``), read at scrape time."""

    def __init__(self, budget: AnswerBudget) -> None:
        self._budget = budget

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        now = self._budget.statistics()
        limit = GaugeMetricFamily("bodhi_answers_budget_bytes", "BODHI_MAX_ANSWERS_BYTES")
        limit.add_metric([], now.limit)
        held = GaugeMetricFamily(
            "bodhi_answers_held_bytes", "Bytes of answers read whole that requests hold now"
        )
        held.add_metric([], now.held)
        refused = CounterMetricFamily(
            "bodhi_answers_refused", "Answers refused for the budget (503 answers_over_budget)"
        )
        refused.add_metric([], now.refused)
        yield from (limit, held, refused)


@attrs.define(eq=False)
class _Measured:
    """One request, as the middleware saw it."""

    started: float
    status: int = 0
    first_byte: float | None = None
    body_bytes: int = 0

    def sent(self, size: int) -> None:
        """``size`` bytes of the response body went out."""
        if size and self.first_byte is None:
            self.first_byte = time.perf_counter()
        self.body_bytes += size


@final
class Observer:
    """The server's metrics and its request and model log lines.

    Args:
        state: The context's current state (read at scrape time).
        known_alias: Whether an alias exists (only those become labels).
        answers: The budget of answers read whole, if its use is to be shown.
    """

    def __init__(
        self,
        state: Callable[[], ServerState],
        known_alias: Callable[[str], bool],
        answers: AnswerBudget | None = None,
    ) -> None:
        self._known_alias = known_alias
        # Names found to be aliases once: a label from then on, without a lookup per request
        # (an alias file's stat). Bounded as the labels are: by the aliases that existed.
        self._labelled: set[str] = set()
        # Finished requests not yet recorded, and what wakes serve() for them (None: it
        # does not run, each is recorded as it ends).
        self._pending: collections.deque[tuple[str, str, RequestNote, _Measured, float]] = (
            collections.deque()
        )
        self._wake: trio.Event | None = None
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bodhi_requests",
            "HTTP requests by alias, route and status",
            ["alias", "route", "status"],
            registry=registry,
        )
        self.ttfb = Histogram(
            "bodhi_request_ttfb_seconds",
            "Time from a request's start to its first response body byte",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "bodhi_request_duration_seconds",
            "Time from a request's start to its end (a stream's last byte)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "bodhi_tokens",
            "Tokens by alias: prompt and completion, from each response's usage",
            ["alias", "kind"],
            registry=registry,
        )
        self.loads = Counter("bodhi_model_loads", "Model loads", ["alias"], registry=registry)
        self.load_time = Histogram(
            "bodhi_model_load_seconds",
            "Time from a model's child starting to its being ready (not a wait for room)",
            ["alias"],
            buckets=_LOAD_BUCKETS,
            registry=registry,
        )
        self.unloads = Counter(
            "bodhi_model_unloads",
            "Model unloads by cause: eviction, idle, variant, stop",
            ["alias", "cause"],
            registry=registry,
        )
        self.crashes = Counter(
            "bodhi_model_crashes",
            "Children that exited unexpectedly or stopped answering (hung)",
            ["alias", "kind"],
            registry=registry,
        )
        registry.register(_StateCollector(state))
        if answers is not None:
            registry.register(_AnswersCollector(answers))

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above (every finished request
        recorded first)."""
        self.flush()
        return generate_latest(self.registry)

    def _alias_label(self, alias: str | None) -> str:
        """``alias`` if it is (or was, since this started) an alias; else ``""``."""
        if alias is None:
            return ""
        if alias in self._labelled:
            return alias
        if not self._known_alias(alias):
            return ""
        self._labelled.add(alias)
        return alias

    # ------------------------------------------------------------------ model events

    EVENT_KINDS = frozenset((EventKind.START, EventKind.STOP, EventKind.CRASHED, EventKind.HUNG))
    """The kinds :meth:`on_event` reads (subscribe it to these only)."""

    async def on_event(self, event: ServerEvent) -> None:
        """A state listener: counts loads, unloads and crashes and logs one line each."""
        alias, detail = event.alias or "", event.detail
        if event.kind is EventKind.START:
            self.loads.labels(alias).inc()
            took = detail.get("load_secs")  # the child's start, not a wait for room before it
            if isinstance(took, float):
                self.load_time.labels(alias).observe(took)
            shown = f" in {took:.2f} s" if isinstance(took, float) else ""
            models_log.info("loaded %s (pid %s)%s", alias, detail.get("pid"), shown)
        elif event.kind is EventKind.STOP:
            if "reason" in detail:
                reason = str(detail["reason"] or "stopped")
                self.unloads.labels(alias, unload_cause(reason)).inc()
                models_log.info("unloaded %s (%s)", alias, reason)
            else:  # a load that failed or was refused: nothing was loaded
                models_log.warning("did not load %s: %s", alias, detail.get("error"))
        elif event.kind in (EventKind.CRASHED, EventKind.HUNG):
            self.crashes.labels(alias, event.kind.value).inc()
            code = detail.get("returncode")
            why = detail.get("error") or (None if code is None else f"exit code {code}")
            shown = "" if why is None else f": {why}"
            models_log.warning(
                "%s %s (pid %s)%s", alias, event.kind.value, detail.get("pid"), shown
            )

    # ------------------------------------------------------------------ requests

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """``app`` inside a request scope, with each HTTP request measured and logged."""

        async def observed(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            measured = _Measured(time.perf_counter())

            async def measuring_send(message: Any) -> None:
                kind = message["type"]
                if kind == "http.response.body":
                    measured.sent(len(message.get("body", b"")))
                elif kind == "http.response.start":
                    measured.status = message["status"]
                await send(message)

            async with request_scope() as note:
                # A relay's pieces, written past the ASGI send, are counted as they go.
                note.body_writer = body_writer(send, measured)
                try:
                    await app(scope, receive, measuring_send)
                finally:
                    self._finished(scope, note, measured)

        return observed

    def _finished(self, scope: Any, note: RequestNote, measured: _Measured) -> None:
        """A request ended: recorded now, or by :meth:`serve` if it runs."""
        ended = time.perf_counter()
        finished = (scope.get("method", "-"), scope.get("path", "-"), note, measured, ended)
        if self._wake is None:
            self._record(*finished)
            return
        self._pending.append(finished)
        self._wake.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Record each finished request (its metrics and its log line) when the server next
        has nothing else to run, or :data:`RECORD_WITHIN` seconds after it ended if that
        moment does not come, until cancelled. Until this runs, and after it stops, a
        request is recorded as it ends.

        Why: a request's record (a log line written, a few counters) is ~30 µs of work that
        the next request on a keep-alive connection would otherwise wait behind; done once
        the server is idle, it waits behind nothing.

        Cancellation: whatever waits is recorded before this returns.
        """
        self._wake = trio.Event()
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                with trio.move_on_after(RECORD_WITHIN):
                    await wait_all_tasks_blocked()
                self._wake = trio.Event()
                self.flush()
        finally:
            self._wake = None
            self.flush()

    def flush(self) -> None:
        """Record every finished request not yet recorded (a scrape calls this first)."""
        pending = self._pending
        while pending:
            try:
                self._record(*pending.popleft())
            except Exception:  # a bug: one lost record, not the server
                access_log.exception("a request could not be recorded")

    def _record(
        self, method: str, path: str, note: RequestNote, measured: _Measured, ended: float
    ) -> None:
        route = note.route or "unmatched"
        alias = self._alias_label(note.alias)
        status = measured.status or 499  # the client left before any answer
        self.requests.labels(alias, route, str(status)).inc()
        if measured.first_byte is not None:
            self.ttfb.labels(route).observe(measured.first_byte - measured.started)
        self.duration.labels(route).observe(ended - measured.started)
        if alias:
            if note.prompt_tokens:
                self.tokens.labels(alias, "prompt").inc(note.prompt_tokens)
            if note.completion_tokens:
                self.tokens.labels(alias, "completion").inc(note.completion_tokens)
        if access_log.isEnabledFor(logging.INFO):
            ttfb = (
                "-"
                if measured.first_byte is None
                else f"{(measured.first_byte - measured.started) * 1e3:.1f}ms"
            )
            access_log.info(
                "%s %s %s %d ttfb=%s %.1fms %dB",
                method,
                printable(path),  # a decoded path: a %0a must not start a forged line
                alias or "-",
                status,
                ttfb,
                (ended - measured.started) * 1e3,
                measured.body_bytes,
                extra={
                    "method": method,
                    "path": path,
                    "alias": alias or None,
                    "status": status,
                    "ttfb_ms": None
                    if measured.first_byte is None
                    else round((measured.first_byte - measured.started) * 1e3, 3),
                    "duration_ms": round((ended - measured.started) * 1e3, 3),
                    "bytes": measured.body_bytes,
                },
            )
