"""Aliases: named model + request defaults + llama-server args.

One YAML file per alias in ``BODHI_HOME/aliases/`` (see ``_alias_store``);
``llama3:instruct`` is stored as ``llama3--instruct.yaml``. Unknown or mistyped
``request_params`` are errors, never silently dropped: a typo would otherwise
change nothing without a word.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from bodhi_trio._config._hf_cache import validate_filename, validate_repo_id, validate_snapshot
from bodhi_trio._config._remote import RemoteSpec
from bodhi_trio._config._request_params import (
    REQUEST_PARAM_KEYS,
    RequestParams,
    apply_request_params,
    short_repr,
)
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
    "VECTOR_FLAGS",
    "RequestParams",
    "alias_filename",
    "apply_request_params",
    "validate_alias_name",
]

ALIAS_NAME_RE = r"[A-Za-z0-9._:-]{1,64}"
_ALIAS_NAME = re.compile(ALIAS_NAME_RE)

_ALIAS_KEYS = (
    "alias",
    "repo",
    "filename",
    "snapshot",
    "request_params",
    "context_params",
    "keep_alive_secs",
    "remote",
    "fallback",
)
_LOCAL_ONLY_KEYS = ("repo", "filename", "snapshot", "context_params", "keep_alive_secs")
_MAX_FALLBACKS = 8
# Beyond this a deadline (a clock reading plus the keep-alive) no longer fits a float,
# and 31 years is "never" in practice anyway: -1 says so.
KEEP_ALIVE_MAX = 10**9
# Keys BodhiApp wrote into alias files; tolerated so its files load unchanged.
_LEGACY_KEYS = frozenset({"source", "chat_template"})


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


def _check_keep_alive(value: object, source: str) -> int | None:
    """``keep_alive_secs``: an integer in ``-1..KEEP_ALIVE_MAX``; ``None`` = the default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAliasError(
            f"{source}: keep_alive_secs must be an integer (seconds; -1 never unloads),"
            f" got {short_repr(value)}",
            param="keep_alive_secs",
        )
    if not -1 <= value <= KEEP_ALIVE_MAX:
        raise InvalidAliasError(
            f"{source}: keep_alive_secs must be in [-1, {KEEP_ALIVE_MAX}] (-1 never unloads),"
            f" got {short_repr(value)}",
            param="keep_alive_secs",
        )
    return value


def _check_fallback(data: Mapping[str, Any], name: str, source: str) -> tuple[str, ...]:
    """``fallback``: other alias names, top level or in the ``remote:`` block (one place)."""
    remote = data.get("remote")
    nested = remote.get("fallback") if isinstance(remote, Mapping) else None
    top = data.get("fallback")
    if top is not None and nested is not None:
        raise InvalidAliasError(
            f"{source}: fallback is given twice (top level and in remote)", param="fallback"
        )
    raw = top if top is not None else nested
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list | tuple) or len(raw) > _MAX_FALLBACKS:
        raise InvalidAliasError(
            f"{source}: fallback must be a list of at most {_MAX_FALLBACKS} alias names,"
            f" got {short_repr(raw)}",
            param="fallback",
        )
    names: list[str] = []
    for item in raw:
        try:
            other = validate_alias_name(item)
        except InvalidAliasError as exc:
            raise InvalidAliasError(f"{source}: fallback: {exc.message}", param="fallback") from exc
        if other == name or other in names:
            raise InvalidAliasError(
                f"{source}: fallback names {other!r} twice or the alias itself", param="fallback"
            )
        names.append(other)
    return tuple(names)


VECTOR_FLAGS: frozenset[str] = frozenset(
    {
        "--pooling",
        "--embd-normalize",
        "--lora",
        "--lora-scaled",
        "--control-vector",
        "--control-vector-scaled",
        "--control-vector-layer-range",
        "--override-kv",
        "--rope-scaling",
        "--rope-scale",
        "--rope-freq-base",
        "--rope-freq-scale",
        "--yarn-orig-ctx",
        "--yarn-ext-factor",
        "--yarn-attn-factor",
        "--yarn-beta-slow",
        "--yarn-beta-fast",
    }
)
"""llama-server flags (canonical spellings) that change the vectors one model file gives."""


