"""The ``remote:`` block and a remote alias's own rules, as an attacker would write them
(whoever holds an admin key may write aliases): refused with a message that names the
field and never the secret, and what is accepted round-trips through ``to_dict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from remote_helpers import local_embedder

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._remote import RemoteSpec
from bodhi_trio._exceptions import InvalidAliasError

BASE = "http://gpu-box:8000/v1"


def remote(**fields: Any) -> dict[str, Any]:
    return {"base_url": BASE, **fields}


def refused_spec(data: object) -> InvalidAliasError:
    with pytest.raises(InvalidAliasError) as caught:
        RemoteSpec.from_dict(data, source="big.yaml")
    assert caught.value.message.startswith("big.yaml: ")
    return caught.value


def refused_alias(data: dict[str, Any]) -> InvalidAliasError:
    with pytest.raises(InvalidAliasError) as caught:
        Alias.from_dict(data, source="big.yaml")
    assert caught.value.message.startswith("big.yaml: ")
    return caught.value


@pytest.mark.parametrize(
    "url",
    [
        "http://user:s3cr3t-pw@gpu-box:8000/v1",
        "https://s3cr3t-pw@gpu-box/v1",
        "http://:s3cr3t-pw@gpu-box/v1",
    ],
)
def test_credentials_in_a_url_are_refused_without_echoing_them(url: str) -> None:
    for data in (remote(base_url=url), remote(replicas=[url])):
        error = refused_spec(data)
        assert "credentials" in error.message
        assert "s3cr3t-pw" not in error.message
        assert error.param in ("remote.base_url", "remote.replicas")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://gpu-box/v1",
        "file:///etc/passwd",
        "unix:///tmp/socket",
        "gpu-box:8000/v1",
        "javascript:alert(1)",
        "//gpu-box/v1",
        "http:///v1",  # no host
        "http://gpu-box:99999/v1",  # port out of range
        "http://gpu-box/v1?key=1",
        "http://gpu-box/v1#frag",
        "http://gpu-box/v1\r\nX-Injected: 1",
        "http://gpu box/v1",
        "",
        42,
    ],
)
def test_only_plain_http_and_https_urls_with_a_host(url: object) -> None:
    error = refused_spec(remote(base_url=url))
    assert error.param == "remote.base_url"


@pytest.mark.parametrize(
    "name",
    [
        "BODHI_API_KEYS",
        "bodhi_api_keys",
        "BODHI_ANYTHING",
        "HF_TOKEN",
        "hf_token",
        "HUGGING_FACE_HUB_TOKEN",
        "LLAMA_API_KEY",
        "1ABC",
        "A-B",
        "A B",
        "A=B",
        7,
    ],
)
def test_api_key_env_is_a_foreign_variable_name(name: object) -> None:
    error = refused_spec(remote(api_key_env=name))
    assert error.param == "remote.api_key_env"


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "authorization",
        "Proxy-Authorization",
        "Cookie",
        "Content-Length",
        "content-type",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "TE",
        "Expect",
        # credentials under other names (Azure OpenAI's api-key, Anthropic's x-api-key...):
        # a static value would be stored in the alias file and listed to every API key
        "api-key",
        "X-Api-Key",
        "x-goog-api-key",
        "X-Auth-Token",
        "X-Access-Token",
        "X-Client-Secret",
        "X-Session",
        "Set-Cookie",
        "X-Amz-Signature",
    ],
)
def test_headers_cannot_carry_credentials_or_reframe(name: str) -> None:
    error = refused_spec(remote(headers={name: "x"}))
    assert error.param == "remote.headers"
    assert name in error.message


def test_the_key_goes_in_the_header_the_alias_names() -> None:
    spec = RemoteSpec.from_dict(
        remote(api_key_env="AZURE_KEY", api_key_header="api-key"), source="test"
    )
    assert spec.api_key_header == "api-key"
    assert spec.to_dict()["api_key_header"] == "api-key"
    assert "api_key_header" not in RemoteSpec.from_dict(remote(), source="test").to_dict()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"api_key_header": "api-key"}, "needs api_key_env"),
        ({"api_key_env": "K", "api_key_header": "Authorization"}, "Bearer"),
        ({"api_key_env": "K", "api_key_header": "Cookie"}, "must not be"),
        ({"api_key_env": "K", "api_key_header": "a\r\nb"}, "header name"),
        ({"api_key_env": "K", "api_key_header": 5}, "header name"),
    ],
)
def test_a_key_header_must_be_a_plain_name_with_a_key(
    fields: dict[str, object], message: str
) -> None:
    error = refused_spec(remote(**fields))
    assert error.param == "remote.api_key_header"
    assert message in error.message


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Ok": "a\r\nAuthorization: Bearer stolen"},
        {"X-Ok": "a\nb"},
        {"X-Ok": "a\rb"},
        {"X-Ok": "a\x00b"},
        {"X-Ok": "a\x7fb"},
        {"X-Ok": "caf\u00e9"},  # httpx sends header values as ASCII
        {"X-Ok": 5},
        {"Bad Name": "x"},
        {"Bad:Name": "x"},
        {"": "x"},
        {"X-Long": "x" * 5000},
        ["Host", "x"],
    ],
)
def test_header_values_are_one_line_and_names_tokens(headers: object) -> None:
    assert refused_spec(remote(headers=headers)).param == "remote.headers"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("connect_timeout_secs", 0),
        ("idle_timeout_secs", -1),
        ("cooldown_secs", float("nan")),
        ("probe_interval_secs", True),
        ("idle_timeout_secs", "300"),
        ("idle_timeout_secs", 10**9),
        ("connect_timeout_secs", 10**400),  # past a float: OverflowError was a 500
        ("honor_retry_after", "yes"),
        ("model", ""),
        ("model", "a\nb"),
        ("ca_bundle", "relative/ca.pem"),
        ("replicas", BASE),  # a string, not a list
        ("replicas", [BASE]),  # the base URL twice
        ("replicas", [f"http://r{i}:8000/v1" for i in range(40)]),
    ],
)
def test_field_values_are_checked(field: str, value: object) -> None:
    assert refused_spec(remote(**{field: value})).param == f"remote.{field}"


def test_the_block_itself() -> None:
    assert refused_spec(["http://gpu-box/v1"]).param == "remote"
    assert refused_spec({}).param == "remote.base_url"
    assert "unknown remote key" in refused_spec(remote(api_key="sk-1")).message


@pytest.mark.parametrize("local", ["repo", "filename", "snapshot", "context_params"])
def test_a_remote_alias_has_no_local_fields(local: str) -> None:
    value: object = ["--ctx-size 512"] if local == "context_params" else "x"
    error = refused_alias({"alias": "big", "remote": remote(), local: value})
    assert error.param == local
    assert "remote alias" in error.message


def test_keep_alive_is_local_only() -> None:
    assert refused_alias({"alias": "big", "remote": remote(), "keep_alive_secs": 5}).param == (
        "keep_alive_secs"
    )


@pytest.mark.parametrize(
    "data",
    [
        {"alias": "big", "remote": remote(), "fallback": ["big"]},
        {"alias": "big", "remote": remote(fallback=["big"])},
        {"alias": "big", "remote": remote(), "fallback": ["small", "small"]},
        {"alias": "big", "remote": remote(fallback=["a"]), "fallback": ["b"]},
        {"alias": "big", "remote": remote(), "fallback": ["../etc/passwd"]},
        {"alias": "big", "remote": remote(), "fallback": [f"f{i}" for i in range(9)]},
        {"alias": "big", "remote": remote(), "fallback": {"small": 1}},
        {"alias": "loc", "repo": "org/repo", "filename": "m.gguf", "fallback": ["loc"]},
    ],
)
def test_fallback_names_other_aliases_once(data: dict[str, Any]) -> None:
    assert refused_alias(data).param == "fallback"


def test_remote_alias_needs_a_valid_name() -> None:
    assert refused_alias({"remote": remote()}).param == "alias"
    assert refused_alias({"alias": "bad/name", "remote": remote()}).param == "alias"


def test_a_full_remote_alias_round_trips(tmp_path: Path) -> None:
    data = {
        "alias": "big:70b",
        "remote": {
            "base_url": "https://gpu-box:8000/v1/",  # the trailing / is dropped
            "replicas": ["https://gpu-box-2:8000/v1"],
            "model": "meta-llama/Llama-3.1-70B-Instruct",
            "api_key_env": "GPU_BOX_KEY",
            "headers": {"Host": "big.ns.example.com"},
            "ca_bundle": "/etc/ssl/private-ca.pem",
            "connect_timeout_secs": 2,
            "idle_timeout_secs": 120,
            "cooldown_secs": 7.5,
            "honor_retry_after": False,
            "probe_interval_secs": 3,
            "fallback": ["big-2", "local:8b"],
        },
        "request_params": {"temperature": 0.7},
    }
    alias = Alias.from_dict(data, source="t")
    assert alias.is_remote
    spec = alias.remote
    assert spec is not None
    assert spec.base_url == "https://gpu-box:8000/v1"
    assert spec.urls == ("https://gpu-box:8000/v1", "https://gpu-box-2:8000/v1")
    assert spec.headers == (("Host", "big.ns.example.com"),)
    assert alias.fallback == ("big-2", "local:8b")
    assert alias.model_identity == "remote:meta-llama/Llama-3.1-70B-Instruct"
    shape = alias.to_dict()
    assert shape["remote"]["base_url"] == "https://gpu-box:8000/v1"
    assert shape["remote"]["fallback"] == ["big-2", "local:8b"]
    assert shape["remote"]["idle_timeout_secs"] == 120
    assert "repo" not in shape
    assert Alias.from_dict(shape, source="again") == alias
    # And through the store's YAML file.
    store = AliasStore(tmp_path)
    store.put(alias)
    assert store.get("big:70b") == alias
    assert "GPU_BOX_KEY" in store.path_for("big:70b").read_text()


def test_minimal_remote_alias_and_local_fallback_round_trip() -> None:
    minimal = Alias.from_dict({"alias": "far", "remote": {"base_url": BASE}}, source="t")
    assert minimal.to_dict() == {"alias": "far", "remote": {"base_url": BASE}}
    assert minimal.model_identity == "remote:far"  # the alias's name is the model sent
    local = Alias.from_dict(
        {"alias": "loc", "repo": "org/repo", "filename": "m.gguf", "fallback": "far"},
        source="t",
    )
    assert local.fallback == ("far",)
    assert local.to_dict()["fallback"] == ["far"]
    assert Alias.from_dict(local.to_dict(), source="again") == local
    assert local.model_identity == "org/repo/m.gguf"


def test_embedding_identity_counts_the_args_that_change_the_vectors() -> None:
    plain = local_embedder("a").embedding_identity
    # speed and room: the same vectors
    assert local_embedder("b", "--threads 4", "-c 2048", "-ngl 99").embedding_identity == plain
    for shaping in (
        "--pooling cls",
        "--embd-normalize 1",
        "--lora /m/a.gguf",
        "--rope-freq-base 2e4",
    ):
        assert local_embedder("c", shaping).embedding_identity != plain, shaping
    assert local_embedder("d", "--pooling cls").embedding_identity != (
        local_embedder("e", "--pooling mean").embedding_identity
    )
    # one spelling or another, and other args between, are the same pooling
    assert local_embedder("f", "--pooling cls", "--threads 2").embedding_identity == (
        local_embedder("g", "--pooling=cls").embedding_identity
    )
    other_snapshot = attrs.evolve(local_embedder("h"), snapshot="0" * 40)
    assert other_snapshot.embedding_identity != plain
    assert local_embedder("i", "--pooling cls").model_identity == local_embedder("j").model_identity
