"""A GGUF file from anywhere, placed in the Hugging Face cache layout.

An alias names ``repo``/``filename``/``snapshot`` in the cache (its file's format),
so a local file is given a home there, laid out as ``huggingface_hub`` lays out a
download::

    <hub_cache>/models--local--<file stem>/
        blobs/<sha256 of the file>                    the file: a hard link, else a
                                                      symlink to it, else a copy
        snapshots/<sha256[:40]>/<file name> -> ../../blobs/<sha256>

The snapshot is named after the content, so two different files of the same name
live side by side, and importing the same file again changes nothing. There is no
``refs/``: the alias names the snapshot itself.

The placement is, in order of preference:

* ``hardlink``: the same file under a second name, no space used; it survives the
  original being moved or deleted (not being edited in place);
* ``symlink``: when a hard link is impossible (another filesystem, a file owned by
  someone else); the original must then stay where it is;
* ``copy``: when neither link can be made.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import attrs

from bodhi_trio._config._demo import temp_path
from bodhi_trio._config._file_hash import file_sha256
from bodhi_trio._config._hf_cache import repo_cache_dir
from bodhi_trio._exceptions import InvalidModelFileError

__all__ = ["LOCAL_OWNER", "PlacedModel", "check_gguf_file", "place_local_gguf"]

LOCAL_OWNER = "local"
"""The owner part of the repo id of every imported file (``local/<stem>``)."""

_MAGIC = b"GGUF"
_COPY_CHUNK = 64 * 1024 * 1024  # one sendfile call: ~0.1 s on a disk, then a cancel check
Placement = Literal["hardlink", "symlink", "copy", "cached"]


@attrs.frozen
class PlacedModel:
    """Where :func:`place_local_gguf` put a file.

    Attributes:
        repo: ``local/<stem>``.
        filename: The file's name in the snapshot.
        snapshot: The snapshot (the first 40 hex digits of its sha256).
        path: The snapshot path (a symlink into ``blobs/``).
        placement: How the blob was made; ``cached`` when it was there already.
    """

    repo: str
    filename: str
    snapshot: str
    path: Path
    placement: Placement


def check_gguf_file(path: Path | str) -> Path:
    """``path`` with symlinks resolved, if it is a readable regular GGUF file.

    Raises:
        InvalidModelFileError: Missing, not a regular file, unreadable, or it does
            not start with the GGUF magic (``param`` is ``file``).
    """
    real = Path(os.path.realpath(path))
    try:
        info = real.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InvalidModelFileError(f"{path} is not a regular file", param="file")
        with real.open("rb") as file:
            magic = file.read(len(_MAGIC))
    except FileNotFoundError:
        raise InvalidModelFileError(f"{path} does not exist", param="file") from None
    except OSError as exc:
        raise InvalidModelFileError(
            f"{path} cannot be read: {exc.strerror or exc}", param="file"
        ) from None
    if magic != _MAGIC:
        raise InvalidModelFileError(
            f"{path} is not a GGUF file (it does not start with {_MAGIC!r})", param="file"
        )
    return real


def _safe_part(text: str, fallback: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:96]
    return cleaned or fallback


def _copy(source: Path, target: Path, cancelled: Callable[[], bool]) -> None:
    """Copy in the kernel (``sendfile``), a chunk at a time, polling ``cancelled``
    between chunks: a cancelled copy stops within one chunk."""
    with source.open("rb") as src, target.open("wb") as dst:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            if cancelled():
                raise InterruptedError("cancelled")
            sent = os.sendfile(dst.fileno(), src.fileno(), offset, min(_COPY_CHUNK, size - offset))
            if sent == 0:  # the file shrank under us
                raise OSError(f"{source} changed while it was copied")
            offset += sent


def _make_blob(source: Path, blob: Path, cancelled: Callable[[], bool]) -> Placement:
    """Put ``source`` at ``blob`` (atomically, through a temporary name, removed if the
    copy fails or is cancelled)."""
    with temp_path(blob.parent, ".incomplete") as tmp:
        try:
            os.link(source, tmp)
            placement: Placement = "hardlink"
        except OSError:
            try:
                tmp.symlink_to(source)
                placement = "symlink"
            except OSError:
                _copy(source, tmp, cancelled)
                placement = "copy"
        os.replace(tmp, blob)
    return placement


def place_local_gguf(
    hub_cache: Path, source: Path | str, *, cancelled: Callable[[], bool] = lambda: False
) -> PlacedModel:
    """Give a local GGUF file a place in the hub cache (see the module docstring).

    Args:
        hub_cache: The hub cache folder.
        source: The file (symlinks are followed; the real file is what is placed).
        cancelled: Polled between chunks while hashing and copying; ``True`` stops
            with ``InterruptedError``, leaving no blob and no temporary file.

    Raises:
        InvalidModelFileError: See :func:`check_gguf_file`.
        OSError: The cache cannot be written.
    """
    real = check_gguf_file(source)

    def stop_if_cancelled(_: int) -> None:
        if cancelled():
            raise InterruptedError("cancelled")

    sha = file_sha256(real, stop_if_cancelled)
    name = _safe_part(real.name, "model.gguf")
    if not name.lower().endswith(".gguf"):
        name += ".gguf"
    repo = f"{LOCAL_OWNER}/{_safe_part(real.stem, 'model')}"
    repo_dir = repo_cache_dir(hub_cache, repo)
    blob = repo_dir / "blobs" / sha
    snapshot = sha[:40]
    link = repo_dir / "snapshots" / snapshot / name
    blob.parent.mkdir(parents=True, exist_ok=True)
    placement: Placement = "cached"
    if not (blob.is_file() and blob.stat().st_size == real.stat().st_size):
        placement = _make_blob(real, blob, cancelled)
    link.parent.mkdir(parents=True, exist_ok=True)
    target = f"../../blobs/{sha}"
    if not (link.is_symlink() and os.readlink(link) == target):
        with temp_path(link.parent, ".incomplete") as tmp:
            tmp.symlink_to(target)
            os.replace(tmp, link)
    return PlacedModel(repo, name, snapshot, link, placement)
