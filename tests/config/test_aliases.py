"""Aliases: names, validation, request defaults and the YAML file store."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from bodhi_trio._config._alias_store import AliasFileProblem, AliasStore
from bodhi_trio._config._aliases import (
    REQUEST_PARAM_KEYS,
    Alias,
    RequestParams,
    alias_filename,
    apply_request_params,
    validate_alias_name,
)
from bodhi_trio._exceptions import (
    AliasExistsError,
    AliasNotFoundError,
    ConfigError,
    InvalidAliasError,
)

LLAMA3: dict[str, Any] = {
    "alias": "llama3:instruct",
    "repo": "QuantFactory/Meta-Llama-3-8B-Instruct-GGUF",
    "filename": "Meta-Llama-3-8B-Instruct.Q8_0.gguf",
    "snapshot": "main",
    "request_params": {"temperature": 0.7, "stop": ["<|eot_id|>"]},
    "context_params": ["--ctx-size 4096", "--n-keep 24"],
}


def make_alias(name: str = "llama3:instruct", **changes: Any) -> Alias:
    return Alias.from_dict({**LLAMA3, "alias": name, **changes}, source="test")


# -- names -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a" * 64, "a.b_c-d:e", "llama3:instruct", "Q8_0", "x"])
def test_valid_names(name: str) -> None:
    assert validate_alias_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a/b", "characters outside"),
        ("a\\b", "characters outside"),
        ("a b", "characters outside"),
        ("a\0b", "characters outside"),
        ("a\nb", "characters outside"),
        ("..", "must not contain '..'"),
        ("a..b", "must not contain '..'"),
        (".", "must not start with '.'"),
        (".hidden", "must not start with '.'"),
        ("", "must not be empty"),
        ("a" * 65, "65 characters long; the limit is 64"),
        (None, "must be a string, got NoneType"),
        (90, "must be a string, got int 90"),
    ],
)
def test_invalid_names(name: object, why: str) -> None:
    with pytest.raises(InvalidAliasError) as caught:
        validate_alias_name(name)
    assert why in caught.value.message
    assert caught.value.param == "alias"


def test_alias_filename() -> None:
    assert alias_filename("llama3:instruct") == "llama3--instruct.yaml"
    assert alias_filename("a.b") == "a.b.yaml"
    with pytest.raises(InvalidAliasError):
        alias_filename("../x")


# -- validation ------------------------------------------------------------


def test_from_dict_and_to_dict() -> None:
    alias = Alias.from_dict(LLAMA3, source="test")
    assert alias.request_params == RequestParams(temperature=0.7, stop=("<|eot_id|>",))
    assert alias.context_params == ("--ctx-size 4096", "--n-keep 24")
    assert alias.to_dict() == LLAMA3
    assert list(alias.to_dict()) == list(LLAMA3)


def test_defaults_and_omitted_empty_params() -> None:
    alias = Alias.from_dict({"alias": "a", "repo": "o/n", "filename": "f.gguf"}, source="t")
    assert alias.snapshot == "main"
    assert alias.to_dict() == {
        "alias": "a",
        "repo": "o/n",
        "filename": "f.gguf",
        "snapshot": "main",
    }


def test_context_params_as_one_string_and_legacy_keys() -> None:
    data = {**LLAMA3, "context_params": "--jinja", "source": "user", "chat_template": "x"}
    assert Alias.from_dict(data, source="t").context_params == ("--jinja",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"repo": None}, "src: missing 'repo'"),
        ({"filename": None}, "src: missing 'filename'"),
        ({"repo": "no-slash"}, "src: repo 'no-slash' must be 'owner/name'"),
        ({"filename": "../x.gguf"}, "src: filename '../x.gguf' must not have"),
        ({"snapshot": 5007}, "src: snapshot must be a string"),
        ({"snapshot": False}, "src: snapshot must be a string"),
        ({"snapshot": 0}, "src: snapshot must be a string"),
        ({"alias": "a/b"}, "src: alias name 'a/b' has characters outside"),
        ({"extra": 1}, "src: unknown key(s) 'extra'"),
        ({"request_params": [1]}, "src: request_params must be a mapping, got list"),
        ({"request_params": {"reasoning_effort": "none"}}, "unknown request_params key(s)"),
        ({"request_params": {"temperature": 2.5}}, "temperature must be in [0, 2], got 2.5"),
        ({"request_params": {"temperature": True}}, "temperature must be a number, got True"),
        ({"request_params": {"top_p": -0.1}}, "top_p must be in [0, 1]"),
        ({"request_params": {"top_p": float("nan")}}, "top_p must be in [0, 1], got nan"),
        ({"request_params": {"frequency_penalty": -3}}, "frequency_penalty must be in [-2, 2]"),
        ({"request_params": {"presence_penalty": "1"}}, "presence_penalty must be a number"),
        ({"request_params": {"max_tokens": 0}}, "max_tokens must be at least 1, got 0"),
        ({"request_params": {"max_tokens": 1.5}}, "max_tokens must be an integer, got 1.5"),
        (
            {"request_params": {"max_tokens": 10**20}},
            "max_tokens must be at most 2147483647, got 100000000000000000000",
        ),  # llama-server reads it as int32: every request would fail
        ({"request_params": {"seed": False}}, "seed must be an integer, got False"),
        ({"request_params": {"stop": [1]}}, "stop must be a string or a list of strings"),
        ({"request_params": {"user": 5}}, "user must be a string, got 5"),
        ({"context_params": [4096]}, "src: context_params must be a list of strings"),
        (
            {"context_params": ["--port 1"]},
            "src: alias 'llama3:instruct' context_params: flag '--port' is reserved",
        ),
        ({"context_params": ["-m=x.gguf"]}, "flag '-m' is reserved"),
        ({"context_params": ["oops --jinja"]}, "value 'oops' comes before any flag"),
        ({"keep_alive_secs": -2}, "src: keep_alive_secs must be in [-1, 1000000000]"),
        ({"keep_alive_secs": 10**9 + 1}, "keep_alive_secs must be in [-1, 1000000000]"),
        ({"keep_alive_secs": 10**400}, "(-1 never unloads), got 10000000000000000000000"),
        ({"keep_alive_secs": "300"}, "src: keep_alive_secs must be an integer (seconds; -1"),
        ({"keep_alive_secs": 1.5}, "keep_alive_secs must be an integer (seconds; -1 never"),
        ({"keep_alive_secs": True}, "keep_alive_secs must be an integer (seconds; -1 never"),
    ],
)
def test_invalid_fields_name_source_and_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidAliasError) as caught:
        Alias.from_dict({**LLAMA3, **changes}, source="src")
    assert message in caught.value.message


@pytest.mark.parametrize("seconds", [-1, 0, 30, 10**9])
def test_keep_alive_secs_round_trips_and_unset_is_omitted(seconds: int) -> None:
    alias = Alias.from_dict({**LLAMA3, "keep_alive_secs": seconds}, source="t")
    assert alias.keep_alive_secs == seconds
    assert alias.to_dict() == {**LLAMA3, "keep_alive_secs": seconds}
    assert Alias.from_dict(alias.to_dict(), source="t") == alias
    unset = Alias.from_dict({**LLAMA3, "keep_alive_secs": None}, source="t")
    assert unset.keep_alive_secs is None
    assert "keep_alive_secs" not in unset.to_dict()


def test_keep_alive_secs_errors_name_the_field() -> None:
    with pytest.raises(InvalidAliasError) as caught:
        Alias.from_dict({**LLAMA3, "keep_alive_secs": -5}, source="src")
    assert caught.value.param == "keep_alive_secs"


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidAliasError, match=r"^src: expected a mapping, got list$"):
        Alias.from_dict([1], source="src")


@pytest.mark.parametrize(
    ("key", "value"),
    [("stop", '["ok", "\\ud800"]'), ("stop", '"a\\udfffb"'), ("user", '"\\ud83d"')],
)
def test_lone_surrogates_in_request_params_are_refused(key: str, value: str) -> None:
    # json.loads accepts these escapes; saved, such a value failed every request.
    request_params = {key: json.loads(value)}
    with pytest.raises(InvalidAliasError) as caught:
        Alias.from_dict({**LLAMA3, "request_params": request_params}, source="src")
    assert caught.value.message.startswith(f"src: request_params.{key} holds a lone surrogate")
    assert caught.value.param == key


def test_underscore_spellings_of_reserved_flags_are_refused_in_aliases() -> None:
    with pytest.raises(InvalidAliasError) as caught:
        Alias.from_dict({**LLAMA3, "context_params": ["--api_key secret"]}, source="src")
    assert "flag '--api_key' is reserved (llama-server reads it as '--api-key')" in (
        caught.value.message
    )
    assert caught.value.param == "context_params"


def test_request_params_accept_ints_for_floats_and_a_stop_string() -> None:
    params = RequestParams.from_dict(
        {"temperature": 1, "stop": "END", "seed": -1, "user": "u", "max_tokens": 5}, source="t"
    )
    assert params == RequestParams(temperature=1.0, stop="END", seed=-1, user="u", max_tokens=5)
    assert params.to_dict() == {
        "max_tokens": 5,
        "seed": -1,
        "stop": "END",
        "temperature": 1.0,
        "user": "u",
    }
    assert set(params.to_dict()) <= set(REQUEST_PARAM_KEYS)


# -- apply_request_params ----------------------------------------------------


def test_absent_keys_are_filled_and_appended_in_order() -> None:
    params = RequestParams(temperature=0.7, stop=("<|eot_id|>",), max_tokens=64)
    request = {"model": "m", "messages": []}
    result = apply_request_params(request, params)
    assert list(result.items()) == [
        ("model", "m"),
        ("messages", []),
        ("max_tokens", 64),
        ("stop", ["<|eot_id|>"]),
        ("temperature", 0.7),
    ]
    assert request == {"model": "m", "messages": []}  # the input is not modified


def test_present_keys_win_even_when_null() -> None:
    params = RequestParams(temperature=0.7, top_p=0.9, seed=1)
    request = {"temperature": 0.1, "top_p": None, "extra": {"a": 1}}
    assert apply_request_params(request, params) == {
        "temperature": 0.1,
        "top_p": None,
        "extra": {"a": 1},
        "seed": 1,
    }


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        ({}, {"max_tokens": 64}),
        ({"max_tokens": 5}, {"max_tokens": 5}),
        ({"max_completion_tokens": 5}, {"max_completion_tokens": 5}),
        ({"max_completion_tokens": None}, {"max_completion_tokens": None}),
    ],
)
def test_max_tokens_vs_max_completion_tokens(
    request_body: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert apply_request_params(request_body, RequestParams(max_tokens=64)) == expected


def test_stop_is_filled_as_given_and_empty_stop_is_unset() -> None:
    assert apply_request_params({}, RequestParams(stop=("a", "b"))) == {"stop": ["a", "b"]}
    assert apply_request_params({"stop": "x"}, RequestParams(stop=("a",))) == {"stop": "x"}
    assert RequestParams.from_dict({"stop": []}, source="t") == RequestParams()


# -- store -------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> AliasStore:
    return AliasStore(tmp_path / "aliases")


def test_round_trip(store: AliasStore) -> None:
    alias = make_alias()
    path = store.create(alias)
    assert path == store.directory / "llama3--instruct.yaml"
    assert yaml.safe_load(path.read_text()) == LLAMA3
    assert store.get("llama3:instruct") == alias
    assert store.load()[0] == [alias]
    assert store.get("llama3:instruct").to_dict() == LLAMA3
    assert sorted(p.name for p in store.directory.iterdir()) == ["llama3--instruct.yaml"]


def test_list_is_sorted_and_empty_without_a_directory(store: AliasStore) -> None:
    assert store.load() == ([], [])
    for name in ["zeta", "alpha", "mid:1"]:
        store.create(make_alias(name))
    assert [alias.alias for alias in store.load()[0]] == ["alpha", "mid:1", "zeta"]


def test_get_missing(store: AliasStore) -> None:
    with pytest.raises(AliasNotFoundError, match=r"^alias 'nope' not found$"):
        store.get("nope")
    # No alias can have these names, so they are simply not found (404), not a 400.
    for impossible in ["../x", "gpt 4", "", "a" * 65]:
        with pytest.raises(AliasNotFoundError):
            store.get(impossible)


def test_create_conflicts(store: AliasStore) -> None:
    store.create(make_alias("a:b"))
    with pytest.raises(AliasExistsError, match=r"^alias 'a:b' already exists$"):
        store.create(make_alias("a:b"))
    with pytest.raises(AliasExistsError) as caught:
        store.create(make_alias("a--b"))
    assert caught.value.message == (
        "alias 'a--b' conflicts with existing alias 'a:b': both are stored in a--b.yaml"
        " (':' is written as '--')"
    )
    with pytest.raises(AliasExistsError, match=r"conflicts with existing alias 'a:b'"):
        store.put(make_alias("a--b"))
    with pytest.raises(AliasNotFoundError):
        store.get("a--b")
    with pytest.raises(AliasNotFoundError):
        store.delete("a--b")
    assert [alias.alias for alias in store.load()[0]] == ["a:b"]


def test_put_replaces(store: AliasStore) -> None:
    store.create(make_alias("x"))
    store.put(make_alias("x", filename="other.gguf"))
    assert store.get("x").filename == "other.gguf"
    assert [p.name for p in store.directory.iterdir()] == ["x.yaml"]  # no temp files left


def test_put_repairs_a_corrupt_file(store: AliasStore) -> None:
    store.directory.mkdir()
    (store.directory / "x.yaml").write_text("{{{")
    with pytest.raises(
        InvalidAliasError, match=r"^invalid alias file .*/x\.yaml: not valid YAML: "
    ):
        store.get("x")
    with pytest.raises(AliasExistsError):
        store.create(make_alias("x"))
    store.put(make_alias("x"))
    assert store.get("x") == make_alias("x")


def test_delete(store: AliasStore) -> None:
    store.create(make_alias("x"))
    store.delete("x")
    assert list(store.directory.iterdir()) == []
    with pytest.raises(AliasNotFoundError):
        store.delete("x")
    with pytest.raises(AliasNotFoundError, match=r"^alias '\.\./x' not found$"):
        store.delete("../x")


def test_get_of_a_file_holding_another_name(store: AliasStore) -> None:
    store.directory.mkdir()
    (store.directory / "x.yaml").write_text(yaml.safe_dump({**LLAMA3, "alias": "y"}))
    with pytest.raises(InvalidAliasError, match=r"x\.yaml holds alias 'y', not 'x'"):
        store.get("x")


@pytest.mark.parametrize(
    ("filename", "content", "reason"),
    [
        ("badyaml.yaml", "alias: [unclosed", "not valid YAML"),
        ("list.yaml", "- 1\n- 2\n", "expected a mapping, got list"),
        ("norepo.yaml", yaml.safe_dump({**LLAMA3, "alias": "norepo", "repo": None}), "'repo'"),
        (
            "params.yaml",
            yaml.safe_dump({**LLAMA3, "alias": "params", "request_params": {"top_k": 4}}),
            "unknown request_params key(s) 'top_k'",
        ),
        (
            "ctx.yaml",
            yaml.safe_dump({**LLAMA3, "alias": "ctx", "context_params": ["--host 0.0.0.0"]}),
            "flag '--host' is reserved",
        ),
        ("misnamed.yaml", yaml.safe_dump({**LLAMA3, "alias": "x"}), "belongs in 'x.yaml'"),
        ("old.yml", yaml.safe_dump({**LLAMA3, "alias": "old"}), "must end in .yaml"),
        ("latin.yaml", b"alias: caf\xe9", "not UTF-8"),
    ],
)
def test_bad_files_are_skipped_and_reported(
    store: AliasStore,
    caplog: pytest.LogCaptureFixture,
    filename: str,
    content: str | bytes,
    reason: str,
) -> None:
    store.create(make_alias("good"))
    bad = store.directory / filename
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    (store.directory / ".hidden.yaml").write_text("{{{")  # dotfiles are ignored
    (store.directory / "notes.txt").write_text("{{{")  # so are other extensions
    with caplog.at_level(logging.WARNING, logger="bodhi_trio.aliases"):
        aliases, problems = store.load()
    assert [alias.alias for alias in aliases] == ["good"]
    assert [problem.path for problem in problems] == [bad]
    assert reason in problems[0].reason
    assert str(bad) not in problems[0].reason  # named once, by the warning
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping alias file {bad}: {problems[0].reason}"
    ]
    assert isinstance(problems[0], AliasFileProblem)


def test_directory_that_is_a_file_gives_config_error(tmp_path: Path) -> None:
    # A regular file where the directory should be fails as root too, unlike chmod.
    blocker = tmp_path / "aliases"
    blocker.write_text("not a directory")
    store = AliasStore(blocker)
    with pytest.raises(ConfigError) as caught:
        store.create(make_alias("x"))
    assert type(caught.value) is ConfigError
    assert caught.value.message.startswith(f"cannot write alias file {blocker / 'x.yaml'}: ")
    assert "File exists" in caught.value.message
    with pytest.raises(ConfigError, match=r"^cannot list alias directory .*Not a directory"):
        store.load()
    with pytest.raises(ConfigError, match=r"^cannot read alias file .*Not a directory"):
        store.get("x")


def test_get_sees_a_file_edited_in_place(tmp_path: Path) -> None:
    store = AliasStore(tmp_path)
    store.create(Alias("x:1", "org/repo", "a.gguf"))
    assert store.get("x:1").filename == "a.gguf"
    path = store.path_for("x:1")
    path.write_text(path.read_text().replace("a.gguf", "bb.gguf"))  # same inode, new size
    assert store.get("x:1").filename == "bb.gguf"
    assert store.get("x:1") is store.get("x:1")  # parsed once, then reused


def test_a_found_alias_is_looked_up_again_with_one_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = AliasStore(tmp_path)
    store.create(Alias("x:1", "org/repo", "a.gguf"))
    found = store.get("x:1")
    checks: list[str] = []

    def counted(name: str) -> str:
        checks.append(name)
        return name

    monkeypatch.setattr("bodhi_trio._config._alias_store.validate_alias_name", counted)
    monkeypatch.setattr("bodhi_trio._config._alias_store.alias_filename", counted)
    stats: list[object] = []
    stat = os.stat

    def counted_stat(where: str) -> os.stat_result:
        stats.append(where)
        return stat(where)

    monkeypatch.setattr(os, "stat", counted_stat)
    assert store.get("x:1") is found
    assert checks == []  # neither the name's checks nor the path again: a request's lookup
    assert stats == [os.fspath(store.directory / "x--1.yaml")]  # one stat
    monkeypatch.undo()
    store.path_for("x:1").unlink()
    with pytest.raises(AliasNotFoundError):
        store.get("x:1")  # gone is gone at once
    with pytest.raises(AliasNotFoundError):
        store.get("x:1")
    # Written back, the same size, at once: the store forgets what it knew of the file (a
    # new file may get the old one's inode, size and, with coarse timestamps, mtime).
    store.create(Alias("x:1", "org/repo", "b.gguf"))
    assert store.get("x:1").filename == "b.gguf"
    store.path_for("x:1").write_text(store.path_for("x:1").read_text().replace("x:1", "yy:1"))
    with pytest.raises(InvalidAliasError, match=r"holds alias .yy:1."):
        store.get("x:1")  # replaced under the same name by another alias's content


def test_a_file_the_store_rewrote_is_read_again_even_under_its_old_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file may get the old one's inode number, size and (coarse timestamps) mtime:
    the store forgets what it knew of a file it wrote or deleted, whatever the stamp says."""
    store = AliasStore(tmp_path)
    store.create(Alias("x:1", "org/repo", "a.gguf"))
    assert store.get("x:1").filename == "a.gguf"
    where = os.fspath(store.path_for("x:1"))
    old, stat = os.stat(where), os.stat

    def old_stamp(path: Any, *args: Any, **kwargs: Any) -> Any:
        real = stat(path, *args, **kwargs)
        if os.fspath(path) != where:
            return real
        return SimpleNamespace(
            st_ino=old.st_ino,
            st_size=old.st_size,
            st_mtime_ns=old.st_mtime_ns,
            st_mode=real.st_mode,
        )

    monkeypatch.setattr(os, "stat", old_stamp)
    store.delete("x:1")
    store.create(Alias("x:1", "org/repo", "b.gguf"))
    assert store.get("x:1").filename == "b.gguf"
    store.put(Alias("x:1", "org/repo", "c.gguf"))
    assert store.get("x:1").filename == "c.gguf"


def test_keep_alive_secs_in_an_alias_file(store: AliasStore) -> None:
    path = store.create(make_alias(keep_alive_secs=45))
    assert yaml.safe_load(path.read_text())["keep_alive_secs"] == 45
    assert store.get("llama3:instruct").keep_alive_secs == 45
    path.write_text(path.read_text().replace("keep_alive_secs: 45", "keep_alive_secs: forever"))
    aliases, problems = store.load()
    assert aliases == []
    assert "keep_alive_secs must be an integer" in problems[0].reason
