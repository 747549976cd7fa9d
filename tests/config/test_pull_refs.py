"""What a pull names: model references, quant matching, split GGUFs, alias names."""

from __future__ import annotations

from pathlib import Path

import pytest

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._hub_refs import (
    PullRequest,
    default_alias_name,
    gguf_models,
    match_quant,
    parse_model_ref,
    split_parts,
    write_pull_alias,
)
from bodhi_trio._exceptions import AliasExistsError, InvalidRequestError, QuantNotFoundError

REPO_FILES = [
    "README.md",
    "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
    "Llama-3.2-1B-Instruct-Q4_K_S.gguf",
    "Llama-3.2-1B-Instruct-IQ4_XS.gguf",
    "Llama-3.2-1B-Instruct-Q8_0.gguf",
    "Llama-3.2-1B-Instruct-Q4_0_4_4.gguf",
    "mmproj-Llama-3.2-1B-Instruct-Q4_K_M.gguf",
    "Q6_K/Llama-3.2-1B-Instruct-Q6_K-00002-of-00002.gguf",
    "Q6_K/Llama-3.2-1B-Instruct-Q6_K-00001-of-00002.gguf",
]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("hf.co/bartowski/Llama-GGUF:Q4_K_M", ("bartowski/Llama-GGUF", "Q4_K_M")),
        ("huggingface.co/a/b", ("a/b", None)),
        ("https://huggingface.co/a/b:latest", ("a/b", None)),
        ("HF.CO/a/b:q8_0", ("a/b", "q8_0")),
    ],
)
def test_model_refs(ref: str, expected: tuple[str, str | None]) -> None:
    assert parse_model_ref(ref) == expected


