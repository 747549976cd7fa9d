"""What settings and aliases may tell llama-server.

llama-server has flags that run programs (``--tools``), write files
(``--log-file``), serve files (``--path``), fetch from the network (``-hf``),
change who may connect (``--ssl-*``, ``--cors-*``) or echo prompts and files
back (``--verbose``). Whoever may write an alias must not get those through
``context_params``. :class:`ArgPolicy` decides, flag by flag, after reading each
flag as llama.cpp does (:func:`._server_args.canonical_flag`):

* a flag of the pinned build (:mod:`._llama_flags`) is allowed, reserved or
  refused by its category; a refused one passes only when the operator lists it
  in ``BODHI_ALLOWED_CONTEXT_FLAGS``; a reserved one never does;
* a known flag must have exactly as many values as llama-server will take, so no
  value can be read as something else (``--lora --jinja`` would load a file
  called ``--jinja``);
* every path a flag takes must be absolute and resolve (symlinks and ``..``
  followed) inside the HF hub cache, ``BODHI_HOME`` (not its ``settings.yaml``
  or ``run/``) or a directory of ``BODHI_ALLOWED_PATHS``;
* a flag the pinned build does not define is passed on (that build refuses it
  at start; the test double and other builds may know it) unless its name looks
  like one of the refused kinds;
* ``--rpc`` (layers on llama.cpp RPC workers, which have no authentication) is a
  network flag let through when every ``host:port`` in its value is on this
  machine (127.0.0.0/8, ``localhost``), one of ``BODHI_RPC_WORKERS`` or listed
  in ``BODHI_ALLOWED_RPC_SERVERS``; each is read strictly
  (:func:`._rpc_endpoints.parse_rpc_endpoint`), so an endpoint is checked as
  llama-server will connect to it. Listing ``--rpc`` in
  ``BODHI_ALLOWED_CONTEXT_FLAGS`` allows any value.

The policy is a plain value built from :class:`._settings.Settings`; this module
knows nothing of HTTP, the CLI or the alias store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import attrs

from bodhi_trio._exceptions import ServerArgsError, SettingsError
from bodhi_trio._llama._flags import LLAMA_SERVER_FLAGS, LlamaFlag
from bodhi_trio._llama._rpc_endpoints import RpcEndpoint, parse_rpc_endpoint, split_rpc_servers
from bodhi_trio._llama._server_args import (
    ServerArg,
    canonical_flag,
    is_reserved,
    parse_server_args,
    read_as,
)

if TYPE_CHECKING:
    from bodhi_trio._config._settings import Settings

__all__ = [
    "REFUSAL_REASONS",
    "ArgPolicy",
    "allowed_flags_setting",
    "allowed_paths_setting",
    "check_settings_args",
]

REFUSAL_REASONS: Mapping[str, str] = MappingProxyType(
    {
        "exec": "it runs programs or tools on this machine",
        "write": "it writes files",
        "serve": "it serves files or a web UI from llama-server",
        "net": "it fetches from or connects to the network",
        "auth": "it changes who may connect to llama-server (TLS, CORS, port sharing)",
        "echo": "it echoes prompts or file contents into logs or responses",
        "control": "it makes llama-server exit or takes it out of bodhi-trio's control",
    }
)

# Name fragments of flags the pinned build does not define that would put them in a
# refused category; a newer llama-server's ``--foo-url`` must not slip through.
_RISKY_PREFIXES = (
    "--hf-", "--mcp", "--ssl", "--api-key", "--docker", "--tools", "--webui", "--ui-",
    "--log-", "--slot-save", "--model-url", "--models-", "--cors", "--agent",
)  # fmt: skip
_RISKY_PARTS = ("url", "file", "path", "dir", "verbose", "exec", "shell", "proxy", "rpc")
_UNKNOWN_REASON = (
    "it is not a flag of the pinned llama-server build and its name suggests it reads or"
    " writes files, runs programs or uses the network"
)
_OPT_IN = "; an operator can allow it with BODHI_ALLOWED_CONTEXT_FLAGS"
# The flag whose network endpoints are checked one by one instead of refused outright.
_RPC_FLAG = "--rpc"
_RPC_REFUSED = (
    "is neither on this machine (127.0.0.0/8, localhost) nor one of BODHI_RPC_WORKERS or"
    " BODHI_ALLOWED_RPC_SERVERS; llama.cpp's RPC has no authentication, so an operator lists"
    " only workers on a network they trust"
)


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def _csv_fields(value: str) -> Iterator[str]:
    """The fields of ``value`` as llama.cpp's ``parse_csv_row`` splits them.

    Commas separate fields; a field that starts with ``"`` is quoted up to the next
    lone ``"``, may hold commas, and ``""`` inside it is one ``"``; a quote met
    anywhere else is kept as it is.
    """
    field: list[str] = []
    quoted = False
    index = 0
    while index < len(value):
        char = value[index]
        if quoted and char == '"' and value[index + 1 : index + 2] == '"':
            field.append('"')
            index += 1
        elif char == '"' and (quoted or not field):
            quoted = not quoted
        elif char == "," and not quoted:
            yield "".join(field)
            field = []
        else:
            field.append(char)
        index += 1
    yield "".join(field)


def _endpoint_set(endpoints: Iterable[RpcEndpoint]) -> frozenset[RpcEndpoint]:
    return frozenset(endpoints)


def _canonical_flags(flags: Iterable[str]) -> frozenset[str]:
    """So that ``-v``, ``--verbose`` and ``--log_verbose`` allow the same flag."""
    return frozenset(map(canonical_flag, flags))


@attrs.frozen
class ArgPolicy:
    """Which llama-server flags and paths settings and aliases may use.

    Attributes:
        path_roots: Directories a path value must resolve into.
        denied_paths: Files or directories inside those roots that stay out of
            reach (bodhi-trio's own settings and run state).
        allowed_flags: Refused flags the operator allowed, in canonical spelling.
        allowed_rpc_servers: RPC workers ``--rpc`` may name besides loopback ones.
    """

    path_roots: tuple[Path, ...] = ()
    denied_paths: tuple[Path, ...] = ()
    allowed_flags: frozenset[str] = attrs.field(default=frozenset(), converter=_canonical_flags)
    allowed_rpc_servers: frozenset[RpcEndpoint] = attrs.field(
        default=frozenset(), converter=_endpoint_set
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> ArgPolicy:
        """The policy of ``settings``: HF hub cache, ``BODHI_HOME`` and allowed paths."""
        return cls(
            path_roots=(settings.hub_cache, settings.home, *settings.allowed_paths),
            denied_paths=(settings.settings_file, settings.run_dir),
            allowed_flags=settings.allowed_context_flags,
            allowed_rpc_servers=(*settings.allowed_rpc_servers, *settings.rpc_workers),
        )

    def check(self, items: str | Sequence[str], *, source: str) -> list[ServerArg]:
        """Parse one tier of args and check every flag and path in it.

        Args:
            items: The strings of one tier, as for :func:`._server_args.parse_server_args`.
            source: Where they came from, named in the message.

        Returns:
            The parsed args.

        Raises:
            ServerArgsError: Bad syntax, a reserved or refused flag, a wrong number
                of values, or a path outside the allowed directories; the message
                names the source, the flag as written and why.
        """
        for item in (items,) if isinstance(items, str) else items:
            if isinstance(item, str) and ("\x00" in item or not _is_utf8_encodable(item)):
                # Neither can reach a child's argv: spawning would fail on every load.
                raise ServerArgsError(f"{source}: {item!r} holds a NUL or a lone surrogate")
        args = parse_server_args(items, source=source)
        for arg in args:
            self._check_arg(arg, source)
        return args

    def _check_arg(self, arg: ServerArg, source: str) -> None:
        given = arg.given or arg.flag
        known = LLAMA_SERVER_FLAGS.get(arg.flag)
        if known is None:
            if _looks_risky(arg.flag) and arg.flag not in self.allowed_flags:
                raise ServerArgsError(
                    f"{source}: flag {given!r} is refused{read_as(given)}: {_UNKNOWN_REASON}"
                    + _OPT_IN
                )
            return
        if known.category == "reserved":  # parse_server_args has caught these already
            raise ServerArgsError(f"{source}: flag {given!r} is reserved{read_as(given)}")
        allowed = known.category == "ok" or arg.flag in self.allowed_flags
        if not allowed and arg.flag != _RPC_FLAG:
            raise ServerArgsError(
                f"{source}: flag {given!r} is refused{read_as(given)}:"
                f" {REFUSAL_REASONS[known.category]}" + _OPT_IN
            )
        if len(arg.values) != known.values:
            raise ServerArgsError(
                f"{source}: flag {given!r}{read_as(given)} takes {known.values} value(s),"
                f" got {len(arg.values)}: {list(arg.values)!r}"
            )
        for path in _paths_in(known, arg.values, source):
            self._check_path(path, given, source)
        if not allowed:  # --rpc, the one refused flag that is checked value by value
            for item in split_rpc_servers(arg.values[0]):
                self._check_rpc_server(item, given, source)

    def _check_rpc_server(self, item: str, given: str, source: str) -> None:
        try:
            endpoint = parse_rpc_endpoint(item)
        except ValueError as exc:
            raise ServerArgsError(
                f"{source}: flag {given!r}{read_as(given)} endpoint {item!r} {exc}"
            ) from None
        if not endpoint.is_loopback and endpoint not in self.allowed_rpc_servers:
            raise ServerArgsError(
                f"{source}: flag {given!r}{read_as(given)} endpoint {item!r} {_RPC_REFUSED}"
            )

    def _check_path(self, path: str, given: str, source: str) -> None:
        problem = self.path_problem(path)
        if problem is not None:
            raise ServerArgsError(f"{source}: flag {given!r} path {path!r} {problem}")

    def path_problem(self, path: str) -> str | None:
        """Why ``path`` may not be used (``"is not absolute"``, ...), or ``None``.

        The same rule as for flag values: absolute, and resolving (symlinks and
        ``..`` followed) inside one of :attr:`path_roots` and none of
        :attr:`denied_paths`. Whether the file exists is not looked at.
        """
        if not os.path.isabs(path):
            # llama-server would resolve it against its working directory, which is
            # not a place anyone chose.
            return "is not absolute"
        real = _real(path)
        if any(real.is_relative_to(_real(denied)) for denied in self.denied_paths):
            return "is bodhi-trio's own settings or run state"
        if not any(real.is_relative_to(_real(root)) for root in self.path_roots):
            return (
                f"resolves to {str(real)!r}, outside the HF hub cache, BODHI_HOME and"
                " BODHI_ALLOWED_PATHS"
            )
        return None


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _looks_risky(flag: str) -> bool:
    return flag.startswith(_RISKY_PREFIXES) or any(part in flag for part in _RISKY_PARTS)


def _paths_in(known: LlamaFlag, values: Sequence[str], source: str) -> Iterator[str]:
    if known.path_kind is None:
        return
    for value in values:
        if known.path_kind == "path":
            yield value
            continue
        for field in _csv_fields(value):
            if known.path_kind == "paths":
                yield field
                continue
            parts = field.split(":")
            if len(parts) != 2:
                raise ServerArgsError(
                    f"{source}: flag {known.canonical!r} takes PATH:SCALE items, got {field!r}"
                )
            yield parts[0]


def allowed_flags_setting(key: str, flags: tuple[str, ...], source: str) -> tuple[str, ...]:
    """Check ``BODHI_ALLOWED_CONTEXT_FLAGS``: flags, and none that bodhi-trio reserves.

    Raises:
        SettingsError: An entry is not a flag or is reserved (allowing it could
            never work: bodhi-trio sets those flags itself).
    """
    for flag in flags:
        if not flag.startswith("-") or len(flag) < 2:
            raise SettingsError(f"{key} from {source}: {flag!r} is not a flag", param=key)
        if is_reserved(flag):
            raise SettingsError(
                f"{key} from {source}: {flag!r} is reserved by bodhi-trio and cannot be allowed",
                param=key,
            )
    return flags


def allowed_paths_setting(key: str, paths: tuple[str, ...], source: str) -> tuple[Path, ...]:
    """Check ``BODHI_ALLOWED_PATHS``: absolute directories (``~`` expanded).

    Raises:
        SettingsError: An entry is relative (relative to what would be a guess).
    """
    resolved = tuple(Path(path).expanduser() for path in paths)
    for path in resolved:
        if not path.is_absolute():
            raise SettingsError(
                f"{key} from {source}: every entry must be an absolute path, got {str(path)!r}",
                param=key,
            )
    return resolved


def check_settings_args(settings: Settings) -> None:
    """Check ``BODHI_LLAMACPP_ARGS`` and every ``BODHI_LLAMACPP_ARGS_<VARIANT>``.

    Raises:
        ServerArgsError: A tier fails :meth:`ArgPolicy.check`.
    """
    policy = ArgPolicy.from_settings(settings)
    policy.check(settings.llamacpp_args, source="BODHI_LLAMACPP_ARGS")
    for variant, args in sorted(settings.llamacpp_args_variants.items()):
        policy.check(args, source=f"BODHI_LLAMACPP_ARGS_{variant.upper()}")
