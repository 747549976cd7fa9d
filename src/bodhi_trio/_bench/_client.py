"""``bodhi-trio bench``: a streaming benchmark harness for any OpenAI-compatible server.

N workers each keep one HTTP/1.1 keep-alive connection and send streaming completion
requests back to back, for a duration or a request count (:mod:`._load`). The client is
built not to be the bottleneck: raw HTTP/1.1 over Trio sockets, chunked framing removed by
a small parser, and events counted with ``bytes.count`` on what arrived — no per-event JSON
parsing. Only the last few KiB of each stream are parsed, for the usage chunk.

Definitions (all per stream, then aggregated):

- *event*: an SSE ``data:`` line (``[DONE]`` included), or with ``endpoint="ollama"``
  (Ollama's ``/api/chat`` under a server root ``base_url``) an NDJSON line; *content event*:
  one whose ``content``/``text`` is a non-empty string.
- *tokens*: the usage chunk's ``completion_tokens`` when the stream has one, else its
  content events.
- *TTFT*: from sending the request to the read that brought the first content event.
- *gap*: time between successive reads of one stream that brought new events, from its
  first content event on (events that arrive in one read count as one arrival); p50 and p99
  over every stream's gaps.
- *ramp* and *warmup* (paced load): worker ``i`` of ``N`` sends its first request
  ``i * ramp / N`` seconds after the start, so that paced streams do not tick in step; the
  rates (``events_per_s``, ``tokens_per_s``: content events) and ``client_cpu_s`` then count
  only what came after ``warmup`` seconds (``window_s`` long), once every stream is under way.
- *lag* (``pace``: the upstream sends a stream's events ``pace`` s apart on a fixed schedule,
  as ``benchmarks/fake_upstream.py`` does when paced): per read of a stream, how much later
  than that schedule its first event came, the schedule starting at the stream's first content
  event; p50 and p99 over every read after it. A relay that falls behind shows here, where
  the gaps between reads may stay even.
- *client CPU*: this process's CPU time (``time.process_time``) while the load ran: whether
  the client itself kept up.
- *disconnect latency* (``disconnect_after``, with ``upstream_url`` pointing at
  ``benchmarks/fake_upstream.py``): from our close to the fake upstream seeing the
  stream's socket closed, both on ``time.monotonic()``.

A server on a Unix socket (a bodhi-trio child: llama-server with ``--host PATH.sock``) is
reached as curl's ``--unix-socket`` does: ``unix_socket`` (``upstream_unix_socket``) is the
socket to connect to, and ``base_url`` (``upstream_url``) only gives the path and the
``Host`` header, e.g. ``http://localhost/v1``.

Every loop is bounded by a count, the duration, or the per-request timeout.
"""

from __future__ import annotations

import json
import math
import sys
import time
from urllib.parse import urlsplit

import attrs
import trio

from bodhi_trio._bench._load import BenchLoad
from bodhi_trio._bench._scan import _ms, _percentile
from bodhi_trio._core._address import Address
from bodhi_trio._core._http1 import ChunkedDecoder, split_head
from bodhi_trio._exceptions import ConfigError

__all__ = ["BenchConfig", "BenchResult", "run_bench"]

_RECV = 65536


@attrs.frozen
class BenchConfig:
    """What to run: until ``duration`` seconds or ``requests`` requests, whichever is first."""

    base_url: str
    model: str = "fake"
    api_key: str | None = None
    concurrency: int = 1
    duration: float | None = None
    requests: int | None = None
    max_tokens: int = 100
    ignore_eos: bool = True
    include_usage: bool = True
    endpoint: str = "chat"  # "chat", "completions" or "ollama" (/api/chat at the root)
    prompt: str = "Write a long story."
    disconnect_after: int | None = None
    timeout: float = 60.0
    upstream_url: str | None = None
    extra_body: dict[str, object] | None = None  # more request fields (e.g. for a fake)
    unix_socket: str | None = None  # connect here; base_url gives only the path and Host
    upstream_unix_socket: str | None = None  # the same for upstream_url
    ramp: float = 0.0  # seconds over which the workers' first requests are spread
    warmup: float = 0.0  # seconds from the start not counted in the rates
    pace: float | None = None  # the upstream's fixed schedule (s between events), for the lag


