"""Settings (SPEC section 4): CLI flag > environment > ``settings.yaml`` > default.

Every setting has one name, its environment variable name (``BODHI_PORT``),
used in all three sources: CLI overrides are passed keyed by it and
``settings.yaml`` is a mapping keyed by it. Values are checked once, here;
an error names the key, the source and the bad value (never an API key).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import attrs
import yaml

from bodhi_trio._config._arg_policy import (
    allowed_flags_setting,
    allowed_paths_setting,
    check_settings_args,
)
from bodhi_trio._config._hf_cache import hub_cache_dir
from bodhi_trio._config._yaml_errors import yaml_error_summary
from bodhi_trio._exceptions import SettingsError
from bodhi_trio._llama._server_args import parse_server_args

__all__ = ["DEFAULT_PORT", "KNOWN_KEYS", "VARIANT_NAME", "Settings", "load_settings"]

logger = logging.getLogger("bodhi_trio.settings")

DEFAULT_PORT = 1135
_LLAMA_SERVER_PREFIX = "BODHI_LLAMA_SERVER_"
_VARIANT_ARGS_PREFIX = "BODHI_LLAMACPP_ARGS_"
# Variant names map 1:1 onto environment variable suffixes (BODHI_..._CUDA) and onto
# directory names in the runtime cache, so they are short like alias names (a 300-character
# one from PUT server/variant reached the file system and failed "File name too long").
VARIANT_NAME = re.compile(r"[a-z0-9_]{1,64}")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

# Keys with a fixed name; BODHI_LLAMA_SERVER_<V> and BODHI_LLAMACPP_ARGS_<V> come on top.
KNOWN_KEYS: frozenset[str] = frozenset(
    {
        "BODHI_HOME",
        "HF_HOME",
        "HF_HUB_CACHE",
        "BODHI_HOST",
        "BODHI_PORT",
        "BODHI_EXEC_VARIANT",
        "BODHI_LLAMA_SERVER",
        "BODHI_LLAMACPP_ARGS",
        "BODHI_KEEP_ALIVE_SECS",
        "BODHI_SSE_KEEPALIVE_SECS",
        "BODHI_STARTUP_TIMEOUT_SECS",
        "BODHI_UPSTREAM_IDLE_TIMEOUT_SECS",
        "BODHI_DRAIN_TIMEOUT_SECS",
        "BODHI_STOP_GRACE_SECS",
        "BODHI_API_KEYS",
        "BODHI_ADMIN_KEYS",
        "BODHI_MAX_BODY_BYTES",
        "BODHI_MAX_CONNECTIONS",
        "BODHI_ALLOWED_ORIGINS",
        "BODHI_INSECURE",
        "BODHI_ALLOWED_CONTEXT_FLAGS",
        "BODHI_ALLOWED_PATHS",
    }
)
_SECRET_KEYS = frozenset({"BODHI_API_KEYS", "BODHI_ADMIN_KEYS"})
_NO_ARGS: tuple[str, ...] = ()

_T = TypeVar("_T")


def _frozen_paths(value: Mapping[str, Path]) -> Mapping[str, Path]:
    return MappingProxyType(dict(value))


def _frozen_args(value: Mapping[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType(dict(value))


@attrs.frozen
class Settings:
    """The resolved settings of one bodhi-trio process.

    Attributes:
        home: ``BODHI_HOME``.
        hf_home: ``HF_HOME``.
        hub_cache: The Hugging Face hub cache (``HF_HUB_CACHE`` or ``HF_HOME/hub``).
        host: Address the HTTP server binds.
        port: Port the HTTP server binds; 0 means any free port.
        exec_variant: The llama-server variant to run (lower case).
        llama_server: Explicitly configured binary per variant (lower case).
        llamacpp_args: The common llama-server args, as given (not tokenized).
        llamacpp_args_variants: The args per variant (lower case), as given.
        keep_alive_secs: Idle unload: -1 never, 0 right after each response.
        sse_keepalive_secs: Seconds without bytes before ``: keep-alive``; 0 off.
        startup_timeout_secs: Seconds without child output or progress at startup.
        upstream_idle_timeout_secs: Seconds a loaded child may leave its health check or a
            response unanswered (while it works on nothing) before it counts as hung; 0 off.
        drain_timeout_secs: How long a swap waits for in-flight responses.
        stop_grace_secs: Child TERM -> KILL grace.
        api_keys: Bearer tokens for inference and reading; the admin keys too when
            ``admin_keys`` is empty. Never in ``repr``.
        admin_keys: Bearer tokens for every route (SPEC section 15). No keys of either
            kind means no auth. Never in ``repr``.
        max_body_bytes: Largest accepted request body.
        max_connections: Most client connections served at once (more get 503); 0 means
            derived from the open-files limit (see ``_fd_limits.connection_limit``).
        allowed_origins: Extra web origins allowed to call the server.
        insecure: Allow a non-loopback bind without API keys.
        allowed_context_flags: Refused llama-server flags the operator allows (see
            ``_arg_policy``); reserved flags cannot be allowed.
        allowed_paths: Directories, besides the HF hub cache and ``BODHI_HOME``, that
            path values of llama-server flags may point into.
    """

    home: Path
    hf_home: Path
    hub_cache: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    exec_variant: str = "cpu"
    llama_server: Mapping[str, Path] = attrs.field(factory=dict, converter=_frozen_paths)
    llamacpp_args: tuple[str, ...] = ()
    llamacpp_args_variants: Mapping[str, tuple[str, ...]] = attrs.field(
        factory=dict, converter=_frozen_args
    )
    keep_alive_secs: int = 300
    sse_keepalive_secs: float = 15.0
    startup_timeout_secs: float = 120.0
    upstream_idle_timeout_secs: float = 120.0
    drain_timeout_secs: float = 300.0
    stop_grace_secs: float = 5.0
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=lambda keys: f"<{len(keys)} hidden>")
    admin_keys: tuple[str, ...] = attrs.field(default=(), repr=lambda keys: f"<{len(keys)} hidden>")
    max_body_bytes: int = 32 * 1024 * 1024
    max_connections: int = 0
    allowed_origins: tuple[str, ...] = ()
    insecure: bool = False
    allowed_context_flags: tuple[str, ...] = ()
    allowed_paths: tuple[Path, ...] = ()

    @property
    def aliases_dir(self) -> Path:
        """``BODHI_HOME/aliases``: one YAML file per alias."""
        return self.home / "aliases"

    @property
    def logs_dir(self) -> Path:
        """``BODHI_HOME/logs``."""
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        """``BODHI_HOME/run``: run state such as child pid files."""
        return self.home / "run"

    @property
    def settings_file(self) -> Path:
        """``BODHI_HOME/settings.yaml``."""
        return self.home / "settings.yaml"

    def server_args_for(self, variant: str) -> tuple[str, ...]:
        """The variant tier of llama-server args (``BODHI_LLAMACPP_ARGS_<VARIANT>``)."""
        return self.llamacpp_args_variants.get(variant.lower(), ())

    def binary_for(self, variant: str) -> Path | None:
        """The explicitly configured llama-server binary for ``variant``, if any."""
        return self.llama_server.get(variant.lower())


@attrs.frozen
class _Sources:
    """The three sources, highest precedence first, with labels for messages."""

    layers: tuple[tuple[str, Mapping[str, object]], ...]

    def lookup(self, key: str) -> tuple[object, str] | None:
        for label, values in self.layers:
            if key in values:
                return values[key], label
        return None

    def keys_with_prefix(self, prefix: str) -> set[str]:
        return {key for _, values in self.layers for key in values if key.startswith(prefix)}


def _error(key: str, source: str, value: object, expected: str) -> SettingsError:
    shown = "(value hidden)" if key in _SECRET_KEYS else repr(value)
    return SettingsError(f"{key} from {source}: {expected}, got {shown}", param=key)


def _to_int(key: str, value: object, source: str, minimum: int, maximum: int | None) -> int:
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer {minimum}..{maximum}"
    if isinstance(value, bool):
        raise _error(key, source, value, expected)
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise _error(key, source, value, expected) from None
    elif isinstance(value, int):
        number = value
    else:
        raise _error(key, source, value, expected)
    if number < minimum or (maximum is not None and number > maximum):
        raise _error(key, source, value, expected)
    return number


def _to_float(key: str, value: object, source: str, *, positive: bool = False) -> float:
    expected = "a number of seconds > 0" if positive else "a number of seconds >= 0"
    if isinstance(value, bool):
        raise _error(key, source, value, expected)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _error(key, source, value, expected) from None
    elif isinstance(value, int | float):
        number = float(value)
    else:
        raise _error(key, source, value, expected)
    if math.isnan(number) or number < 0 or (positive and number == 0):
        raise _error(key, source, value, expected)
    return number


def _to_str(key: str, value: object, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(key, source, value, "a non-empty string")
    return value.strip()


def _to_path(key: str, value: object, source: str) -> Path:
    if isinstance(value, Path):
        return value.expanduser()
    return Path(_to_str(key, value, source)).expanduser()


def _to_bool(key: str, value: object, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _error(key, source, value, "true or false")


def _to_list(key: str, value: object, source: str) -> tuple[str, ...]:
    """A comma list (string) or a list of strings; blanks dropped."""
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise _error(key, source, value, "a comma-separated string or a list of strings")
    if not all(isinstance(item, str) for item in items):
        raise _error(key, source, value, "a comma-separated string or a list of strings")
    return tuple(item.strip() for item in items if isinstance(item, str) and item.strip())


def _to_args(key: str, value: object, source: str) -> tuple[str, ...]:
    """llama-server args as given; parsed once now so mistakes fail at startup."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _error(key, source, value, "a string or a list of strings")
    args = tuple(item for item in value if item.strip())
    parse_server_args(args, source=f"{key} ({source})")
    return args


