"""Token counts from the end of a response, for the metrics: no parsing of every event.

llama-server ends a completion with its usage (a non-streamed body's ``usage``, a
stream's usage chunk with ``stream_options.include_usage``) and, in its last chunk,
``timings`` (``prompt_n``, ``predicted_n``). Both sit in the last bytes of the response,
so only those are searched, once, when the response has ended.
"""

from __future__ import annotations

import re

from bodhi_trio._http._request_scope import note_request

__all__ = ["TAIL_BYTES", "note_usage", "tokens_in_tail"]

TAIL_BYTES = 4096
"""How much of a response's end to keep for :func:`tokens_in_tail`."""

# OpenAI's usage, then the Responses and Anthropic names, then llama-server's timings.
# A count of more than 9 digits is no count (a remote's answer is anyone's: 10**400 made
# the request's record fail, 10**300 would have the token counter at infinity).
_COUNT = rb'"%s":\s*(\d{1,9})(?![\d.eE])'
_COMPLETION = tuple(
    re.compile(_COUNT % name) for name in (b"completion_tokens", b"output_tokens", b"predicted_n")
)
_PROMPT = tuple(
    re.compile(_COUNT % name) for name in (b"prompt_tokens", b"input_tokens", b"prompt_n")
)


def _last(patterns: tuple[re.Pattern[bytes], ...], tail: bytes) -> int | None:
    for pattern in patterns:  # usage first: it counts what the client was billed
        found = pattern.findall(tail)
        if found:
            return int(found[-1])
    return None


def tokens_in_tail(tail: bytes) -> tuple[int | None, int | None]:
    """``(prompt_tokens, completion_tokens)`` from a response's last bytes, if present."""
    return _last(_PROMPT, tail), _last(_COMPLETION, tail)


def note_usage(end: bytes) -> None:
    """Note the tokens found in a response's last bytes on the current request (for the
    metrics); nothing when there are none."""
    prompt, completion = tokens_in_tail(end[-TAIL_BYTES:])
    note_request(prompt_tokens=prompt, completion_tokens=completion)
