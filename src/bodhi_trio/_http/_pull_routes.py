"""The routes that get models: pull jobs, and aliases for local GGUF files.

``POST /bodhi/v1/pull`` starts or joins the server's job for a model
(:mod:`bodhi_trio._context._pulls`) and streams its progress as SSE: one ``data:``
event with the job (``GET /bodhi/v1/pulls`` shows the same objects) per change, a
``: keep-alive`` comment while nothing changes, and the end after the job is done;
a failed or cancelled job ends the stream with one ``data: {"error": ...}`` event.
The stream only watches: a client that leaves does not stop the download, ``DELETE
/bodhi/v1/pulls/{id}`` does. With ``"stream": false`` the answer is the finished job
(or its error with its status).

``POST /bodhi/v1/aliases`` with ``"file"`` instead of ``repo``/``filename`` makes an
alias for a GGUF file on the server (``_config._local_gguf``). The path must pass
the same rule as paths in llama-server args (``_config._arg_policy``): absolute,
inside the HF hub cache, ``BODHI_HOME`` or ``BODHI_ALLOWED_PATHS``, and not the
server's own settings or run state; only then is the file looked at, so an admin
key learns nothing about files elsewhere. How it was placed is in the answer's
``X-Bodhi-Placement`` header (``hardlink``, ``symlink``, ``copy`` or ``cached``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, final

import attrs
import trio

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._arg_policy import ArgPolicy
from bodhi_trio._config._hub_refs import PullRequest
from bodhi_trio._config._local_gguf import PlacedModel, check_gguf_file, place_local_gguf
from bodhi_trio._context._pulls import PullJob, PullProgress, PullState
from bodhi_trio._exceptions import (
    AliasExistsError,
    AliasNotFoundError,
    InvalidModelFileError,
    InvalidRequestError,
)
from bodhi_trio._http._request_scope import close_with_request
from bodhi_trio._http._routes import Reply, parse_json_body
from bodhi_trio._http._security import Access
from bodhi_trio._http._sse import SSE_HEADERS, DirectStream, compact_json

if TYPE_CHECKING:
    from bodhi_trio._context._open import SharedContext

__all__ = ["PullRoutes", "register_pull_routes"]

PLACE_STOP_WAIT_SECS = 5.0
"""How long a cancelled placement is waited for (one chunk takes ~0.1 s on a disk)."""
_PLACEHOLDER = {"repo": "local/placeholder", "filename": "placeholder.gguf"}


class RouteAdder(Protocol):
    """The app's ``route(rule, methods, handler, access=...)``."""

    def __call__(
        self, rule: str, methods: list[str], handler: Callable[..., Awaitable[Reply]], *,
        access: Access,
    ) -> None: ...  # fmt: skip


def _render(progress: PullProgress) -> str:
    """One SSE payload: the job, or the error that ended it."""
    if progress.state in (PullState.FAILED, PullState.CANCELLED) and progress.error is not None:
        return compact_json(progress.error.to_envelope())
    return compact_json(progress.to_json())


async def _forward(
    job: PullJob, send: trio.MemorySendChannel[PullProgress], scope: trio.CancelScope
) -> None:
    """Feed one client's stream from the job's changes until the job ends or the
    client leaves (``scope`` is cancelled); the job itself goes on."""
    with scope, send:
        async with contextlib.aclosing(job.watch()) as changes:
            try:
                async for progress in changes:
                    await send.send(progress)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


