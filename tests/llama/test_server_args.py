"""llama-server args: tokenizing, parsing and the three-tier merge.

The cases follow BodhiApp's ``server_args_merge.rs`` tests (bodhiapp.md 2.3 and
7), adjusted where bodhi-trio deliberately differs: the output order is
deterministic, quoting works, short/long spellings are unified, repeats within
a tier survive and stray values are errors instead of being dropped.
"""

from __future__ import annotations

import pytest

from bodhi_trio._exceptions import ServerArgsError
from bodhi_trio._llama._server_args import (
    RESERVED_FLAGS,
    ServerArg,
    canonical_flag,
    is_flag,
    merge_server_args,
    parse_server_args,
    tokenize_server_args,
)

SOURCES = (
    "BODHI_LLAMACPP_ARGS",
    "BODHI_LLAMACPP_ARGS_CUDA",
    "alias 'llama3:instruct' context_params",
)


def merge(common: list[str], variant: list[str], alias: list[str]) -> list[str]:
    return merge_server_args(common, variant, alias, sources=SOURCES)


@pytest.mark.parametrize("token", ["-1", "-0.5", "-1e3", "-.5", "-1.", "-2E-4", "-", "4", "a.bin"])
def test_numbers_and_plain_words_are_values(token: str) -> None:
    assert is_flag(token) is False


@pytest.mark.parametrize("token", ["-abc", "-1abc", "--x", "-t", "--", "-inf", "-nan", "-1_0"])
def test_dash_words_that_are_not_numbers_are_flags(token: str) -> None:
    assert is_flag(token) is True


def test_precedence_leaves_exactly_one_threads_with_the_alias_value() -> None:
    result = merge(["--threads 4 --jinja"], ["--threads 6"], ["--threads 8"])
    assert result == ["--threads", "8", "--jinja"]
    assert result.count("--threads") == 1


def test_variant_beats_common_when_alias_is_silent() -> None:
    assert merge(["--ctx-size 1024"], ["--ctx-size 2048"], []) == ["--ctx-size", "2048"]


def test_negative_numbers_are_values_and_dash_words_are_flags() -> None:
    assert merge(["--temp -0.5 --seed -1"], [], ["-abc -1abc --n-gpu-layers -1"]) == [
        "--temp",
        "-0.5",
        "--seed",
        "-1",
        "-abc",
        "-1abc",
        "--n-gpu-layers",
        "-1",
    ]


def test_lora_scaled_is_one_flag_with_two_values() -> None:
    assert parse_server_args(["--lora-scaled p.bin 0.5"], source="x") == [
        ServerArg("--lora-scaled", ("p.bin", "0.5"))
    ]
    assert merge([], [], ["--lora-scaled p.bin 0.5"]) == ["--lora-scaled", "p.bin", "0.5"]


def test_seed_minus_one() -> None:
    assert merge(["--seed 42"], [], ["--seed -1"]) == ["--seed", "-1"]


def test_flag_and_value_may_sit_in_separate_strings() -> None:
    assert merge(["--ctx-size", "2048", "--jinja"], [], []) == ["--ctx-size", "2048", "--jinja"]


def test_value_before_the_first_flag_is_an_error() -> None:
    # BodhiApp silently drops "not" here and keeps "--threads 8 also not" as one value;
    # we refuse the input instead, because a dropped token is a silent misconfiguration.
    with pytest.raises(ServerArgsError, match=r"alias 'llama3:instruct' context_params.*'not'"):
        merge([], [], ["not --threads 8 also not"])


def test_trailing_words_belong_to_the_preceding_flag() -> None:
    assert merge(["--threads 8 also not"], [], []) == ["--threads", "8", "also", "not"]


def test_empty_input_gives_nothing() -> None:
    assert merge([], [], []) == []
    assert merge([""], ["   "], []) == []
    assert parse_server_args([], source="x") == []


def test_a_bare_string_is_one_item() -> None:
    assert merge_server_args("--jinja", (), ()) == ["--jinja"]


def test_repeats_within_one_tier_are_kept_in_order() -> None:
    assert merge(["--lora a.gguf --jinja --lora b.gguf"], [], []) == [
        "--lora",
        "a.gguf",
        "--lora",
        "b.gguf",
        "--jinja",
    ]


def test_a_higher_tier_replaces_every_lower_occurrence() -> None:
    assert merge(["--lora a.gguf --lora b.gguf --jinja"], [], ["--lora c.gguf"]) == [
        "--lora",
        "c.gguf",
        "--jinja",
    ]


def test_repeats_within_the_winning_tier_are_all_kept() -> None:
    assert merge(["--lora a.gguf"], ["--lora b.gguf", "--lora c.gguf"], []) == [
        "--lora",
        "b.gguf",
        "--lora",
        "c.gguf",
    ]


@pytest.mark.parametrize(
    ("short", "long"),
    [
        ("-c", "--ctx-size"),
        ("-t", "--threads"),
        ("-tb", "--threads-batch"),
        ("-b", "--batch-size"),
        ("-ub", "--ubatch-size"),
        ("-ngl", "--n-gpu-layers"),
        ("--gpu-layers", "--n-gpu-layers"),
        ("-np", "--parallel"),
        ("-n", "--n-predict"),
        ("--predict", "--n-predict"),
        ("-fa", "--flash-attn"),
        ("-s", "--seed"),
        ("-ctk", "--cache-type-k"),
        ("-ctv", "--cache-type-v"),
        ("-to", "--timeout"),
        ("-ts", "--tensor-split"),
        ("-sm", "--split-mode"),
        ("-mg", "--main-gpu"),
    ],
)
def test_short_and_long_spellings_override_each_other(short: str, long: str) -> None:
    assert canonical_flag(short) == long
    assert merge([f"{short} 1"], [], [f"{long} 2"]) == [long, "2"]
    assert merge([f"{long} 1"], [f"{short} 2"], []) == [long, "2"]


