"""Downloading a :class:`PullRequest` into the Hugging Face cache with ``huggingface_hub``.

Blocking code: the CLI runs it in-process, the server in a worker process
(:mod:`._pull_worker`) so that a cancel can stop it at once whatever the library is
doing. Two steps:

* :func:`plan_pull` asks the Hub which files to fetch: the repo listing for
  ``hf.co/REPO:QUANT`` (``HfApi.model_info``), then one ``HEAD`` per file (its size,
  ETag and commit, as ``hf_hub_download`` itself asks);
* :func:`download_plan` fetches each file with ``hf_hub_download``, which writes to a
  private ``blobs/<etag>.<random>.incomplete`` file, retries a cut connection from
  where it stopped (``Range``), checks the size, and only then moves the blob into
  place and links ``snapshots/<commit>/<file>`` to it. Nothing under ``snapshots/``
  exists before the whole file does. Files the Hub stores with LFS have their sha256
  as ETag: this module then hashes the blob too and removes blob and link if it
  differs, so a corrupted download is never left where a load would trust it.

``HF_ENDPOINT`` and ``HF_TOKEN`` come from the environment at call time (the token
through the library, which never writes it anywhere).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import attrs
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from bodhi_trio._config._file_hash import file_sha256
from bodhi_trio._config._hf_cache import repo_cache_dir, resolve_model_file
from bodhi_trio._config._hub_answers import checked_metadata, guard_library_metadata
from bodhi_trio._config._hub_progress import byte_counting_bar
from bodhi_trio._config._hub_refs import PullRequest, match_quant, split_parts
from bodhi_trio._exceptions import (
    BodhiError,
    ModelFileNotFoundError,
    PullFailedError,
    RemoteFileNotFoundError,
    RepoNotFoundError,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "Progress",
    "PullPlan",
    "RemoteFile",
    "download_plan",
    "hub_endpoint",
    "plan_pull",
    "remove_partial_downloads",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
_API_TIMEOUT = 30.0
_SHA256 = re.compile(r"[0-9a-f]{64}")

Progress = Callable[[str, int, "int | None"], None]
"""``progress(phase, done, total)``: ``phase`` is ``downloading`` or ``verifying``;
``done``/``total`` count bytes of the whole model (every part)."""


def hub_endpoint() -> str:
    """``HF_ENDPOINT`` (read now, not at import as the library does), else the Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


@attrs.frozen
class RemoteFile:
    """One file of a plan, as the Hub's ``HEAD`` described it.

    Attributes:
        name: Its path in the repo.
        size: Its size in bytes (``None`` if the Hub did not say).
        etag: The Hub's ETag: the sha256 for LFS files, a git hash otherwise.
    """

    name: str
    size: int | None
    etag: str

    @property
    def sha256(self) -> str | None:
        """The sha256 the content must have, when the ETag is one."""
        return self.etag if _SHA256.fullmatch(self.etag) else None


