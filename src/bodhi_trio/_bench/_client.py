"""``bodhi-trio bench``: a streaming benchmark harness for any OpenAI-compatible server.

N workers each keep one HTTP/1.1 keep-alive connection and send streaming completion
requests back to back, for a duration or a request count. The client is built not to be
the bottleneck: raw HTTP/1.1 over Trio sockets, chunked framing removed by a small parser,
and events counted with ``bytes.count`` on what arrived — no per-event JSON parsing. Only
the last few KiB of each stream are parsed, for the usage chunk.

Definitions (all per stream, then aggregated):

- *event*: an SSE ``data:`` line (``[DONE]`` included); *content event*: one whose
  ``content``/``text`` is a non-empty string.
- *tokens*: the usage chunk's ``completion_tokens`` when the stream has one, else its
  content events.
- *TTFT*: from sending the request to the read that brought the first content event.
- *gap*: time between successive reads that brought new events (events that arrive in
  one read count as one arrival).
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

import itertools
import json
import math
import os
import socket
import sys
import time
from urllib.parse import urlsplit

import attrs
import trio

from bodhi_trio._bench._scan import _ms, _percentile, _Scan, _Totals, _usage_tokens
from bodhi_trio._core._address import Address
from bodhi_trio._exceptions import ConfigError
from bodhi_trio._transport._http1 import ChunkedDecoder

__all__ = ["BenchConfig", "BenchResult", "run_bench"]

_RECV = 262144
_MAX_HEAD = 65536
_KEEP_LAST = 8192  # bytes of each stream kept for the usage chunk
_MAX_GAPS = 2_000_000
_EVENT = b"\ndata:"
_ERROR = b'\ndata: {"error"'
_STYLES = {  # (a content event, one whose content is empty), compact and spaced JSON
    "chat": ((b'"content":"', b'"content":""'), (b'"content": "', b'"content": ""')),
    "completions": ((b'"text":"', b'"text":""'), (b'"text": "', b'"text": ""')),
}
_OVERLAP = len(_ERROR) - 1  # the longest pattern


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
    endpoint: str = "chat"  # "chat" or "completions"
    prompt: str = "Write a long story."
    disconnect_after: int | None = None
    timeout: float = 60.0
    upstream_url: str | None = None
    extra_body: dict[str, object] | None = None  # more request fields (e.g. for a fake)
    unix_socket: str | None = None  # connect here; base_url gives only the path and Host
    upstream_unix_socket: str | None = None  # the same for upstream_url


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
            ("gap p99", ms(self.gap_p99_ms)),
            ("errors", f"{self.errors} {self.error_kinds or ''}".strip()),
        ]
        if self.disconnects:
            seen = "?" if self.disconnects_seen is None else str(self.disconnects_seen)
            rows.append(("disconnects", f"{self.disconnects} (seen upstream: {seen})"))
            lat = f"{ms(self.disconnect_p50_ms)} / {ms(self.disconnect_p99_ms)}"
            rows.append(("close→upstream p50 / p99", lat))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@attrs.define(eq=False)
class _Bench:
    config: BenchConfig
    address: Address
    path: str
    totals: _Totals = attrs.field(factory=_Totals)
    run_id: str = attrs.field(factory=lambda: os.urandom(4).hex())
    ids: itertools.count[int] = attrs.field(factory=itertools.count)
    _body: tuple[bytes, bytes] = attrs.field(init=False)
    _head: bytes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        cfg = self.config
        body: dict[str, object] = {"model": cfg.model, "stream": True, "max_tokens": cfg.max_tokens}
        if cfg.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": cfg.prompt}]
        else:
            body["prompt"] = cfg.prompt
        if cfg.ignore_eos:
            body["ignore_eos"] = True
        if cfg.include_usage:
            body["stream_options"] = {"include_usage": True}
        body.update(cfg.extra_body or {})
        body["user"] = "@@USER@@"
        before, _, after = json.dumps(body, separators=(",", ":")).encode().partition(b"@@USER@@")
        self._body = (before, after)
        auth = f"Authorization: Bearer {cfg.api_key}\r\n" if cfg.api_key else ""
        self._head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.address.host_header}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{auth}"
        ).encode()

    def _request(self, user: str) -> bytes:
        body = self._body[0] + user.encode() + self._body[1]
        return self._head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)

    def _ticket(self) -> bool:
        if self.config.requests is not None and self.totals.started >= self.config.requests:
            return False
        self.totals.started += 1
        return True

    async def _connect(self) -> trio.SocketStream | None:
        try:
            with trio.fail_after(self.config.timeout):
                stream = await self.address.connect()
        except (OSError, trio.TooSlowError) as exc:
            self.totals.error("connect", repr(exc))
            await trio.sleep(0.05)  # a down server must not become a busy loop
            return None
        if self.address.unix_socket is None:
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return stream

    async def worker(self) -> None:
        stream: trio.SocketStream | None = None
        try:
            while self._ticket():
                reused = stream is not None
                if stream is None and (stream := await self._connect()) is None:
                    continue
                keep: bool | None = False
                with trio.move_on_after(self.config.timeout) as scope:
                    keep = await self._one(stream, f"bench-{self.run_id}-{next(self.ids)}", reused)
                if scope.cancelled_caught:
                    self.totals.error("timeout", f"no end after {self.config.timeout} s")
                if not keep:
                    stream.socket.close()
                    stream = None
                if keep is None:  # a stale kept-alive connection: again on a new one
                    self.totals.started -= 1
        finally:
            if stream is not None:
                stream.socket.close()

    async def _one(self, stream: trio.SocketStream, user: str, reused: bool) -> bool | None:
        """One request: whether the connection can be reused (None: it was stale)."""
        totals, sock = self.totals, stream.socket
        start = time.perf_counter()
        buf = b""
        try:
            await stream.send_all(self._request(user))
            while (split := buf.find(b"\r\n\r\n")) < 0 and len(buf) < _MAX_HEAD:
                if not (data := await sock.recv(_RECV)):
                    break
                buf += data
        except (OSError, trio.BrokenResourceError) as exc:
            if reused and not buf:
                return None
            totals.error("broken", repr(exc))
            return False
        if split < 0:
            if reused and not buf:
                return None
            totals.error("broken", f"no response head: {buf[:80]!r}")
            return False
        try:
            lines = buf[:split].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            totals.error("broken", f"bad status line {buf[:80]!r}")
            return False
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = None if chunked else int(headers.get("content-length") or -1)
        keep = headers.get("connection", "").lower() != "close" and (chunked or length != -1)
        scan = _Scan(start, _STYLES[self.config.endpoint])
        try:
            return await self._body_loop(sock, buf[split + 4 :], status, length, scan, keep, user)
        except trio.Cancelled:
            if status == 200:
                totals.cut += 1
            raise
        except (OSError, ValueError) as exc:
            totals.error("broken", repr(exc))
            return False

    async def _body_loop(
        self,
        sock: trio.socket.SocketType,
        data: bytes,
        status: int,
        length: int | None,
        scan: _Scan,
        keep: bool,
        user: str,
    ) -> bool:
        totals, cfg = self.totals, self.config
        dechunk = ChunkedDecoder() if length is None else None
        left = length if length is not None and length >= 0 else -1
        limit = cfg.disconnect_after
        error_body = b""
        while True:
            if data:
                totals.bytes += len(data)
                if dechunk is not None:
                    payload = dechunk.feed(data)
                else:
                    payload = data[:left] if left >= 0 else data
                    left = left - len(payload) if left >= 0 else -1
                if status != 200:
                    error_body = (error_body + payload)[:500]
                elif payload:
                    scan.feed(payload, time.perf_counter(), totals)
                    if limit is not None and scan.events >= limit:
                        totals.closed[user] = time.monotonic()
                        sock.close()
                        totals.disconnects += 1
                        totals.done += 1
                        return False
                if (dechunk is not None and dechunk.done) or left == 0:
                    break
            data = await sock.recv(_RECV)
            if not data:
                if dechunk is None and left < 0:
                    keep = False
                    break
                raise ValueError("connection closed before the end of the body")
        if status != 200:
            totals.error(f"status {status}", error_body.decode("utf-8", "replace"))
        elif scan.errors:
            totals.error("error event", scan.end().decode("utf-8", "replace")[-300:])
        else:
            totals.done += 1
            usage = _usage_tokens(scan.end())
            if usage is not None:
                totals.token_fix += usage - scan.content
        return keep

    def result(self, elapsed: float, seen: dict[str, float] | None) -> BenchResult:
        t = self.totals
        tokens = t.content + t.token_fix
        lat: list[float] = []
        if seen is not None:
            lat = [(seen[u] - c) * 1e3 for u, c in t.closed.items() if u in seen]
        return BenchResult(
            base_url=self.config.base_url,
            concurrency=self.config.concurrency,
            max_tokens=self.config.max_tokens,
            elapsed_s=elapsed,
            requests_done=t.done,
            requests_cut=t.cut,
            events=t.events,
            content_events=t.content,
            tokens=tokens,
            bytes=t.bytes,
            events_per_s=t.events / elapsed if elapsed > 0 else 0.0,
            tokens_per_s=tokens / elapsed if elapsed > 0 else 0.0,
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
            unix_socket=self.config.unix_socket,
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
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        body = ChunkedDecoder().feed(body)
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


async def _progress(bench: _Bench, started: float) -> None:
    last_events, last_at = 0, started
    tty = sys.stderr.isatty()
    while True:
        await trio.sleep(0.5)
        t, now = bench.totals, time.perf_counter()
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


def _target(config: BenchConfig) -> tuple[Address, str]:
    address, path = _address(config.base_url, config.unix_socket, "--base-url")
    route = "/chat/completions" if config.endpoint == "chat" else "/completions"
    return address, path.rstrip("/") + route


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
    if config.endpoint not in ("chat", "completions"):
        raise ConfigError(f"endpoint must be chat or completions, got {config.endpoint!r}")
    address, path = _target(config)
    bench = _Bench(config, address, path)
    started = time.perf_counter()
    deadline = trio.current_time() + (math.inf if config.duration is None else config.duration)
    with trio.move_on_at(deadline):
        async with trio.open_nursery() as nursery:
            if progress:
                nursery.start_soon(_progress, bench, started)
            async with trio.open_nursery() as workers:
                for _ in range(config.concurrency):
                    workers.start_soon(bench.worker)
            nursery.cancel_scope.cancel()
    elapsed = time.perf_counter() - started
    if progress:
        print(file=sys.stderr, flush=True)
    seen = await _upstream_seen(config, bench.totals.closed)
    return bench.result(elapsed, seen)