def _to_variant(key: str, value: object, source: str) -> str:
    variant = _to_str(key, value, source).lower()
    if len(variant) > 64:
        raise _error(key, source, value, "a variant name of at most 64 characters")
    if VARIANT_NAME.fullmatch(variant) is None:
        raise _error(key, source, value, "a variant name of letters, digits and '_'")
    return variant


def _read_settings_file(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(
            f"settings file {path} is not valid YAML: {yaml_error_summary(exc)}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"settings file {path} must be a mapping of setting names (e.g. BODHI_PORT: 8080),"
            f" got {type(data).__name__}"
        )
    result: dict[str, object] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not _is_known(key):
            logger.warning("settings file %s: unknown setting %r is ignored", path, key)
        elif key == "BODHI_HOME":
            logger.warning("settings file %s: BODHI_HOME cannot be set from inside it", path)
        else:
            result[key] = value
    return result


def _is_known(key: str) -> bool:
    if key in KNOWN_KEYS:
        return True
    suffix = _variant_suffix(key)
    return bool(suffix) and VARIANT_NAME.fullmatch(suffix) is not None


def _variant_suffix(key: str) -> str:
    for prefix in (_LLAMA_SERVER_PREFIX, _VARIANT_ARGS_PREFIX):
        if key.startswith(prefix):
            return key[len(prefix) :].lower()
    return ""


def _resolve_home(home: Path | None, sources: _Sources) -> Path:
    if home is not None:
        return home.expanduser()
    found = sources.lookup("BODHI_HOME")
    if found is None:
        return Path.home() / ".cache" / "bodhi-trio"
    return _to_path("BODHI_HOME", found[0], found[1])


def load_settings(
    *,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Resolve the settings from CLI overrides, environment, settings file and defaults.

    Args:
        home: ``BODHI_HOME`` given explicitly (``--home``); wins over everything.
        env: The environment; ``os.environ`` by default. Empty values count as unset.
        overrides: CLI flags keyed by env name, e.g. ``{"BODHI_PORT": 8080}``;
            a ``None`` value means the flag was not given.

    Returns:
        The validated settings.

    Raises:
        SettingsError: A value has the wrong type or is out of range (the
            message names key, source and value), an override key is unknown,
            or ``settings.yaml`` is unreadable, not YAML or not a mapping.
        ServerArgsError: llama-server args that cannot be used (reserved or
            refused flags, paths outside the allowed directories, bad quoting).
    """
    # An empty environment variable counts as unset, as shells make that easy to leave behind.
    environ = {key: value for key, value in (os.environ if env is None else env).items() if value}
    cli = {key: value for key, value in (overrides or {}).items() if value is not None}
    for key in cli:
        if not _is_known(key):
            raise SettingsError(f"unknown setting {key!r} from the command line", param=key)
    early = _Sources((("the command line", cli), ("the environment", environ)))
    resolved_home = _resolve_home(home, early)
    settings_path = resolved_home / "settings.yaml"
    sources = _Sources(
        (
            ("the command line", cli),
            ("the environment", environ),
            (f"settings file {settings_path}", _read_settings_file(settings_path)),
        )
    )

    def get(key: str, parse: Callable[[str, object, str], _T], default: _T) -> _T:
        found = sources.lookup(key)
        return default if found is None else parse(key, found[0], found[1])

    hf_home = get("HF_HOME", _to_path, Path.home() / ".cache" / "huggingface")
    exec_variant = get("BODHI_EXEC_VARIANT", _to_variant, "cpu")

    llama_server: dict[str, Path] = {}
    generic_binary = get("BODHI_LLAMA_SERVER", _to_path, None)
    if generic_binary is not None:
        llama_server[exec_variant] = generic_binary
    for key in sorted(sources.keys_with_prefix(_LLAMA_SERVER_PREFIX)):
        if _is_known(key):  # environment keys are not pre-filtered
            # A per-variant binary is more specific, so it wins over the generic one.
            llama_server[_variant_suffix(key)] = get(key, _to_path, Path())
    variant_args = {
        _variant_suffix(key): get(key, _to_args, _NO_ARGS)
        for key in sorted(sources.keys_with_prefix(_VARIANT_ARGS_PREFIX))
        if _is_known(key)
    }

    def seconds(key: str, default: float, *, positive: bool = False) -> float:
        return get(key, lambda k, v, s: _to_float(k, v, s, positive=positive), default)

    settings = Settings(
        home=resolved_home,
        hf_home=hf_home,
        hub_cache=get("HF_HUB_CACHE", _to_path, hub_cache_dir(hf_home)),
        host=get("BODHI_HOST", _to_str, "127.0.0.1"),
        port=get("BODHI_PORT", lambda k, v, s: _to_int(k, v, s, 0, 65535), DEFAULT_PORT),
        exec_variant=exec_variant,
        llama_server=llama_server,
        llamacpp_args=get("BODHI_LLAMACPP_ARGS", _to_args, _NO_ARGS),
        llamacpp_args_variants=variant_args,
        keep_alive_secs=get(
            "BODHI_KEEP_ALIVE_SECS", lambda k, v, s: _to_int(k, v, s, -1, None), 300
        ),
        sse_keepalive_secs=seconds("BODHI_SSE_KEEPALIVE_SECS", 15.0),
        startup_timeout_secs=seconds("BODHI_STARTUP_TIMEOUT_SECS", 120.0, positive=True),
        upstream_idle_timeout_secs=seconds("BODHI_UPSTREAM_IDLE_TIMEOUT_SECS", 120.0),
        drain_timeout_secs=seconds("BODHI_DRAIN_TIMEOUT_SECS", 300.0),
        stop_grace_secs=seconds("BODHI_STOP_GRACE_SECS", 5.0),
        api_keys=get("BODHI_API_KEYS", _to_list, _NO_ARGS),
        admin_keys=get("BODHI_ADMIN_KEYS", _to_list, _NO_ARGS),
        max_body_bytes=get(
            "BODHI_MAX_BODY_BYTES", lambda k, v, s: _to_int(k, v, s, 1, None), 32 * 1024 * 1024
        ),
        max_connections=get("BODHI_MAX_CONNECTIONS", lambda k, v, s: _to_int(k, v, s, 0, None), 0),
        allowed_origins=get("BODHI_ALLOWED_ORIGINS", _to_list, _NO_ARGS),
        insecure=get("BODHI_INSECURE", _to_bool, False),
        allowed_context_flags=get(
            "BODHI_ALLOWED_CONTEXT_FLAGS",
            lambda k, v, s: allowed_flags_setting(k, _to_list(k, v, s), s),
            _NO_ARGS,
        ),
        allowed_paths=get(
            "BODHI_ALLOWED_PATHS",
            lambda k, v, s: allowed_paths_setting(k, _to_list(k, v, s), s),
            (),
        ),
    )
    # Needs the hub cache, home and allowed paths, so it runs once they are all known.
    check_settings_args(settings)
    return settings
