"""How the console's lines are written: JSON lines (``--log-format json``), and text
from a client made safe to print."""

from __future__ import annotations

import json
import logging
from typing import final

__all__ = ["JsonLogFormatter", "printable"]

_JSON_FIELDS = ("method", "path", "alias", "status", "ttfb_ms", "duration_ms", "bytes")


def printable(text: str) -> str:
    """``text`` with every character that is not printable escaped (``\\n``, ``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


@final
class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line (``--log-format json``): time, level, logger, message,
    and a request line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _JSON_FIELDS:
            if hasattr(record, field):
                doc[field] = getattr(record, field)
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)
