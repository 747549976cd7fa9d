"""The alias directory: one YAML file per alias, read and written safely.

A lookup reads only the one file it needs; a bad file is reported and skipped
without breaking the others; writes are atomic, and the temp file of a write that
died half-way is swept by the next :meth:`AliasStore.load` (at start, at the latest).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import yaml

from bodhi_trio._config._aliases import Alias, alias_filename, validate_alias_name
from bodhi_trio._config._arg_policy import ArgPolicy
from bodhi_trio._config._yaml_errors import yaml_error_summary
from bodhi_trio._exceptions import (
    AliasExistsError,
    AliasNotFoundError,
    ConfigError,
    InvalidAliasError,
    ServerArgsError,
)

if TYPE_CHECKING:
    from bodhi_trio._config._settings import Settings

__all__ = ["AliasFileProblem", "AliasStore"]

logger = logging.getLogger("bodhi_trio.aliases")

# What _write's mkstemp(prefix=".<file>.") names its temp files: 8 characters follow.
_TEMP_FILE = re.compile(r"\..+\.yaml\.[a-z0-9_]{8}")
STALE_TEMP_SECS = 60.0
"""A temp file older than this is left from a write that died; a younger one may be
another process's write in progress (which takes milliseconds) and is left alone."""


@attrs.frozen
class AliasFileProblem:
    """An alias file that was skipped, and why."""

    path: Path
    reason: str


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


