"""The routes the context forwards: which alias defaults each gets, the checked target of
a pass-through, and ``SharedContext.upstream`` on the fake harness (virtual clock)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import gguf
import pytest
import trio
import trio.testing

from bodhi_trio._config._aliases import RequestParams
from bodhi_trio._context import _spec
from bodhi_trio._context._endpoints import (
    ENDPOINTS,
    PARAM_NAMES,
    STREAMING_ENDPOINTS,
    fill_request_params,
    upstream_target,
)
from bodhi_trio._context._spec import embedding_args
from bodhi_trio._exceptions import AliasNotFoundError, InvalidRequestError
from bodhi_trio._llama._launch import LaunchSpec
from fake_context import harness

PARAMS = RequestParams(
    frequency_penalty=0.5, max_tokens=64, presence_penalty=0.25, seed=7, stop="###",
    temperature=0.2, top_p=0.9, user="u",
)  # fmt: skip
SAMPLING = {"frequency_penalty": 0.5, "presence_penalty": 0.25, "seed": 7, "stop": "###",
            "temperature": 0.2, "top_p": 0.9}  # fmt: skip


@pytest.mark.parametrize(
    ("endpoint", "request_body", "filled"),
    [
        ("/v1/chat/completions", {}, {**SAMPLING, "max_tokens": 64, "user": "u"}),
        ("/v1/chat/completions", {"max_completion_tokens": 5}, {**SAMPLING, "user": "u"}),
        ("/v1/completions", {"temperature": None}, {**SAMPLING, "max_tokens": 64, "user": "u",
                                                    "temperature": None}),  # null is present
        ("/v1/responses", {}, {"temperature": 0.2, "top_p": 0.9, "user": "u",
                               "max_output_tokens": 64}),
        ("/v1/responses", {"max_output_tokens": 5}, {"temperature": 0.2, "top_p": 0.9,
                                                     "user": "u"}),
        ("/v1/messages", {}, {"temperature": 0.2, "top_p": 0.9, "max_tokens": 64,
                              "stop_sequences": ["###"]}),
        ("/v1/messages", {"stop_sequences": []}, {"temperature": 0.2, "top_p": 0.9,
                                                  "max_tokens": 64}),
        ("/infill", {}, {**SAMPLING, "max_tokens": 64}),
        ("/infill", {"n_predict": 3}, SAMPLING),
        ("/v1/embeddings", {}, {}),
        ("/v1/messages/count_tokens", {}, {}),
        ("/v1/rerank", {}, {}),
        ("/tokenize", {}, {}),
        ("/detokenize", {}, {}),
        ("/apply-template", {}, {}),
    ],
)  # fmt: skip
def test_each_route_gets_the_defaults_it_understands(
    endpoint: str, request_body: dict[str, Any], filled: dict[str, Any]
) -> None:
    request = {"model": "m", **request_body}
    result = fill_request_params(endpoint, request, PARAMS)
    assert result == {"model": "m", **request_body, **filled}
    assert list(result)[: len(request)] == list(request)  # the request's own fields first
    assert request == {"model": "m", **request_body}  # not modified


def test_every_route_is_in_the_table() -> None:
    assert set(ENDPOINTS) == set(PARAM_NAMES)
    assert set(ENDPOINTS) >= STREAMING_ENDPOINTS
    # A route that gets nothing gets the request itself back: no copy.
    request = {"model": "m"}
    assert fill_request_params("/tokenize", request, PARAMS) is request
    assert fill_request_params("/v1/responses", request, RequestParams()) is request
    stops = fill_request_params("/v1/messages", {}, RequestParams(stop=("a", "b")))
    assert stops == {"stop_sequences": ["a", "b"]}


@pytest.mark.parametrize(
    ("path", "query", "target"),
    [
        ("props", "", "/props"),
        ("v1/models", "a=1&b=%20x", "/v1/models?a=1&b=%20x"),
        ("slots/0", "action=save", "/slots/0?action=save"),
        ("a b/%2e%2e/é?#", "", "/a%20b/%252e%252e/%C3%A9%3F%23"),  # decoded once, re-encoded
        ("x", "a=%0d%0aEvil:%201", "/x?a=%0d%0aEvil:%201"),  # escapes stay escapes
    ],
)
def test_an_upstream_target_is_encoded_again(path: str, query: str, target: str) -> None:
    assert upstream_target("GET", path, query, None) == target


@pytest.mark.parametrize(
    ("method", "path", "query", "content_type"),
    [
        ("GET", "..", "", None),
        ("GET", "a/../../etc/passwd", "", None),
        ("GET", "./props", "", None),
        ("GET", "", "", None),
        ("GET", "a//b", "", None),
        ("GET", "/props", "", None),  # an absolute path would be "//props"
        ("GET", "a\\..\\b", "", None),
        ("GET", "props\r\nX-Injected: 1", "", None),
        ("GET", "props\x00", "", None),
        ("GET", "props", "a=1\r\nX-Injected: 1", None),
        ("GET", "props", "a=1 HTTP/1.1", None),
        ("GET", "props", "a=%zz", None),
        ("GET", "props", "a=<script>", None),
        ("GET", "x" * 9000, "", None),
        ("TRACE", "props", "", None),
        ("CONNECT", "props", "", None),
        ("get", "props", "", None),
        ("POST", "props", "", "text/plain\r\nX-Injected: 1"),
        ("POST", "props", "", "t\u00e9xt/plain"),
        ("POST", "props", "", ""),
    ],
)
def test_a_hostile_pass_through_is_refused(
    method: str, path: str, query: str, content_type: str | None
) -> None:
    with pytest.raises(InvalidRequestError):
        upstream_target(method, path, query, content_type)


def write_gguf(path: Path, arch: str, pooling: int | None) -> Path:
    writer = gguf.GGUFWriter(path, arch)
    if pooling is not None:
        writer.add_pooling_type(gguf.PoolingType(pooling))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_embedding_flags_follow_the_model_and_the_args(tmp_path: Path) -> None:
    generative = write_gguf(tmp_path / "g.gguf", "llama", None)
    embedder = write_gguf(tmp_path / "e.gguf", "bert", 2)  # cls
    declared_none = write_gguf(tmp_path / "n.gguf", "llama", 0)
    assert embedding_args(["--ctx-size", "64"], generative) == ["--embeddings", "--pooling", "mean"]
    assert embedding_args([], declared_none) == ["--embeddings", "--pooling", "mean"]
    assert embedding_args([], embedder) == ["--embeddings"]  # keeps its own pooling
    # Args that decide it themselves, in any spelling, are left alone.
    for given in (["--embedding"], ["--embeddings"], ["--reranking"], ["--pooling", "none"],
                  ["--pooling", "cls", "-c", "64", "--pooling", "none"]):  # fmt: skip
        assert embedding_args(given, generative) == [], given
    # A pooling type of their own is kept; embeddings go on.
    for given in (["--pooling", "cls"], ["--pooling", "none", "--pooling", "last"]):
        assert embedding_args(given, generative) == ["--embeddings"], given
    # No header to read: embeddings on, pooling left to llama-server (its start will fail).
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
    assert embedding_args([], tmp_path / "bad.gguf") == ["--embeddings"]
    assert embedding_args([], tmp_path / "missing.gguf") == ["--embeddings"]


async def test_upstream_sends_method_target_body_and_type(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with harness(tmp_path) as h:
        with trio.fail_after(30):
            async with h.ctx.upstream(
                "a", "PUT", "slots/0", query="action=save", body=b"<x/>", content_type="text/xml"
            ) as response:
                echo = json.loads(await response.aread())
            assert echo == {"method": "PUT", "path": "/slots/0?action=save",
                            "content_type": "text/xml", "body": "<x/>"}  # fmt: skip
            assert h.slot.alias == "a"  # loaded for it
            # Checked before anything loads: no load of "b" for a refused request.
            with pytest.raises(InvalidRequestError):
                async with h.ctx.upstream("b", "GET", "../x"):
                    pass
            with pytest.raises(AliasNotFoundError):
                async with h.ctx.upstream("nope", "GET", "props"):
                    pass
            assert [s.alias for s in h.launcher.starts] == ["a"]


async def test_a_header_read_that_hangs_gives_no_estimate_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A GGUF on a hung mount: the load's memory estimate gives up (None: the start's own
    stall timeout then ends the load) instead of holding the load task, and the requests
    waiting on it, for ever."""
    release = threading.Event()

    def hang(model: Path, args: object, **keywords: object) -> object:
        release.wait(30)
        raise OSError("released")

    monkeypatch.setattr(_spec, "estimate_model_memory", hang)
    monkeypatch.setattr(_spec, "ESTIMATE_TIMEOUT", 0.2)
    spec = LaunchSpec(tmp_path / "llama-server", tmp_path / "m.gguf", "m")
    try:
        with trio.fail_after(10):
            assert await _spec.estimate_from_gguf(spec) is None
        assert "took over 0.2 s: no estimate" in caplog.text
    finally:
        release.set()  # the let-go thread ends
