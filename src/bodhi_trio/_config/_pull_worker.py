"""One pull in a process of its own: ``python -m bodhi_trio._config._pull_worker JSON``.

The server's pull jobs (:mod:`bodhi_trio._context._pulls`) run this so that a cancel
is real whatever ``huggingface_hub`` is doing: blocked in a socket read, hashing, or
inside the Xet downloader's native threads, none of which a flag in a progress
callback can stop. SIGTERM raises ``KeyboardInterrupt`` here, so the library removes
its partial file on the way out; the job kills the process group if that takes too
long.

Input (argv[1]): ``{"request": {repo, revision, filename, quant}, "hub_cache": path}``.
Output: one JSON object per stdout line, in this order::

    {"event": "plan", "commit": ..., "files": [{"name", "size", "etag"}]}
    {"event": "progress", "phase": "downloading" | "verifying", "done": N, "total": N}  (many)
    {"event": "done", "commit": ..., "filename": ...}
      or {"event": "error", "status": 404, "error": {"message", "type", "code", "param"}}

Log records (the library's retries and lock waits) are ``{"event": "log", ...}`` lines.
The exit code is 0 after ``done``, 1 after ``error``, 130 when interrupted.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from bodhi_trio._config._hub_pull import download_plan, plan_pull
from bodhi_trio._config._hub_refs import PullRequest
from bodhi_trio._exceptions import BodhiError

__all__ = ["main", "worker_args"]

PROGRESS_EVERY = 0.2
"""Seconds between progress lines of one phase (the last one always goes out)."""


def worker_args(request: PullRequest, hub_cache: Path) -> str:
    """The JSON argument for a worker that pulls ``request`` into ``hub_cache``."""
    fields = {
        "repo": request.repo,
        "revision": request.revision,
        "filename": request.filename,
        "quant": request.quant,
    }
    return json.dumps({"request": fields, "hub_cache": str(hub_cache)})


class _Emitter:
    """Writes the event lines; progress at most every :data:`PROGRESS_EVERY` seconds."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()  # the library may log from its own threads
        self._last = 0.0
        self._phase = ""

    def emit(self, **event: object) -> None:
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def progress(self, phase: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if phase == self._phase and now - self._last < PROGRESS_EVERY and not finished:
            return
        self._phase, self._last = phase, now
        self.emit(event="progress", phase=phase, done=done, total=total)


class _LogLines(logging.Handler):
    def __init__(self, emitter: _Emitter) -> None:
        super().__init__(logging.INFO)
        self._emitter = emitter

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().splitlines()[0][:500] if record.getMessage() else ""
        self._emitter.emit(event="log", level=record.levelname, message=message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one pull; see the module docstring."""
    args = sys.argv[1:] if argv is None else list(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    emitter = _Emitter(sys.stdout)
    logging.getLogger().addHandler(_LogLines(emitter))
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("huggingface_hub").setLevel(logging.INFO)
    try:
        spec = json.loads(args[0])
        fields = spec["request"]
        request = PullRequest(
            repo=fields["repo"],
            revision=fields["revision"],
            filename=fields["filename"],
            quant=fields["quant"],
        )
        plan = plan_pull(request)
        emitter.emit(event="plan", **plan.to_json())
        download_plan(plan, Path(spec["hub_cache"]), progress=emitter.progress)
        emitter.emit(event="done", commit=plan.commit, filename=plan.filename)
        return 0
    except BodhiError as exc:
        emitter.emit(event="error", status=exc.status, error=exc.to_envelope()["error"])
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
