"""What settings and aliases may tell llama-server (SPEC section 15, issue 10)."""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._arg_policy import REFUSAL_REASONS, ArgPolicy
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from bodhi_trio._config._settings import load_settings
from bodhi_trio._context._spec import default_spec_builder
from bodhi_trio._exceptions import InvalidAliasError, ServerArgsError, SettingsError
from bodhi_trio._llama._flags import CATEGORIES, LLAMA_SERVER_FLAGS
from bodhi_trio._llama._launch import child_environment
from bodhi_trio._llama._server_args import RESERVED_FLAGS, canonical_flag
from httpserver import running_server
from paths import REPO

# The probe's findings, in the spellings it used (llama.cpp reads ``_`` as ``-``).
PROBE = [
    "--api_key x",
    "--tools all",
    "--log-file f",
    "--chat-template-file /etc/passwd",
    "--path /",
    "--model_url http://x",
    "--verbose",
    "-v",
    "--log_file=f",
]
MORE_REFUSED = [
    "--log_verbose",
    "-lv 5",
    "--hf_token t",
    "-hfd a/b",
    "--docker-repo gemma3",
    "--mmproj-url http://x",
    "--rpc 10.0.0.1:50052",
    "--embd-gemma-default",
    "--agent",
    "--tools-runtime ssh:host",
    "--mcp-servers-json {}",
    "--video-ffmpeg-dir /usr/bin",
    "--webui",
    "--ui-config {}",
    "--media-path /",
    "--slot-save-path /tmp",
    "--log-prompts-dir /tmp",
    "--ssl-key-file /k",
    "--cors-origins *",
    "--reuse-port",
    "--props",
    "--no-slots",
    "--api-prefix /v2",
    "--models-dir /m",
    "--help",
    "--hf-repo-v x",  # unknown to this build; the name says what it is
    "--weights-url http://x",
]
ALLOWED = [
    "--ctx-size 4096",
    "-c 512",
    "-ngl 99",
    "--n_gpu_layers 9",
    "--jinja",
    "--flash-attn on",
    "--no-webui",
    "--slots",
    "--no-agent",
    "--temp -0.5",
    "--control-vector-layer-range 1 4",
    "--override-kv a.b=int:1",
    "--fake-tokens 5",  # unknown to this build: passed on (the test double uses these)
    "--n-keep 24",
]


def policy_for(tmp_path: Path, **changes: Any) -> ArgPolicy:
    home, hub = tmp_path / "home", tmp_path / "hub"
    (hub / "models--o--n" / "blobs").mkdir(parents=True)
    (home / "run").mkdir(parents=True)
    return ArgPolicy(
        **{
            "path_roots": (hub, home),
            "denied_paths": (home / "settings.yaml", home / "run"),
            **changes,
        }
    )


@pytest.mark.parametrize("args", PROBE + MORE_REFUSED)
def test_refused_flags_name_the_flag_as_written(tmp_path: Path, args: str) -> None:
    with pytest.raises(ServerArgsError) as caught:
        policy_for(tmp_path).check([args], source="alias 'x' context_params")
    written = args.split()[0].partition("=")[0]
    assert caught.value.message.startswith(f"alias 'x' context_params: flag {written!r}")


@pytest.mark.parametrize("args", ALLOWED)
def test_allowed_flags_pass(tmp_path: Path, args: str) -> None:
    assert policy_for(tmp_path).check([args], source="x")


@pytest.mark.parametrize("item", ["--chat-template a\x00b", "--reverse-prompt \ud800"])
def test_args_that_cannot_reach_an_argv_are_refused(tmp_path: Path, item: str) -> None:
    with pytest.raises(ServerArgsError, match="a NUL or a lone surrogate"):
        policy_for(tmp_path).check([item], source="x")


def test_a_refusal_says_why_and_how_to_allow_it(tmp_path: Path) -> None:
    with pytest.raises(ServerArgsError) as caught:
        policy_for(tmp_path).check(["--log_file=f"], source="s")
    assert caught.value.message == (
        "s: flag '--log_file' is refused (llama-server reads it as '--log-file'): it writes"
        " files; an operator can allow it with BODHI_ALLOWED_CONTEXT_FLAGS"
    )


