"""The checks and conversions of setting values, one per kind of value.

Each takes the key, the raw value and a label of its source (for the message) and
returns the value converted, or raises :class:`SettingsError` naming all three
(never the value of an API key).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from bodhi_trio._exceptions import SettingsError
from bodhi_trio._llama._server_args import parse_server_args

__all__ = [
    "VARIANT_NAME",
    "as_args",
    "as_bool",
    "as_int",
    "as_list",
    "as_path",
    "as_seconds",
    "as_str",
    "as_variant",
    "setting_error",
]

# Variant names map 1:1 onto environment variable suffixes (BODHI_..._CUDA) and onto
# directory names in the runtime cache, so they are short like alias names (a 300-character
# one from PUT server/variant reached the file system and failed "File name too long").
VARIANT_NAME = re.compile(r"[a-z0-9_]{1,64}")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_SECRET_KEYS = frozenset({"BODHI_API_KEYS", "BODHI_ADMIN_KEYS"})


def setting_error(key: str, source: str, value: object, expected: str) -> SettingsError:
    """The error for a bad value: key, source, what was expected, and the value (unless secret)."""
    shown = "(value hidden)" if key in _SECRET_KEYS else repr(value)
    return SettingsError(f"{key} from {source}: {expected}, got {shown}", param=key)


def as_int(key: str, value: object, source: str, minimum: int, maximum: int | None) -> int:
    """An integer (or its text) in ``minimum..maximum`` (``maximum`` ``None``: no bound)."""
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer {minimum}..{maximum}"
    if isinstance(value, bool):
        raise setting_error(key, source, value, expected)
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise setting_error(key, source, value, expected) from None
    elif isinstance(value, int):
        number = value
    else:
        raise setting_error(key, source, value, expected)
    if number < minimum or (maximum is not None and number > maximum):
        raise setting_error(key, source, value, expected)
    return number


def as_seconds(key: str, value: object, source: str, *, positive: bool = False) -> float:
    """A number of seconds (or its text), >= 0, or > 0 if ``positive``."""
    expected = "a number of seconds > 0" if positive else "a number of seconds >= 0"
    if isinstance(value, bool):
        raise setting_error(key, source, value, expected)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise setting_error(key, source, value, expected) from None
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer past a float's range
            raise setting_error(key, source, value, expected) from None
    else:
        raise setting_error(key, source, value, expected)
    if math.isnan(number) or number < 0 or (positive and number == 0):
        raise setting_error(key, source, value, expected)
    return number


def as_str(key: str, value: object, source: str) -> str:
    """A non-empty string, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise setting_error(key, source, value, "a non-empty string")
    return value.strip()


def as_path(key: str, value: object, source: str) -> Path:
    """A path (``~`` expanded)."""
    if isinstance(value, Path):
        return value.expanduser()
    return Path(as_str(key, value, source)).expanduser()


def as_bool(key: str, value: object, source: str) -> bool:
    """A boolean, or one of the words for one (``1``/``0``, ``true``/``false``...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise setting_error(key, source, value, "true or false")


def as_list(key: str, value: object, source: str) -> tuple[str, ...]:
    """A comma list (string) or a list of strings; blanks dropped."""
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise setting_error(key, source, value, "a comma-separated string or a list of strings")
    if not all(isinstance(item, str) for item in items):
        raise setting_error(key, source, value, "a comma-separated string or a list of strings")
    return tuple(item.strip() for item in items if isinstance(item, str) and item.strip())


def as_args(key: str, value: object, source: str) -> tuple[str, ...]:
    """llama-server args as given; parsed once now so mistakes fail at startup."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise setting_error(key, source, value, "a string or a list of strings")
    args = tuple(item for item in value if item.strip())
    parse_server_args(args, source=f"{key} ({source})")
    return args


def as_variant(key: str, value: object, source: str) -> str:
    """An exec variant name, lower-cased (see :data:`VARIANT_NAME`)."""
    variant = as_str(key, value, source).lower()
    if len(variant) > 64:
        raise setting_error(key, source, value, "a variant name of at most 64 characters")
    if VARIANT_NAME.fullmatch(variant) is None:
        raise setting_error(key, source, value, "a variant name of letters, digits and '_'")
    return variant