@attrs.frozen
class Alias:
    """A user alias: which model file to serve and how, or which remote server.

    Build one from untrusted data with :meth:`from_dict`, which validates
    every field; the store validates the name again before touching disk.

    ``keep_alive_secs`` is how long its model stays loaded after its last response
    (-1 never unloads, 0 unloads at once); ``None`` leaves it to ``BODHI_KEEP_ALIVE_SECS``.

    A remote alias (``remote`` set, see :mod:`._remote`) has no ``repo``, ``filename``,
    ``context_params`` or keep-alive. ``fallback`` names other aliases, local or remote,
    tried in order when this one cannot answer (one level: their own fallbacks are not
    followed).
    """

    alias: str
    repo: str
    filename: str
    snapshot: str = "main"
    request_params: RequestParams = attrs.field(factory=RequestParams)
    context_params: tuple[str, ...] = ()
    keep_alive_secs: int | None = None
    remote: RemoteSpec | None = None
    fallback: tuple[str, ...] = ()

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    @property
    def model_identity(self) -> str:
        """What model answers: the remote's model name or the repo and file."""
        if self.remote is not None:
            return f"remote:{self.remote.model or self.alias}"
        return f"{self.repo}/{self.filename}"

    @property
    def embedding_identity(self) -> str:
        """What vectors ``/v1/embeddings`` gives (embeddings fall back only to an alias of
        the same): the model, and for a local alias its snapshot and the ``context_params``
        that change the vectors of one file (:data:`VECTOR_FLAGS`: pooling, normalisation,
        adapters, RoPE). Args that change only speed or room (threads, context size, GPU
        layers) leave it alone. A remote's own args are its server's: its model name it is.
        """
        if self.remote is not None:
            return self.model_identity
        shaping = sorted(
            (
                arg
                for arg in parse_server_args(self.context_params, source=self.alias)
                if arg.flag in VECTOR_FLAGS
            ),
            key=lambda arg: arg.flag,  # stable: repeats of one flag keep their order
        )
        words = [word for arg in shaping for word in arg.to_argv()]
        return " ".join([f"{self.repo}@{self.snapshot}/{self.filename}", *words])

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
        if data.get("remote") is not None:
            return cls._remote_from_dict(data, source=source)
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
            fallback=_check_fallback(data, name, source),
        )

    @classmethod
    def _remote_from_dict(cls, data: Mapping[str, Any], *, source: str) -> Alias:
        local = [key for key in _LOCAL_ONLY_KEYS if data.get(key) not in (None, "", [], ())]
        if local:
            raise InvalidAliasError(
                f"{source}: a remote alias has no {', '.join(map(repr, local))}",
                param=local[0],
            )
        if data.get("alias") is None:
            raise InvalidAliasError(f"{source}: missing 'alias'", param="alias")
        try:
            name = validate_alias_name(data["alias"])
        except InvalidAliasError as exc:
            raise InvalidAliasError(f"{source}: {exc.message}", param=exc.param) from exc
        return cls(
            alias=name,
            repo="",
            filename="",
            request_params=RequestParams.from_dict(data.get("request_params"), source=source),
            remote=RemoteSpec.from_dict(data["remote"], source=source),
            fallback=_check_fallback(data, name, source),
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON shape; empty ``request_params``/``context_params`` and an unset
        ``keep_alive_secs`` omitted; a remote alias's key as its variable's name only."""
        if self.remote is not None:
            remote: dict[str, Any] = {"alias": self.alias, "remote": self.remote.to_dict()}
            if self.fallback:
                remote["remote"]["fallback"] = list(self.fallback)
            if params := self.request_params.to_dict():
                remote["request_params"] = params
            return remote
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
        if self.fallback:
            result["fallback"] = list(self.fallback)
        return result
