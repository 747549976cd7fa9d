"""llama-server command-line arguments: parsing and the three-tier merge.

Args come from three tiers, lowest precedence first: the common settings
(``BODHI_LLAMACPP_ARGS``), the exec variant (``BODHI_LLAMACPP_ARGS_<VARIANT>``)
and the alias (``context_params``). A merge through a hash map would give an
arbitrary output order, collapse repeated flags such as ``--lora`` and let
``-t 8`` and ``--threads 4`` both through. Here:

* each input string is split like a shell would (``shlex``), so quoted paths
  with spaces work; ``--flag=value`` is split into flag and value;
* a token is a flag if it starts with ``-``, is longer than one character and
  is not a number, so ``-1`` and ``-0.5`` are values while ``-abc`` is a flag;
* every spelling of a flag is read as llama.cpp reads it and unified with its
  canonical form: ``_`` becomes ``-`` in ``--`` flags, and short or legacy
  spellings (``-c``, ``--gpu-layers``) map to the long one, from the table of
  the pinned build in :mod:`._llama_flags`;
* ``--no-x`` and ``--x`` are two sides of one switch, so a higher tier's
  ``--mmap`` replaces a lower tier's ``--no-mmap``;
* a flag given in a higher tier replaces every occurrence from lower tiers,
  while repeats within one tier are kept in order;
* the output order is deterministic: first appearance across the tiers.

Flags that bodhi-trio itself must control (host, port, model, alias, API keys)
are rejected wherever they appear, in any spelling llama.cpp reads as one of
them (``--api_key``). Which other flags settings and aliases may pass, and with
which paths, is :mod:`._arg_policy`'s concern: parsing here stays policy-free.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

import attrs

from bodhi_trio._exceptions import ServerArgsError
from bodhi_trio._llama._flags import LLAMA_SERVER_FLAGS, normalize_spelling

__all__ = [
    "RESERVED_FLAGS",
    "ServerArg",
    "canonical_flag",
    "is_reserved",
    "is_flag",
    "merge_server_args",
    "parse_server_args",
    "read_as",
    "tokenize_server_args",
]

# What bodhi-trio sets itself (the socket the child listens on, the model from the alias,
# the alias name responses carry, no key on the child): the flag table's "reserved" rows,
# every spelling of each.
RESERVED_FLAGS: frozenset[str] = frozenset(
    spelling for spelling, flag in LLAMA_SERVER_FLAGS.items() if flag.category == "reserved"
)

# A negative number in the forms llama-server accepts: -1, -0.5, -.5, -1., -1e3.
# A regex rather than float(): float() also takes "-inf", "-nan" and "-1_0".
_NEGATIVE_NUMBER = re.compile(r"-(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@attrs.frozen
class ServerArg:
    """One llama-server flag with the values that follow it.

    Attributes:
        flag: The flag in its canonical spelling (long form where known).
        values: The non-flag tokens that followed it, possibly none.
        given: The spelling the user wrote, for messages; empty if not known.
    """

    flag: str
    values: tuple[str, ...] = ()
    given: str = attrs.field(default="", eq=False, repr=False)

    def to_argv(self) -> list[str]:
        """The flag followed by its values, as separate argv elements."""
        return [self.flag, *self.values]


def is_flag(token: str) -> bool:
    """Whether ``token`` is a flag rather than a value.

    Args:
        token: One argv token.

    Returns:
        True for ``--x``, ``-x``, ``-1abc``; False for ``-``, ``-1``, ``-0.5``,
        ``-1e3``, ``-.5`` and anything not starting with ``-``.
    """
    if len(token) < 2 or not token.startswith("-"):
        return False
    return _NEGATIVE_NUMBER.fullmatch(token) is None


def canonical_flag(flag: str) -> str:
    """``flag`` as llama-server reads it, in its canonical spelling.

    ``--api_key`` becomes ``--api-key`` (llama.cpp turns ``_`` into ``-`` in
    ``--`` flags), ``-ngl`` becomes ``--n-gpu-layers``; a flag the pinned build
    does not define keeps its (normalised) spelling.
    """
    spelling = normalize_spelling(flag)
    known = LLAMA_SERVER_FLAGS.get(spelling)
    return spelling if known is None else known.canonical


def is_reserved(flag: str) -> bool:
    """Whether ``flag``, in any spelling llama-server reads, is one bodhi-trio sets itself."""
    return canonical_flag(flag) in RESERVED_FLAGS


def read_as(given: str) -> str:
    """For messages: how llama-server reads ``given`` when that is another spelling, else ``""``."""
    canonical = canonical_flag(given)
    return "" if canonical == given else f" (llama-server reads it as {canonical!r})"


def _switch_key(flag: str) -> str:
    """The key under which tiers replace each other: ``--no-x`` shares ``--x``'s key."""
    if flag.startswith("--no-") and len(flag) > len("--no-"):
        return "--" + flag[len("--no-") :]
    return flag


