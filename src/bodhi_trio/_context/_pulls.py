"""Pull jobs: downloads the server owns, one per model however many clients ask.

::

    open_context ── root nursery ── one task per pull job ── worker process
                                        (python -m bodhi_trio._config._pull_worker)

A job belongs to the context, not to a request: a client that leaves only stops
watching it; :meth:`PullRegistry.cancel` (``DELETE /bodhi/v1/pulls/{id}``) or the
context closing stops it. Requests for the same model (same repo, revision and file
or quant) join the running job instead of starting another; each may name an alias,
and every named alias is written when the download succeeds.

The download runs in a worker process because ``huggingface_hub`` is blocking code
that cannot be interrupted from outside: a flag checked in a progress callback would
wait for the next 10 MB chunk or a 10 s read timeout, and is never consulted by the
Xet downloader's native threads. A process can be stopped at once: SIGTERM (the
worker turns it into ``KeyboardInterrupt``, so the library deletes its partial
file), then SIGKILL of its group after :data:`STOP_GRACE` seconds and a sweep of
what the killed worker left (``blobs/<etag>.*.incomplete``). Partial files never
sit under ``snapshots/``, so nothing a load would trust is ever half there.

Use from a route (the Ollama ``/api/pull`` included)::

    job = ctx.pulls.start_or_join(PullRequest.from_ref("hf.co/OWNER/REPO:Q4_K_M"))
    async for progress in job.watch():      # PullProgress snapshots; ends after a final one
        ...                                 # progress.state, .bytes_done, .bytes_total, .error
    final = await job.wait()                # or just wait for the end
    await ctx.pulls.cancel(job.id)
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, final

import trio

from bodhi_trio._config._hub_pull import remove_partial_downloads
from bodhi_trio._config._hub_refs import PullRequest, check_alias_target, write_pull_alias
from bodhi_trio._config._pull_worker import worker_args
from bodhi_trio._context._pull_job import PullJob, PullProgress, PullState, PullWatch
from bodhi_trio._exceptions import (
    AliasExistsError,
    BodhiError,
    InvalidRequestError,
    PullCancelledError,
    PullFailedError,
    PullNotFoundError,
    QuantNotFoundError,
    RemoteFileNotFoundError,
    RepoNotFoundError,
    UnavailableError,
)
from bodhi_trio._llama._process import ChildProcess, spawn_child

if TYPE_CHECKING:
    from bodhi_trio._config._alias_store import AliasStore

__all__ = ["PullJob", "PullProgress", "PullRegistry", "PullState", "PullWatch"]

logger = logging.getLogger("bodhi_trio.pulls")

MAX_RUNNING = 2
"""Pulls downloading at once; later ones wait (state ``queued``), oldest first."""
KEEP_FINISHED = 50
"""Finished jobs kept for ``GET /bodhi/v1/pulls``; older ones are forgotten."""
STOP_GRACE = 3.0
"""Seconds a cancelled worker gets after SIGTERM before its group is killed."""
STALL_SECS = 300.0
"""A worker that prints nothing (no progress, no log line) this long has failed."""
_MAX_LINE = 64 * 1024
_ERRORS: dict[str, type[BodhiError]] = {
    cls.code: cls
    for cls in (
        InvalidRequestError,
        QuantNotFoundError,
        RepoNotFoundError,
        RemoteFileNotFoundError,
        PullFailedError,
    )
}


def _worker_env() -> dict[str, str]:
    """Our environment without bodhi-trio's keys (the worker needs none of them);
    ``HF_ENDPOINT`` and ``HF_TOKEN`` pass through, in memory only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BODHI_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@final
