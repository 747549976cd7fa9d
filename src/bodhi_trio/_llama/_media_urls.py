"""Media a request would have llama-server fetch from the network: refused.

llama-server (the pinned build, ``tools/server/server-common.cpp``, ``handle_media``)
downloads a media part whose URL starts with ``http`` itself (up to 10 MB, 10 s):
an image, audio or video part of a chat message, whichever dialect it came in
(``server-chat.cpp`` turns a Responses ``input_image`` and an Anthropic ``image`` whose
``source`` is a ``url`` into the same part), and the content parts of an embeddings
input. Any key holder with a vision alias (one with ``--mmproj``) could then make it
send GET requests to hosts only this machine reaches. What may reach llama-server must
not fetch from the network, so such a request is refused (400) before it is sent;
media inline as ``data:`` URLs (base64) pass.

The check is a superset of llama.cpp's: in any object whose ``type`` names a media part,
at any depth, no string may start with ``http`` in any case (llama.cpp's own test is
case-sensitive). Text parts are never looked into, so a prompt may quote any URL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bodhi_trio._exceptions import InvalidRequestError

__all__ = ["MEDIA_PART_TYPES", "refuse_fetched_media", "refuse_fetched_media_in"]

MEDIA_PART_TYPES = frozenset(
    {"image_url", "input_image", "input_audio", "input_video", "video_url", "image"}
)
"""The ``type`` of every content part llama-server loads media for, in every dialect."""

_SHOWN = 80  # characters of a refused URL quoted in the message


def refuse_fetched_media(body: Mapping[str, Any]) -> None:
    """Refuse the request ``body`` if llama-server would fetch media for it.

    Cheap for the usual request: one pass over its objects and arrays, strings looked
    into only inside media parts.

    Raises:
        InvalidRequestError: A media part names an ``http(s)`` URL (``param``: the
            body's field it is under).
    """
    for field, top in body.items():
        pending: list[Any] = [top]
        while pending:  # no recursion: a body may nest as deep as the JSON parser allowed
            value = pending.pop()
            if isinstance(value, dict):
                kind = value.get("type")
                if isinstance(kind, str) and kind in MEDIA_PART_TYPES:
                    _refuse_urls_in(value, field)
                pending.extend(value.values())
            elif isinstance(value, list):
                pending.extend(value)


def _refuse_urls_in(part: dict[str, Any], field: str) -> None:
    pending: list[Any] = list(part.values())
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if value[:4].lower() == "http":  # llama.cpp: starts with "http" (any case here)
                shown = value if len(value) <= _SHOWN else value[:_SHOWN] + "..."
                raise InvalidRequestError(
                    f"a {part['type']!r} part names {shown!r}: llama-server would fetch it"
                    " itself, and nothing bodhi-trio runs may reach the network that way;"
                    " send the media inline as a data: URL (base64)",
                    param=field,
                )
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def refuse_fetched_media_in(raw: bytes) -> None:
    """:func:`refuse_fetched_media` for a body passed through as it is (``/upstream/``).

    A decoded string can start with ``http`` only if those letters are in the raw JSON or
    written as ``\\u`` escapes: any other body is not parsed at all. One that has them but
    cannot be read here (not JSON, or nested deeper than Python's parser goes, which
    llama.cpp's parser has no limit for) is refused: what cannot be checked is not sent.

    Raises:
        InvalidRequestError: A media part names an ``http(s)`` URL, or the body may and
            cannot be read.
    """
    if b"http" not in raw and b"\\u" not in raw:
        return
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequestError(
            "the body names 'http' (or escapes letters) but is not JSON bodhi-trio can read"
            f" ({type(exc).__name__}): it cannot be checked for media llama-server would"
            " fetch from the network, so it is not sent"
        ) from None
    if isinstance(body, dict):
        refuse_fetched_media(body)
