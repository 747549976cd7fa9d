"""Aliases: named model + request defaults + llama-server args.

One YAML file per alias in ``BODHI_HOME/aliases/`` (see ``_alias_store``);
``llama3:instruct`` is stored as ``llama3--instruct.yaml``. Unknown or mistyped
``request_params`` are errors, never silently dropped: a typo would otherwise
change nothing without a word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from bodhi_trio._config._hf_cache import validate_filename, validate_repo_id, validate_snapshot
from bodhi_trio._exceptions import (
    InvalidAliasError,
    ServerArgsError,
)
from bodhi_trio._llama._server_args import parse_server_args

__all__ = [
    "ALIAS_NAME_RE",
    "KEEP_ALIVE_MAX",
    "REQUEST_PARAM_KEYS",
    "Alias",
    "RequestParams",
    "alias_filename",
    "apply_request_params",
    "validate_alias_name",
]

ALIAS_NAME_RE = r"[A-Za-z0-9._:-]{1,64}"
_ALIAS_NAME = re.compile(ALIAS_NAME_RE)

REQUEST_PARAM_KEYS: tuple[str, ...] = (
    "frequency_penalty",
    "max_tokens",
    "presence_penalty",
    "seed",
    "stop",
    "temperature",
    "top_p",
    "user",
)

_ALIAS_KEYS = (
    "alias",
    "repo",
    "filename",
    "snapshot",
    "request_params",
    "context_params",
    "keep_alive_secs",
)
# Beyond this a deadline (a clock reading plus the keep-alive) no longer fits a float,
# and 31 years is "never" in practice anyway: -1 says so.
KEEP_ALIVE_MAX = 10**9
# Keys BodhiApp wrote into alias files; tolerated so its files load unchanged.
_LEGACY_KEYS = frozenset({"source", "chat_template"})
_FLOAT_RANGES = {
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
}


def validate_alias_name(name: object) -> str:
    """Check an alias name: ``[A-Za-z0-9._:-]{1,64}``, not hidden, no ``..``.

    Raises:
        InvalidAliasError: The name is not a string or breaks a rule; the
            message says which.
    """
    if not isinstance(name, str):
        raise InvalidAliasError(
            f"alias name must be a string, got {type(name).__name__} {name!r} (quote it in YAML)",
            param="alias",
        )
    if not name:
        raise InvalidAliasError("alias name must not be empty", param="alias")
    if len(name) > 64:
        raise InvalidAliasError(
            f"alias name {name[:20]!r}... is {len(name)} characters long; the limit is 64",
            param="alias",
        )
    if _ALIAS_NAME.fullmatch(name) is None:
        bad = sorted({char for char in name if _ALIAS_NAME.fullmatch(char) is None})
        raise InvalidAliasError(
            f"alias name {name!r} has characters outside letters, digits, '.', '_', ':', '-':"
            f" {', '.join(repr(char) for char in bad)}",
            param="alias",
        )
    if ".." in name:
        raise InvalidAliasError(f"alias name {name!r} must not contain '..'", param="alias")
    if name.startswith("."):
        # It would be stored as a dotfile, which the store ignores.
        raise InvalidAliasError(f"alias name {name!r} must not start with '.'", param="alias")
    return name


def alias_filename(name: str) -> str:
    """The file name of an alias: ``llama3:instruct`` -> ``llama3--instruct.yaml``."""
    return validate_alias_name(name).replace(":", "--") + ".yaml"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_float(key: str, value: object, source: str) -> float:
    low, high = _FLOAT_RANGES[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidAliasError(
            f"{source}: request_params.{key} must be a number, got {value!r}", param=key
        )
    # Compare before any float conversion: an int beyond float range would overflow.
    if (isinstance(value, float) and math.isnan(value)) or not low <= value <= high:
        raise InvalidAliasError(
            f"{source}: request_params.{key} must be in [{low:g}, {high:g}], got {_short(value)}",
            param=key,
        )
    return float(value)


def _check_int(key: str, value: object, source: str, *, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAliasError(
            f"{source}: request_params.{key} must be an integer, got {value!r}", param=key
        )
    if minimum is not None and value < minimum:
        raise InvalidAliasError(
            f"{source}: request_params.{key} must be at least {minimum}, got {value!r}", param=key
        )
    return value


def _check_text(key: str, value: str, source: str) -> str:
    """``value`` if it can be sent on as UTF-8 JSON.

    ``json.loads`` turns ``"\\ud800"`` into a lone surrogate, which no UTF-8
    encoder takes: saved, it would make every request of the alias fail.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidAliasError(
            f"{source}: request_params.{key} holds a lone surrogate ({_short(value)}),"
            " which is not text",
            param=key,
        ) from None
    return value


