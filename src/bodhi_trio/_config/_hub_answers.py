"""What a Hub may name on our disk: the ETag and commit of a file's metadata.

``huggingface_hub`` makes a blob's path of the ETag a Hub sends (``blobs/<etag>``) and a
snapshot's of its ``X-Repo-Commit`` (``snapshots/<commit>``), unchecked: a Hub (or an
``HF_ENDPOINT`` someone else runs) answering ``ETag: "../../../../home/u/.bashrc"`` would
have the download written there. :func:`checked_metadata` refuses any ETag that is not a
git or sha256 hash and any commit that is not a git hash, for our own HEAD and, through
:func:`guard_library_metadata`, for the one ``hf_hub_download`` sends itself.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from huggingface_hub import file_download

if TYPE_CHECKING:
    from huggingface_hub.file_download import HfFileMetadata

__all__ = ["UnsafeHubAnswer", "checked_metadata", "guard_library_metadata"]

_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git blob's sha1, an LFS file's sha256
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHOWN = 80  # characters of a refused value in the message


class UnsafeHubAnswer(ValueError):
    """The Hub sent an ETag or commit that is not a hash: it would name a path."""


def checked_metadata(meta: HfFileMetadata) -> HfFileMetadata:
    """``meta`` if its ETag and commit (when present) are hashes.

    Raises:
        UnsafeHubAnswer: One is not.
    """
    if meta.etag is not None and not _ETAG.fullmatch(meta.etag):
        raise UnsafeHubAnswer(f"the Hub sent an ETag that is not a hash: {meta.etag[:_SHOWN]!r}")
    if meta.commit_hash is not None and not _COMMIT.fullmatch(meta.commit_hash):
        raise UnsafeHubAnswer(
            f"the Hub sent a commit that is not a hash: {meta.commit_hash[:_SHOWN]!r}"
        )
    return meta


def guard_library_metadata() -> None:
    """Make ``hf_hub_download``'s own metadata request go through :func:`checked_metadata`
    (it sends a HEAD of its own, whose answer may differ from ours). Idempotent; only
    ever refuses more than the library does."""
    original: Any = file_download.get_hf_file_metadata
    if getattr(original, "bodhi_checked", False):
        return

    @functools.wraps(original)
    def checked(*args: Any, **kwargs: Any) -> HfFileMetadata:
        return checked_metadata(original(*args, **kwargs))

    checked.bodhi_checked = True  # type: ignore[attr-defined]
    file_download.get_hf_file_metadata = checked
