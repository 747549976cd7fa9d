"""The command line: alias commands, llama-server path, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bodhi_trio._cli import main


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


def test_help_everywhere() -> None:
    for argv in (["--help"], ["alias", "--help"], ["alias", "create", "--help"],
                 ["llama-server", "install", "--help"]):  # fmt: skip
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 0