@attrs.define(eq=False)
class AliasStore:
    """The alias files in one directory (``BODHI_HOME/aliases``).

    Plain synchronous file I/O, called inline from the event loop: a lookup of an
    alias already parsed costs one ``stat``. Writes are atomic (temp file in the
    same directory, then rename), so a reader never sees half a file.

    With an ``arg_policy`` (:meth:`for_settings` gives the server's), every alias
    read or written must pass it too: ``context_params`` that it refuses make a
    file invalid and a write fail before anything is written.
    """

    directory: Path
    arg_policy: ArgPolicy | None = attrs.field(default=None, kw_only=True)
    _parsed: dict[Path, tuple[tuple[int, int, int], Alias]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    _found: dict[str, tuple[str, tuple[int, int, int], Alias]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    """By name, what :meth:`get` found last: the file, its stamp, the alias. A request's
    lookup is then one ``os.stat`` (the name's checks and the path were done already);
    only names that were found are kept, so it holds no more than the aliases there are."""

    @classmethod
    def for_settings(cls, settings: Settings) -> AliasStore:
        """The store of ``settings.aliases_dir``, checking aliases with its :class:`ArgPolicy`."""
        return cls(settings.aliases_dir, arg_policy=ArgPolicy.from_settings(settings))

    def _check_args(self, alias: Alias, *, prefix: str = "") -> None:
        """Raise InvalidAliasError if the policy refuses ``alias``'s ``context_params``."""
        if self.arg_policy is None:
            return
        try:
            self.arg_policy.check(
                alias.context_params, source=f"{prefix}alias {alias.alias!r} context_params"
            )
        except ServerArgsError as exc:
            raise InvalidAliasError(exc.message, param="context_params") from exc

    def path_for(self, name: str) -> Path:
        """The file that holds alias ``name``.

        Raises:
            InvalidAliasError: ``name`` is not a valid alias name.
        """
        return self.directory / alias_filename(name)

    def _read(self, path: Path) -> Alias:
        """Parse one file; every failure except a missing file is InvalidAliasError.

        Parsed aliases are kept per file and reused while the file's inode, size and
        mtime stay the same (writes replace the file, so they always change the inode):
        a request costs one ``stat``, not a YAML parse.
        """
        stat = path.stat()
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        alias = self._parse(path)
        self._parsed[path] = (stamp, alias)
        return alias

    def _parse(self, path: Path) -> Alias:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidAliasError(f"{path}: not UTF-8 text ({exc})") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidAliasError(f"{path}: not valid YAML: {yaml_error_summary(exc)}") from exc
        alias = Alias.from_dict(data, source=str(path))
        self._check_args(alias, prefix=f"{path}: ")
        return alias

    def load(self) -> tuple[list[Alias], list[AliasFileProblem]]:
        """Read every alias file.

        A file that cannot be used is skipped, logged as a warning and returned
        as a problem; it never hides the other aliases. Only ``*.yaml`` files
        count; dotfiles are ignored, and this store's temp files older than
        :data:`STALE_TEMP_SECS` (left by a process that died mid-write) are removed.

        Returns:
            The good aliases sorted by name, and the problems sorted by path.

        Raises:
            ConfigError: The directory exists but cannot be listed.
        """
        try:
            entries = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            raise ConfigError(
                f"cannot list alias directory {self.directory}: {_os_reason(exc)}"
            ) from exc
        aliases: list[Alias] = []
        problems: list[AliasFileProblem] = []
        for path in entries:
            if _TEMP_FILE.fullmatch(path.name):
                self._remove_if_stale(path)
                continue
            if path.name.startswith(".") or path.suffix not in {".yaml", ".yml"}:
                continue
            try:
                if path.suffix == ".yml":
                    raise InvalidAliasError("alias files must end in .yaml; this one is ignored")
                alias = self._read(path)
                expected = alias_filename(alias.alias)
                if path.name != expected:
                    raise InvalidAliasError(
                        f"holds alias {alias.alias!r}, which belongs in {expected!r}"
                    )
            except InvalidAliasError as exc:
                # The warning names the file already; keep the reason itself short.
                problems.append(AliasFileProblem(path, exc.message.removeprefix(f"{path}: ")))
            except OSError as exc:
                problems.append(AliasFileProblem(path, f"cannot read: {_os_reason(exc)}"))
            else:
                aliases.append(alias)
        for problem in problems:
            logger.warning("skipping alias file %s: %s", problem.path, problem.reason)
        aliases.sort(key=lambda alias: alias.alias)
        return aliases, problems

    @staticmethod
    def _remove_if_stale(path: Path) -> None:
        try:
            if time.time() - path.stat().st_mtime < STALE_TEMP_SECS:
                return
            path.unlink()
        except OSError:
            return  # gone already (another sweeper), or not ours to remove: leave it
        logger.info("removed %s, left by an alias write that was interrupted", path)

    def _read_existing(self, name: str) -> Alias | None:
        """The alias stored in ``name``'s file, or None if there is no file.

        Raises:
            InvalidAliasError: The file exists but is corrupt.
            ConfigError: The file cannot be read.
        """
        path = self.path_for(name)
        try:
            return self._read(path)
        except FileNotFoundError:
            return None
        except InvalidAliasError as exc:
            raise InvalidAliasError(f"invalid alias file {exc.message}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read alias file {path}: {_os_reason(exc)}") from exc

    def get(self, name: str) -> Alias:
        """The alias called ``name``, reading only its own file.

        Raises:
            AliasNotFoundError: There is no such alias, ``name`` is not a valid
                alias name, or the file holds a different alias that maps to
                the same file (``a:b`` for ``a--b``).
            InvalidAliasError: The file is corrupt.
            ConfigError: The file cannot be read.
        """
        found = self._found.get(name)
        if found is not None:
            where, stamp, known = found
            try:
                stat = os.stat(where)
            except OSError:
                pass
            else:
                if (stat.st_ino, stat.st_size, stat.st_mtime_ns) == stamp:
                    return known
            del self._found[name]
        self._require_possible_name(name)
        alias = self._read_existing(name)
        if alias is None or self._is_other_alias_in_same_file(alias, name):
            raise AliasNotFoundError(name)
        if alias.alias != name:
            raise InvalidAliasError(
                f"alias file {self.path_for(name)} holds alias {alias.alias!r}, not {name!r}"
            )
        path = self.path_for(name)
        stamp, parsed = self._parsed[path]
        if parsed is alias:
            self._found[name] = (os.fspath(path), stamp, alias)
        return alias

    @staticmethod
    def _require_possible_name(name: str) -> None:
        """A lookup of a name no alias can have is a plain "not found" (404, not 400)."""
        try:
            validate_alias_name(name)
        except InvalidAliasError:
            raise AliasNotFoundError(name) from None

    @staticmethod
    def _is_other_alias_in_same_file(stored: Alias, name: str) -> bool:
        """``a:b`` stored where ``a--b`` is looked up: a real alias, just not this one."""
        return stored.alias != name and alias_filename(stored.alias) == alias_filename(name)

    def _conflict(self, alias: Alias, existing: Alias) -> AliasExistsError:
        filename = alias_filename(alias.alias)
        if existing.alias == alias.alias:
            return AliasExistsError(f"alias {alias.alias!r} already exists", param="alias")
        return AliasExistsError(
            f"alias {alias.alias!r} conflicts with existing alias {existing.alias!r}:"
            f" both are stored in {filename} (':' is written as '--')",
            param="alias",
        )

    def _forget(self, path: Path) -> None:
        """Drop what is kept of ``path``'s alias: the store just changed the file. Its stamp
        alone cannot tell: a new file may get the old one's inode number, size and (on a
        kernel with coarse timestamps) mtime."""
        self._parsed.pop(path, None)
        where = os.fspath(path)
        for name in [name for name, found in self._found.items() if found[0] == where]:
            del self._found[name]

    def _write(self, alias: Alias, *, replace: bool) -> Path:
        self._check_args(alias)  # before anything touches the disk
        path = self.path_for(alias.alias)
        text = yaml.safe_dump(
            alias.to_dict(), sort_keys=False, allow_unicode=False, default_flow_style=False
        )
        tmp_name: str | None = None
        exists = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # A dotfile, so a crash mid-write leaves nothing that load() reads.
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.directory)
            with os.fdopen(fd, "w", encoding="utf-8") as tmp:
                tmp.write(text)
                tmp.flush()
                os.fsync(tmp.fileno())
            if replace:
                os.replace(tmp_name, path)
            else:
                # link() refuses to overwrite, so two concurrent creates cannot
                # both succeed (a check-then-rename could).
                try:
                    os.link(tmp_name, path)
                except FileExistsError:
                    exists = True
        except OSError as exc:
            raise ConfigError(
                f"cannot write alias file {path}: {_os_reason(exc)}"
                f" (check that {self.directory} is a writable directory)"
            ) from exc
        finally:
            if tmp_name is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name)
            self._forget(path)
        if exists:
            try:
                existing = self._read_existing(alias.alias) or alias
            except InvalidAliasError:
                existing = alias  # a corrupt file still occupies the name
            raise self._conflict(alias, existing)
        return path

    def create(self, alias: Alias) -> Path:
        """Store a new alias.

        Returns:
            The file written.

        Raises:
            AliasExistsError: Its file already exists, whether it holds the
                same name or one that maps to the same file (``a:b``/``a--b``).
            InvalidAliasError: The arg policy refuses its ``context_params``.
            ConfigError: The directory or file cannot be written.
        """
        return self._write(alias, replace=False)

    def put(self, alias: Alias) -> Path:
        """Create or replace an alias (a corrupt file of that name is replaced).

        Raises:
            AliasExistsError: The file holds a different alias that maps to the
                same file name; replacing it would lose that alias.
            InvalidAliasError: The arg policy refuses its ``context_params``.
            ConfigError: The directory or file cannot be written.
        """
        try:
            existing = self._read_existing(alias.alias)
        except InvalidAliasError:
            existing = None  # a corrupt file is exactly what put() may fix
        if existing is not None and self._is_other_alias_in_same_file(existing, alias.alias):
            raise self._conflict(alias, existing)
        return self._write(alias, replace=True)

    def delete(self, name: str) -> None:
        """Remove alias ``name`` (a corrupt file of that name is removed too).

        Raises:
            AliasNotFoundError: No such alias (or not a valid alias name).
            ConfigError: The file cannot be removed.
        """
        self._require_possible_name(name)
        path = self.path_for(name)
        try:
            existing = self._read_existing(name)
        except InvalidAliasError:
            existing = None
        if existing is not None and self._is_other_alias_in_same_file(existing, name):
            raise AliasNotFoundError(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise AliasNotFoundError(name) from None
        except OSError as exc:
            raise ConfigError(f"cannot delete alias file {path}: {_os_reason(exc)}") from exc
        finally:
            self._forget(path)
