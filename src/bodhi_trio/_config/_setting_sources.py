"""Where setting values come from: ``settings.yaml`` and the layered sources."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import yaml

from bodhi_trio._config._yaml_errors import yaml_error_summary
from bodhi_trio._exceptions import SettingsError

__all__ = ["SettingSources", "read_settings_file", "setting_name"]

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


def read_settings_file(path: Path, is_known: Callable[[str], bool]) -> dict[str, object]:
    """The settings in ``settings.yaml`` (``{}`` if there is none), keyed by their names
    (:func:`setting_name`), unknown keys dropped.

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
    result: dict[str, object] = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        name = setting_name(key, is_known) if isinstance(key, str) else None
        if name is None:
            logger.warning("settings file %s: unknown setting %r is ignored", path, key)
        elif name == "BODHI_HOME":
            logger.warning("settings file %s: BODHI_HOME cannot be set from inside it", path)
        elif name in result:
            raise SettingsError(
                f"settings file {path}: {name} is given twice ({spelled[name]!r} and {key!r})",
                param=name,
            )
        else:
            result[name], spelled[name] = value, key
    return result


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
