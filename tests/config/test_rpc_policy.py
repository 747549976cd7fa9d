"""llama.cpp RPC: which ``--rpc`` endpoints an alias may name, and the RPC settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bodhi_trio._config._arg_policy import ArgPolicy
from bodhi_trio._config._settings import load_settings
from bodhi_trio._exceptions import ServerArgsError, SettingsError
from bodhi_trio._llama._rpc_endpoints import RpcEndpoint, parse_rpc_endpoint

SOURCE = "alias 'x' context_params"


def policy(**changes: Any) -> ArgPolicy:
    return ArgPolicy(**changes)


@pytest.mark.parametrize(
    "item",
    [
        "--rpc 127.0.0.1:50052",
        "--rpc 127.0.0.1:50052,127.0.0.1:50053",
        "--rpc 127.255.3.4:1",
        "--rpc localhost:65535",
        "--rpc LOCALHOST:8",
        "--rpc=127.0.0.1:50052",  # the = form is split before any check
        "--rpc 'localhost:50052'",  # quotes are gone once the value is split like a shell
    ],
)
def test_loopback_endpoints_are_allowed(item: str) -> None:
    args = policy().check([item], source=SOURCE)
    assert [arg.flag for arg in args] == ["--rpc"]


def test_the_value_reaches_llama_server_as_checked() -> None:
    args = policy().check(["--rpc=127.0.0.1:1,localhost:2"], source=SOURCE)
    assert args[0].to_argv() == ["--rpc", "127.0.0.1:1,localhost:2"]


@pytest.mark.parametrize(
    ("item", "endpoint"),
    [
        ("--rpc 10.0.0.5:50052", "10.0.0.5:50052"),
        ("--rpc 127.0.0.1:50052,10.0.0.5:50052", "10.0.0.5:50052"),  # one bad item is enough
        ("--rpc gpu-box.lan:50052", "gpu-box.lan:50052"),
        ("--rpc 0.0.0.0:50052", "0.0.0.0:50052"),
        ("--rpc 127.1:50052", "127.1:50052"),  # inet_aton reads it as loopback; we do not guess
        ("--rpc 2130706433:50052", "2130706433:50052"),  # 127.0.0.1 as one number
        ("--rpc localhost.evil.com:50052", "localhost.evil.com:50052"),
        ("--rpc 127.0.0.1.nip.io:50052", "127.0.0.1.nip.io:50052"),
    ],
)
def test_endpoints_beyond_this_machine_are_refused(item: str, endpoint: str) -> None:
    with pytest.raises(ServerArgsError) as caught:
        policy().check([item], source=SOURCE)
    message = caught.value.message
    assert message.startswith(f"{SOURCE}: flag '--rpc' endpoint {endpoint!r} is neither")
    assert "BODHI_ALLOWED_RPC_SERVERS" in message
    assert "no authentication" in message


@pytest.mark.parametrize(
    ("item", "endpoint", "problem"),
    [
        ("--rpc 127.0.0.1", "127.0.0.1", "must be host:port"),
        ("--rpc 127.0.0.1:", "127.0.0.1:", "has no valid port"),
        ("--rpc 127.0.0.1:0", "127.0.0.1:0", "has no valid port"),
        ("--rpc 127.0.0.1:65536", "127.0.0.1:65536", "has no valid port"),
        ("--rpc 127.0.0.1:5x", "127.0.0.1:5x", "has no valid port"),  # stoi would read 5
        ("--rpc 127.0.0.1:+5", "127.0.0.1:+5", "has no valid port"),
        ("--rpc :50052", ":50052", "has no valid host"),
        ("--rpc tcp://127.0.0.1:50052", "tcp://127.0.0.1:50052", "has a scheme"),
        ("--rpc ::1:50052", "::1:50052", "IPv6 addresses cannot be used"),
        ("--rpc [::1]:50052", "[::1]:50052", "IPv6 addresses cannot be used"),
        ("--rpc 127.0.0.1:1:2", "127.0.0.1:1:2", "must be host:port"),
        ("--rpc 127.0.0.1:1,", "", "is empty"),
        ("--rpc ,127.0.0.1:1", "", "is empty"),
        ("--rpc 127.0.0.1:1,,127.0.0.1:2", "", "is empty"),
        ('--rpc "127.0.0.1:1, 127.0.0.1:2"', " 127.0.0.1:2", "holds spaces"),
        ('--rpc "127.0.0.1:1\t"', "127.0.0.1:1\t", "holds spaces"),
        ("--rpc user@127.0.0.1:1", "user@127.0.0.1:1", "has no valid host"),
        ("--rpc 127.0.0.1%lo:1", "127.0.0.1%lo:1", "has no valid host"),
    ],
)
def test_malformed_endpoints_are_refused_by_name(item: str, endpoint: str, problem: str) -> None:
    with pytest.raises(ServerArgsError) as caught:
        policy().check([item], source=SOURCE)
    assert caught.value.message.startswith(f"{SOURCE}: flag '--rpc' endpoint {endpoint!r} ")
    assert problem in caught.value.message


def test_a_missing_value_is_refused_before_the_endpoints() -> None:
    with pytest.raises(ServerArgsError, match=r"takes 1 value\(s\), got 0"):
        policy().check(["--rpc --jinja"], source=SOURCE)


@pytest.mark.parametrize("spelling", ["-rpc", "--rpc-servers", "--rpc_server"])
def test_spellings_llama_server_does_not_read_as_rpc_are_refused(spelling: str) -> None:
    """llama.cpp knows only ``--rpc`` (it turns ``_`` into ``-`` in ``--`` flags only): the
    others are not checked as endpoints, so they must not pass as harmless unknown flags."""
    with pytest.raises(ServerArgsError, match=f"flag {spelling!r} is refused"):
        policy().check([f"{spelling} 10.0.0.5:50052"], source=SOURCE)


def test_allowed_servers_and_workers_pass_others_do_not() -> None:
    allowed = policy(
        allowed_rpc_servers=[RpcEndpoint("10.0.0.5", 50052), RpcEndpoint("gpu-box.lan", 1)]
    )
    assert allowed.check(["--rpc 10.0.0.5:50052,GPU-BOX.lan:1,127.0.0.1:9"], source=SOURCE)
    for other in ("10.0.0.5:50053", "10.0.0.6:50052", "gpu-box.lan:2"):
        with pytest.raises(ServerArgsError, match=re.escape(f"endpoint {other!r} is neither")):
            allowed.check([f"--rpc {other}"], source=SOURCE)


def test_allowing_the_flag_allows_any_endpoint() -> None:
    """``BODHI_ALLOWED_CONTEXT_FLAGS`` is the operator's escape hatch, as for any net flag."""
    hatch = policy(allowed_flags=("--rpc",))
    assert hatch.check(["--rpc 10.0.0.5:50052,[fe80::1]:50052"], source=SOURCE)


