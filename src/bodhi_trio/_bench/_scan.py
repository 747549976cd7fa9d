"""The harness's byte-level readers: chunked framing, event counting, percentiles.

Built for speed: ``bytes.find``/``bytes.count`` over what arrived, no per-event JSON.
"""

from __future__ import annotations

import array
import collections
import json
import math
from collections.abc import Callable

import attrs

__all__ = ["FRAMINGS", "Framing", "_Scan", "_Totals", "_ms", "_percentile"]

_KEEP_LAST = 8192  # bytes of each stream kept for the usage chunk
_MAX_GAPS = 2_000_000


def _sse_usage_tokens(last: bytes) -> int | None:
    """``completion_tokens`` of the last usage chunk in the end of an SSE stream."""
    for line in reversed(last.split(b"\n")):
        if line.startswith(b"data:") and b'"usage"' in line:
            try:
                usage = json.loads(line[5:]).get("usage")
            except (ValueError, AttributeError):
                continue
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                tokens: int = usage["completion_tokens"]
                return tokens
    return None


def _ndjson_usage_tokens(last: bytes) -> int | None:
    """``eval_count`` of the final line in the end of an Ollama NDJSON stream."""
    for line in reversed(last.split(b"\n")):
        if b'"eval_count"' in line:
            try:
                count = json.loads(line).get("eval_count")
            except (ValueError, AttributeError):
                continue
            if isinstance(count, int):
                return count
    return None


@attrs.frozen
class Framing:
    """How a dialect's stream marks its events, so they can be counted without parsing.

    Attributes:
        event: What follows the newline before each event.
        error: What follows the newline before an error event.
        styles: (a content event, one whose content is empty), compact and spaced JSON.
        usage_tokens: The completion tokens, from the end of a finished stream.
    """

    event: bytes
    error: bytes
    styles: tuple[tuple[bytes, bytes], ...]
    usage_tokens: Callable[[bytes], int | None]


_CHAT_STYLES = ((b'"content":"', b'"content":""'), (b'"content": "', b'"content": ""'))
FRAMINGS = {
    "chat": Framing(b"\ndata:", b'\ndata: {"error"', _CHAT_STYLES, _sse_usage_tokens),
    "completions": Framing(
        b"\ndata:",
        b'\ndata: {"error"',
        ((b'"text":"', b'"text":""'), (b'"text": "', b'"text": ""')),
        _sse_usage_tokens,
    ),
    # Ollama's /api/chat: one JSON object per line; the message content as in chat
    "ollama": Framing(b"\n{", b'\n{"error"', _CHAT_STYLES, _ndjson_usage_tokens),
}
"""Each endpoint of the harness: its stream's framing."""


def _percentile(values: list[float] | array.array[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@attrs.define(eq=False)
class _Totals:
    events: int = 0
    content: int = 0
    token_fix: int = 0  # usage tokens minus counted content events, for finished streams
    bytes: int = 0
    done: int = 0
    cut: int = 0
    started: int = 0
    disconnects: int = 0
    errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    samples: list[str] = attrs.field(factory=list)
    ttfts: list[float] = attrs.field(factory=list)
    gaps: array.array[float] = attrs.field(factory=lambda: array.array("d"))
    lags: array.array[float] = attrs.field(factory=lambda: array.array("d"))
    closed: dict[str, float] = attrs.field(factory=dict)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {detail}"[:300])


class _Scan:
    """Counts the events of one stream's body as it arrives.

    With ``pace`` (the upstream sends one event every ``pace`` s on a fixed schedule, as the
    fake upstream does when asked), each read that brings events also records its *lag*: how
    much later than the schedule its first event came, the schedule starting at the stream's
    first content event (event k of the stream is due ``(k - k0) * pace`` after event k0
    arrived). Gaps show jitter; a relay that falls behind shows in the lag.
    """

    __slots__ = (
        *("content", "errors", "events", "last", "last_at", "start", "styles", "tail"),
        *("event", "error", "overlap", "framing", "pace", "ref_at", "ref_events"),
    )

    def __init__(self, start: float, framing: Framing, pace: float | None = None) -> None:
        self.start = start
        self.framing = framing
        self.event, self.error = framing.event, framing.error
        patterns = [framing.event, framing.error, *(p for s in framing.styles for p in s)]
        self.overlap = max(map(len, patterns)) - 1  # a match may straddle two reads
        self.styles = framing.styles  # narrowed to the one the server uses at the first match
        self.tail = b"\n"  # the body starts at a line start
        self.last: collections.deque[bytes] = collections.deque(maxlen=16)
        self.events = self.content = self.errors = 0
        self.last_at: float | None = None
        self.pace = pace
        self.ref_at = 0.0
        self.ref_events = 0

    def feed(self, payload: bytes, now: float, totals: _Totals) -> None:
        scan = self.tail + payload
        base = len(self.tail) + 1  # count only matches that end in the new bytes
        event, error = self.event, self.error
        events = scan.count(event, max(0, base - len(event)))
        self.errors += scan.count(error, max(0, base - len(error)))
        content = 0
        for some, empty in self.styles:
            n = scan.count(some, max(0, base - len(some)))
            if n and len(self.styles) > 1:
                self.styles = ((some, empty),)
            content += n - scan.count(empty, max(0, base - len(empty)))
        if content:
            self.content += content
            totals.content += content
        if events:
            if self.last_at is not None:
                if len(totals.gaps) < _MAX_GAPS:
                    totals.gaps.append(now - self.last_at)
                    if self.pace is not None:  # this read's first event: the latest of them
                        due = (self.events + 1 - self.ref_events) * self.pace
                        totals.lags.append(now - self.ref_at - due)
                self.last_at = now
            self.events += events
            totals.events += events
        if self.last_at is None and self.content > 0:
            totals.ttfts.append(now - self.start)
            self.last_at = self.ref_at = now
            self.ref_events = self.events
        self.tail = scan[-self.overlap :]
        self.last.append(payload)

    def end(self) -> bytes:
        """The last bytes of the stream (where the usage chunk is)."""
        return b"".join(self.last)[-_KEEP_LAST:]

    def usage_tokens(self) -> int | None:
        """The completion tokens the finished stream reports, if it does."""
        return self.framing.usage_tokens(self.end())


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3
