"""Settings: defaults, precedence, variants, lists and error messages."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from bodhi_trio._config._settings import Settings, _is_known, load_settings
from bodhi_trio._exceptions import ServerArgsError, SettingsError
from paths import REPO


def write_settings(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "settings.yaml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, env={})
    assert settings == Settings(
        home=tmp_path,
        hf_home=Path.home() / ".cache" / "huggingface",
        hub_cache=Path.home() / ".cache" / "huggingface" / "hub",
    )
    assert settings.host == "127.0.0.1"
    assert settings.port == 1135
    assert settings.exec_variant == "cpu"
    assert dict(settings.llama_server) == {}
    assert settings.llamacpp_args == ()
    assert settings.keep_alive_secs == 300
    assert settings.sse_keepalive_secs == 15.0
    assert settings.startup_timeout_secs == 120.0
    assert settings.drain_timeout_secs == 300.0
    assert settings.stop_grace_secs == 5.0
    assert settings.api_keys == ()
    assert settings.max_body_bytes == 32 * 1024 * 1024
    assert settings.max_answers_bytes == 1024 * 1024 * 1024
    assert settings.allowed_origins == ()
    assert settings.insecure is False
    assert settings.aliases_dir == tmp_path / "aliases"
    assert settings.logs_dir == tmp_path / "logs"
    assert settings.run_dir == tmp_path / "run"
    assert settings.settings_file == tmp_path / "settings.yaml"


def test_home_default_and_from_env(tmp_path: Path) -> None:
    assert load_settings(env={}).home == Path.home() / ".cache" / "bodhi-trio"
    assert load_settings(env={"BODHI_HOME": str(tmp_path)}).home == tmp_path
    cli = load_settings(env={"BODHI_HOME": "/nowhere"}, overrides={"BODHI_HOME": tmp_path})
    assert cli.home == tmp_path


@pytest.mark.parametrize(
    ("cli", "env", "file", "expected"),
    [
        (8001, "8002", "8003", 8001),
        (None, "8002", "8003", 8002),
        (None, None, "8003", 8003),
        (None, None, None, 1135),
    ],
)
def test_precedence_cli_env_file_default(
    tmp_path: Path, cli: int | None, env: str | None, file: str | None, expected: int
) -> None:
    if file is not None:
        write_settings(tmp_path, f"BODHI_PORT: {file}\n")
    settings = load_settings(
        home=tmp_path,
        env={} if env is None else {"BODHI_PORT": env},
        overrides={"BODHI_PORT": cli},
    )
    assert settings.port == expected


def test_empty_env_value_counts_as_unset(tmp_path: Path) -> None:
    write_settings(tmp_path, "BODHI_PORT: 8003\n")
    assert load_settings(home=tmp_path, env={"BODHI_PORT": ""}).port == 8003


def test_hf_home_and_hub_cache(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    assert load_settings(home=tmp_path, env={"HF_HOME": str(hf)}).hub_cache == hf / "hub"
    settings = load_settings(
        home=tmp_path, env={"HF_HOME": str(hf), "HF_HUB_CACHE": str(tmp_path / "c")}
    )
    assert (settings.hf_home, settings.hub_cache) == (hf, tmp_path / "c")


def test_variant_binaries_and_args(tmp_path: Path) -> None:
    write_settings(
        tmp_path,
        "BODHI_LLAMACPP_ARGS: [--jinja, '--ctx-size 2048']\n"
        "BODHI_LLAMACPP_ARGS_VULKAN: '--n-gpu-layers 10'\n"
        "BODHI_LLAMA_SERVER_VULKAN: /opt/vk/llama-server\n",
    )
    settings = load_settings(
        home=tmp_path,
        env={
            "BODHI_EXEC_VARIANT": "CUDA",
            "BODHI_LLAMA_SERVER": "/opt/generic/llama-server",
            "BODHI_LLAMACPP_ARGS_CUDA": "--n-gpu-layers 99 --flash-attn on",
        },
    )
    assert settings.exec_variant == "cuda"
    assert dict(settings.llama_server) == {
        "cuda": Path("/opt/generic/llama-server"),
        "vulkan": Path("/opt/vk/llama-server"),
    }
    assert settings.binary_for("CUDA") == Path("/opt/generic/llama-server")
    assert settings.binary_for("cpu") is None
    assert settings.llamacpp_args == ("--jinja", "--ctx-size 2048")
    assert settings.server_args_for("cuda") == ("--n-gpu-layers 99 --flash-attn on",)
    assert settings.server_args_for("vulkan") == ("--n-gpu-layers 10",)
    assert settings.server_args_for("cpu") == ()


def test_specific_variant_binary_wins_over_the_generic_one(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path,
        env={"BODHI_LLAMA_SERVER": "/generic", "BODHI_LLAMA_SERVER_CPU": "/specific"},
    )
    assert dict(settings.llama_server) == {"cpu": Path("/specific")}


def test_settings_mappings_are_read_only(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, env={"BODHI_LLAMA_SERVER": "/x"})
    with pytest.raises(TypeError):
        settings.llama_server["cpu"] = Path("/y")  # type: ignore[index]


def test_comma_lists(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path,
        env={
            "BODHI_API_KEYS": " k1, ,k2,, ",
            "BODHI_ALLOWED_ORIGINS": "http://a.example,https://b.example ",
        },
    )
    assert settings.api_keys == ("k1", "k2")
    assert settings.allowed_origins == ("http://a.example", "https://b.example")
    write_settings(tmp_path, "BODHI_API_KEYS: [k3, ' ']\n")
    assert load_settings(home=tmp_path, env={}).api_keys == ("k3",)


def test_all_numeric_and_flag_settings(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path,
        env={
            "BODHI_HOST": "0.0.0.0",
            "BODHI_KEEP_ALIVE_SECS": "-1",
            "BODHI_SSE_KEEPALIVE_SECS": "0",
            "BODHI_STARTUP_TIMEOUT_SECS": "2.5",
            "BODHI_DRAIN_TIMEOUT_SECS": "0",
            "BODHI_STOP_GRACE_SECS": "1",
            "BODHI_MAX_BODY_BYTES": "1024",
            "BODHI_MAX_ANSWERS_BYTES": "4096",
            "BODHI_PORT": "0",
        },
        overrides={"BODHI_INSECURE": True},
    )
    assert (settings.host, settings.port, settings.insecure) == ("0.0.0.0", 0, True)
    assert settings.keep_alive_secs == -1
    assert (settings.sse_keepalive_secs, settings.startup_timeout_secs) == (0.0, 2.5)
    assert (settings.drain_timeout_secs, settings.stop_grace_secs) == (0.0, 1.0)
    assert (settings.max_body_bytes, settings.max_answers_bytes) == (1024, 4096)
    assert load_settings(home=tmp_path, env={"BODHI_INSECURE": "yes"}).insecure is True


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("BODHI_PORT", "65536", "an integer 0..65535, got '65536'"),
        ("BODHI_PORT", "-1", "an integer 0..65535, got '-1'"),
        ("BODHI_PORT", "http", "an integer 0..65535, got 'http'"),
        ("BODHI_KEEP_ALIVE_SECS", "-2", "an integer -1..1000000000, got '-2'"),
        ("BODHI_KEEP_ALIVE_SECS", "1.5", "an integer -1..1000000000, got '1.5'"),
        ("BODHI_SSE_KEEPALIVE_SECS", "-1", "a number of seconds >= 0, got '-1'"),
        ("BODHI_STARTUP_TIMEOUT_SECS", "0", "a number of seconds > 0, got '0'"),
        ("BODHI_DRAIN_TIMEOUT_SECS", "soon", "a number of seconds >= 0, got 'soon'"),
        ("BODHI_STOP_GRACE_SECS", "nan", "a number of seconds >= 0, got 'nan'"),
        ("BODHI_MAX_BODY_BYTES", "0", "an integer >= 1, got '0'"),
        ("BODHI_MAX_ANSWERS_BYTES", "-5", "an integer >= 1, got '-5'"),
        ("BODHI_INSECURE", "maybe", "true or false, got 'maybe'"),
        ("BODHI_EXEC_VARIANT", "cu da", "a variant name of letters, digits and '_', got 'cu da'"),
    ],
)
def test_bad_env_values_name_key_source_and_value(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(home=tmp_path, env={key: value})
    assert caught.value.message == f"{key} from the environment: {expected}"
    assert caught.value.param == key


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("BODHI_PORT: true", "BODHI_PORT from settings file {path}: an integer 0..65535, got True"),
        ("BODHI_HOST: 12", "BODHI_HOST from settings file {path}: a non-empty string, got 12"),
        (
            "BODHI_LLAMACPP_ARGS: {a: 1}",
            "BODHI_LLAMACPP_ARGS from settings file {path}: a string or a list of strings,"
            " got {{'a': 1}}",
        ),
        (
            "BODHI_ALLOWED_ORIGINS: [1]",
            "BODHI_ALLOWED_ORIGINS from settings file {path}:"
            " a comma-separated string or a list of strings, got [1]",
        ),
        (
            "BODHI_DRAIN_TIMEOUT_SECS: -5",
            "BODHI_DRAIN_TIMEOUT_SECS from settings file {path}: a number of seconds >= 0, got -5",
        ),
    ],
)
def test_bad_file_values_name_the_file(tmp_path: Path, line: str, expected: str) -> None:
    path = write_settings(tmp_path, line + "\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(home=tmp_path, env={})
    assert caught.value.message == expected.format(path=path)


def test_bad_cli_value_names_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(home=tmp_path, env={}, overrides={"BODHI_PORT": 70000})
    assert (
        caught.value.message == "BODHI_PORT from the command line: an integer 0..65535, got 70000"
    )


def test_unknown_cli_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(
        SettingsError, match=r"^unknown setting 'BODHI_PROT' from the command line$"
    ):
        load_settings(home=tmp_path, env={}, overrides={"BODHI_PROT": 1})


def test_api_keys_never_appear_in_errors_or_repr(tmp_path: Path) -> None:
    write_settings(tmp_path, "BODHI_API_KEYS: {secret-key-1: 1}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(home=tmp_path, env={})
    assert "secret-key-1" not in str(caught.value)
    assert caught.value.message.endswith("got (value hidden)")
    settings = load_settings(home=tmp_path / "other", env={"BODHI_API_KEYS": "secret-key-1,k2"})
    assert settings.api_keys == ("secret-key-1", "k2")
    assert "secret-key-1" not in repr(settings)
    assert "api_keys=<2 hidden>" in repr(settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "BODHI_PORT: [unclosed",
            "settings file {path} is not valid YAML: expected ',' or ']', but got '<stream end>'"
            " (line 1, column 22)",
        ),
        ("- BODHI_PORT\n", "settings file {path} must be a mapping of setting names"),
        ("just a string", "settings file {path} must be a mapping of setting names"),
    ],
)
def test_bad_settings_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write_settings(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_settings(home=tmp_path, env={})
    assert caught.value.message.startswith(expected.format(path=path))
    assert "\n" not in caught.value.message


def test_yaml_errors_do_not_echo_file_content(tmp_path: Path) -> None:
    write_settings(tmp_path, "BODHI_API_KEYS: secret-key-1: x\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(home=tmp_path, env={})
    assert "secret-key-1" not in caught.value.message
    assert caught.value.message.endswith(
        "is not valid YAML: mapping values are not allowed here (line 1, column 29)"
    )


def test_empty_settings_file_is_fine(tmp_path: Path) -> None:
    write_settings(tmp_path, "# nothing yet\n")
    assert load_settings(home=tmp_path, env={}).port == 1135


def test_unknown_file_keys_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_settings(tmp_path, "BODHI_PROT: 1\nBODHI_HOME: /x\nBODHI_PORT: 9000\n")
    with caplog.at_level(logging.WARNING, logger="bodhi_trio.settings"):
        settings = load_settings(home=tmp_path, env={})
    assert settings.port == 9000
    assert settings.home == tmp_path
    assert [r.getMessage() for r in caplog.records] == [
        f"settings file {path}: unknown setting 'BODHI_PROT' is ignored",
        f"settings file {path}: BODHI_HOME cannot be set from inside it",
    ]


def test_reserved_flags_in_settings_args_fail_at_load(tmp_path: Path) -> None:
    with pytest.raises(ServerArgsError) as caught:
        load_settings(home=tmp_path, env={"BODHI_LLAMACPP_ARGS_CUDA": "--port 9"})
    assert caught.value.message.startswith(
        "BODHI_LLAMACPP_ARGS_CUDA (the environment): flag '--port' is reserved"
    )


def test_overrides_accept_typed_values(tmp_path: Path) -> None:
    overrides: dict[str, Any] = {
        "BODHI_HOST": "::1",
        "BODHI_LLAMACPP_ARGS": ["--jinja"],
        "HF_HOME": tmp_path / "hf",
    }
    settings = load_settings(home=tmp_path, env={}, overrides=overrides)
    assert (settings.host, settings.llamacpp_args) == ("::1", ("--jinja",))
    assert settings.hub_cache == tmp_path / "hf" / "hub"


def test_a_number_of_seconds_past_a_floats_range_is_a_setting_error(tmp_path: Path) -> None:
    write_settings(tmp_path, "BODHI_DRAIN_TIMEOUT_SECS: 1" + "0" * 400 + "\n")
    with pytest.raises(SettingsError, match="BODHI_DRAIN_TIMEOUT_SECS"):
        load_settings(home=tmp_path, env={})


def test_every_documented_setting_is_read_from_the_settings_file(tmp_path: Path) -> None:
    """Each key of docs/configuration.md's settings table is one settings.yaml takes (a
    known key missing from KNOWN_KEYS is dropped there as unknown, with only a warning)."""
    table = (REPO / "docs" / "configuration.md").read_text()
    documented = re.findall(r"^\| `((?:BODHI|HF)_[A-Z_<>]+)` \|", table, re.MULTILINE)
    assert "BODHI_REMOTE_KEY_ENVS" in documented
    for key in documented:
        name = key.replace("<VARIANT>", "CUDA")
        assert _is_known(name), key


def test_remote_key_envs_from_the_settings_file_are_kept_from_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VENDOR_API_KEY", "sk-secret")
    monkeypatch.setenv("OTHER_VARIABLE", "kept")
    write_settings(tmp_path, "BODHI_REMOTE_KEY_ENVS: [VENDOR_API_KEY]\n")
    settings = load_settings(home=tmp_path, env={})
    assert settings.remote_key_envs == ("VENDOR_API_KEY",)
    child = settings.child_base_environment()
    assert "VENDOR_API_KEY" not in child
    assert child["OTHER_VARIABLE"] == "kept"


@pytest.mark.parametrize(
    ("line", "attribute", "expected"),
    [
        ("port: 9000", "port", 9000),
        ("remote_key_envs: [VENDOR_API_KEY]", "remote_key_envs", ("VENDOR_API_KEY",)),
        ("allowed_paths: [/srv/models]", "allowed_paths", (Path("/srv/models"),)),
        ("hf_hub_cache: /srv/hub", "hub_cache", Path("/srv/hub")),
    ],
)
def test_settings_file_keys_may_be_written_in_lowercase(
    tmp_path: Path, line: str, attribute: str, expected: object
) -> None:
    write_settings(tmp_path, line + "\n")
    assert getattr(load_settings(home=tmp_path, env={}), attribute) == expected


def test_a_setting_given_twice_in_the_file_is_an_error(tmp_path: Path) -> None:
    write_settings(tmp_path, "port: 9000\nBODHI_PORT: 9001\n")
    with pytest.raises(
        SettingsError, match=r"BODHI_PORT is given twice \('port' and 'BODHI_PORT'\)"
    ):
        load_settings(home=tmp_path, env={})


def test_mixed_case_and_unknown_lowercase_keys_are_still_unknown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_settings(tmp_path, "Port: 1\nprot: 2\nallowed_path\u017f: [/srv]\n")
    with caplog.at_level(logging.WARNING, logger="bodhi_trio.settings"):
        assert load_settings(home=tmp_path, env={}).port == 1135
    assert [r.getMessage() for r in caplog.records] == [
        f"settings file {path}: unknown setting 'Port' is ignored",
        f"settings file {path}: unknown setting 'prot' is ignored",
        f"settings file {path}: unknown setting 'allowed_path\u017f' is ignored",
    ]


def test_a_variants_setting_in_two_spellings_is_one_setting(tmp_path: Path) -> None:
    """The environment wins over the file whatever the spelling of the variant (it used to
    be the spelling that sorted last)."""
    for in_file, in_env in (
        ("BODHI_LLAMACPP_ARGS_cuda", "BODHI_LLAMACPP_ARGS_CUDA"),
        ("BODHI_LLAMACPP_ARGS_CUDA", "BODHI_LLAMACPP_ARGS_cuda"),
        ("llamacpp_args_cuda", "BODHI_LLAMACPP_ARGS_Cuda"),
    ):
        write_settings(tmp_path, f"{in_file}: --from-file\n")
        settings = load_settings(home=tmp_path, env={in_env: "--from-env"})
        assert settings.server_args_for("cuda") == ("--from-env",), (in_file, in_env)


def test_one_source_giving_a_variants_setting_twice_is_an_error(tmp_path: Path) -> None:
    env = {"BODHI_LLAMACPP_ARGS_cuda": "--a", "BODHI_LLAMACPP_ARGS_CUDA": "--b"}
    with pytest.raises(SettingsError, match=r"the environment: BODHI_LLAMACPP_ARGS_CUDA is given"):
        load_settings(home=tmp_path, env=env)
    write_settings(tmp_path, "llamacpp_args_cuda: --a\nBODHI_LLAMACPP_ARGS_cuda: --b\n")
    with pytest.raises(SettingsError, match=r"BODHI_LLAMACPP_ARGS_CUDA is given twice"):
        load_settings(home=tmp_path, env={})