def test_endpoints_parse_strictly() -> None:
    assert parse_rpc_endpoint("LocalHost:50052") == RpcEndpoint("localhost", 50052)
    assert parse_rpc_endpoint("127.0.0.1:50052").is_loopback
    assert not parse_rpc_endpoint("128.0.0.1:50052").is_loopback
    assert str(parse_rpc_endpoint("10.0.0.5:7")) == "10.0.0.5:7"


# ---------------------------------------------------------------------------- settings


def test_rpc_settings_default_to_none(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, env={})
    assert settings.rpc_workers == ()
    assert settings.rpc_workers_insecure is False
    assert settings.allowed_rpc_servers == ()


def test_rpc_settings_from_the_file_the_environment_and_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "settings.yaml").write_text(
        yaml.safe_dump(
            {
                "BODHI_RPC_WORKERS": ["127.0.0.1:50052", "localhost:50053"],
                "BODHI_ALLOWED_RPC_SERVERS": ["10.0.0.5:50052"],
            }
        )
    )
    from_file = load_settings(home=tmp_path, env={})
    # rpc-server binds addresses only: localhost is stored as the address it binds.
    assert from_file.rpc_workers == (
        RpcEndpoint("127.0.0.1", 50052),
        RpcEndpoint("127.0.0.1", 50053),
    )
    assert from_file.allowed_rpc_servers == (RpcEndpoint("10.0.0.5", 50052),)
    env = {"BODHI_RPC_WORKERS": "127.0.0.1:1, 127.0.0.2:2", "BODHI_ALLOWED_RPC_SERVERS": "h:3"}
    from_env = load_settings(home=tmp_path, env=env)
    assert from_env.rpc_workers == (RpcEndpoint("127.0.0.1", 1), RpcEndpoint("127.0.0.2", 2))
    assert from_env.allowed_rpc_servers == (RpcEndpoint("h", 3),)
    cli = load_settings(home=tmp_path, env=env, overrides={"BODHI_RPC_WORKERS": ["127.0.0.9:9"]})
    assert cli.rpc_workers == (RpcEndpoint("127.0.0.9", 9),)


