"""The command line: alias commands, llama-server path, one-line errors."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import bodhi_trio
from bodhi_trio._cli import _join_dashed_values, main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_alias_create_show_list_rm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path)
    code, out, _ = run(
        capsys, "--home", home, "alias", "create", "llama3:instruct",
        "--repo", "QuantFactory/Meta-Llama-3-8B-Instruct-GGUF",
        "--filename", "Meta-Llama-3-8B-Instruct.Q8_0.gguf",
        "--request-param", "temperature=0.7", "--request-param", "stop=['<|eot_id|>']",
        "--context-param", "--ctx-size 4096", "--context-param", "--n-keep 24",
    )  # fmt: skip
    assert code == 0
    assert (tmp_path / "aliases" / "llama3--instruct.yaml").exists()
    code, out, _ = run(capsys, "alias", "show", "llama3:instruct", "--home", home)
    assert code == 0
    assert yaml.safe_load(out) == {
        "alias": "llama3:instruct",
        "repo": "QuantFactory/Meta-Llama-3-8B-Instruct-GGUF",
        "filename": "Meta-Llama-3-8B-Instruct.Q8_0.gguf",
        "snapshot": "main",
        "request_params": {"temperature": 0.7, "stop": ["<|eot_id|>"]},
        "context_params": ["--ctx-size 4096", "--n-keep 24"],
    }
    code, out, _ = run(capsys, "--home", home, "alias", "list")
    assert out.split("\t")[0] == "llama3:instruct"
    code, _, err = run(capsys, "--home", home, "alias", "create", "llama3:instruct",
                       "--repo", "a/b", "--filename", "c.gguf")  # fmt: skip
    assert code == 1
    assert err.startswith("bodhi-trio: error: ")
    assert "exists" in err
    assert run(capsys, "--home", home, "alias", "rm", "llama3:instruct")[0] == 0
    code, _, err = run(capsys, "--home", home, "alias", "rm", "llama3:instruct")
    assert (code, err) == (1, "bodhi-trio: error: alias 'llama3:instruct' not found\n")


def test_reserved_context_param_is_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "--home", str(tmp_path), "alias", "create", "x",
        "--repo", "a/b", "--filename", "c.gguf", "--context-param", "--port 1",
    )  # fmt: skip
    assert code == 1
    assert "--port" in err
    assert not (tmp_path / "aliases" / "x.yaml").exists()


@pytest.mark.parametrize(
    "context_param",
    ["--context-param=--tools all", "--context-param=--api_key x", "--context-param=-v"],
)
def test_refused_context_params_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], context_param: str
) -> None:
    code, out, err = run(
        capsys, "--home", str(tmp_path), "alias", "create", "x",
        "--repo", "a/b", "--filename", "c.gguf", context_param,
    )  # fmt: skip
    flag = context_param.removeprefix("--context-param=").split()[0]
    assert (code, out) == (1, "")
    assert err.startswith("bodhi-trio: error: ")
    assert f"alias 'x' context_params: flag '{flag}' is " in err
    assert err.count("\n") == 1
    assert not (tmp_path / "aliases").exists()


def test_alias_create_keep_alive_secs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path)
    code, _, _ = run(
        capsys, "--home", home, "alias", "create", "x",
        "--repo", "a/b", "--filename", "c.gguf", "--keep-alive-secs", "-1",
    )  # fmt: skip
    assert code == 0
    assert yaml.safe_load((tmp_path / "aliases" / "x.yaml").read_text())["keep_alive_secs"] == -1
    code, out, _ = run(capsys, "--home", home, "alias", "show", "x")
    assert "keep_alive_secs: -1" in out
    code, out, err = run(
        capsys, "--home", home, "alias", "create", "y",
        "--repo", "a/b", "--filename", "c.gguf", "--keep-alive-secs", "-2",
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert err == (
        "bodhi-trio: error: command line: keep_alive_secs must be in [-1, 1000000000]"
        " (-1 never unloads), got -2\n"
    )
    assert not (tmp_path / "aliases" / "y.yaml").exists()


def test_llama_server_path_error_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bodhi_trio", "--home", str(tmp_path), "llama-server", "path"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"BODHI_LLAMA_SERVER": str(tmp_path / "missing"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "missing") in result.stderr


def test_an_os_error_of_the_machines_is_one_line(tmp_path: Path) -> None:
    """An OSError that is nobody's fault but the machine's (here: the home's ``logs`` is a
    file, which stops root too) is one line and exit 1, not a traceback."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "logs").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "bodhi_trio", "--home", str(home), "serve", "--port", "0"],
        capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == f"bodhi-trio: error: File exists: {home / 'logs'}\n"


