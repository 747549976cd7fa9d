"""Process inspection helpers for tests (Linux /proc)."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bodhi_trio._core._address import Address


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


async def wait_gone(pid: int) -> None:
    """Wait until ``pid`` has exited (gone, or a zombie nobody reaps); callers set the deadline.

    A pidfd works for any process, not only our children, and becomes readable at exit.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def child_client(address: Address, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client for a llama-server child, which listens on a Unix socket."""
    assert address.unix_socket is not None
    transport = httpx.AsyncHTTPTransport(uds=address.unix_socket)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost", **kwargs)


PARENT_SCRIPT = """
import sys, trio
from pathlib import Path
from bodhi_trio._llama._child import LaunchSpec, serve_llama_server

async def main():
    spec = LaunchSpec(binary=Path(sys.argv[1]), model=Path(sys.argv[2]), alias="x",
                      server_args=tuple(sys.argv[3:]))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_llama_server, spec)
        print(server.pid, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def first_line(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bytes:
    """The first line ``proc`` prints (its stdout a pipe); the test fails if none comes
    within ``timeout`` seconds (a blocking ``readline`` would hang the suite)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"{proc.args!r} printed nothing within {timeout:g} s")
    return proc.stdout.readline()


def start_parent(binary: Path, model: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(binary), str(model), *args],
        stdout=subprocess.PIPE,
    )


async def run_parent_and_sigkill_it(binary: Path, model: Path, *args: str) -> int:
    """Start a Python parent that owns a child, SIGKILL the parent; return the child pid."""
    with start_parent(binary, model, *args) as parent:
        try:
            assert parent.stdout is not None
            line = await trio.to_thread.run_sync(parent.stdout.readline, abandon_on_cancel=True)
            child_pid = int(line)
            assert is_alive(child_pid)
        finally:
            parent.kill()
    return child_pid


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment with ``HF_HOME`` and ``BODHI_HOME`` under ``tmp_path``
    (``hf``, ``home``) and the ``extra`` variables: a server of its own for a test."""
    home = {"HF_HOME": str(tmp_path / "hf"), "BODHI_HOME": str(tmp_path / "home")}
    return {**os.environ, **home, **extra}


def start_serve(home: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``bodhi-trio serve --home HOME --port 0 ARGS`` with ``env``, its stderr a pipe
    (text; :func:`listening_url` reads it), its stdout discarded."""
    serve = [sys.executable, "-m", "bodhi_trio", "serve", "--home", str(home), "--port", "0"]
    return subprocess.Popen(
        [*serve, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


async def listening_url(process: subprocess.Popen[str]) -> str:
    """The URL a process of :func:`start_serve` says it listens on, once it says so (its
    stderr read in a thread let go on cancellation: callers set the deadline, and kill the
    process when it passes, which ends the thread's read).

    Raises:
        AssertionError: The process exited before it listened.
    """
    stderr = process.stderr
    assert stderr is not None
    while line := await trio.to_thread.run_sync(stderr.readline, abandon_on_cancel=True):
        if match := re.search(r"listening on (http://[^\s\"]+)", line):
            return match.group(1)
    raise AssertionError(f"serve exited with {process.wait()} before listening")
