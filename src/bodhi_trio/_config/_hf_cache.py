"""Model files in the local Hugging Face cache; never touches the network.

The cache layout is ``huggingface_hub``'s::

    <hub_cache>/models--<owner>--<name>/
        refs/<ref>                 # text file holding a commit hash
        snapshots/<commit>/<file>  # usually a symlink into blobs/
        blobs/<sha256>

Every name that goes into a path (repo, ref or commit, file name) is validated
segment by segment first, so no input can make a lookup leave the cache.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub.file_download import repo_folder_name

from bodhi_trio._exceptions import InvalidAliasError, ModelFileNotFoundError

__all__ = [
    "hub_cache_dir",
    "repo_cache_dir",
    "resolve_model_file",
    "validate_filename",
    "validate_repo_id",
    "validate_snapshot",
]

# Each half of "owner/name": the characters Hugging Face allows in user and repo names.
_NAME_PART = re.compile(r"[A-Za-z0-9_.-]+")


def hub_cache_dir(hf_home: Path) -> Path:
    """The hub cache under ``HF_HOME``: ``hf_home / "hub"``.

    ``HF_HUB_CACHE``, when set, wins over this; that choice is made when the
    settings are loaded (:func:`bodhi_trio._config._settings.load_settings`).
    """
    return hf_home / "hub"


def _is_safe_part(part: str) -> bool:
    return _NAME_PART.fullmatch(part) is not None and part not in {".", ".."}


def validate_repo_id(repo: object) -> str:
    """Check that ``repo`` is ``owner/name`` with ``[A-Za-z0-9_.-]+`` parts.

    Raises:
        InvalidAliasError: It is not a string of that shape, or a part is
            ``.`` or ``..``.
    """
    if not isinstance(repo, str):
        raise InvalidAliasError(f"repo must be a string 'owner/name', got {type(repo).__name__}")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_is_safe_part(part) for part in parts):
        raise InvalidAliasError(
            f"repo {repo!r} must be 'owner/name', each part made of letters, digits,"
            " '_', '.', '-' and not '.' or '..'"
        )
    return repo


def validate_snapshot(snapshot: object) -> str:
    """Check that ``snapshot`` is a safe ref name or commit hash.

    Ref names may have ``/`` separated parts (``refs/pr/1``); every part must
    be made of ``[A-Za-z0-9_.-]`` and not be ``.`` or ``..``.

    Raises:
        InvalidAliasError: It is not such a string.
    """
    if not isinstance(snapshot, str):
        raise InvalidAliasError(
            f"snapshot must be a string (a ref name or commit hash), got {type(snapshot).__name__}"
            " (quote it in YAML)"
        )
    if not all(_is_safe_part(part) for part in snapshot.split("/")):
        raise InvalidAliasError(
            f"snapshot {snapshot!r} must be a ref name or commit hash made of letters, digits,"
            " '_', '.', '-' (and '/' between parts), with no '.' or '..' part"
        )
    return snapshot


def validate_filename(filename: object) -> str:
    """Check that ``filename`` is a relative path inside a snapshot.

    Sub-folders are allowed (``Q4_K_M/model-00001-of-00002.gguf``); absolute
    paths, ``.``/``..`` or empty parts, backslashes and characters that are not
    printable (NUL, newlines, terminal escapes) are not.

    Raises:
        InvalidAliasError: It is not such a string.
    """
    if not isinstance(filename, str):
        raise InvalidAliasError(f"filename must be a string, got {type(filename).__name__}")
    if not filename:
        raise InvalidAliasError("filename must not be empty")
    if filename.startswith("/"):
        raise InvalidAliasError(f"filename {filename!r} must be relative to the snapshot")
    if "\\" in filename or not filename.isprintable():
        # A Hub's file list names files too: a newline or a terminal escape in a name would
        # be printed to a console and written into the alias file.
        raise InvalidAliasError(
            f"filename {filename!r} must not contain '\\' or characters that are not printable"
        )
    if any(part in {"", ".", ".."} for part in filename.split("/")):
        raise InvalidAliasError(f"filename {filename!r} must not have empty, '.' or '..' parts")
    return filename


def repo_cache_dir(hub_cache: Path, repo: str) -> Path:
    """The cache folder of ``repo``: ``<hub_cache>/models--owner--name``.

    Raises:
        InvalidAliasError: ``repo`` is not a valid ``owner/name``.
    """
    return hub_cache / repo_folder_name(repo_id=validate_repo_id(repo), repo_type="model")


def _resolve_commit(repo_dir: Path, repo: str, snapshot: str, filename: str) -> str:
    """Turn a ref name or commit hash into the commit whose snapshot folder exists."""
    ref_file = repo_dir / "refs" / snapshot
    try:
        commit = ref_file.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        commit = None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileNotFoundError(
            repo, snapshot, filename, f"cannot read ref file {ref_file}: {exc}"
        ) from exc
    if commit is None:
        # Not a ref: it may be a commit hash with its own snapshot folder.
        if "/" not in snapshot and (repo_dir / "snapshots" / snapshot).is_dir():
            return snapshot
        raise ModelFileNotFoundError(
            repo, snapshot, filename, f"no ref or snapshot named {snapshot!r} in {repo_dir}"
        )
    # The ref's content becomes a path part too, so it gets the same scrutiny.
    if "/" in commit or not _is_safe_part(commit):
        raise ModelFileNotFoundError(
            repo, snapshot, filename, f"ref file {ref_file} holds {commit!r}, not a commit hash"
        )
    if not (repo_dir / "snapshots" / commit).is_dir():
        raise ModelFileNotFoundError(
            repo,
            snapshot,
            filename,
            f"ref {snapshot!r} points to commit {commit} but {repo_dir / 'snapshots' / commit}"
            " does not exist",
        )
    return commit


def resolve_model_file(hub_cache: Path, repo: str, filename: str, snapshot: str = "main") -> Path:
    """Find a model file in the local Hugging Face cache.

    Args:
        hub_cache: The hub cache folder (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``).
        repo: ``owner/name``.
        filename: The file's path inside the snapshot.
        snapshot: A ref name (``refs/<snapshot>`` holds the commit) or a
            commit hash (``snapshots/<snapshot>/`` exists).

    Returns:
        ``<repo folder>/snapshots/<commit>/<filename>``, not resolved: it is
        usually a symlink into ``blobs/`` and llama-server takes it as is.

    Raises:
        InvalidAliasError: ``repo``, ``filename`` or ``snapshot`` is malformed.
        ModelFileNotFoundError: The repo folder, the ref or snapshot, or the
            file is missing, or the file is a dangling symlink; the reason
            says which.
    """
    repo_dir = repo_cache_dir(hub_cache, repo)
    validate_filename(filename)
    validate_snapshot(snapshot)
    if not repo_dir.is_dir():
        raise ModelFileNotFoundError(
            repo, snapshot, filename, f"repo folder not in the cache at {repo_dir}"
        )
    commit = _resolve_commit(repo_dir, repo, snapshot, filename)
    path = repo_dir / "snapshots" / commit / filename
    if path.is_file():
        return path
    if path.is_symlink():
        raise ModelFileNotFoundError(
            repo,
            snapshot,
            filename,
            f"{path} is a symlink to {path.readlink()}, which does not exist"
            " (an incomplete or deleted download?)",
        )
    if path.is_dir():
        raise ModelFileNotFoundError(repo, snapshot, filename, f"{path} is a folder, not a file")
    raise ModelFileNotFoundError(
        repo, snapshot, filename, f"file not in snapshot {commit} (looked for {path})"
    )
