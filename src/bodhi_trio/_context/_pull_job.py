"""A pull job as its watchers see it: :class:`PullProgress` snapshots, and
:class:`PullJob`, which the registry (:mod:`._pulls`) updates and anyone may watch.

A job's progress is a level, not a stream of deltas: a watcher that falls behind
gets the latest snapshot next, so no queue grows and no event is dropped that
matters; the final snapshot (done, failed or cancelled) always arrives.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

if TYPE_CHECKING:
    from bodhi_trio._config._hub_refs import PullRequest
    from bodhi_trio._exceptions import BodhiError

__all__ = ["PullJob", "PullProgress", "PullState", "PullWatch"]


class PullState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (PullState.DONE, PullState.FAILED, PullState.CANCELLED)


@attrs.frozen
class PullProgress:
    """One job at one moment (``GET /bodhi/v1/pulls`` shows these).

    Attributes:
        id: The job id.
        state: Queued, running, then done, failed or cancelled.
        phase: What a running job does: ``starting``, ``downloading``, ``verifying``.
        request: What was asked for.
        aliases: The aliases written (done) or to be written.
        files: The model's files once known (part 1 first).
        bytes_done: Bytes of the whole model downloaded (or verified) so far.
        bytes_total: Bytes of the whole model, once the Hub said.
        commit: The commit the revision resolved to, once known.
        watchers: How many :class:`PullWatch` follow it now (streams of clients).
        error: Why it failed or that it was cancelled.
        created, finished: Wall-clock times (``time.time()``).
    """

    id: str
    state: PullState
    phase: str
    request: PullRequest
    aliases: tuple[str, ...]
    files: tuple[str, ...] = ()
    bytes_done: int = 0
    bytes_total: int | None = None
    commit: str | None = None
    watchers: int = 0
    error: BodhiError | None = attrs.field(default=None, eq=False)
    created: float = attrs.field(factory=time.time)
    finished: float | None = None

    @property
    def filename(self) -> str | None:
        """The file the aliases name (part 1): asked for, or found for a quant."""
        return self.files[0] if self.files else self.request.filename

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "phase": self.phase,
            "repo": self.request.repo,
            "revision": self.request.revision,
            "filename": self.filename,
            "quant": self.request.quant,
            "files": list(self.files),
            "aliases": list(self.aliases),
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "commit": self.commit,
            "watchers": self.watchers,
            "error": None if self.error is None else self.error.to_envelope()["error"],
            "created": self.created,
            "finished": self.finished,
        }


@final
class PullJob:
    """One download and who waits for it. Made by :meth:`PullRegistry.start_or_join`."""

    def __init__(self, job_id: str, request: PullRequest, alias: str) -> None:
        self.id = job_id
        self.request = request
        self._progress = PullProgress(job_id, PullState.QUEUED, "queued", request, (alias,))
        self._version = 0
        self._changed = trio.Event()
        self._done = trio.Event()
        self.cancel_scope = trio.CancelScope()

    @property
    def progress(self) -> PullProgress:
        """The job now."""
        return self._progress

    def watch(self) -> PullWatch:
        """Its progress: the snapshot now, then each change (a slow reader skips to the
        latest; none is ever queued), ending after the final one. Counted in
        ``watchers`` until it ends or is closed: close one left early (``aclose()``,
        e.g. ``async with contextlib.aclosing(job.watch()) as changes:``).

        Cancellation: leaving the iteration only stops watching; the job goes on.
        """
        return PullWatch(self)

    async def wait(self) -> PullProgress:
        """The final snapshot, once the job has ended (done, failed or cancelled).

        Cancellation: safe; the job goes on.
        """
        await self._done.wait()
        return self._progress

    # The registry's: what the worker reports, and the end.

    def update(self, **changes: Any) -> None:
        self._progress = attrs.evolve(self._progress, **changes)
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()

    def finish(self, state: PullState, error: BodhiError | None = None) -> None:
        if self._progress.state.finished:
            return
        self.update(state=state, phase=state.value, error=error, finished=time.time())
        self._done.set()

    def add_alias(self, alias: str) -> None:
        if alias not in self._progress.aliases:
            self.update(aliases=(*self._progress.aliases, alias))

    async def _changed_since(self, version: int) -> None:
        while self._version == version:
            await self._changed.wait()


@final
class PullWatch:
    """The async iterator of :meth:`PullJob.watch` (a plain iterator: nothing for the GC)."""

    def __init__(self, job: PullJob) -> None:
        self._job = job
        self._seen = -1
        self._ended = False
        self._counted = not job.progress.state.finished
        if self._counted:
            job.update(watchers=job.progress.watchers + 1)

    async def aclose(self) -> None:
        """Stop watching (idempotent; the job goes on)."""
        self._ended = True
        if self._counted:
            self._counted = False
            self._job.update(watchers=self._job.progress.watchers - 1)

    def __aiter__(self) -> PullWatch:
        return self

    async def __anext__(self) -> PullProgress:
        if self._ended:
            raise StopAsyncIteration
        await self._job._changed_since(self._seen)
        self._seen = self._job._version
        progress = self._job.progress
        if progress.state.finished:
            await self.aclose()
        return progress
