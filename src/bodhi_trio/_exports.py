"""One helper for the public namespaces: show their names as ``bodhi_trio.X``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

__all__ = ["fix_module_names"]


def fix_module_names(module: str, namespace: Mapping[str, object], names: Iterable[str]) -> None:
    """Set ``__module__`` of each re-exported name to ``module`` (as trio does), so
    reprs, tracebacks and docs show the public path, not a private one."""
    for name in names:
        value = namespace[name]
        if getattr(value, "__module__", "").startswith("bodhi_trio._"):
            with contextlib.suppress(AttributeError, TypeError):
                value.__module__ = module