def test_help_everywhere() -> None:
    for argv in (["--help"], ["alias", "--help"], ["alias", "create", "--help"],
                 ["llama-server", "install", "--help"]):  # fmt: skip
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 0


def test_version_prints_the_package_version(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["bodhi-trio", "--version"])  # as the console script runs
    with pytest.raises(SystemExit) as caught:
        main()
    assert caught.value.code == 0
    out, err = capsys.readouterr()
    assert (out, err) == (f"bodhi-trio {bodhi_trio.__version__}\n", "")
    assert bodhi_trio.__version__ == importlib.metadata.version("bodhi-trio")


@pytest.mark.parametrize(
    "argv",
    [
        ["--context-param", "--embeddings", "--context-param", "--pooling mean"],
        ["--context-param=--embeddings", "--context-param=--pooling mean"],
        ["--context-param", "--embeddings", "--force", "--context-param", "--pooling mean"],
    ],
    ids=["spaced", "equals", "spaced-then-other-option"],
)
def test_context_param_values_may_start_with_a_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, _ = run(
        capsys, "--home", str(tmp_path), "alias", "create", "embed",
        "--repo", "a/b", "--filename", "c.gguf", *argv,
    )  # fmt: skip
    assert code == 0, out
    written = yaml.safe_load((tmp_path / "aliases" / "embed.yaml").read_text())
    assert written["context_params"] == ["--embeddings", "--pooling mean"]


def test_cmake_arg_values_may_start_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "bodhi_trio._cli.install_llama_server", lambda variant, **kw: calls.append(kw)
    )
    argv = ["--home", str(tmp_path), "llama-server", "install", "--variant", "cpu"]
    assert main([*argv, "--cmake-arg", "-DGGML_NATIVE=OFF", "--cmake-arg=-DX=1"]) == 0
    assert list(calls[0]["extra_cmake_args"]) == ["-DGGML_NATIVE=OFF", "-DX=1"]


def test_a_dashed_option_without_a_value_is_still_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--home", str(tmp_path), "alias", "create", "x", "--repo", "a/b",
              "--filename", "c.gguf", "--context-param"])  # fmt: skip
    assert caught.value.code == 2
    assert "--context-param: expected one argument" in capsys.readouterr().err
    assert not (tmp_path / "aliases" / "x.yaml").exists()


def test_alias_create_warns_when_the_model_file_is_not_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    home = str(tmp_path / "home")
    code, out, err = run(
        capsys, "--home", home, "alias", "create", "x",
        "--repo", "owner/model-GGUF", "--filename", "m.Q4_K_M.gguf", "--snapshot", "v1",
    )  # fmt: skip
    assert code == 0
    assert out.startswith("created x: ")
    assert (tmp_path / "home" / "aliases" / "x.yaml").exists()  # written all the same
    assert err.count("\n") == 1
    assert err.startswith("bodhi-trio: warning: ")
    for part in ("'owner/model-GGUF'", "'m.Q4_K_M.gguf'", "'v1'", str(hub)):
        assert part in err
    download = f"hf download owner/model-GGUF m.Q4_K_M.gguf --revision v1 --cache-dir {hub}"
    assert err.endswith(download + "\n")

    # Once the file is where the server looks, the same alias is created silently.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hub / "models--owner--model-GGUF"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "v1").write_text(commit)
    (repo_dir / "snapshots" / commit).mkdir(parents=True)
    (repo_dir / "snapshots" / commit / "m.Q4_K_M.gguf").write_bytes(b"GGUF")
    code, out, err = run(
        capsys, "--home", home, "alias", "create", "x", "--force",
        "--repo", "owner/model-GGUF", "--filename", "m.Q4_K_M.gguf", "--snapshot", "v1",
    )  # fmt: skip
    assert (code, err) == (0, "")


def test_join_dashed_values_leaves_everything_after_a_double_dash() -> None:
    argv = ["--context-param", "-v", "--", "--context-param", "--embeddings"]
    assert _join_dashed_values(argv) == ["--context-param=-v", "--", *argv[-2:]]


def test_serving_settles_the_garbage_collector() -> None:
    """What `serve` loaded is frozen (a full pass skips it) and full passes are rarer."""
    import gc

    from bodhi_trio import _cli

    before = gc.get_threshold()
    try:
        _cli._settle_garbage_collector()
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == _cli._GC_THRESHOLDS
        assert _cli._GC_THRESHOLDS[2] > before[2]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