@attrs.frozen
class PullPlan:
    """What :func:`download_plan` fetches.

    Attributes:
        request: What was asked for.
        commit: The commit the revision resolved to (the alias's snapshot).
        files: The model's parts, part 1 first (one unless split).
    """

    request: PullRequest
    commit: str
    files: tuple[RemoteFile, ...]

    @property
    def filename(self) -> str:
        """The file an alias names (part 1)."""
        return self.files[0].name

    @property
    def total(self) -> int | None:
        """Bytes of every part, if the Hub gave every size."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)

    def to_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "files": [{"name": f.name, "size": f.size, "etag": f.etag} for f in self.files],
        }


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2])[:300]


@contextlib.contextmanager
def _hub_errors(request: PullRequest, endpoint: str, filename: str | None = None) -> Iterator[None]:
    """Turn the library's errors into ours, each one line naming the repo and endpoint."""
    repo, revision = request.repo, request.revision
    try:
        yield
    except BodhiError:
        raise
    except GatedRepoError as exc:
        raise RepoNotFoundError(
            f"repo {repo!r} on {endpoint} is gated: accept its terms on the Hub and set"
            " HF_TOKEN to a token of that account"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise RepoNotFoundError(
            f"repo {repo!r} not found on {endpoint} (a private or gated repo needs HF_TOKEN)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise RepoNotFoundError(
            f"revision {revision!r} not found in repo {repo!r} on {endpoint}"
        ) from exc
    except RemoteEntryNotFoundError as exc:
        raise RemoteFileNotFoundError(
            f"repo {repo!r} has no file {filename!r} at revision {revision!r}"
        ) from exc
    except LocalEntryNotFoundError as exc:  # the library could not reach the Hub
        raise PullFailedError(
            f"cannot download from {endpoint}: {_first_line(exc.__cause__ or exc)}"
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "an error"
        raise PullFailedError(f"{endpoint} answered {status}: {_first_line(exc)}") from exc
    except (OSError, ValueError) as exc:  # size check, disk, metadata
        raise PullFailedError(f"pulling {request.describe()} failed: {_first_line(exc)}") from exc
    except Exception as exc:  # the HTTP client's connection and protocol errors
        kind = type(exc).__name__
        if "Connect" in kind or "Timeout" in kind:
            raise PullFailedError(f"cannot reach {endpoint}: {_first_line(exc)}") from exc
        raise PullFailedError(
            f"pulling {request.describe()} from {endpoint} failed: {_first_line(exc)}"
        ) from exc


def _head(request: PullRequest, name: str, endpoint: str) -> tuple[RemoteFile, str]:
    url = hf_hub_url(request.repo, name, revision=request.revision, endpoint=endpoint)
    with _hub_errors(request, endpoint, name):
        meta = checked_metadata(get_hf_file_metadata(url, endpoint=endpoint, timeout=_API_TIMEOUT))
    if meta.commit_hash is None or meta.etag is None:
        raise PullFailedError(
            f"{endpoint} did not send X-Repo-Commit and ETag for {name}: is HF_ENDPOINT a"
            " Hugging Face Hub?"
        )
    return RemoteFile(name, meta.size, meta.etag), meta.commit_hash


def plan_pull(request: PullRequest, *, endpoint: str | None = None) -> PullPlan:
    """Which files to download, their sizes and ETags, and the commit.

    Raises:
        RepoNotFoundError: No such repo or revision (or no access).
        RemoteFileNotFoundError: No such file (or part of a split file).
        QuantNotFoundError: ``request.quant`` matches no GGUF file or several.
        PullFailedError: The Hub cannot be reached or answered something unusable.
    """
    endpoint = endpoint or hub_endpoint()
    if request.filename is None:
        with _hub_errors(request, endpoint):
            info = HfApi(endpoint=endpoint).model_info(
                request.repo, revision=request.revision, timeout=_API_TIMEOUT
            )
        names = [sibling.rfilename for sibling in info.siblings or ()]
        parts = match_quant(request.repo, names, request.quant)
    else:
        parts = split_parts(request.filename)
    files: list[RemoteFile] = []
    commits: set[str] = set()
    for name in parts:
        remote, commit = _head(request, name, endpoint)
        files.append(remote)
        commits.add(commit)
    if len(commits) != 1:
        raise PullFailedError(
            f"the parts of {request.describe()} belong to different commits ({sorted(commits)}):"
            " the repo changed while being read; pull again"
        )
    return PullPlan(request, commits.pop(), tuple(files))


def _verify(remote: RemoteFile, link: Path, on_bytes: Callable[[int], None]) -> None:
    """Hash the new blob ``link`` points to; remove both if it is not what the Hub
    announced, or if the check is interrupted (an unchecked file is not left behind)."""
    expected = remote.sha256
    if expected is None:
        return  # a small git file: the library's size check is all there is
    blob = Path(os.path.realpath(link))
    try:
        actual = file_sha256(blob, on_bytes)
    except BaseException:
        link.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise
    if actual != expected:
        link.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise PullFailedError(
            f"{remote.name}: the downloaded file's sha256 is {actual}, the Hub announced"
            f" {expected}; it was removed: pull again"
        )


def download_plan(
    plan: PullPlan,
    hub_cache: Path,
    *,
    endpoint: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download every file of ``plan`` that the cache lacks, and check each.

    Args:
        plan: From :func:`plan_pull`.
        hub_cache: The hub cache folder.
        endpoint: The Hub (default: :func:`hub_endpoint`).
        progress: Called with the phase and the bytes done of the whole model.

    Returns:
        The snapshot path of part 1 (what a load of the alias opens).

    Raises:
        RepoNotFoundError, RemoteFileNotFoundError: The Hub no longer has it.
        PullFailedError: The download failed for good (after the library's retries),
            or a sha256 did not match (the file was removed).

    Interruption (``KeyboardInterrupt``, which the worker process turns SIGTERM into):
    the library removes its ``.incomplete`` file, and a new file whose sha256 check
    was under way is removed with its link; nothing unchecked stays in ``snapshots/``.
    """
    endpoint = endpoint or hub_endpoint()
    request = plan.request
    total = plan.total
    guard_library_metadata()  # its own HEAD names the blob's and the snapshot's paths

    def report(phase: str, done: int) -> None:
        if progress is not None:
            progress(phase, done, total)

    def reporter(phase: str, offset: int) -> Callable[[int], None]:
        """For one file: its bytes done, as bytes of the whole model."""
        return lambda count: report(phase, offset + count)

    base = 0
    for remote in plan.files:
        try:
            link = resolve_model_file(hub_cache, request.repo, remote.name, plan.commit)
            cached = True
        except ModelFileNotFoundError:
            cached = False
            repo_dir = repo_cache_dir(hub_cache, request.repo)
            # A blob another snapshot already has is linked, not fetched: checked before.
            fresh = not (repo_dir / "blobs" / remote.etag).exists()
            bar = byte_counting_bar(reporter("downloading", base))
            with _hub_errors(request, endpoint, remote.name):
                path = hf_hub_download(
                    request.repo,
                    remote.name,
                    revision=request.revision,
                    cache_dir=hub_cache,
                    endpoint=endpoint,
                    tqdm_class=cast("Any", bar),
                )
            # The library resolves the cache folder; compare folders, not spellings.
            link = repo_dir / "snapshots" / plan.commit / remote.name
            if os.path.realpath(Path(path).parent) != os.path.realpath(link.parent):
                raise PullFailedError(
                    f"{request.describe()} changed on the Hub during the pull; pull again"
                ) from None
            if fresh:
                _verify(remote, link, reporter("verifying", base))
        base += remote.size if remote.size is not None else link.stat().st_size
        if cached:
            report("downloading", base)
    return resolve_model_file(hub_cache, request.repo, plan.filename, plan.commit)


def remove_partial_downloads(hub_cache: Path, repo: str, etags: list[str]) -> list[Path]:
    """Remove ``blobs/<etag>.*.incomplete`` files of ``etags`` that no download is writing.

    The library removes its own partial file when it is interrupted; this is for a
    worker that had to be killed. A file is only removed while its blob's download
    lock (the library's, under ``.locks/``) can be taken, so another process's
    download in progress is left alone.

    Returns:
        The files removed.
    """
    from filelock import FileLock, Timeout

    repo_dir = repo_cache_dir(hub_cache, repo)
    removed: list[Path] = []
    for etag in etags:
        if not re.fullmatch(r"[0-9a-fA-F]{1,128}", etag):
            continue  # never a glob pattern
        partial = sorted((repo_dir / "blobs").glob(f"{etag}.*.incomplete"))
        if not partial:
            continue
        lock = FileLock(hub_cache / ".locks" / repo_dir.name / f"{etag}.lock", timeout=0)
        try:
            with lock:
                for path in partial:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        except (Timeout, OSError):
            continue
    return removed