@attrs.frozen
class BenchResult:
    """Aggregated numbers of one run (times in ms, rates per second)."""

    base_url: str
    concurrency: int
    max_tokens: int
    elapsed_s: float
    requests_done: int
    requests_cut: int
    events: int
    content_events: int
    tokens: int
    bytes: int
    events_per_s: float
    tokens_per_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    gap_p99_ms: float | None
    errors: int
    error_kinds: dict[str, int]
    error_samples: list[str]
    disconnects: int
    disconnect_p50_ms: float | None = None
    disconnect_p99_ms: float | None = None
    disconnects_seen: int | None = None
    unix_socket: str | None = None
    gap_p50_ms: float | None = None
    window_s: float | None = None  # with a warmup: the part of the run the rates count
    window_events: int | None = None
    client_cpu_s: float | None = None  # over the window, if there is one
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return attrs.asdict(self)

    def table(self) -> str:
        """The result as an aligned two-column text table."""

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f} ms"

        rows = [
            ("target", self.base_url),
            *([("unix socket", self.unix_socket)] if self.unix_socket else []),
            ("concurrency", str(self.concurrency)),
            ("elapsed", f"{self.elapsed_s:.2f} s"),
            ("requests done", f"{self.requests_done} (+{self.requests_cut} cut at the end)"),
            ("events/s", f"{self.events_per_s:,.0f}  ({self.events:,} events)"),
            ("tokens/s", f"{self.tokens_per_s:,.0f}  ({self.tokens:,} tokens)"),
            ("TTFT p50 / p99", f"{ms(self.ttft_p50_ms)} / {ms(self.ttft_p99_ms)}"),
            ("gap p50 / p99", f"{ms(self.gap_p50_ms)} / {ms(self.gap_p99_ms)}"),
            *(
                [("lag p50 / p99", f"{ms(self.lag_p50_ms)} / {ms(self.lag_p99_ms)}")]
                if self.lag_p99_ms is not None
                else []
            ),
            ("errors", f"{self.errors} {self.error_kinds or ''}".strip()),
        ]
        if self.client_cpu_s is not None and self.window_s:
            load = f"{self.client_cpu_s / self.window_s:.0%} of a core"
            if self.window_events:
                load += f", {self.client_cpu_s * 1e6 / self.window_events:.1f} µs/event"
            rows.append(("client CPU", load))
        if self.disconnects:
            seen = "?" if self.disconnects_seen is None else str(self.disconnects_seen)
            rows.append(("disconnects", f"{self.disconnects} (seen upstream: {seen})"))
            lat = f"{ms(self.disconnect_p50_ms)} / {ms(self.disconnect_p99_ms)}"
            rows.append(("close→upstream p50 / p99", lat))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@attrs.define
class _Mark:
    """Where a run stood at one instant: the start of its window, or its end."""

    at: float  # time.perf_counter()
    events: int
    content: int
    cpu: float  # time.process_time()

    @classmethod
    def now(cls, load: BenchLoad) -> _Mark:
        t = load.totals
        return cls(time.perf_counter(), t.events, t.content, time.process_time())


async def _mark_window(load: BenchLoad, marks: list[_Mark]) -> None:
    await trio.sleep(load.config.warmup)
    marks.append(_Mark.now(load))


def _result(load: BenchLoad, marks: list[_Mark], seen: dict[str, float] | None) -> BenchResult:
    """The run's numbers; ``marks``: its start, the start of its window if it has one, and its
    end; ``seen``: when the fake upstream saw each closed stream go."""
    config, t = load.config, load.totals
    first, end = marks[0], marks[-1]
    elapsed = end.at - first.at
    tokens = t.content + t.token_fix
    events_per_s = t.events / elapsed if elapsed > 0 else 0.0
    tokens_per_s = tokens / elapsed if elapsed > 0 else 0.0
    window_s = window_events = None
    if len(marks) == 3:  # the rates count only the window
        window_s, window_events = end.at - marks[1].at, end.events - marks[1].events
        events_per_s = window_events / window_s if window_s > 0 else 0.0
        tokens_per_s = (end.content - marks[1].content) / window_s if window_s > 0 else 0.0
    lat: list[float] = []
    if seen is not None:
        lat = [(seen[u] - c) * 1e3 for u, c in t.closed.items() if u in seen]
    return BenchResult(
        base_url=config.base_url,
        concurrency=config.concurrency,
        max_tokens=config.max_tokens,
        elapsed_s=elapsed,
        requests_done=t.done,
        requests_cut=t.cut,
        events=t.events,
        content_events=t.content,
        tokens=tokens,
        bytes=t.bytes,
        events_per_s=events_per_s,
        tokens_per_s=tokens_per_s,
        ttft_p50_ms=_ms(_percentile(t.ttfts, 50)),
        ttft_p99_ms=_ms(_percentile(t.ttfts, 99)),
        gap_p99_ms=_ms(_percentile(t.gaps, 99)),
        errors=sum(t.errors.values()),
        error_kinds=dict(t.errors),
        error_samples=list(t.samples),
        disconnects=t.disconnects,
        disconnect_p50_ms=_percentile(lat, 50),
        disconnect_p99_ms=_percentile(lat, 99),
        disconnects_seen=None if seen is None else len(lat),
        unix_socket=config.unix_socket,
        gap_p50_ms=_ms(_percentile(t.gaps, 50)),
        window_s=window_s,
        window_events=window_events,
        client_cpu_s=end.cpu - marks[-2].cpu,
        lag_p50_ms=_ms(_percentile(t.lags, 50)),
        lag_p99_ms=_ms(_percentile(t.lags, 99)),
    )


