"""Media parts llama-server would fetch from the network itself: refused in every
dialect's shape, inline media and quoted URLs passed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bodhi_trio._exceptions import InvalidRequestError
from bodhi_trio._llama._media_urls import refuse_fetched_media, refuse_fetched_media_in

URL = "http://169.254.169.254/latest/meta-data/"
INLINE = "data:image/png;base64,iVBORw0KGgo="


def chat_with(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": list(parts)}]}


REFUSED = {
    "chat image_url": chat_with({"type": "image_url", "image_url": {"url": URL}}),
    "https": chat_with({"type": "image_url", "image_url": {"url": "https://x/y.png"}}),
    "upper case": chat_with({"type": "image_url", "image_url": {"url": "HTTP://x/y.png"}}),
    "chat audio url": chat_with({"type": "input_audio", "input_audio": {"url": URL}}),
    "chat audio data": chat_with({"type": "input_audio", "input_audio": {"data": URL}}),
    "chat video": chat_with({"type": "input_video", "input_video": {"url": URL}}),
    "chat video_url": chat_with({"type": "video_url", "video_url": {"url": URL}}),
    "responses input_image": {
        "model": "m",
        "input": [{"role": "user", "content": [{"type": "input_image", "image_url": URL}]}],
    },
    "responses tool output": {
        "model": "m",
        "input": [
            {
                "type": "function_call_output",
                "call_id": "c",
                "output": [{"type": "input_image", "image_url": URL}],
            }
        ],
    },
    "anthropic image": {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": URL}}]}
        ],
    },
    "anthropic tool_result": {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "image", "source": {"type": "url", "url": URL}}],
                    }
                ],
            }
        ],
    },
    "embeddings input": {
        "model": "m",
        "input": [{"content": [{"type": "image_url", "image_url": {"url": URL}}]}],
    },
}


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED.keys())
def test_media_llama_server_would_fetch_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError, match="data: URL") as caught:
        refuse_fetched_media(body)
    assert caught.value.param in ("messages", "input")
    assert caught.value.status == 400
    # Also when the body is passed through as it is, its letters escaped.
    escaped = json.dumps(body).replace("http", "\\u0068ttp").replace("HTTP", "\\u0048TTP")
    assert b"http" not in escaped.encode().lower()
    with pytest.raises(InvalidRequestError):
        refuse_fetched_media_in(escaped.encode())


PASSED = {
    "inline image": chat_with({"type": "image_url", "image_url": {"url": INLINE}}),
    "raw base64": chat_with({"type": "input_audio", "input_audio": {"data": "UklGRg=="}}),
    "a URL in text": chat_with({"type": "text", "text": f"what is at {URL}?"}),
    "a URL as content": {"model": "m", "messages": [{"role": "user", "content": URL}]},
    "anthropic inline": {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "base64", "data": "iVBO"}}],
            }
        ],
    },
    "a type that is no string": chat_with({"type": ["image_url"], "image_url": {"url": URL}}),
    "a tool schema": {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "description": URL}}],
    },
}


@pytest.mark.parametrize("body", PASSED.values(), ids=PASSED.keys())
def test_inline_media_and_quoted_urls_pass(body: dict[str, Any]) -> None:
    refuse_fetched_media(body)
    refuse_fetched_media_in(json.dumps(body).encode())


def test_a_passed_through_body_is_checked_or_refused() -> None:
    """Nothing that might hold a URL goes unchecked: a body Python cannot read (nested
    deeper than its parser goes; llama.cpp's has no limit) is refused, not let through."""
    for raw in (b"", b"not json", b'["http://x"]', b'"\\u0068ttp"', b"{}", b"[" * 100_000):
        refuse_fetched_media_in(raw)
    image = b'{"type": "image_url", "image_url": {"url": "http://10.1.2.3/"}}'
    junk = b"[" * 100_000 + b"]" * 100_000
    deep = b'{"messages": [{"content": [' + image + b']}], "junk": ' + junk + b"}"
    for raw in (deep, b"not json http://x", b'{"a": "\\u0068ttp", "b": }'):
        with pytest.raises(InvalidRequestError, match="cannot be checked"):
            refuse_fetched_media_in(raw)


def test_a_body_nested_deeper_than_python_recurses_is_walked() -> None:
    deep: Any = {"type": "image_url", "image_url": {"url": URL}}
    for _ in range(5_000):
        deep = [deep]
    with pytest.raises(InvalidRequestError):
        refuse_fetched_media({"messages": deep})