def tokenize_server_args(items: str | Sequence[str], *, source: str) -> list[str]:
    """Split arg strings into argv tokens.

    Each string is split with :func:`shlex.split`, so a flag and its value may
    sit in one string or in two. ``--flag=value`` becomes ``--flag``, ``value``.

    Args:
        items: The strings of one tier (a bare string counts as one item).
        source: Where the strings came from, for error messages.

    Returns:
        The tokens in order.

    Raises:
        ServerArgsError: An item is not a string or has unbalanced quotes.
    """
    if isinstance(items, str):
        items = (items,)
    tokens: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ServerArgsError(
                f"{source}: every entry must be a string, got {type(item).__name__} {item!r}"
            )
        try:
            split = shlex.split(item)
        except ValueError as exc:
            raise ServerArgsError(f"{source}: cannot split {item!r}: {exc}") from exc
        for token in split:
            if is_flag(token) and "=" in token:
                flag, _, value = token.partition("=")
                tokens.extend((flag, value))
            else:
                tokens.append(token)
    return tokens


def parse_server_args(items: str | Sequence[str], *, source: str) -> list[ServerArg]:
    """Parse one tier of llama-server args into flags with their values.

    Args:
        items: The strings of one tier, e.g. ``["--ctx-size 4096", "--n-keep 24"]``.
        source: Where the strings came from, named in error messages, e.g.
            ``BODHI_LLAMACPP_ARGS`` or ``alias 'llama3:instruct' context_params``.

    Returns:
        One :class:`ServerArg` per flag occurrence, in input order, with
        canonical flag spellings.

    Raises:
        ServerArgsError: Bad quoting, a value before the first flag (an error, not
            silently dropped), or a reserved flag.
    """
    parsed: list[ServerArg] = []
    current_flag: str | None = None
    current_values: list[str] = []
    for token in tokenize_server_args(items, source=source):
        if not is_flag(token):
            if current_flag is None:
                raise ServerArgsError(
                    f"{source}: value {token!r} comes before any flag"
                    " (every value must follow the flag it belongs to)"
                )
            current_values.append(token)
            continue
        if is_reserved(token):
            raise ServerArgsError(
                f"{source}: flag {token!r} is reserved{read_as(token)}: bodhi-trio sets the"
                " host, port, model, alias and API key of llama-server itself"
            )
        if current_flag is not None:
            parsed.append(
                ServerArg(canonical_flag(current_flag), tuple(current_values), current_flag)
            )
        current_flag = token
        current_values = []
    if current_flag is not None:
        parsed.append(ServerArg(canonical_flag(current_flag), tuple(current_values), current_flag))
    return parsed


def merge_server_args(
    common: str | Sequence[str],
    variant: str | Sequence[str],
    alias: str | Sequence[str],
    *,
    sources: tuple[str, str, str] = (
        "BODHI_LLAMACPP_ARGS",
        "BODHI_LLAMACPP_ARGS_<VARIANT>",
        "alias context_params",
    ),
) -> list[str]:
    """Merge the three tiers of llama-server args into one argv list.

    Precedence is ``common < variant < alias``. A flag (or its ``--no-``
    opposite) given in a higher tier replaces every occurrence from the lower
    tiers; repeats within one tier are all kept, in order. Each flag keeps the
    position of its first appearance across the tiers (common first) and is
    followed by the winning tier's values as separate elements.

    Args:
        common: The common args (``BODHI_LLAMACPP_ARGS``).
        variant: The exec variant's args (``BODHI_LLAMACPP_ARGS_<VARIANT>``).
        alias: The alias's ``context_params``.
        sources: Names of the three tiers for error messages.

    Returns:
        The merged argv elements, e.g. ``["--ctx-size", "4096", "--jinja"]``.

    Raises:
        ServerArgsError: Any tier fails :func:`parse_server_args`.
    """
    tiers = [
        parse_server_args(items, source=source)
        for items, source in zip((common, variant, alias), sources, strict=True)
    ]
    # Dicts keep insertion order: the first tier to mention a key fixes its slot,
    # and a later tier that mentions it again takes the slot over entirely.
    slots: dict[str, tuple[int, list[ServerArg]]] = {}
    for tier_index, tier in enumerate(tiers):
        for arg in tier:
            key = _switch_key(arg.flag)
            owner = slots.get(key)
            if owner is None:
                slots[key] = (tier_index, [arg])
            elif owner[0] == tier_index:
                owner[1].append(arg)
            else:
                slots[key] = (tier_index, [arg])
    argv: list[str] = []
    for _, args in slots.values():
        for arg in args:
            argv.extend(arg.to_argv())
    return argv
