"""An alias's ``request_params``: generation defaults filled into requests that lack them.

Unknown or mistyped keys are errors, never silently dropped: a typo would otherwise
change nothing without a word.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from bodhi_trio._exceptions import InvalidAliasError

__all__ = ["REQUEST_PARAM_KEYS", "RequestParams", "apply_request_params", "short_repr"]

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

_FLOAT_RANGES = {
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
}


def short_repr(value: object) -> str:
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
            f"{source}: request_params.{key} must be in [{low:g}, {high:g}],"
            f" got {short_repr(value)}",
            param=key,
        )
    return float(value)


def _check_int(
    key: str, value: object, source: str, *, minimum: int | None, maximum: int | None = None
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAliasError(
            f"{source}: request_params.{key} must be an integer, got {value!r}", param=key
        )
    if minimum is not None and value < minimum:
        raise InvalidAliasError(
            f"{source}: request_params.{key} must be at least {minimum}, got {value!r}", param=key
        )
    if maximum is not None and value > maximum:
        raise InvalidAliasError(
            f"{source}: request_params.{key} must be at most {maximum}, got {short_repr(value)}",
            param=key,
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
            f"{source}: request_params.{key} holds a lone surrogate ({short_repr(value)}),"
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
                # llama-server reads it as a 32-bit int: a larger one fails every request
                values[key] = _check_int(key, value, source, minimum=1, maximum=2**31 - 1)
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
