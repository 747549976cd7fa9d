"""The sha256 of a model file, read a chunk at a time."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

__all__ = ["file_sha256"]

_CHUNK = 8 * 1024 * 1024


def file_sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """The hex sha256 of ``path``. ``on_bytes(done)`` is called after each chunk with the
    bytes hashed so far: a progress report, or a check that raises to stop early (what
    it raises propagates, the file is closed)."""
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if on_bytes is not None:
                on_bytes(done)
    return digest.hexdigest()