def test_workers_and_allowed_servers_reach_the_policy(tmp_path: Path) -> None:
    env = {
        "BODHI_RPC_WORKERS": "10.1.1.1:50052",
        "BODHI_RPC_WORKERS_INSECURE": "true",
        "BODHI_ALLOWED_RPC_SERVERS": "10.0.0.5:50052",
    }
    settings = load_settings(home=tmp_path, env=env)
    checked = ArgPolicy.from_settings(settings)
    assert checked.check(["--rpc 10.1.1.1:50052,10.0.0.5:50052"], source=SOURCE)
    with pytest.raises(ServerArgsError, match=re.escape("'10.0.0.6:50052' is neither")):
        checked.check(["--rpc 10.0.0.6:50052"], source=SOURCE)
    # The settings' own llama-server args pass the same policy, at load.
    with pytest.raises(ServerArgsError, match="BODHI_LLAMACPP_ARGS: flag '--rpc' endpoint"):
        load_settings(home=tmp_path, env={"BODHI_LLAMACPP_ARGS": "--rpc 10.0.0.6:1"})
    assert load_settings(home=tmp_path, env={**env, "BODHI_LLAMACPP_ARGS": "--rpc 10.0.0.5:50052"})


def test_a_worker_beyond_loopback_needs_the_insecure_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(home=tmp_path, env={"BODHI_RPC_WORKERS": "127.0.0.1:1,0.0.0.0:2"})
    assert caught.value.param == "BODHI_RPC_WORKERS"
    assert "'0.0.0.0:2' binds beyond this machine" in caught.value.message
    assert "no authentication" in caught.value.message
    assert "BODHI_RPC_WORKERS_INSECURE=true" in caught.value.message
    insecure = {"BODHI_RPC_WORKERS": "0.0.0.0:2", "BODHI_RPC_WORKERS_INSECURE": "1"}
    assert load_settings(home=tmp_path, env=insecure).rpc_workers == (RpcEndpoint("0.0.0.0", 2),)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("BODHI_RPC_WORKERS", "127.0.0.1", "'127.0.0.1' must be host:port"),
        ("BODHI_RPC_WORKERS", "127.0.0.1:0", "'127.0.0.1:0' has no valid port"),
        ("BODHI_RPC_WORKERS", "gpu-box:1", "'gpu-box' is not an IPv4 address"),
        ("BODHI_RPC_WORKERS", "127.0.0.1:5,127.0.0.2:5", "port 5 is listed twice"),
        ("BODHI_ALLOWED_RPC_SERVERS", "tcp://h:1", "'tcp://h:1' has a scheme"),
        ("BODHI_ALLOWED_RPC_SERVERS", "h", "'h' must be host:port"),
        ("BODHI_RPC_WORKERS_INSECURE", "maybe", "true or false"),
    ],
)
def test_bad_rpc_settings_name_key_source_and_entry(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(home=tmp_path, env={key: value})
    assert caught.value.message.startswith(f"{key} from the environment: ")
    assert message in caught.value.message
    assert caught.value.param == key
