"""Request fields that would make llama-server abort, or take memory no budget sees.

The pinned build reads a request's native sampling fields as they come
(``tools/server/server-schema.cpp``), and some of them reach code that trusts them:

* ``grammar_triggers``: a trigger of an unknown ``type`` reaches a ``GGML_ASSERT``
  (``common/sampling.cpp``, "unknown trigger type") and the child aborts, ending every
  stream on the model, for as long as someone sends it. A request with one is refused
  (400) unless every trigger is an object whose ``type`` is one llama.cpp knows (0-3),
  with a string ``value``, and a ``token`` number for a token trigger.
* ``repeat_last_n`` and ``dry_penalty_last_n``: the sampler keeps a window of that many
  tokens, allocated whole per request (4 bytes each), and llama-server takes any value
  up to 2**31 - 1: two requests of 2**28 took the child from 20 MiB to 2 GiB, outside the
  memory budget, which is measured at admission. A window can hold no more tokens than
  the context, so a larger one is cut to :data:`MAX_PENALTY_WINDOW` (the same for any
  context up to that size, and 4 MiB at most).

What may reach llama-server from a request is checked here; what settings and aliases
may pass on its command line is :mod:`bodhi_trio._config._arg_policy`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bodhi_trio._exceptions import InvalidRequestError

__all__ = ["MAX_PENALTY_WINDOW", "PENALTY_WINDOWS", "guard_request_fields"]

MAX_PENALTY_WINDOW = 1 << 20
"""The most tokens a penalty's window asks for (a context of a million tokens)."""

PENALTY_WINDOWS = ("repeat_last_n", "dry_penalty_last_n")
"""The sampling fields whose value is a window of tokens allocated per request."""

_TRIGGER_TYPES = range(4)  # token, word, pattern, whole pattern (common.h)
_TOKEN_TRIGGER = 0


def guard_request_fields(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """``body`` as it may go to llama-server: penalty windows cut to
    :data:`MAX_PENALTY_WINDOW` (a copy, if any was larger; else ``body`` itself).

    Raises:
        InvalidRequestError: ``grammar_triggers`` holds a trigger llama-server would
            abort on (``param``: ``grammar_triggers``).
    """
    if "grammar_triggers" in body:
        _check_triggers(body["grammar_triggers"])
    cut = {
        field: MAX_PENALTY_WINDOW
        for field in PENALTY_WINDOWS
        if _number(body.get(field)) and body[field] > MAX_PENALTY_WINDOW
    }
    return {**body, **cut} if cut else body


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_triggers(triggers: object) -> None:
    if not isinstance(triggers, list):
        return  # llama-server refuses what it cannot iterate (an error, not an abort)
    for trigger in triggers:
        kind = _trigger_type(trigger)
        if kind is None:
            raise InvalidRequestError(
                "each of grammar_triggers must be an object whose type is 0 (token),"
                " 1 (word), 2 (pattern) or 3 (whole pattern)",
                param="grammar_triggers",
            )
        if not isinstance(trigger.get("value"), str):
            raise InvalidRequestError(
                "each of grammar_triggers must have a string value", param="grammar_triggers"
            )
        if kind == _TOKEN_TRIGGER and not _number(trigger.get("token")):
            raise InvalidRequestError(
                "a token trigger of grammar_triggers must have a token number",
                param="grammar_triggers",
            )


def _trigger_type(trigger: object) -> int | None:
    """The trigger's ``type`` as llama-server reads it, if it is one it knows."""
    kind = trigger.get("type") if isinstance(trigger, Mapping) else None
    if isinstance(kind, int | float) and not isinstance(kind, bool) and int(kind) in _TRIGGER_TYPES:
        return int(kind)
    return None
