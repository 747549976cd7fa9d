"""Ollama's ``keep_alive``: seconds, or a Go duration string (``api.Duration``).

=========================  ==========================================================
absent or ``null``          the server default (``None``)
a number                    seconds, fractions allowed (``300``, ``0.0``)
a string                    Go's ``time.ParseDuration``: ``"5m"``, ``"1h30m"``,
                            ``"300ms"``, ``"0"``; a bare ``"300"`` is refused
negative                    never unload (``-1``)
=========================  ==========================================================
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from bodhi_trio._config._aliases import KEEP_ALIVE_MAX
from bodhi_trio._exceptions import InvalidRequestError

__all__ = ["parse_keep_alive"]

_DURATION_UNITS: Mapping[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)([^\d.]*)")


def _go_duration(text: str) -> float:
    """Go's ``time.ParseDuration``, in seconds."""
    quoted = json.dumps(text)
    rest = text
    sign = 1.0
    if rest[:1] in ("-", "+"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise InvalidRequestError(f"time: invalid duration {quoted}", param="keep_alive")
    total = 0.0
    position = 0
    while position < len(rest):
        match = _DURATION_PART.match(rest, position)
        if match is None:
            raise InvalidRequestError(f"time: invalid duration {quoted}", param="keep_alive")
        number, unit = match.groups()
        if not unit:
            raise InvalidRequestError(
                f"time: missing unit in duration {quoted}", param="keep_alive"
            )
        if unit not in _DURATION_UNITS:
            raise InvalidRequestError(
                f"time: unknown unit {json.dumps(unit)} in duration {quoted}", param="keep_alive"
            )
        total += float(number) * _DURATION_UNITS[unit]
        position = match.end()
    return sign * total


def parse_keep_alive(value: object) -> float | None:
    """Ollama's ``keep_alive``: seconds, or ``None`` for the server default.

    A number is seconds (``0.0`` included); a string is a Go duration (``"5m"``,
    ``"1h30m"``, ``"300ms"``, ``"0"``; a bare ``"300"`` is refused as in Ollama). A
    negative value, or one beyond 31 years, keeps the model loaded: ``-1``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequestError(
            'keep_alive must be a number of seconds or a duration such as "5m"',
            param="keep_alive",
        )
    if isinstance(value, int) and not 0 <= value <= KEEP_ALIVE_MAX:
        return -1.0  # as below; an int too large for a float never becomes one
    seconds = _go_duration(value) if isinstance(value, str) else float(value)
    if seconds < 0 or seconds > KEEP_ALIVE_MAX:
        return -1.0
    return seconds