def test_cont_batching_spellings_and_no_switches_replace_each_other() -> None:
    assert merge(["-cb"], [], []) == ["--cont-batching"]
    assert merge(["-cb --mmap"], ["-nocb"], ["--no-mmap"]) == ["--no-cont-batching", "--no-mmap"]
    assert merge(["--no-cont-batching --cont-batching"], [], ["-cb"]) == ["--cont-batching"]


def test_equals_spelling_is_split() -> None:
    assert merge(["--ctx-size=4096"], [], ["--override-kv=a.b=int:1"]) == [
        "--ctx-size",
        "4096",
        "--override-kv",
        "a.b=int:1",
    ]
    assert merge(["--ctx-size=4096"], [], ["-c 8192"]) == ["--ctx-size", "8192"]


def test_quoted_values_keep_their_spaces() -> None:
    assert merge(['--chat-template-file "/my models/t.jinja"'], [], ["--lora '/a b/c.gguf'"]) == [
        "--chat-template-file",
        "/my models/t.jinja",
        "--lora",
        "/a b/c.gguf",
    ]


def test_bad_quoting_is_an_error_naming_the_source() -> None:
    with pytest.raises(ServerArgsError, match=r"BODHI_LLAMACPP_ARGS_CUDA: cannot split"):
        merge([], ['--chat-template-file "/open'], [])


def test_non_string_entry_is_an_error() -> None:
    with pytest.raises(ServerArgsError, match=r"x: every entry must be a string, got int 4096"):
        parse_server_args(["--ctx-size", 4096], source="x")  # type: ignore[list-item]


def test_output_order_is_first_appearance_across_tiers() -> None:
    common = ["--jinja --ctx-size 1024 --threads 2"]
    variant = ["--n-gpu-layers 99 --threads 4"]
    alias = ["--n-keep 24 --ctx-size 4096"]
    expected = [
        "--jinja",
        "--ctx-size",
        "4096",
        "--threads",
        "4",
        "--n-gpu-layers",
        "99",
        "--n-keep",
        "24",
    ]
    assert merge(common, variant, alias) == expected
    # Same input, same output: nothing depends on hashing.
    assert [merge(common, variant, alias) for _ in range(3)] == [expected] * 3


@pytest.mark.parametrize("flag", sorted(RESERVED_FLAGS))
@pytest.mark.parametrize("tier", [0, 1, 2])
def test_reserved_flags_are_rejected_in_every_tier(flag: str, tier: int) -> None:
    tiers: list[list[str]] = [[], [], []]
    tiers[tier] = ["--jinja", f"{flag} x"]
    with pytest.raises(ServerArgsError) as caught:
        merge(*tiers)
    assert f"{SOURCES[tier]}: flag {flag!r} is reserved" in caught.value.message


@pytest.mark.parametrize("spelling", ["--port=8080", "--host=0.0.0.0", "--api-key=s", "-m=x.gguf"])
def test_reserved_flags_are_rejected_in_equals_spelling(spelling: str) -> None:
    flag = spelling.partition("=")[0]
    with pytest.raises(ServerArgsError, match=rf"BODHI_LLAMACPP_ARGS: flag '{flag}' is reserved"):
        merge([spelling], [], [])


def test_reserved_flags_table() -> None:
    assert {
        "--host",
        "--port",
        "--model",
        "-m",
        "--alias",
        "-a",
        "--model-url",
        "-mu",
        "--hf-repo",
        "-hf",
        "-hfr",
        "--hf-file",
        "-hff",
        "--api-key",
        "--api-key-file",
    } == RESERVED_FLAGS


def test_tokenize_keeps_values_that_contain_equals() -> None:
    assert tokenize_server_args(["--override-kv", "a=b", "-1=x"], source="x") == [
        "--override-kv",
        "a=b",
        "-1",
        "x",
    ]


@pytest.mark.parametrize(
    ("spelling", "reads_as"),
    [
        ("--api_key", "--api-key"),
        ("--api_key_file", "--api-key-file"),
        ("--model_url", "--model-url"),
        ("--hf_repo", "--hf-repo"),
        ("--hf_file", "--hf-file"),
    ],
)
def test_underscore_spellings_of_reserved_flags_are_rejected(spelling: str, reads_as: str) -> None:
    # llama.cpp replaces every "_" with "-" in a "--" argument before looking it up.
    for given in (f"{spelling} x", f"{spelling}=x"):
        with pytest.raises(ServerArgsError) as caught:
            merge([], [], [given])
        assert caught.value.message.startswith(
            f"{SOURCES[2]}: flag {spelling!r} is reserved (llama-server reads it as {reads_as!r})"
        )


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("--log_file", "--log-file"),
        ("--n_gpu_layers", "--n-gpu-layers"),
        ("-v", "--verbose"),
        ("--log-verbose", "--verbose"),
        ("-lv", "--verbosity"),
        ("-hfd", "--spec-draft-hf"),
        ("-md", "--spec-draft-model"),
        ("--embeddings", "--embedding"),
        ("-no-kvu", "--no-kv-unified"),
        ("--not_a_flag", "--not-a-flag"),
    ],
)
def test_every_spelling_of_the_pinned_build_is_unified(given: str, canonical: str) -> None:
    assert canonical_flag(given) == canonical
    assert merge([f"{given} 1"], [], []) == [canonical, "1"]