@final
@attrs.define(eq=False)
class PullRoutes:
    """The handlers. ``nursery`` runs the per-client stream feeders (the relay nursery)."""

    ctx: SharedContext
    nursery: trio.Nursery

    async def pull(self, raw: bytes) -> Reply:
        """``POST /bodhi/v1/pull``."""
        body = parse_json_body(raw)
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise InvalidRequestError("'stream' must be a boolean", param="stream")
        job = self.ctx.pulls.start_or_join(PullRequest.from_json(body))
        if not stream:
            final = await job.wait()
            if final.error is not None:  # the job keeps it: raise it without old frames
                raise final.error.with_traceback(None)
            return Reply.json(final.to_json())
        send, receive = trio.open_memory_channel[PullProgress](0)
        feeder = trio.CancelScope()
        self.nursery.start_soon(_forward, job, send, feeder, name=f"pull-client:{job.id}")
        body_stream = DirectStream(
            receive, _render, self.ctx.settings.sse_keepalive_secs, on_close=feeder.cancel
        )
        close_with_request(body_stream)
        return Reply(200, SSE_HEADERS, body_stream)

    async def pulls(self) -> Reply:
        """``GET /bodhi/v1/pulls``: every job kept, oldest first."""
        return Reply.json({"data": [progress.to_json() for progress in self.ctx.pulls.jobs()]})

    async def pull_get(self, pull_id: str) -> Reply:
        """``GET /bodhi/v1/pulls/{id}``."""
        return Reply.json(self.ctx.pulls.get(pull_id).progress.to_json())

    async def pull_cancel(self, pull_id: str) -> Reply:
        """``DELETE /bodhi/v1/pulls/{id}``: answers once the worker is gone (a finished
        job is left as it was)."""
        return Reply.json((await self.ctx.pulls.cancel(pull_id)).to_json())

    async def alias_create(self, raw: bytes, create: Callable[[bytes], Awaitable[Reply]]) -> Reply:
        """``POST /bodhi/v1/aliases``: with ``"file"`` here, else ``create`` (the
        usual alias create)."""
        body = parse_json_body(raw)
        if "file" not in body:
            return await create(raw)
        file = body.pop("file")
        if not isinstance(file, str) or not file or "\0" in file:
            raise InvalidModelFileError("'file' must be a path to a GGUF file", param="file")
        given = sorted(key for key in ("repo", "filename", "snapshot") if key in body)
        if given:
            raise InvalidRequestError(
                f"give 'file' or 'repo' and 'filename', not both (got {', '.join(given)})",
                param="file",
            )
        # Every other field is checked before the file is even looked at.
        draft = Alias.from_dict({**body, **_PLACEHOLDER}, source="request body")
        problem = ArgPolicy.from_settings(self.ctx.settings).path_problem(file)
        if problem is not None:
            raise InvalidModelFileError(f"'file' {file!r} {problem}", param="file")
        check_gguf_file(file)
        self._require_free(draft.alias)
        placed = await self._place(file)
        alias = attrs.evolve(
            draft, repo=placed.repo, filename=placed.filename, snapshot=placed.snapshot
        )
        self.ctx.aliases.create(alias)
        return Reply(
            201,
            {"Content-Type": "application/json", "X-Bodhi-Placement": placed.placement},
            compact_json(alias.to_dict()).encode(),
        )

    def _require_free(self, name: str) -> None:
        try:
            self.ctx.aliases.get(name)
        except AliasNotFoundError:
            return
        raise AliasExistsError(f"alias {name!r} already exists", param="alias")

    async def _place(self, file: str) -> PlacedModel:
        """Hash and place the file in a worker thread.

        Cancellation (the client left, or shutdown): the thread is told to stop, which
        it does within one chunk of hashing or copying (nothing is left: no blob, no
        temporary file), and is waited for, shielded, at most
        :data:`PLACE_STOP_WAIT_SECS`; a thread stuck in the file system is left to end
        on its own. A hard or symbolic link, once made, is not undone (a whole blob,
        no alias).
        """
        stop = threading.Event()
        ended = threading.Event()
        hub_cache = self.ctx.settings.hub_cache

        def place() -> PlacedModel:
            try:
                return place_local_gguf(hub_cache, file, cancelled=stop.is_set)
            finally:
                ended.set()

        try:
            return await trio.to_thread.run_sync(place, abandon_on_cancel=True)
        except trio.Cancelled:
            stop.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    ended.wait, PLACE_STOP_WAIT_SECS, abandon_on_cancel=True
                )
            raise
        except OSError as exc:
            raise InvalidModelFileError(
                f"cannot place {file!r} in the HF cache: {exc.strerror or exc}", param="file"
            ) from exc


def register_pull_routes(
    route: RouteAdder, pulls: PullRoutes, body: Callable[[], Awaitable[bytes]]
) -> None:
    """Register the pull routes on the app (``route`` is its registration function,
    ``body`` its request-body reader). Every one needs an admin key."""

    async def pull() -> Reply:
        return await pulls.pull(await body())

    route("/bodhi/v1/pull", ["POST"], pull, access=Access.ADMIN)
    route("/bodhi/v1/pulls", ["GET"], pulls.pulls, access=Access.ADMIN)
    route("/bodhi/v1/pulls/<pull_id>", ["GET"], pulls.pull_get, access=Access.ADMIN)
    route("/bodhi/v1/pulls/<pull_id>", ["DELETE"], pulls.pull_cancel, access=Access.ADMIN)
