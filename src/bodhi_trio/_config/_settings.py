"""Settings: CLI flag > environment > ``settings.yaml`` > default.

Every setting has one name, its environment variable name (``BODHI_PORT``),
used in all three sources: CLI overrides are passed keyed by it and
``settings.yaml`` is a mapping keyed by it. Values are checked once, here (with
the converters of :mod:`._setting_values`); an error names the key, the source
and the bad value (never an API key). Each default is written once, in
:class:`Settings`, or for the child's, in ``_llama._launch``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

import attrs

from bodhi_trio._config._aliases import KEEP_ALIVE_MAX
from bodhi_trio._config._arg_policy import (
    allowed_flags_setting,
    allowed_paths_setting,
    check_settings_args,
)
from bodhi_trio._config._budget import as_memory_budget, machine_memory_bytes, resolve_memory_budget
from bodhi_trio._config._hf_cache import hub_cache_dir
from bodhi_trio._config._remote import remote_key_envs_setting
from bodhi_trio._config._rpc_settings import (
    check_rpc_workers_bind,
    rpc_servers_setting,
    rpc_workers_setting,
)
from bodhi_trio._config._setting_sources import (
    SettingSources,
    one_name_each,
    read_settings_file,
    setting_name,
)
from bodhi_trio._config._setting_values import (
    VARIANT_NAME,
    as_args,
    as_bool,
    as_int,
    as_list,
    as_path,
    as_seconds,
    as_str,
    as_variant,
)
from bodhi_trio._exceptions import SettingsError
from bodhi_trio._llama._launch import (
    DEFAULT_STARTUP_TIMEOUT_SECS,
    DEFAULT_STOP_GRACE_SECS,
    DEFAULT_VARIANT,
)
from bodhi_trio._transport._whole import ANSWERS_BUDGET_BYTES

if TYPE_CHECKING:
    from bodhi_trio._llama._rpc_endpoints import RpcEndpoint

__all__ = ["DEFAULT_PORT", "KNOWN_KEYS", "VARIANT_NAME", "Settings", "load_settings"]

DEFAULT_PORT = 1135
_LLAMA_SERVER_PREFIX = "BODHI_LLAMA_SERVER_"
_VARIANT_ARGS_PREFIX = "BODHI_LLAMACPP_ARGS_"

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
        "BODHI_MAX_ANSWERS_BYTES",
        "BODHI_MAX_CONNECTIONS",
        "BODHI_CLIENT_WRITE_TIMEOUT_SECS",
        "BODHI_ALLOWED_ORIGINS",
        "BODHI_INSECURE",
        "BODHI_ALLOWED_CONTEXT_FLAGS",
        "BODHI_ALLOWED_PATHS",
        "BODHI_MAX_LOADED_MODELS",
        "BODHI_MEMORY_BUDGET",
        "BODHI_MAX_QUEUE",
        "BODHI_RPC_WORKERS",
        "BODHI_RPC_WORKERS_INSECURE",
        "BODHI_ALLOWED_RPC_SERVERS",
        "BODHI_REMOTE_KEY_ENVS",
    }
)
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
        admin_keys: Bearer tokens for every route. No keys of either kind means no
            auth. Never in ``repr``.
        max_body_bytes: Largest accepted request body.
        max_answers_bytes: The bytes of answers read whole (non-streamed completions,
            embeddings, translated answers) that requests in flight may hold together;
            a read past it is answered 503.
        max_connections: Most client connections served at once (more get 503); 0 means
            derived from the open-files limit (see ``_fd_limits.connection_limit``).
        client_write_timeout_secs: Seconds a client may take nothing of a response before
            its connection is closed (a write that makes no progress).
        allowed_origins: Extra web origins allowed to call the server.
        insecure: Allow a non-loopback bind without API keys.
        allowed_context_flags: Refused llama-server flags the operator allows (see
            ``_arg_policy``); reserved flags cannot be allowed.
        allowed_paths: Directories, besides the HF hub cache and ``BODHI_HOME``, that
            path values of llama-server flags may point into.
        max_loaded_models: Most children (loaded models) at once.
        memory_budget: ``BODHI_MEMORY_BUDGET`` as written (``8GiB``, ``75%``,
            ``unlimited``...), ``None`` if unset; :meth:`memory_budget_bytes` resolves it.
        max_queue: Most requests per model in flight at its child or waiting for it.
        rpc_workers: The ``rpc-server`` workers to start and supervise (``_rpc_settings``).
        rpc_workers_insecure: Let those workers bind beyond loopback.
        allowed_rpc_servers: Workers elsewhere that an alias's ``--rpc`` may name.
        remote_key_envs: Environment variables a remote alias's ``api_key_env`` may name
            (whoever may write aliases must not choose which of our secrets to send).
    """

    home: Path
    hf_home: Path
    hub_cache: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    exec_variant: str = DEFAULT_VARIANT
    llama_server: Mapping[str, Path] = attrs.field(factory=dict, converter=_frozen_paths)
    llamacpp_args: tuple[str, ...] = ()
    llamacpp_args_variants: Mapping[str, tuple[str, ...]] = attrs.field(
        factory=dict, converter=_frozen_args
    )
    keep_alive_secs: int = 300
    sse_keepalive_secs: float = 15.0
    startup_timeout_secs: float = DEFAULT_STARTUP_TIMEOUT_SECS
    upstream_idle_timeout_secs: float = 120.0
    drain_timeout_secs: float = 300.0
    stop_grace_secs: float = DEFAULT_STOP_GRACE_SECS
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=lambda keys: f"<{len(keys)} hidden>")
    admin_keys: tuple[str, ...] = attrs.field(default=(), repr=lambda keys: f"<{len(keys)} hidden>")
    max_body_bytes: int = 32 * 1024 * 1024
    max_answers_bytes: int = ANSWERS_BUDGET_BYTES
    max_connections: int = 0
    client_write_timeout_secs: float = 60.0
    allowed_origins: tuple[str, ...] = ()
    insecure: bool = False
    allowed_context_flags: tuple[str, ...] = ()
    allowed_paths: tuple[Path, ...] = ()
    max_loaded_models: int = 3
    memory_budget: str | None = None
    max_queue: int = 512
    rpc_workers: tuple[RpcEndpoint, ...] = ()
    rpc_workers_insecure: bool = False
    allowed_rpc_servers: tuple[RpcEndpoint, ...] = ()
    remote_key_envs: tuple[str, ...] = ()

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

    def child_base_environment(self) -> dict[str, str]:
        """This process's environment without the remote aliases' keys
        (:attr:`remote_key_envs`): what a llama-server or rpc-server child starts from
        (``child_environment`` then scrubs ours and HF's)."""
        remote_keys = frozenset(self.remote_key_envs)
        return {name: value for name, value in os.environ.items() if name not in remote_keys}

    def server_args_for(self, variant: str) -> tuple[str, ...]:
        """The variant tier of llama-server args (``BODHI_LLAMACPP_ARGS_<VARIANT>``)."""
        return self.llamacpp_args_variants.get(variant.lower(), ())

    def binary_for(self, variant: str) -> Path | None:
        """The explicitly configured llama-server binary for ``variant``, if any."""
        return self.llama_server.get(variant.lower())

    def memory_budget_bytes(
        self, variant: str | None = None, *, total_memory: int | None = None
    ) -> int | None:
        """The memory budget in bytes for ``variant``, or ``None`` for no limit.

        Unset, the ``cpu`` variant gets 80% of the machine's memory, others no limit.

        Args:
            variant: The exec variant; :attr:`exec_variant` if not given.
            total_memory: The machine's memory in bytes; read from the system
                (:func:`machine_memory_bytes`) if not given. Unknown, a percentage
                means no limit.
        """
        if total_memory is None:
            total_memory = machine_memory_bytes()
        return resolve_memory_budget(self.memory_budget, variant or self.exec_variant, total_memory)


