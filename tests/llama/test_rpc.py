"""llama.cpp RPC with the real binaries: workers under supervision, a model split over two.

rpc-server prints one line per client connection ("Accepted client connection")
and, only when ``GGML_RPC_DEBUG`` is set in its environment, one line per command
it serves (``[set_tensor] ...`` for every tensor it receives). These tests set it,
so the logs show the tensors arriving.
"""

from __future__ import annotations

import functools
import json
import socket
from pathlib import Path

import pytest
import trio

from bodhi_trio import open_context
from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from bodhi_trio._config._settings import load_settings
from bodhi_trio._context._rpc_workers import open_rpc_workers
from bodhi_trio._exceptions import RpcWorkerError
from bodhi_trio._llama._rpc_worker import ACCEPTED_LINE, RpcWorker, serve_rpc_worker
from net import free_ports
from procs import group_members, is_alive

pytestmark = pytest.mark.llama


@pytest.fixture
def rpc_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started now print every command they serve (they inherit our environment)."""
    monkeypatch.setenv("GGML_RPC_DEBUG", "1")


def worker_pid(binary: Path, port: int) -> int:
    """The pid of the rpc-server listening on ``port`` (from ``/proc``: its command line)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0] == str(binary).encode() and str(port).encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no rpc-server on port {port}")


async def test_a_model_split_over_two_workers_answers_and_the_workers_stop_with_it(
    tmp_path: Path,
    hub_cache: Path,
    demo_model_path: Path,
    llama_server_binary: Path,
    rpc_server_binary: Path,
    rpc_debug: None,
) -> None:
    first, second = free_ports(2)
    endpoints = f"127.0.0.1:{first},127.0.0.1:{second}"
    env = {
        "HF_HUB_CACHE": str(hub_cache),
        "BODHI_KEEP_ALIVE_SECS": "-1",
        "BODHI_RPC_WORKERS": endpoints,  # the context starts them and stops them
    }
    settings = load_settings(home=tmp_path, env=env)
    AliasStore.for_settings(settings).create(
        Alias(
            "tiny:rpc",
            DEMO_REPO,
            DEMO_FILENAME,
            context_params=(f"--rpc {endpoints}", "--ctx-size 512", "--threads 1"),
        )
    )
    request = {
        "model": "tiny:rpc",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 8,
        "ignore_eos": True,
    }
    with trio.fail_after(180):
        async with open_context(settings) as ctx:
            pids = [worker_pid(rpc_server_binary, port) for port in (first, second)]
            assert all(is_alive(pid) for pid in pids)
            async with ctx.forward("/v1/chat/completions", request) as response:
                body = json.loads(await response.aread())
                assert response.status_code == 200, body
            assert body["usage"]["completion_tokens"] == 8
            assert body["model"] == "tiny:rpc"
    for pid in pids:  # the context stopped the workers it started
        assert not is_alive(pid)
        assert group_members(pid) == []
    for port in (first, second):
        log = (tmp_path / "logs" / f"rpc-worker-{port}.log").read_text()
        # Our readiness probe is one connection; llama-server's come after it.
        assert log.count(ACCEPTED_LINE) >= 2, log[-2000:]
        assert "[set_tensor]" in log, log[-2000:]
        assert "[graph_compute]" in log, log[-2000:]