class PullRegistry:
    """The pull jobs of one context.

    Args:
        nursery: Where each job's task runs (the context's root nursery).
        hub_cache: Where models go.
        aliases: Where the aliases go.
        max_running: Jobs downloading at once.
        stop_grace: Seconds between SIGTERM and SIGKILL of a cancelled worker.
        stall_timeout: Seconds of silence after which a worker has failed.
        worker: The worker command without its argument (tests use a stand-in).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        hub_cache: Path,
        aliases: AliasStore,
        *,
        max_running: int = MAX_RUNNING,
        stop_grace: float = STOP_GRACE,
        stall_timeout: float = STALL_SECS,
        worker: tuple[str, ...] = (sys.executable, "-m", "bodhi_trio._config._pull_worker"),
    ) -> None:
        self._nursery = nursery
        self._hub_cache = hub_cache
        self._aliases = aliases
        self._max_running = max_running
        self._running = 0
        self._waiting: collections.deque[PullJob] = collections.deque()
        self._turns: dict[str, trio.Event] = {}
        self._stop_grace = stop_grace
        self._stall_timeout = stall_timeout
        self._worker = worker
        self._jobs: dict[str, PullJob] = {}
        self._active: dict[tuple[str, str, str], PullJob] = {}
        self._closed = False

    def start_or_join(self, request: PullRequest) -> PullJob:
        """The running job for ``request``'s model, or a new one; never waits.

        The alias the request names (or its default name) is checked now, so a
        conflict is an error before anything downloads.

        Raises:
            AliasExistsError: The alias names another model, or another running pull
                will write it.
            UnavailableError: The context is closing.
        """
        if self._closed:
            raise UnavailableError("the server is shutting down", retry_after=5)
        name = request.alias_name
        check_alias_target(self._aliases, name, request.repo, request.filename)
        for other in self._active.values():
            if other.request.key != request.key and name in other.progress.aliases:
                raise AliasExistsError(
                    f"alias {name!r} is being pulled for {other.request.describe()}"
                    f" (pull {other.id})",
                    param="alias",
                )
        job = self._active.get(request.key)
        if job is not None:
            job.add_alias(name)
            return job
        job = PullJob(secrets.token_hex(6), request, name)
        self._forget_old()
        self._jobs[job.id] = job
        self._active[request.key] = job
        self._turns[job.id] = trio.Event()
        self._waiting.append(job)
        self._admit()
        self._nursery.start_soon(self._run, job, name=f"pull:{job.id}")
        return job

    def get(self, job_id: str) -> PullJob:
        """Raises: PullNotFoundError."""
        job = self._jobs.get(job_id)
        if job is None:
            raise PullNotFoundError(job_id)
        return job

    def jobs(self) -> list[PullProgress]:
        """Every job kept, oldest first."""
        return [job.progress for job in self._jobs.values()]

    async def cancel(self, job_id: str) -> PullProgress:
        """Stop a job and wait until its worker is gone and its partial file removed.

        A finished job is left as it is. Returns the job's final snapshot.

        Raises:
            PullNotFoundError: No such job.

        Cancellation: the job is cancelled anyway; only the wait ends.
        """
        job = self.get(job_id)
        job.cancel_scope.cancel()
        return await job.wait()  # bounded: the worker's stop is STOP_GRACE, then KILL

    def close(self) -> None:
        """Refuse new pulls; running ones stop when the root nursery is cancelled."""
        self._closed = True

    def _forget_old(self) -> None:
        finished = [job for job in self._jobs.values() if job.progress.state.finished]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED + 1)]:
            del self._jobs[job.id]

    def _admit(self) -> None:
        """Let waiting jobs run, oldest first, while fewer than ``max_running`` do."""
        while self._running < self._max_running and self._waiting:
            job = self._waiting.popleft()
            self._running += 1
            self._turns[job.id].set()

    async def _run(self, job: PullJob) -> None:
        """The job's task. Never raises but ``Cancelled``: a failure ends the job."""
        turn = self._turns[job.id]
        try:
            with job.cancel_scope:
                await turn.wait()  # queued until _admit() gives it a turn
                job.update(state=PullState.RUNNING, phase="starting")
                commit, filename = await self._download(job)
                self._write_aliases(job, commit, filename)
                job.finish(PullState.DONE)
                return
            job.finish(PullState.CANCELLED, PullCancelledError(f"pull {job.id} was cancelled"))
        except BodhiError as exc:
            job.finish(PullState.FAILED, exc)
        except trio.Cancelled:
            job.finish(
                PullState.CANCELLED, PullCancelledError(f"pull {job.id} stopped: shutting down")
            )
            raise
        except Exception as exc:  # a bug: end the job, keep the server
            logger.exception("pull %s failed unexpectedly", job.id)
            job.finish(PullState.FAILED, PullFailedError(f"internal error: {exc!r}"))
        finally:
            if turn.is_set():
                self._running -= 1
            else:
                self._waiting.remove(job)
            del self._turns[job.id]
            self._admit()
            if self._active.get(job.request.key) is job:
                del self._active[job.request.key]
            logger.info("pull %s %s: %s", job.id, job.progress.state.value, job.request.describe())

    def _write_aliases(self, job: PullJob, commit: str, filename: str) -> None:
        failure: BodhiError | None = None
        for name in job.progress.aliases:
            try:
                write_pull_alias(self._aliases, name, job.request.repo, filename, commit)
            except BodhiError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _download(self, job: PullJob) -> tuple[str, str]:
        """Run the worker to its end; the commit and file it pulled.

        Cancellation: the worker is stopped (shielded, at most ``stop_grace`` seconds
        and a SIGKILL) and what a killed worker left is removed.
        """
        argv = [*self._worker, worker_args(job.request, self._hub_cache)]
        child = spawn_child(argv, env=_worker_env())
        etags: list[str] = []
        ok = False
        try:
            result = await self._follow(job, child, etags)
            with trio.move_on_after(self._stop_grace):
                await child.wait()  # it printed its last line: it is exiting
            ok = True
            return result
        finally:
            with trio.CancelScope(shield=True):
                await child.stop(self._stop_grace)
                child.close()
                await child.output.aclose()
            if not ok and etags:
                removed = remove_partial_downloads(self._hub_cache, job.request.repo, etags)
                for path in removed:
                    logger.info("pull %s: removed partial download %s", job.id, path)

    async def _follow(self, job: PullJob, child: ChildProcess, etags: list[str]) -> tuple[str, str]:
        tail: collections.deque[str] = collections.deque(maxlen=10)
        buffer = b""
        while True:
            with trio.move_on_after(self._stall_timeout) as idle:
                chunk = await child.output.receive_some(_MAX_LINE)
            if idle.cancelled_caught:
                raise PullFailedError(
                    f"the download of {job.request.describe()} stalled: nothing happened for"
                    f" {self._stall_timeout:g} s"
                )
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > _MAX_LINE:
                lines.append(buffer[:200])
                buffer = b""
            for line in lines:
                result = self._on_line(job, line, etags, tail)
                if result is not None:
                    return result
        shown = " | ".join(tail) or "no output"
        raise PullFailedError(f"the download worker exited without a result: {shown}")

    def _on_line(
        self, job: PullJob, raw: bytes, etags: list[str], tail: collections.deque[str]
    ) -> tuple[str, str] | None:
        text = raw.decode("utf-8", "replace").strip()
        try:
            event = json.loads(text) if text.startswith("{") else None
        except ValueError:
            event = None
        if not isinstance(event, dict):
            if text:
                tail.append(text[:200])
                logger.debug("pull %s worker: %s", job.id, text)
            return None
        kind = event.get("event")
        if kind == "progress":
            job.update(
                phase=str(event.get("phase")),
                bytes_done=int(event.get("done") or 0),
                bytes_total=event.get("total"),
            )
        elif kind == "plan":
            files = event.get("files") or []
            etags.extend(str(f.get("etag")) for f in files)
            sizes = [f.get("size") for f in files]
            job.update(
                phase="downloading",
                commit=event.get("commit"),
                files=tuple(str(f.get("name")) for f in files),
                bytes_total=None if None in sizes else sum(sizes),
            )
        elif kind == "log":
            message = str(event.get("message"))
            tail.append(message[:200])
            logger.info("pull %s: %s", job.id, message)
        elif kind == "done":
            return str(event["commit"]), str(event["filename"])
        elif kind == "error":
            error = event.get("error") or {}
            cls = _ERRORS.get(str(error.get("code")), PullFailedError)
            raise cls(str(error.get("message")), param=error.get("param"))
        return None