@pytest.mark.parametrize(
    "ref",
    ["a/b:Q4", "hf.co/a", "hf.co/a/b/c", "hf.co/../b", "hf.co/a/b:Q4 K", "hf.co/a/b:" + "Q" * 40],
)
def test_bad_model_refs_name_the_field(ref: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_model_ref(ref)
    assert caught.value.param == "model"


@pytest.mark.parametrize(
    ("quant", "expected"),
    [
        ("Q4_K_M", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"),  # not mmproj, not IQ4...
        ("q8_0", "Llama-3.2-1B-Instruct-Q8_0.gguf"),
        ("IQ4_XS", "Llama-3.2-1B-Instruct-IQ4_XS.gguf"),
        ("Q4_0_4_4", "Llama-3.2-1B-Instruct-Q4_0_4_4.gguf"),
        (None, "Llama-3.2-1B-Instruct-Q4_K_M.gguf"),  # the default quant
        ("Q6_K", "Q6_K/Llama-3.2-1B-Instruct-Q6_K-00001-of-00002.gguf"),
    ],
)
def test_match_quant_picks_exactly_one_model(quant: str | None, expected: str) -> None:
    assert match_quant("o/r", REPO_FILES, quant)[0] == expected


def test_a_split_model_is_all_its_parts() -> None:
    assert match_quant("o/r", REPO_FILES, "Q6_K") == (
        "Q6_K/Llama-3.2-1B-Instruct-Q6_K-00001-of-00002.gguf",
        "Q6_K/Llama-3.2-1B-Instruct-Q6_K-00002-of-00002.gguf",
    )
    assert split_parts("m-00002-of-00003.gguf") == (
        "m-00001-of-00003.gguf",
        "m-00002-of-00003.gguf",
        "m-00003-of-00003.gguf",
    )
    assert split_parts("m.gguf") == ("m.gguf",)
    assert (
        PullRequest.from_files("o/r", "m-00003-of-00003.gguf").filename == "m-00001-of-00003.gguf"
    )


@pytest.mark.parametrize(("quant", "how"), [("Q4_K", "none"), ("Q4", "none"), ("K", "none")])
def test_no_match_lists_the_gguf_models(quant: str, how: str) -> None:
    with pytest.raises(QuantNotFoundError) as caught:
        match_quant("o/r", REPO_FILES, quant)
    message = caught.value.message
    assert message.startswith(f"{how} of the GGUF files of o/r match quant {quant!r}")
    assert "Llama-3.2-1B-Instruct-Q8_0.gguf" in message
    assert "Q6_K/Llama-3.2-1B-Instruct-Q6_K-00001-of-00002.gguf (+1 parts)" in message
    assert "mmproj" not in message
    assert "README" not in message


def test_several_matches_list_only_those() -> None:
    files = ["a-Q4_K_M.gguf", "b-Q4_K_M.gguf", "a-Q8_0.gguf"]
    with pytest.raises(QuantNotFoundError) as caught:
        match_quant("o/r", files, "Q4_K_M")
    assert caught.value.message.startswith("2 of the GGUF files")
    assert caught.value.message.endswith("GGUF files: a-Q4_K_M.gguf, b-Q4_K_M.gguf")


def test_without_quant_the_only_model_is_taken() -> None:
    assert match_quant("o/r", ["x.gguf", "README.md"], None) == ("x.gguf",)
    with pytest.raises(QuantNotFoundError):
        match_quant("o/r", ["x.gguf"], "Q4_K_M")  # asked for explicitly: no guessing


def test_gguf_models_groups_parts_and_skips_projectors() -> None:
    assert gguf_models(REPO_FILES)[0] == ("Llama-3.2-1B-Instruct-IQ4_XS.gguf",)
    assert len(gguf_models(REPO_FILES)) == 6


@pytest.mark.parametrize(
    ("repo", "filename", "quant", "name"),
    [
        ("bartowski/Llama-3.2-1B-Instruct-GGUF", None, "Q4_K_M", "llama-3.2-1b-instruct:q4_k_m"),
        ("QuantFactory/Meta-Llama-3-8B-Instruct-GGUF", "Meta-Llama-3-8B-Instruct.Q8_0.gguf",
         None, "meta-llama-3-8b-instruct:q8_0"),
        ("bodhi-trio/tiny-random-llama", "tiny-random-llama.gguf", None, "tiny-random-llama"),
        ("o/Foo_gguf", None, None, "foo"),
        ("o/" + "x" * 90, None, "Q4_K_M", "x" * 64),
    ],
)  # fmt: skip
def test_default_alias_names(repo: str, filename: str | None, quant: str | None, name: str) -> None:
    assert default_alias_name(repo, filename, quant) == name


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "repo"),
        ({"model": "hf.co/a/b", "repo": "a/b"}, "model"),
        ({"repo": "a/b"}, "filename"),
        ({"repo": "a/b", "filename": "x.bin"}, "filename"),
        ({"repo": "a/b", "filename": "../x.gguf"}, "filename"),
        ({"repo": "a", "filename": "x.gguf"}, "repo"),
        ({"repo": "a/b", "filename": "x.gguf", "revision": "../x"}, "revision"),
        ({"repo": "a/b", "filename": "x.gguf", "alias": "a/b"}, "alias"),
        ({"repo": "a/b", "filename": "x.gguf", "alias": 3}, "alias"),
        ({"repo": "a/b", "filename": "x.gguf", "extra": 1}, None),
    ],
)
def test_bad_request_bodies(body: dict[str, object], param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        PullRequest.from_json(body)
    assert caught.value.param == param


def test_request_bodies_and_keys() -> None:
    a = PullRequest.from_json({"repo": "a/b", "filename": "x-Q4_K_M.gguf", "stream": True})
    b = PullRequest.from_json({"model": "hf.co/a/b:Q4_K_M", "alias": "mine"})
    assert a.key == ("a/b", "main", "x-Q4_K_M.gguf")
    assert b.key == ("a/b", "main", ":Q4_K_M")
    assert (a.alias_name, b.alias_name) == ("b:q4_k_m", "mine")
    assert b.describe() == "hf.co/a/b:Q4_K_M"


def test_write_pull_alias_keeps_an_alias_of_the_same_file(tmp_path: Path) -> None:
    store = AliasStore(tmp_path)
    store.create(Alias("m", "a/b", "x.gguf", context_params=("--ctx-size 512",)))
    alias = write_pull_alias(store, "m", "a/b", "x.gguf", "1" * 40)
    assert alias.snapshot == "1" * 40
    assert store.get("m").context_params == ("--ctx-size 512",)
    with pytest.raises(AliasExistsError):
        write_pull_alias(store, "m", "a/b", "other.gguf", "1" * 40)
    assert write_pull_alias(store, "new", "a/b", "y.gguf", "2" * 40) == store.get("new")
