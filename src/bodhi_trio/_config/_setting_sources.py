"""Where setting values come from: ``settings.yaml`` and the layered sources."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import attrs
import yaml

from bodhi_trio._config._yaml_errors import yaml_error_summary
from bodhi_trio._exceptions import SettingsError

__all__ = ["SettingSources", "one_name_each", "read_settings_file", "setting_name"]

logger = logging.getLogger("bodhi_trio.settings")


@attrs.frozen
class SettingSources:
    """The three sources, highest precedence first, with labels for messages."""

    layers: tuple[tuple[str, Mapping[str, object]], ...]

    def lookup(self, key: str) -> tuple[object, str] | None:
        for label, values in self.layers:
            if key in values:
                return values[key], label
        return None

    def keys_with_prefix(self, prefix: str) -> set[str]:
        return {key for _, values in self.layers for key in values if key.startswith(prefix)}


def one_name_each(keyed: Iterable[tuple[str, str, object]], label: str) -> dict[str, object]:
    """The values of one source by setting name, from ``(name, key as written, value)``.

    Raises:
        SettingsError: Two keys of the source name one setting (``port`` and ``BODHI_PORT``).
    """
    result: dict[str, object] = {}
    spelled: dict[str, str] = {}
    for name, key, value in keyed:
        if name in result:
            raise SettingsError(
                f"{label}: {name} is given twice ({spelled[name]!r} and {key!r})", param=name
            )
        result[name], spelled[name] = value, key
    return result


def read_settings_file(path: Path, name_of: Callable[[str], str | None]) -> dict[str, object]:
    """The settings in ``settings.yaml`` (``{}`` if there is none), keyed by the setting
    ``name_of`` each key names, unknown keys dropped.

    Raises:
        SettingsError: It is unreadable, not YAML, or not a mapping, or it gives a setting
            twice (``port`` and ``BODHI_PORT``).
    """
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
    named: list[tuple[str, str, object]] = []
    for key, value in data.items():
        name = name_of(key) if isinstance(key, str) else None
        if name is None:
            logger.warning("settings file %s: unknown setting %r is ignored", path, key)
        elif name == "BODHI_HOME":
            logger.warning("settings file %s: BODHI_HOME cannot be set from inside it", path)
        else:
            named.append((name, key, value))
    return one_name_each(named, f"settings file {path}")


def setting_name(key: str, is_known: Callable[[str], bool]) -> str | None:
    """The setting a ``settings.yaml`` key names: itself (``BODHI_PORT``), or, written in
    lowercase, the setting of that name in capitals with or without ``BODHI_`` (``port``,
    ``allowed_paths``, ``hf_home``); None if none is known."""
    if is_known(key):
        return key
    if key != key.lower() or not key.isascii():  # "\u017f".upper() is "S"
        return None
    for name in (key.upper(), "BODHI_" + key.upper()):
        if is_known(name):
            return name
    return None
