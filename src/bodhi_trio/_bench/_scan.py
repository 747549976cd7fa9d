"""The harness's byte-level readers: chunked framing, event counting, percentiles.

Built for speed: ``bytes.find``/``bytes.count`` over what arrived, no per-event JSON.
"""

from __future__ import annotations

import array
import collections
import json
import math

import attrs

__all__ = ["_Scan", "_Totals", "_ms", "_percentile", "_usage_tokens"]

_KEEP_LAST = 8192  # bytes of each stream kept for the usage chunk
_MAX_GAPS = 2_000_000
_EVENT = b"\ndata:"
_ERROR = b'\ndata: {"error"'
_OVERLAP = len(_ERROR) - 1  # the longest pattern


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
    closed: dict[str, float] = attrs.field(factory=dict)

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {detail}"[:300])


class _Scan:
    """Counts the events of one stream's body as it arrives."""

    __slots__ = ("content", "errors", "events", "last", "last_at", "start", "styles", "tail")

    def __init__(self, start: float, styles: tuple[tuple[bytes, bytes], ...]) -> None:
        self.start = start
        self.styles = styles  # narrowed to the one the server uses at the first match
        self.tail = b"\n"  # the body starts at a line start
        self.last: collections.deque[bytes] = collections.deque(maxlen=16)
        self.events = self.content = self.errors = 0
        self.last_at: float | None = None

    def feed(self, payload: bytes, now: float, totals: _Totals) -> None:
        scan = self.tail + payload
        base = len(self.tail) + 1  # count only matches that end in the new bytes
        events = scan.count(_EVENT, max(0, base - len(_EVENT)))
        self.errors += scan.count(_ERROR, max(0, base - len(_ERROR)))
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
            self.events += events
            totals.events += events
            if self.last_at is not None:
                if len(totals.gaps) < _MAX_GAPS:
                    totals.gaps.append(now - self.last_at)
                self.last_at = now
        if self.last_at is None and self.content > 0:
            totals.ttfts.append(now - self.start)
            self.last_at = now
        self.tail = scan[-_OVERLAP:]
        self.last.append(payload)

    def end(self) -> bytes:
        """The last bytes of the stream (where the usage chunk is)."""
        return b"".join(self.last)[-_KEEP_LAST:]


def _usage_tokens(last: bytes) -> int | None:
    """``completion_tokens`` of the last usage chunk in the end of a stream."""
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


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3
