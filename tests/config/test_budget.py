"""BODHI_MEMORY_BUDGET, BODHI_MAX_LOADED_MODELS and BODHI_MAX_QUEUE: parsing, defaults,
resolution per variant, and the machine's memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from bodhi_trio._config._budget import (
    MemoryBudget,
    machine_memory_bytes,
    parse_memory_budget,
    resolve_memory_budget,
)
from bodhi_trio._config._settings import load_settings
from bodhi_trio._exceptions import SettingsError

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4
TOTAL = 16 * GiB


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8589934592", 8 * GiB),
        ("1", 1),
        ("8GiB", 8 * GiB),
        ("8 gib", 8 * GiB),
        (" 512MiB ", 512 * MiB),
        ("1.5GiB", 1536 * MiB),
        ("100KiB", 100 * KiB),
        ("2TiB", 2 * TiB),
        ("8GB", 8_000_000_000),
        ("8gb", 8_000_000_000),
        ("100kB", 100_000),
        ("3MB", 3_000_000),
        ("1TB", 10**12),
        ("4096B", 4096),
        ("75%", 12 * GiB),
        ("100%", TOTAL),
        ("12.5 %", 2 * GiB),
        ("unlimited", None),
        ("Unlimited", None),
    ],
)
def test_budget_spellings(spec: str, expected: int | None) -> None:
    assert parse_memory_budget(spec).resolve(TOTAL) == expected
    # with a spec, the variant does not matter
    assert resolve_memory_budget(spec, "cuda", TOTAL) == expected


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("", "not a number"),
        ("lots", "not a number"),
        ("-1", "not a number"),
        ("8 GiB free", "not a number"),
        ("8G", "unknown unit 'G'"),
        ("8Gi", "unknown unit 'Gi'"),
        ("8GiBs", "unknown unit"),
        ("0", "at least 1 byte"),
        ("0GiB", "at least 1 byte"),
        ("1.5", "whole"),
        ("0%", "more than 0"),
        ("100.5%", "at most 100"),
        ("%", "not a number"),
    ],
)
def test_bad_budgets(spec: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_memory_budget(spec)


def test_default_budget_per_variant() -> None:
    assert resolve_memory_budget(None, "cpu", 10 * GiB) == 8 * GiB  # 80%
    assert resolve_memory_budget(None, "CPU", 10 * GiB) == 8 * GiB
    assert resolve_memory_budget(None, "cuda", 10 * GiB) is None
    assert resolve_memory_budget(None, "vulkan", 10 * GiB) is None
    assert resolve_memory_budget("50%", "cuda", 10 * GiB) == 5 * GiB
    # the machine's size unknown (not Linux): a share of it is no limit
    assert resolve_memory_budget(None, "cpu", None) is None
    assert resolve_memory_budget("50%", "cpu", None) is None
    assert resolve_memory_budget("2GiB", "cpu", None) == 2 * GiB
    assert MemoryBudget(percent=1e-9).resolve(10) == 1  # never a budget of 0


def test_settings_keys_and_defaults(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, env={})
    assert (settings.max_loaded_models, settings.memory_budget, settings.max_queue) == (
        3,
        None,
        512,
    )
    assert settings.memory_budget_bytes(total_memory=10 * GiB) == 8 * GiB  # cpu by default
    assert settings.memory_budget_bytes("cuda", total_memory=10 * GiB) is None

    env = {
        "BODHI_MAX_LOADED_MODELS": "2",
        "BODHI_MEMORY_BUDGET": "6GiB",
        "BODHI_MAX_QUEUE": "4",
        "BODHI_EXEC_VARIANT": "cuda",
    }
    settings = load_settings(home=tmp_path, env=env)
    assert (settings.max_loaded_models, settings.memory_budget, settings.max_queue) == (
        2,
        "6GiB",
        4,
    )
    assert settings.memory_budget_bytes(total_memory=10 * GiB) == 6 * GiB

    (tmp_path / "settings.yaml").write_text(
        "BODHI_MEMORY_BUDGET: 1073741824\nBODHI_MAX_LOADED_MODELS: 5\nBODHI_MAX_QUEUE: 64\n"
    )
    from_file = load_settings(home=tmp_path, env={})
    assert from_file.memory_budget == "1073741824"  # an integer in YAML: bytes
    assert from_file.memory_budget_bytes(total_memory=10 * GiB) == GiB
    assert (from_file.max_loaded_models, from_file.max_queue) == (5, 64)
    # precedence as for every key: the environment over the file
    assert load_settings(home=tmp_path, env={"BODHI_MEMORY_BUDGET": "50%"}).memory_budget == "50%"
    unlimited = load_settings(home=tmp_path, env={"BODHI_MEMORY_BUDGET": "unlimited"})
    assert unlimited.memory_budget_bytes("cpu", total_memory=10 * GiB) is None


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("BODHI_MAX_LOADED_MODELS", "0", "an integer >= 1"),
        ("BODHI_MAX_LOADED_MODELS", "three", "an integer >= 1"),
        ("BODHI_MAX_QUEUE", "0", "an integer >= 1"),
        ("BODHI_MAX_QUEUE", "-5", "an integer >= 1"),
        ("BODHI_MEMORY_BUDGET", "8G", "unknown unit 'G'"),
        ("BODHI_MEMORY_BUDGET", "120%", "at most 100"),
        ("BODHI_MEMORY_BUDGET", "some", "a memory budget: bytes"),
    ],
)
def test_bad_values_name_key_source_and_value(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as from_env:
        load_settings(home=tmp_path, env={key: value})
    message = from_env.value.message
    assert message.startswith(f"{key} from the environment: ")
    assert expected in message
    assert message.endswith(f"got {value!r}")
    assert from_env.value.param == key


@pytest.mark.parametrize("value", ["true", "[1, 2]", "1.5", "{a: 1}"])
def test_bad_budget_types_from_the_settings_file(tmp_path: Path, value: str) -> None:
    (tmp_path / "settings.yaml").write_text(f"BODHI_MEMORY_BUDGET: {value}\n")
    with pytest.raises(SettingsError, match=r"BODHI_MEMORY_BUDGET from settings file .*: a memory"):
        load_settings(home=tmp_path, env={})


def fake_root(tmp_path: Path, meminfo: str, cgroup: dict[str, str]) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text(meminfo)
    for name, content in cgroup.items():
        path = tmp_path / "sys" / "fs" / "cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return tmp_path


MEMINFO = "MemTotal:       24683584 kB\nMemFree:         1000000 kB\nMemAvailable: 9 kB\n"


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        ({}, 24683584 * KiB),
        ({"memory.max": "max\n"}, 24683584 * KiB),  # cgroup v2, no limit
        ({"memory.max": "4294967296\n"}, 4 * GiB),  # a container limited to 4 GiB
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, 24683584 * KiB),  # v1
        ({"memory/memory.limit_in_bytes": "2147483648\n"}, 2 * GiB),
    ],
)
def test_machine_memory(tmp_path: Path, cgroup: dict[str, str], expected: int) -> None:
    assert machine_memory_bytes(fake_root(tmp_path, MEMINFO, cgroup)) == expected


def test_machine_memory_unknown(tmp_path: Path) -> None:
    assert machine_memory_bytes(tmp_path) is None  # no /proc
    assert machine_memory_bytes(fake_root(tmp_path, "SwapTotal: 0 kB\n", {})) is None


def test_machine_memory_of_this_machine(tmp_path: Path) -> None:
    total = machine_memory_bytes()
    assert total is not None
    assert 256 * MiB < total < 64 * TiB
    settings = load_settings(home=tmp_path, env={})
    assert settings.memory_budget_bytes() == total * 80 // 100


def test_keep_alive_has_an_upper_bound(tmp_path: Path) -> None:
    """A huge keep-alive would overflow the idle deadline (the clock plus it)."""
    with pytest.raises(SettingsError, match="BODHI_KEEP_ALIVE_SECS"):
        load_settings(home=tmp_path, env={"BODHI_KEEP_ALIVE_SECS": str(10**12)})
    assert load_settings(home=tmp_path, env={"BODHI_KEEP_ALIVE_SECS": str(10**9)}).keep_alive_secs