# The class's own defaults, read by load_settings so that each is written once (in the
# class body). The three paths have no fixed default: they are placeholders here.
_DEFAULTS = Settings(home=Path(), hf_home=Path(), hub_cache=Path())


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


def _one_spelling(key: str) -> str:
    """``key`` with a variant key's variant in capitals (``BODHI_LLAMA_SERVER_cuda`` is
    ``BODHI_LLAMA_SERVER_CUDA``), so that two spellings of one variant's setting are one
    setting and the sources' precedence decides between them, not their spelling."""
    suffix = _variant_suffix(key)
    return key[: len(key) - len(suffix)] + suffix.upper() if suffix and _is_known(key) else key


def _named(values: Mapping[str, object], label: str) -> dict[str, object]:
    """One source's values by :func:`_one_spelling` (raises SettingsError for two spellings
    of one setting)."""
    return one_name_each(((_one_spelling(k), k, v) for k, v in values.items()), label)


def _file_name(key: str) -> str | None:
    """The setting a ``settings.yaml`` key names, in :func:`_one_spelling`; None if none."""
    name = setting_name(key, _is_known)
    return None if name is None else _one_spelling(name)


def _resolve_home(home: Path | None, sources: SettingSources) -> Path:
    if home is not None:
        return home.expanduser()
    found = sources.lookup("BODHI_HOME")
    if found is None:
        return Path.home() / ".cache" / "bodhi-trio"
    return as_path("BODHI_HOME", found[0], found[1])


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
    given = {key: value for key, value in (os.environ if env is None else env).items() if value}
    environ = _named(given, "the environment")
    flags = {key: value for key, value in (overrides or {}).items() if value is not None}
    for key in flags:
        if not _is_known(key):
            raise SettingsError(f"unknown setting {key!r} from the command line", param=key)
    cli = _named(flags, "the command line")
    early = SettingSources((("the command line", cli), ("the environment", environ)))
    resolved_home = _resolve_home(home, early)
    settings_path = resolved_home / "settings.yaml"
    sources = SettingSources(
        (
            ("the command line", cli),
            ("the environment", environ),
            (f"settings file {settings_path}", read_settings_file(settings_path, _file_name)),
        )
    )

    def get(key: str, parse: Callable[[str, object, str], _T], default: _T) -> _T:
        # A key read here but not known would be dropped from settings.yaml with a warning
        # as "unknown": the setting would work from the environment only.
        assert _is_known(key), f"{key} is read but not in KNOWN_KEYS"
        found = sources.lookup(key)
        return default if found is None else parse(key, found[0], found[1])

    hf_home = get("HF_HOME", as_path, Path.home() / ".cache" / "huggingface")
    exec_variant = get("BODHI_EXEC_VARIANT", as_variant, _DEFAULTS.exec_variant)

    llama_server: dict[str, Path] = {}
    generic_binary = get("BODHI_LLAMA_SERVER", as_path, None)
    if generic_binary is not None:
        llama_server[exec_variant] = generic_binary
    for key in sorted(sources.keys_with_prefix(_LLAMA_SERVER_PREFIX)):
        if _is_known(key):  # environment keys are not pre-filtered
            # A per-variant binary is more specific, so it wins over the generic one.
            llama_server[_variant_suffix(key)] = get(key, as_path, Path())
    variant_args = {
        _variant_suffix(key): get(key, as_args, _NO_ARGS)
        for key in sorted(sources.keys_with_prefix(_VARIANT_ARGS_PREFIX))
        if _is_known(key)
    }

    def integer(key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        return get(key, lambda k, v, s: as_int(k, v, s, minimum, maximum), default)

    def seconds(key: str, default: float, *, positive: bool = False) -> float:
        return get(key, lambda k, v, s: as_seconds(k, v, s, positive=positive), default)

    settings = Settings(
        home=resolved_home,
        hf_home=hf_home,
        hub_cache=get("HF_HUB_CACHE", as_path, hub_cache_dir(hf_home)),
        host=get("BODHI_HOST", as_str, _DEFAULTS.host),
        port=integer("BODHI_PORT", _DEFAULTS.port, 0, 65535),
        exec_variant=exec_variant,
        llama_server=llama_server,
        llamacpp_args=get("BODHI_LLAMACPP_ARGS", as_args, _DEFAULTS.llamacpp_args),
        llamacpp_args_variants=variant_args,
        # Capped like an alias's keep_alive_secs: the idle deadline adds it to the clock.
        keep_alive_secs=integer(
            "BODHI_KEEP_ALIVE_SECS", _DEFAULTS.keep_alive_secs, -1, KEEP_ALIVE_MAX
        ),
        sse_keepalive_secs=seconds("BODHI_SSE_KEEPALIVE_SECS", _DEFAULTS.sse_keepalive_secs),
        startup_timeout_secs=seconds(
            "BODHI_STARTUP_TIMEOUT_SECS", _DEFAULTS.startup_timeout_secs, positive=True
        ),
        upstream_idle_timeout_secs=seconds(
            "BODHI_UPSTREAM_IDLE_TIMEOUT_SECS", _DEFAULTS.upstream_idle_timeout_secs
        ),
        drain_timeout_secs=seconds("BODHI_DRAIN_TIMEOUT_SECS", _DEFAULTS.drain_timeout_secs),
        stop_grace_secs=seconds("BODHI_STOP_GRACE_SECS", _DEFAULTS.stop_grace_secs),
        api_keys=get("BODHI_API_KEYS", as_list, _DEFAULTS.api_keys),
        admin_keys=get("BODHI_ADMIN_KEYS", as_list, _DEFAULTS.admin_keys),
        max_body_bytes=integer("BODHI_MAX_BODY_BYTES", _DEFAULTS.max_body_bytes, 1),
        max_answers_bytes=integer("BODHI_MAX_ANSWERS_BYTES", _DEFAULTS.max_answers_bytes, 1),
        max_connections=integer("BODHI_MAX_CONNECTIONS", _DEFAULTS.max_connections, 0),
        client_write_timeout_secs=seconds(
            "BODHI_CLIENT_WRITE_TIMEOUT_SECS", _DEFAULTS.client_write_timeout_secs, positive=True
        ),
        allowed_origins=get("BODHI_ALLOWED_ORIGINS", as_list, _DEFAULTS.allowed_origins),
        insecure=get("BODHI_INSECURE", as_bool, _DEFAULTS.insecure),
        allowed_context_flags=get(
            "BODHI_ALLOWED_CONTEXT_FLAGS",
            lambda k, v, s: allowed_flags_setting(k, as_list(k, v, s), s),
            _DEFAULTS.allowed_context_flags,
        ),
        allowed_paths=get(
            "BODHI_ALLOWED_PATHS",
            lambda k, v, s: allowed_paths_setting(k, as_list(k, v, s), s),
            _DEFAULTS.allowed_paths,
        ),
        max_loaded_models=integer("BODHI_MAX_LOADED_MODELS", _DEFAULTS.max_loaded_models, 1),
        memory_budget=get("BODHI_MEMORY_BUDGET", as_memory_budget, _DEFAULTS.memory_budget),
        max_queue=integer("BODHI_MAX_QUEUE", _DEFAULTS.max_queue, 1),
        rpc_workers=get("BODHI_RPC_WORKERS", rpc_workers_setting, _DEFAULTS.rpc_workers),
        rpc_workers_insecure=get(
            "BODHI_RPC_WORKERS_INSECURE", as_bool, _DEFAULTS.rpc_workers_insecure
        ),
        allowed_rpc_servers=get(
            "BODHI_ALLOWED_RPC_SERVERS", rpc_servers_setting, _DEFAULTS.allowed_rpc_servers
        ),
        remote_key_envs=get(
            "BODHI_REMOTE_KEY_ENVS",
            lambda k, v, s: remote_key_envs_setting(k, as_list(k, v, s), s),
            _DEFAULTS.remote_key_envs,
        ),
    )
    check_rpc_workers_bind(settings.rpc_workers, insecure=settings.rpc_workers_insecure)
    # Needs the hub cache, home and allowed paths, so it runs once they are all known.
    check_settings_args(settings)
    return settings