async def test_a_worker_that_cannot_bind_fails_clearly_even_if_the_port_answers(
    tmp_path: Path, rpc_server_binary: Path
) -> None:
    """Another program listens there: our probe reaches it, but our worker never accepted."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with trio.fail_after(30), pytest.raises(RpcWorkerError) as caught:
            await serve_rpc_worker(rpc_server_binary, "127.0.0.1", port, log=None, threads=1)
    message = caught.value.message
    assert message.startswith(
        f"rpc-server exited with code 0 before it accepted connections on 127.0.0.1:{port}"
        " (is the port in use?)"
    )
    assert "Failed to create server socket" in message


async def test_cancelling_stops_the_worker_and_an_exit_is_an_error(
    tmp_path: Path, rpc_server_binary: Path
) -> None:
    (port,) = free_ports(1)
    log = tmp_path / "worker.log"
    run_dir = tmp_path / "run"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            worker: RpcWorker = await nursery.start(
                functools.partial(
                    serve_rpc_worker,
                    rpc_server_binary,
                    "127.0.0.1",
                    port,
                    log=log,
                    threads=1,
                    run_dir=run_dir,
                )
            )
            assert is_alive(worker.pid)
            assert [p.name for p in run_dir.iterdir()] == [f"llama-server-{worker.pid}.json"]
            nursery.cancel_scope.cancel()
    assert not is_alive(worker.pid)
    assert list(run_dir.iterdir()) == []  # its run record goes with it
    assert f"--host 127.0.0.1 --port {port} --threads 1" in log.read_text()

    async def start_then_kill() -> None:
        async with trio.open_nursery() as nursery:
            worker = await nursery.start(
                functools.partial(
                    serve_rpc_worker, rpc_server_binary, "127.0.0.1", port, log=None, threads=1
                )
            )
            worker.log.append("marker: killed by the test")
            _kill(worker.pid)

    with trio.fail_after(30), pytest.RaisesGroup(RpcWorkerError) as caught:
        await start_then_kill()
    (error,) = caught.value.exceptions
    assert isinstance(error, RpcWorkerError)
    assert error.returncode == -9
    assert error.message.startswith(
        f"rpc-server on 127.0.0.1:{port} exited unexpectedly with code -9"
    )
    assert "marker: killed by the test" in error.message


async def test_open_rpc_workers_restarts_a_worker_that_dies(
    tmp_path: Path, rpc_server_binary: Path
) -> None:
    (port,) = free_ports(1)
    settings = load_settings(home=tmp_path, env={"BODHI_RPC_WORKERS": f"127.0.0.1:{port}"})
    send, starts = trio.open_memory_channel[RpcWorker](4)
    with trio.fail_after(30):
        async with open_rpc_workers(settings, on_start=send.send_nowait) as workers:
            first = await starts.receive()
            assert first is workers[0]
            _kill(first.pid)
            second = await starts.receive()  # after the first back-off (1 s)
            assert second.pid != first.pid
            assert second.endpoint == first.endpoint
            assert is_alive(second.pid)
    assert not is_alive(second.pid)


async def test_a_worker_that_fails_to_start_fails_the_open_and_stops_the_others(
    tmp_path: Path, rpc_server_binary: Path
) -> None:
    (free,) = free_ports(1)
    started: list[RpcWorker] = []
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        workers = f"127.0.0.1:{free},127.0.0.1:{taken}"
        settings = load_settings(home=tmp_path, env={"BODHI_RPC_WORKERS": workers})
        with trio.fail_after(30), pytest.raises(RpcWorkerError, match=f"127.0.0.1:{taken}"):
            async with open_rpc_workers(settings, on_start=started.append):
                pytest.fail("the block must not run")  # pragma: no cover
    assert [worker.port for worker in started] == [free]
    assert not is_alive(started[0].pid)


async def test_a_worker_gets_no_remote_alias_key(
    tmp_path: Path, rpc_server_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variables BODHI_REMOTE_KEY_ENVS names hold remote servers' keys: an rpc-server
    worker's environment (read from ``/proc``) has none of them, as a llama-server's has not."""
    monkeypatch.setenv("FAR_KEY", "secret-of-the-remote")
    monkeypatch.setenv("UNRELATED", "kept")
    (port,) = free_ports(1)
    env = {"BODHI_RPC_WORKERS": f"127.0.0.1:{port}", "BODHI_REMOTE_KEY_ENVS": "FAR_KEY"}
    settings = load_settings(home=tmp_path, env=env)
    with trio.fail_after(30):
        async with open_rpc_workers(settings) as (worker,):
            environ = await trio.Path(f"/proc/{worker.pid}/environ").read_bytes()
    names = {entry.split(b"=", 1)[0] for entry in environ.split(b"\0")}
    assert b"UNRELATED" in names
    assert b"FAR_KEY" not in names


def test_no_workers_configured_needs_no_binary(tmp_path: Path) -> None:
    async def run() -> tuple[RpcWorker, ...]:
        async with open_rpc_workers(load_settings(home=tmp_path, env={})) as workers:
            return workers

    assert trio.run(run) == ()


def _kill(pid: int) -> None:
    import os
    import signal

    os.kill(pid, signal.SIGKILL)