async def _get_json(url: str, unix_socket: str | None = None) -> object:
    """GET a small JSON document over HTTP/1.1 (``Connection: close``), from ``url``'s host
    or, if given, over ``unix_socket``."""
    address, path = _address(url, unix_socket, "--upstream-url")
    with trio.fail_after(5.0):
        stream = await address.connect()
        async with stream:
            request = f"GET {path or '/'} HTTP/1.1\r\nHost: {address.host_header}\r\n"
            await stream.send_all(f"{request}Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(_RECV):
                data += chunk
    found = split_head(data)  # raises FramingError, a ValueError, if malformed
    if found is None:
        raise ValueError(f"no complete response head: {data[:80]!r}")
    head, body = found
    if head.status != 200:
        raise ValueError(f"status {head.status}")
    if head.chunked:
        body = ChunkedDecoder().feed(body)
    elif head.length is not None:
        body = body[: head.length]
    return json.loads(body)


async def _upstream_seen(config: BenchConfig, closed: dict[str, float]) -> dict[str, float] | None:
    """When the fake upstream saw each of our closed streams go (waits up to 2 s for all)."""
    if not config.upstream_url or not closed:
        return None
    url = config.upstream_url.rstrip("/") + "/bench/stats"
    seen: dict[str, float] = {}
    for _ in range(20):
        try:
            stats = await _get_json(url, config.upstream_unix_socket)
        except (OSError, ValueError, trio.TooSlowError, ConfigError):
            return None
        if isinstance(stats, dict):
            for user, at, _events in stats.get("disconnects", []):
                seen[user] = at
        if all(user in seen for user in closed):
            break
        await trio.sleep(0.1)
    return seen


async def _progress(load: BenchLoad, started: float) -> None:
    last_events, last_at = 0, started
    tty = sys.stderr.isatty()
    while True:
        await trio.sleep(0.5)
        t, now = load.totals, time.perf_counter()
        rate = (t.events - last_events) / max(now - last_at, 1e-9)
        last_events, last_at = t.events, now
        line = (
            f"[bench] {now - started:6.1f}s  requests {t.done:,}  events {t.events:,}  "
            f"now {rate:,.0f} ev/s  errors {sum(t.errors.values())}"
        )
        print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


def _address(url: str, unix_socket: str | None, what: str) -> tuple[Address, str]:
    """Where to connect for ``url`` (over ``unix_socket`` if given), and the URL's path."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"{what} must be an http:// URL, got {url!r}")
    if unix_socket is not None:
        return Address.unix(unix_socket), parts.path
    return Address.tcp(parts.hostname, parts.port or 80), parts.path


_ROUTES = {"chat": "/chat/completions", "completions": "/completions", "ollama": "/api/chat"}


def _target(config: BenchConfig) -> tuple[Address, str]:
    address, path = _address(config.base_url, config.unix_socket, "--base-url")
    return address, path.rstrip("/") + _ROUTES[config.endpoint]


async def run_bench(config: BenchConfig, *, progress: bool = False) -> BenchResult:
    """Run one benchmark and return its numbers.

    Args:
        config: The target and the load.
        progress: Print a progress line on stderr about twice a second.

    Returns:
        The aggregated result. Streams still open at the end of ``duration`` are closed
        and counted in ``requests_cut`` (their events count; they are not errors).

    Raises:
        ConfigError: The configuration makes no sense.

    If cancelled, every connection is closed and the cancellation propagates.
    """
    if config.concurrency < 1 or (config.duration is None and config.requests is None):
        raise ConfigError("need concurrency >= 1 and a duration or a request count")
    if config.ramp < 0 or config.warmup < 0:
        raise ConfigError("ramp and warmup must not be negative")
    if config.endpoint not in _ROUTES:
        raise ConfigError(f"endpoint must be one of {', '.join(_ROUTES)}, got {config.endpoint!r}")
    address, path = _target(config)
    load = BenchLoad(config, address, path)
    marks = [_Mark.now(load)]
    duration = math.inf if config.duration is None else config.duration
    deadline = trio.current_time() + duration
    with trio.move_on_at(deadline):
        async with trio.open_nursery() as nursery:
            if progress:
                nursery.start_soon(_progress, load, marks[0].at)
            if config.warmup > 0:
                nursery.start_soon(_mark_window, load, marks)
            async with trio.open_nursery() as workers:
                for i in range(config.concurrency):
                    workers.start_soon(load.worker, i * config.ramp / config.concurrency)
            nursery.cancel_scope.cancel()
    marks.append(_Mark.now(load))
    # counting stopped at the deadline: the time to cancel the workers is not the run's
    marks[-1].at = min(marks[-1].at, marks[0].at + duration)
    if progress:
        print(file=sys.stderr, flush=True)
    seen = await _upstream_seen(config, load.totals.closed)
    return _result(load, marks, seen)
