"""The error contract as docs/api.md states it, read from the document itself.

The fuzz tests judge answers by this rather than by the code under test: an error is
right if its (status, type, code) is a row of the documented table, not if it is what
the implementation happens to build.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

DOCS_API = Path(__file__).resolve().parent.parent / "docs" / "api.md"
ENVELOPE_KEYS = frozenset({"message", "type", "code", "param"})

# | 400 | `invalid_request_error` | `invalid_config` / `invalid_settings` | raised when |
_ROW = re.compile(r"^\| (\d{3}) \| `([a-z_]+)` \| ((?:`[a-z_]+`(?: / )?)+) \|")


def documented_errors(text: str) -> frozenset[tuple[int, str, str]]:
    """Every ``(status, type, code)`` of the table under ``## Errors`` in ``text``."""
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows: set[tuple[int, str, str]] = set()
    for line in section.splitlines():
        match = _ROW.match(line)
        if match:
            status, error_type, codes = match.groups()
            rows.update((int(status), error_type, code) for code in re.findall(r"`(\w+)`", codes))
    return frozenset(rows)


DOCUMENTED_ERRORS = documented_errors(DOCS_API.read_text(encoding="utf-8"))


def documented_fields(document: Mapping[str, Any], method: str, path: str) -> frozenset[str]:
    """The field names an operation of an OpenAPI ``document`` takes: its parameters
    and its request body's properties at any depth."""
    schemas = document.get("components", {}).get("schemas", {})

    def names(node: Any, seen: frozenset[str]) -> set[str]:
        found: set[str] = set()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                return set() if name in seen else names(schemas[name], seen | {name})
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    found |= set(value)
                found |= names(value, seen)
        elif isinstance(node, list):
            for value in node:
                found |= names(value, seen)
        return found

    item = document["paths"][path]
    operation = item[method.lower()]
    parameters = [*item.get("parameters", []), *operation.get("parameters", [])]
    fields = {parameter["name"] for parameter in parameters}
    return frozenset(fields | names(operation.get("requestBody", {}), frozenset()))


def envelope_problem(
    status: int, body: Any, *, relay_allowed: bool, fields: Collection[str] | None = None
) -> str | None:
    """Why the JSON ``body`` of an error answer with ``status`` breaks the documented
    contract, or ``None``.

    Args:
        relay_allowed: llama-server's own errors may come back unchanged (inference
            routes); docs/api.md: "relayed with its status and body", whose ``code``
            is that status number.
        fields: The field names the request's operation takes; a ``param`` must name
            one of them (an unknown alias is ``"model"`` on every route, as documented).
    """
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return f"error status {status} without the exact envelope"
    error = body["error"]
    if relay_allowed and isinstance(error.get("code"), int) and not isinstance(error["code"], bool):
        if error["code"] != status:
            return f"relayed error with code {error['code']} under status {status}"
        return None
    if set(body) != {"error"} or set(error) != ENVELOPE_KEYS:
        return f"error status {status} without the exact envelope"
    if (status, error["type"], error["code"]) not in DOCUMENTED_ERRORS:
        return f"undocumented error: {status} {error['type']!r} {error['code']!r}"
    if not isinstance(error["message"], str) or not error["message"]:
        return f"error status {status} without a message"
    if error["param"] is not None and not isinstance(error["param"], str):
        return f"error param {error['param']!r} is not a field name"
    if error["code"] == "alias_not_found":
        if error["param"] != "model":
            return f"alias_not_found with param {error['param']!r}, documented as 'model'"
    elif fields is not None and error["param"] is not None and error["param"] not in fields:
        return f"error param {error['param']!r} names no field of the request"
    return None
