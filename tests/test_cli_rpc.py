"""The command line's RPC parts: ``rpc-worker``, ``install --rpc``, ``serve --rpc-worker``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from bodhi_trio._cli import main
from bodhi_trio._exceptions import RpcServerNotFoundError
from bodhi_trio._llama._runtime import find_rpc_server, installed_rpc_server
from procs import is_alive


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("host", ["10.0.0.5", "0.0.0.0", "192.168.1.20"])
def test_rpc_worker_refuses_a_host_beyond_loopback_without_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    code, out, err = run(capsys, "--home", str(tmp_path), "rpc-worker", "--host", host)
    assert code == 2
    assert out == ""
    assert err.startswith(f"bodhi-trio: error: refusing to bind the RPC worker to {host}: ")
    assert "no authentication" in err
    assert "--insecure" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "logs").exists()  # refused before anything started


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", "gpu-box"], "'gpu-box' is not an IPv4 address"),
        (["--host", "::1"], "IPv6 addresses cannot be used"),
        (["--port", "0"], "has no valid port"),
        (["--port", "70000"], "has no valid port"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
    ],
)
def test_rpc_worker_refuses_what_rpc_server_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, "--home", str(tmp_path), "rpc-worker", *argv)
    assert code == 2
    assert message in err


def test_rpc_worker_with_insecure_gets_past_the_bind_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It then looks for the binary: here there is none, and it says how to build it."""
    monkeypatch.setenv("BODHI_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    argv = ("--home", str(tmp_path), "rpc-worker", "--host", "0.0.0.0", "--insecure")
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.endswith("run `bodhi-trio llama-server install --rpc` to build it\n")


def test_install_passes_rpc_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "bodhi_trio._cli.install_llama_server", lambda variant, **kw: calls.append(kw)
    )
    argv = ["--home", str(tmp_path), "llama-server", "install", "--variant", "cpu"]
    assert main(argv) == 0
    assert main([*argv, "--rpc"]) == 0
    assert [call["rpc"] for call in calls] == [False, True]


def test_path_rpc_prints_the_rpc_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BODHI_RUNTIME_DIR", str(tmp_path / "runtime"))
    binary = installed_rpc_server("cpu")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o700)
    code, out, _ = run(capsys, "--home", str(tmp_path), "llama-server", "path", "--rpc")
    assert (code, out) == (0, f"{binary}\n")


def test_serve_rpc_worker_reaches_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flag replaces BODHI_RPC_WORKERS, and its entries are checked like the setting's."""
    code, _, err = run(capsys, "--home", str(tmp_path), "serve", "--rpc-worker", "10.0.0.5:50052")
    assert code == 1
    assert "BODHI_RPC_WORKERS: '10.0.0.5:50052' binds beyond this machine" in err


@pytest.mark.llama
async def test_rpc_worker_runs_until_interrupted_and_takes_the_worker_with_it(
    tmp_path: Path,
) -> None:
    try:
        find_rpc_server("cpu")
    except RpcServerNotFoundError as exc:
        pytest.fail(exc.message)
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [sys.executable, "-m", "bodhi_trio", "--home", str(tmp_path), "rpc-worker"]
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [*argv, "--port", str(port), "--threads", "1"], stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        output = b""
        while b"Ctrl-C stops it" not in output:
            chunk = await process.stdout.receive_some()
            assert chunk, output
            output += chunk
        ready = re.search(rb"RPC worker on 127\.0\.0\.1:(\d+) \(pid (\d+)\)", output)
        assert ready is not None, output
        assert int(ready[1]) == port
        worker_pid = int(ready[2])
        assert is_alive(worker_pid)
        assert b"rpc-server: Starting RPC server" in output  # its lines are echoed
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 130
        await process.stdout.aclose()
    assert not is_alive(worker_pid)
    log = (tmp_path / "logs" / f"rpc-worker-{port}.log").read_text()
    assert f"--port {port} --threads 1" in log
    assert os.listdir(tmp_path / "run") == []
