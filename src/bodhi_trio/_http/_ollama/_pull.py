"""``POST /api/pull`` over the server's pull jobs (:mod:`bodhi_trio._context._pulls`).

Only Hugging Face GGUF repos can be pulled: an Ollama name ``hf.co/REPO[:QUANT]`` (or
``huggingface.co/...``) is the job ``PullRequest.from_ref(name)``, whose alias is the
default one (``hf.co/acme/Tiny-GGUF:Q4_K_M`` -> ``tiny:q4_k_m``); :func:`.resolve_model`
maps the same name to it afterwards, so the name pulled is the name to chat with.

Progress: the job's :class:`PullProgress` snapshots become Ollama's objects, in
Ollama's order::

    {"status": "pulling manifest"}                      first, whatever the job's state
    {"status": "pulling F", "digest": "F", "total": N, "completed": M}
                                                        while downloading (F: part 1's name)
    {"status": "verifying sha256 digest"}               once per file checked
    {"status": "writing manifest"}                      the aliases are written
    {"status": "success"}

``digest`` is the GGUF's file name (clients key their progress bars by it; the Hub's
sha256 is checked by the download, not sent); ``completed`` and ``total`` are left out
when zero or unknown, as Ollama does. A snapshot is a level, not an event, so a slow
watcher may skip some: the bar is still brought to ``total`` at the end if the last
one sent fell short, and a pull that succeeded always ends as above. A failed or cancelled
job ends the stream with one ``{"error": "<text>"}`` line (the job's error).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, final

from bodhi_trio._context._pull_job import PullState
from bodhi_trio._exceptions import InvalidRequestError
from bodhi_trio._http._sse import compact_json

if TYPE_CHECKING:
    from bodhi_trio._context._pull_job import PullProgress, PullWatch

__all__ = ["PullLines", "PullNdjsonBody", "is_hub_ref", "progress_line", "require_hub_ref"]

MANIFEST = "pulling manifest"
VERIFYING = "verifying sha256 digest"
WRITING = "writing manifest"
SUCCESS = "success"

_HUB_REF = re.compile(r"^(?:https://)?(?:hf\.co|huggingface\.co)/", re.IGNORECASE)


def is_hub_ref(name: str) -> bool:
    """Whether an Ollama model name names a Hugging Face repo (``hf.co/...``)."""
    return _HUB_REF.match(name) is not None


def require_hub_ref(name: str) -> str:
    """``name`` if it is ``hf.co/...``.

    Raises:
        InvalidRequestError: Any other name (Ollama's registry is not ours).
    """
    if not is_hub_ref(name):
        raise InvalidRequestError(
            f"cannot pull {name[:80]!r}: only Hugging Face GGUF repos can be pulled, named"
            " hf.co/OWNER/REPO:QUANT (e.g. hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M)",
            param="model",
        )
    return name


def progress_line(obj: dict[str, Any]) -> bytes:
    """One NDJSON line."""
    return (compact_json(obj) + "\n").encode()


@final
class PullLines:
    """Turns one watcher's snapshots into the Ollama objects not sent yet (see the
    module docstring); a new one per stream."""

    def __init__(self) -> None:
        self._started = False
        self._bar: tuple[int, int | None] | None = None
        self._verifying = False
        self._ended = False

    def _manifest(self) -> list[dict[str, Any]]:
        """Ollama's first object, whatever the job's state (joined late, finished)."""
        if self._started:
            return []
        self._started = True
        return [{"status": MANIFEST}]

    def _pulling(self, progress: PullProgress, done: int) -> list[dict[str, Any]]:
        filename = progress.filename
        total = progress.bytes_total
        if filename is None or self._bar == (done, total):
            return []
        self._bar = (done, total)
        obj: dict[str, Any] = {"status": f"pulling {filename}", "digest": filename}
        if total:
            obj["total"] = total
        if done:
            obj["completed"] = done
        return [obj]

    def _downloaded(self, progress: PullProgress) -> list[dict[str, Any]]:
        """The bar at ``total`` if the last one sent (if any) was short of it."""
        total = progress.bytes_total
        if not progress.files or not total:
            return []
        if self._bar is not None and self._bar[0] >= total:
            return []
        return self._pulling(progress, total)

    def lines(self, progress: PullProgress) -> list[dict[str, Any]]:
        """The objects this snapshot adds (none after the end)."""
        if self._ended:
            return []
        out = self._manifest()
        if progress.state is PullState.DONE:
            self._ended = True
            verifying = [] if self._verifying else [{"status": VERIFYING}]
            return [*out, *self._downloaded(progress), *verifying, {"status": WRITING},
                    {"status": SUCCESS}]  # fmt: skip
        if progress.state.finished:
            self._ended = True
            error = progress.error
            message = error.message if error is not None else f"pull {progress.state.value}"
            return [*out, {"error": message}]
        if progress.phase == "verifying":
            if self._verifying:
                return out
            self._verifying = True  # once per file checked (a split model has several)
            return [*out, {"status": VERIFYING}]
        if progress.phase == "downloading":
            self._verifying = False
            return [*out, *self._pulling(progress, progress.bytes_done)]
        return out


@final
class PullNdjsonBody:
    """The NDJSON body of a streamed ``/api/pull``: one job's progress as it moves.

    It only watches: closing it (the client left) stops the watch, not the job.

    Args:
        watch: The job's :meth:`PullJob.watch`; this body owns it and closes it.
    """

    def __init__(self, watch: PullWatch) -> None:
        self._watch = watch
        self._lines = PullLines()

    def __aiter__(self) -> PullNdjsonBody:
        return self

    async def __anext__(self) -> bytes:
        """The lines of the next snapshot that adds any; the stream ends after the
        job's final snapshot. Cancellation: safe (only the watch waits)."""
        while True:
            progress = await self._watch.__anext__()  # StopAsyncIteration: the end
            objects = self._lines.lines(progress)
            if objects:
                return b"".join(progress_line(obj) for obj in objects)

    async def aclose(self) -> None:
        """Stop watching (idempotent, never blocks; the job goes on)."""
        await self._watch.aclose()
