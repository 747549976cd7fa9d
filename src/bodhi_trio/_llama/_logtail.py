"""The child's output: a bounded ring of recent lines, mirrored to a log file.

The ring feeds error messages (the last lines of a failed start or a crash) and
``GET /bodhi/v1/server/logs``; the file keeps everything for later reading.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import IO, final

import attrs
import trio

__all__ = ["LogTail"]

_ROTATE_BYTES = 16 * 1024 * 1024


def _private_file(path: str, flags: int) -> int:
    """``os.open`` for :func:`open`: the file only its owner may read (0600)."""
    fd = os.open(path, flags, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


@final
@attrs.define(eq=False)
class LogTail:
    """Recent output lines of llama-server, with an optional log file.

    Args:
        maxlen: How many lines the ring keeps.
        path: Log file to append to, readable by its owner alone (0600, also one made
            before; a new directory for it 0700); ``None`` for no file.
        mirror: Another tail that receives every line too, after ``mirror_prefix``
            (each child's own tail mirrors into the context's combined one).
        mirror_prefix: What marks this tail's lines in the mirror.
    """

    maxlen: int = 1000
    path: Path | None = None
    mirror: LogTail | None = None
    mirror_prefix: str = ""
    _lines: collections.deque[str] = attrs.field(init=False)
    _total: int = attrs.field(default=0, init=False)
    _file: IO[str] | None = attrs.field(default=None, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        self._lines = collections.deque(maxlen=self.maxlen)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.path.exists() and self.path.stat().st_size > _ROTATE_BYTES:
                os.replace(self.path, self.path.with_suffix(self.path.suffix + ".1"))
            # Line-buffered: a crash loses nothing, and lines arrive at human rates
            # except during startup, where a few hundred small writes are cheap.
            # Private (0600, also a file made before): the output can hold prompts.
            self._file = open(  # noqa: SIM115
                self.path, "a", encoding="utf-8", buffering=1, opener=_private_file
            )

    @property
    def total(self) -> int:
        """How many lines were ever appended (the ring keeps the last ``maxlen``)."""
        return self._total

    def append(self, line: str) -> None:
        """Add one line (without its newline)."""
        self._lines.append(line)
        self._total += 1
        if self._file is not None:
            self._file.write(line + "\n")
        self._changed.set()
        if self.mirror is not None:
            self.mirror.append(self.mirror_prefix + line)
        self._changed = trio.Event()

    def tail(self, n: int = 20) -> list[str]:
        """The last ``n`` lines, oldest first."""
        if n <= 0:
            return []
        return list(self._lines)[-n:]

    def since(self, seen_total: int) -> tuple[list[str], int]:
        """Lines appended after ``seen_total`` lines had been seen.

        Returns:
            ``(lines, skipped)``: the lines still in the ring, and how many were
            appended meanwhile but already fell out of it.
        """
        new = self._total - seen_total
        if new <= 0:
            return [], 0
        kept = min(new, len(self._lines))
        return list(self._lines)[-kept:], new - kept

    async def wait_for_more(self, seen_total: int) -> None:
        """Return once more than ``seen_total`` lines were appended.

        Cancellation: safe, nothing is consumed.
        """
        while self._total <= seen_total:
            await self._changed.wait()

    def close(self) -> None:
        """Close the log file; the ring stays readable."""
        if self._file is not None:
            self._file.close()
            self._file = None