def test_paths_inside_the_hub_cache_are_accepted(tmp_path: Path) -> None:
    policy = policy_for(tmp_path)
    lora = tmp_path / "hub" / "models--o--n" / "blobs" / "lora.gguf"
    lora.write_bytes(b"")
    template = tmp_path / "home" / "templates" / "chat.jinja"
    assert policy.check([f"--lora {lora}", f"--lora-scaled {lora}:0.5"], source="x")
    assert policy.check([f"--lora {lora},{lora}", f"--chat-template-file {template}"], source="x")
    assert policy.check([f"-md {lora}", f'--control-vector "\\"{lora}\\""'], source="x")


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("--lora {hub}/models--o--n/blobs/evil.gguf", "resolves to '/etc/passwd'"),
        ("--lora {hub}/../../../../../../etc/passwd", "resolves to '/etc/passwd'"),
        ("--lora {hub}/models--o--n/blobs/ok.gguf,/etc/passwd", "path '/etc/passwd'"),
        ("--lora-scaled {hub}/ok.gguf:1,/etc/passwd:0.5", "path '/etc/passwd'"),
        ("--lora-scaled {hub}/ok.gguf", "takes PATH:SCALE items"),
        ("--mmproj models--o--n/blobs/mm.gguf", "is not absolute"),
        ("--grammar-file ~/g.gbnf", "is not absolute"),
        ("--json-schema-file {home}/settings.yaml", "bodhi-trio's own settings or run state"),
        ("--chat-template-file {home}/run/secret", "bodhi-trio's own settings or run state"),
        ("--lora --jinja", "takes 1 value(s), got 0"),
        ("--ctx-size 1 2", "takes 1 value(s), got 2"),
    ],
)
def test_paths_that_escape_or_do_not_fit_are_refused(
    tmp_path: Path, template: str, reason: str
) -> None:
    policy = policy_for(tmp_path)
    (tmp_path / "hub" / "models--o--n" / "blobs" / "evil.gguf").symlink_to("/etc/passwd")
    args = template.format(hub=tmp_path / "hub", home=tmp_path / "home")
    with pytest.raises(ServerArgsError, match=re.escape(reason)):
        policy.check([args], source="x")


def test_allowed_flags_opt_in_but_never_unreserve(tmp_path: Path) -> None:
    policy = policy_for(tmp_path, allowed_flags=("--verbose", "--log_file", "--port", "-m"))
    for spelling in ("--verbose", "-v", "--log-verbose", "--log_verbose"):
        assert policy.check([spelling], source="x")
    assert policy.check([f"--log-file {tmp_path}/home/logs/child.log"], source="x")
    with pytest.raises(ServerArgsError, match="outside the HF hub cache"):
        policy.check(["--log-file /tmp/child.log"], source="x")  # still a path flag
    for reserved in ("--port 1", "-m x.gguf", "--api-key k"):
        with pytest.raises(ServerArgsError, match="is reserved"):
            policy.check([reserved], source="x")


def test_single_dash_spellings_are_not_normalised(tmp_path: Path) -> None:
    # llama.cpp turns "_" into "-" in "--" arguments only: "-h_f" is no "-hf" to it.
    assert canonical_flag("-h_f") == "-h_f"
    assert canonical_flag("--hf_repo") == "--hf-repo"
    assert policy_for(tmp_path).check(["-h_f x"], source="x")


def test_the_flag_table_agrees_with_the_reserved_set() -> None:
    reserved = {s for s, f in LLAMA_SERVER_FLAGS.items() if f.category == "reserved"}
    assert reserved == RESERVED_FLAGS
    assert set(REFUSAL_REASONS) == CATEGORIES - {"ok", "reserved"}
    for spelling, flag in LLAMA_SERVER_FLAGS.items():
        assert spelling in flag.spellings
        assert flag.canonical.startswith("--") or len(flag.spellings) == 1


