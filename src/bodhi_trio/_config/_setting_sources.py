"""Where setting values come from: ``settings.yaml`` and the layered sources."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import yaml

from bodhi_trio._config._yaml_errors import yaml_error_summary
from bodhi_trio._exceptions import SettingsError

__all__ = ["SettingSources", "read_settings_file"]

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
    """The settings in ``settings.yaml`` (``{}`` if there is none), unknown keys dropped.

    Raises:
        SettingsError: It is unreadable, not YAML, or not a mapping.
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
    for key, value in data.items():
        if not isinstance(key, str) or not is_known(key):
            logger.warning("settings file %s: unknown setting %r is ignored", path, key)
        elif key == "BODHI_HOME":
            logger.warning("settings file %s: BODHI_HOME cannot be set from inside it", path)
        else:
            result[key] = value
    return result
