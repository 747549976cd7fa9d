"""YAML error messages that are safe to show."""

from __future__ import annotations

import yaml

__all__ = ["yaml_error_summary"]


def yaml_error_summary(exc: yaml.YAMLError) -> str:
    """One line with the problem and its position, without PyYAML's source snippet.

    The snippet would echo file content (possibly an API key) into a message.
    """
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return type(exc).__name__