def test_the_docs_list_every_refused_and_path_flag() -> None:
    docs = (REPO / "docs" / "configuration.md").read_text()
    section = docs.split("### What an alias may pass to llama-server")[1].split("\n## ")[0]
    named = re.findall(r"`(-[^`\s]*)`", section)
    for flag in {f for f in LLAMA_SERVER_FLAGS.values() if f.category not in ("ok", "reserved")}:
        assert any(fnmatch.fnmatchcase(flag.canonical, name) for name in named), flag.canonical
    for flag in {f for f in LLAMA_SERVER_FLAGS.values() if f.path_kind and f.category == "ok"}:
        assert flag.canonical in named, flag.canonical


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize("args", PROBE)
def test_refused_flags_in_settings_fail_at_load(tmp_path: Path, args: str) -> None:
    with pytest.raises(ServerArgsError, match=args.split()[0].partition("=")[0]):
        load_settings(home=tmp_path, env={"BODHI_LLAMACPP_ARGS_CUDA": args})


def test_settings_opt_in_from_the_file_and_the_environment(tmp_path: Path) -> None:
    lora_dir = tmp_path / "loras"
    (tmp_path / "settings.yaml").write_text(
        yaml.safe_dump(
            {
                "BODHI_ALLOWED_CONTEXT_FLAGS": ["--verbose"],
                "BODHI_ALLOWED_PATHS": [str(lora_dir)],
                "BODHI_LLAMACPP_ARGS": ["-v", f"--lora {lora_dir}/a.gguf"],
            }
        )
    )
    settings = load_settings(home=tmp_path, env={})
    assert settings.allowed_context_flags == ("--verbose",)
    assert settings.allowed_paths == (lora_dir,)
    env = {"BODHI_ALLOWED_CONTEXT_FLAGS": "--log-file, --props", "BODHI_LLAMACPP_ARGS": "--props"}
    assert load_settings(home=tmp_path, env=env).allowed_context_flags == (
        "--log-file",
        "--props",
    )
    with pytest.raises(ServerArgsError, match="'-v' is refused"):
        load_settings(home=tmp_path, env={"BODHI_ALLOWED_CONTEXT_FLAGS": "--props"})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "BODHI_ALLOWED_CONTEXT_FLAGS",
            "--port",
            "'--port' is reserved by bodhi-trio and cannot be allowed",
        ),
        (
            "BODHI_ALLOWED_CONTEXT_FLAGS",
            "--api_key",
            "'--api_key' is reserved by bodhi-trio and cannot be allowed",
        ),
        ("BODHI_ALLOWED_CONTEXT_FLAGS", "verbose", "'verbose' is not a flag"),
        ("BODHI_ALLOWED_PATHS", "models", "every entry must be an absolute path, got 'models'"),
    ],
)
def test_bad_opt_ins_fail_at_load(tmp_path: Path, key: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(home=tmp_path, env={key: value})
    assert caught.value.message == f"{key} from the environment: {message}"
    assert caught.value.param == key


# ---------------------------------------------------------------------------- store, launch


def test_alias_files_with_refused_flags_are_skipped_and_not_written(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    store = AliasStore.for_settings(settings)
    store.create(Alias("good", "o/n", "f.gguf", context_params=("--jinja",)))
    bad = {"alias": "bad", "repo": "o/n", "filename": "f.gguf", "context_params": ["--tools all"]}
    (tmp_path / "aliases" / "bad.yaml").write_text(yaml.safe_dump(bad))
    aliases, problems = store.load()
    assert [a.alias for a in aliases] == ["good"]
    assert [(p.path.name, p.reason) for p in problems] == [
        (
            "bad.yaml",
            "alias 'bad' context_params: flag '--tools' is refused: it runs programs or tools on"
            " this machine; an operator can allow it with BODHI_ALLOWED_CONTEXT_FLAGS",
        )
    ]
    with pytest.raises(InvalidAliasError) as caught:
        store.create(Alias("new", "o/n", "f.gguf", context_params=("--path /",)))
    assert caught.value.param == "context_params"
    assert sorted(p.name for p in (tmp_path / "aliases").iterdir()) == ["bad.yaml", "good.yaml"]


def test_the_launch_checks_again(
    tmp_path: Path, hub_cache: Path, demo_model_path: Path, fake_llama_server: Path
) -> None:
    env = {"HF_HUB_CACHE": str(hub_cache), "BODHI_LLAMA_SERVER": str(fake_llama_server)}
    build = default_spec_builder(load_settings(home=tmp_path, env=env))
    assert build(Alias("ok", DEMO_REPO, DEMO_FILENAME, context_params=("-c 64",)), "cpu")
    # An alias built in code never passed the store's check.
    sneaky = Alias("sneaky", DEMO_REPO, DEMO_FILENAME, context_params=("--tools all",))
    with pytest.raises(ServerArgsError, match="alias 'sneaky' context_params: flag '--tools'"):
        build(sneaky, "cpu")


def test_the_child_gets_no_remote_alias_key(
    tmp_path: Path,
    hub_cache: Path,
    fake_llama_server: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The variables BODHI_REMOTE_KEY_ENVS names hold remote servers' keys: a llama-server
    child's environment has none of them (nor ours, nor HF's tokens)."""
    monkeypatch.setenv("FAR_KEY", "secret-of-the-remote")
    monkeypatch.setenv("UNRELATED", "kept")
    env = {
        "HF_HUB_CACHE": str(hub_cache),
        "BODHI_LLAMA_SERVER": str(fake_llama_server),
        "BODHI_REMOTE_KEY_ENVS": "FAR_KEY",
    }
    spec = default_spec_builder(load_settings(home=tmp_path, env=env))(
        Alias("ok", DEMO_REPO, DEMO_FILENAME), "cpu"
    )
    assert spec.env is not None
    child = child_environment(spec.env)
    assert "FAR_KEY" not in child
    assert child["UNRELATED"] == "kept"


# ---------------------------------------------------------------------------- HTTP


async def post_alias(url: str, body: dict[str, Any] | bytes, name: str = "") -> httpx.Response:
    path = "/bodhi/v1/aliases" + (f"/{name}" if name else "")
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.request("PUT" if name else "POST", path, **kwargs)


async def test_refused_context_params_over_http_are_400_and_write_nothing(
    tmp_path: Path, hub_cache: Path
) -> None:
    alias = {"alias": "x", "repo": "o/n", "filename": "f.gguf"}
    surrogate = b'{"alias": "s", "repo": "o/n", "filename": "f.gguf",'
    surrogate += b' "request_params": {"stop": ["ok", "\\ud800"]}}'
    with trio.fail_after(60):
        async with running_server(tmp_path, hub_cache) as server:
            replies = [
                await post_alias(server.url, {**alias, "context_params": [args]}, name)
                for args in PROBE
                for name in ("", "x")
            ]
            lone = await post_alias(server.url, surrogate)
    for reply in replies:
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", "context_params")
    assert lone.status_code == 400
    assert lone.json()["error"]["param"] == "stop"
    assert "lone surrogate" in lone.json()["error"]["message"]
    assert sorted(os.listdir(tmp_path / "aliases")) == ["demo--tiny.yaml"]


async def test_operator_opt_ins_apply_over_http(tmp_path: Path, hub_cache: Path) -> None:
    lora = tmp_path / "loras" / "style.gguf"
    lora.parent.mkdir()
    lora.write_bytes(b"")
    alias = {"alias": "x", "repo": "o/n", "filename": "f.gguf"}
    with trio.fail_after(60):
        async with running_server(
            tmp_path / "home",
            hub_cache,
            BODHI_ALLOWED_CONTEXT_FLAGS="--verbose",
            BODHI_ALLOWED_PATHS=str(lora.parent),
        ) as server:
            verbose = await post_alias(server.url, {**alias, "context_params": ["-v"]}, "x")
            lora_ok = await post_alias(
                server.url, {**alias, "alias": "y", "context_params": [f"--lora {lora}"]}
            )
            port = await post_alias(server.url, {**alias, "context_params": ["--port 1"]}, "x")
    assert (verbose.status_code, lora_ok.status_code, port.status_code) == (200, 201, 400)
    assert "'--port' is reserved" in port.json()["error"]["message"]