def _check_stop(value: object, source: str) -> str | tuple[str, ...] | None:
    if isinstance(value, str):
        return _check_text("stop", value, source)
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        # An empty list means "no stop strings": nothing to fill in.
        return tuple(_check_text("stop", item, source) for item in value) or None
    raise InvalidAliasError(
        f"{source}: request_params.stop must be a string or a list of strings, got {value!r}",
        param="stop",
    )


def _check_keep_alive(value: object, source: str) -> int | None:
    """``keep_alive_secs``: an integer in ``-1..KEEP_ALIVE_MAX``; ``None`` = the default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAliasError(
            f"{source}: keep_alive_secs must be an integer (seconds; -1 never unloads),"
            f" got {_short(value)}",
            param="keep_alive_secs",
        )
    if not -1 <= value <= KEEP_ALIVE_MAX:
        raise InvalidAliasError(
            f"{source}: keep_alive_secs must be in [-1, {KEEP_ALIVE_MAX}] (-1 never unloads),"
            f" got {_short(value)}",
            param="keep_alive_secs",
        )
    return value


@attrs.frozen
class RequestParams:
    """Defaults an alias fills into requests that lack them; ``None`` = unset."""

    frequency_penalty: float | None = None
    max_tokens: int | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: str | tuple[str, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None

    @classmethod
    def from_dict(cls, data: object, *, source: str) -> RequestParams:
        """Validate ``request_params`` from an alias file or request body.

        Raises:
            InvalidAliasError: Not a mapping, an unknown key, or a value of the
                wrong type or out of range; the message names ``source`` and key.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidAliasError(
                f"{source}: request_params must be a mapping, got {type(data).__name__}",
                param="request_params",
            )
        unknown = sorted(str(key) for key in data if key not in REQUEST_PARAM_KEYS)
        if unknown:
            raise InvalidAliasError(
                f"{source}: unknown request_params key(s) {', '.join(map(repr, unknown))};"
                f" allowed: {', '.join(REQUEST_PARAM_KEYS)}",
                param="request_params",
            )
        values: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            if key in _FLOAT_RANGES:
                values[key] = _check_float(key, value, source)
            elif key == "max_tokens":
                values[key] = _check_int(key, value, source, minimum=1)
            elif key == "seed":
                values[key] = _check_int(key, value, source, minimum=None)
            elif key == "stop":
                values[key] = _check_stop(value, source)
            elif not isinstance(value, str):  # "user", the only key left
                raise InvalidAliasError(
                    f"{source}: request_params.user must be a string, got {value!r}", param=key
                )
            else:
                values[key] = _check_text(key, value, source)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The set fields, in :data:`REQUEST_PARAM_KEYS` order; ``stop`` as given."""
        result: dict[str, Any] = {}
        for key in REQUEST_PARAM_KEYS:
            value = getattr(self, key)
            if value is not None:
                result[key] = list(value) if isinstance(value, tuple) else value
        return result


def apply_request_params(request: Mapping[str, Any], params: RequestParams) -> dict[str, Any]:
    """Fill an alias's request defaults into a request body.

    Only keys absent from ``request`` are filled; a key present with ``null``
    counts as present. ``max_tokens`` is filled only when neither
    ``max_tokens`` nor ``max_completion_tokens`` is present. Other fields and
    their order are untouched; filled keys are appended.

    Returns:
        A new dict; ``request`` is not modified.
    """
    result = dict(request)
    for key, value in params.to_dict().items():
        if key in result:
            continue
        if key == "max_tokens" and "max_completion_tokens" in result:
            continue
        result[key] = value
    return result


@attrs.frozen
class Alias:
    """A user alias: which model file to serve and how.

    Build one from untrusted data with :meth:`from_dict`, which validates
    every field; the store validates the name again before touching disk.

    ``keep_alive_secs`` is how long its model stays loaded after its last response
    (-1 never unloads, 0 unloads at once); ``None`` leaves it to ``BODHI_KEEP_ALIVE_SECS``.
    """

    alias: str
    repo: str
    filename: str
    snapshot: str = "main"
    request_params: RequestParams = attrs.field(factory=RequestParams)
    context_params: tuple[str, ...] = ()
    keep_alive_secs: int | None = None

    @classmethod
    def from_dict(cls, data: object, *, source: str) -> Alias:
        """Validate an alias mapping (the shape of an alias file, see ``docs/configuration.md``).

        Args:
            data: The parsed YAML or JSON.
            source: Where it came from (a file path, "request body"), named in
                every error message together with the field.

        Raises:
            InvalidAliasError: Any field is missing, mistyped or invalid,
                including reserved flags in ``context_params``.
        """
        if not isinstance(data, Mapping):
            raise InvalidAliasError(f"{source}: expected a mapping, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in _ALIAS_KEYS and k not in _LEGACY_KEYS)
        if unknown:
            raise InvalidAliasError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}")
        for required in ("alias", "repo", "filename"):
            if data.get(required) is None:
                raise InvalidAliasError(f"{source}: missing {required!r}", param=required)
        try:
            name = validate_alias_name(data["alias"])
            repo = validate_repo_id(data["repo"])
            filename = validate_filename(data["filename"])
            # Only absent, null or "" mean the default: `snapshot: false` is a mistake.
            raw_snapshot = data.get("snapshot")
            snapshot = validate_snapshot("main" if raw_snapshot in (None, "") else raw_snapshot)
        except InvalidAliasError as exc:
            raise InvalidAliasError(f"{source}: {exc.message}", param=exc.param) from exc
        request_params = RequestParams.from_dict(data.get("request_params"), source=source)
        keep_alive_secs = _check_keep_alive(data.get("keep_alive_secs"), source)
        # Only absent or null mean none: `context_params: 0` or `false` is a mistake.
        raw_context = data.get("context_params")
        if raw_context is None:
            raw_context = ()
        if isinstance(raw_context, str):
            raw_context = (raw_context,)
        if not isinstance(raw_context, list | tuple) or not all(
            isinstance(item, str) for item in raw_context
        ):
            raise InvalidAliasError(
                f"{source}: context_params must be a list of strings, got {raw_context!r}",
                param="context_params",
            )
        try:
            parse_server_args(raw_context, source=f"{source}: alias {name!r} context_params")
        except ServerArgsError as exc:
            raise InvalidAliasError(exc.message, param="context_params") from exc
        return cls(
            alias=name,
            repo=repo,
            filename=filename,
            snapshot=snapshot,
            request_params=request_params,
            context_params=tuple(raw_context),
            keep_alive_secs=keep_alive_secs,
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON shape; empty ``request_params``/``context_params`` and an unset
        ``keep_alive_secs`` omitted."""
        result: dict[str, Any] = {
            "alias": self.alias,
            "repo": self.repo,
            "filename": self.filename,
            "snapshot": self.snapshot,
        }
        request_params = self.request_params.to_dict()
        if request_params:
            result["request_params"] = request_params
        if self.context_params:
            result["context_params"] = list(self.context_params)
        if self.keep_alive_secs is not None:
            result["keep_alive_secs"] = self.keep_alive_secs
        return result
