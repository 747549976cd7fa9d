"""The supervised child with the real llama-server on the demo model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from bodhi_trio._config._demo import DEMO_ALIAS, write_corrupt_gguf
from bodhi_trio._exceptions import StartupError
from bodhi_trio._llama._child import LaunchSpec, LlamaServer, serve_llama_server
from bodhi_trio._llama._logtail import LogTail
from procs import child_client, group_members, is_alive, run_parent_and_sigkill_it, wait_gone

pytestmark = pytest.mark.llama


def demo_spec(binary: Path, model: Path, tmp_path: Path, **kw: object) -> LaunchSpec:
    return LaunchSpec(
        binary=binary,
        model=model,
        alias=DEMO_ALIAS,
        server_args=("--ctx-size", "512", "--threads", "1"),
        log_path=tmp_path / "logs" / "llama-server.log",
        run_dir=tmp_path / "run",
        **kw,  # type: ignore[arg-type]
    )


def spawned_pid(log: LogTail) -> int:
    line = next(line for line in log.tail(1000) if line.startswith("[bodhi-trio] spawned pid"))
    return int(line.split()[-1])


CHAT = {
    "model": DEMO_ALIAS,
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 20,
    "ignore_eos": True,
    "seed": 1,
}


async def test_start_chat_stop(
    llama_server_binary: Path, demo_model_path: Path, tmp_path: Path
) -> None:
    spec = demo_spec(llama_server_binary, demo_model_path, tmp_path)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server: LlamaServer = await nursery.start(serve_llama_server, spec)
            async with child_client(server.address, timeout=30) as client:
                reply = (await client.post("/v1/chat/completions", json=CHAT)).json()
                assert reply["model"] == DEMO_ALIAS
                assert reply["usage"]["completion_tokens"] == 20
                assert reply["choices"][0]["finish_reason"] == "length"

                body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    assert response.headers["content-type"].startswith("text/event-stream")
                    raw = await response.aread()
            events = [e for e in raw.decode().split("\n\n") if e]
            assert all(e.startswith("data: ") for e in events)
            assert events[-1] == "data: [DONE]"
            usage = json.loads(events[-2][len("data: ") :])
            assert usage["choices"] == []
            assert usage["usage"]["completion_tokens"] == 20
            assert "timings" in usage
            nursery.cancel_scope.cancel()
    assert server.returncode is not None
    assert group_members(server.pid) == []
    assert not list((tmp_path / "run").iterdir())


async def test_corrupt_model_fails_fast_with_the_childs_error(
    llama_server_binary: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    write_corrupt_gguf(corrupt)
    log = LogTail()
    spec = demo_spec(llama_server_binary, corrupt, tmp_path)
    # liveness bound: the abort takes milliseconds; a start that missed the exit would
    # wait out spec.startup_timeout (120 s)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartupError) as caught:
                await nursery.start(serve_llama_server, spec, log)
    assert "GGML_ASSERT" in caught.value.message
    assert "llama-vocab.cpp" in caught.value.message
    assert caught.value.returncode == -6  # SIGABRT from the assert
    assert not is_alive(spawned_pid(log))
    assert not list((tmp_path / "run").iterdir())


async def test_cancel_during_load(
    llama_server_binary: Path, demo_model_path: Path, tmp_path: Path
) -> None:
    spec = demo_spec(llama_server_binary, demo_model_path, tmp_path)
    log = LogTail()
    with trio.fail_after(spec.stop_grace + 30):  # liveness bound: a child never reaped
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nursery.start, serve_llama_server, spec, log)
            while not list((tmp_path / "run").glob("*.json")):
                await log.wait_for_more(log.total)  # spawned once its run record exists
            record = next((tmp_path / "run").glob("*.json"))
            pid = json.loads(record.read_text())["pid"]
            nursery.cancel_scope.cancel()
    assert not is_alive(pid)
    assert group_members(pid) == []


async def test_child_dies_with_sigkilled_parent(
    llama_server_binary: Path, demo_model_path: Path
) -> None:
    with trio.fail_after(60):
        child_pid = await run_parent_and_sigkill_it(
            llama_server_binary, demo_model_path, "--ctx-size", "512"
        )
        # liveness bound: the death signal is immediate; without it the child lives on
        with trio.fail_after(15):
            await wait_gone(child_pid)


# Seven points of startup, in order, each an event the test sees before it cancels:
# (the marker line in the log that shows it was reached; None: none is awaited).
START_POINTS = {
    # Cancelled before the task first runs: it still spawns (nursery.start does not
    # check), and the cancellation lands at its first checkpoint.
    "already-cancelled": None,
    "spawned": "[bodhi-trio] spawned pid",
    "first-output": "llama_server: initializing",
    "loading-model": "load_model: loading model",
    "model-loaded": "llama_server: model loaded",
    "listening": "llama_server: listening on",
    "ready": "[bodhi-trio] ready on",  # handed over: nursery.start returned
}


@pytest.mark.parametrize("point", list(START_POINTS))
async def test_cancel_at_any_point_of_startup_leaves_nothing(
    llama_server_binary: Path, demo_model_path: Path, tmp_path: Path, point: str
) -> None:
    spec = demo_spec(llama_server_binary, demo_model_path, tmp_path)
    log = LogTail()
    marker = START_POINTS[point]
    handed_over: list[LlamaServer] = []

    def reached() -> bool:
        return marker is not None and any(marker in line for line in log.tail(1000))

    # liveness bound: what fails here is a point never reached or a child never reaped
    with trio.fail_after(spec.stop_grace + 30):
        async with trio.open_nursery() as nursery:
            if point == "ready":
                handed_over.append(await nursery.start(serve_llama_server, spec, log))
            else:
                nursery.start_soon(nursery.start, serve_llama_server, spec, log)
            while marker is not None and not reached():
                await log.wait_for_more(log.total)
            at_cancel = log.tail(1000)
            nursery.cancel_scope.cancel()
    # The point was reached when the cancellation came; the first one came before
    # anything at all had happened.
    if marker is None:
        assert at_cancel == []
    else:
        assert any(marker in line for line in at_cancel), at_cancel
    # Every point has a child to clean up: exactly one was spawned, and it is gone.
    spawned = [line for line in log.tail(1000) if line.startswith("[bodhi-trio] spawned pid")]
    assert len(spawned) == 1, log.tail(1000)
    pid = int(spawned[0].split()[-1])
    if handed_over:
        assert handed_over[0].pid == pid
        assert handed_over[0].returncode is not None
    assert not is_alive(pid)
    assert group_members(pid) == []
    assert not list((tmp_path / "run").glob("*.json"))


def _listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed since the listing (the child's threads open files)
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


async def test_the_child_is_ours_alone(
    llama_server_binary: Path,
    demo_model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No TCP port to find, a socket only our user can reach, none of our keys inherited."""
    monkeypatch.setenv("BODHI_API_KEYS", "secret-api-key-4711")
    monkeypatch.setenv("BODHI_ADMIN_KEYS", "secret-admin-key-4712")
    monkeypatch.setenv("LLAMA_ARG_TOOLS", "all")  # would set --tools around the flag checks
    spec = demo_spec(llama_server_binary, demo_model_path, tmp_path)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server: LlamaServer = await nursery.start(serve_llama_server, spec)
            environ = Path(f"/proc/{server.pid}/environ").read_bytes()  # noqa: ASYNC240 - /proc
            listening = _socket_inodes(server.pid) & _listening_tcp_inodes()
            socket_mode = Path(str(server.address.unix_socket)).parent.stat().st_mode & 0o777
            async with child_client(server.address, timeout=30) as client:
                health = await client.get("/health")
                tools = await client.get("/tools")
            nursery.cancel_scope.cancel()
    assert b"secret-api-key-4711" not in environ
    assert b"secret-admin-key-4712" not in environ
    assert b"LLAMA_ARG_TOOLS" not in environ
    assert listening == set()
    assert socket_mode == 0o700
    assert health.status_code == 200
    assert tools.status_code != 200  # the tools endpoint stays off


async def test_llama_cpp_config_files_do_not_reach_the_child(
    llama_server_binary: Path,
    demo_model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """llama-server applies a user's ``llama.cpp/config.ini`` before its command line:
    one that turns on routes the flag checks keep off must not be found; a system-wide
    one fails the start, saying why."""
    config = "metrics = true\n"
    for where in (tmp_path / "xdg", tmp_path / "home" / ".config"):
        (where / "llama.cpp").mkdir(parents=True)
        (where / "llama.cpp" / "config.ini").write_text(config)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    spec = demo_spec(llama_server_binary, demo_model_path, tmp_path, env=env)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server: LlamaServer = await nursery.start(serve_llama_server, spec)
            async with child_client(server.address, timeout=30) as client:
                metrics = await client.get("/metrics")
            nursery.cancel_scope.cancel()
    assert metrics.status_code != 200  # the config's "metrics = true" was not applied
    assert spec.log_path is not None
    assert "using config file" not in spec.log_path.read_text()

    system = tmp_path / "etc-config.ini"
    system.write_text("metrics = true\n")
    monkeypatch.setattr("bodhi_trio._llama._child.SYSTEM_CONFIG", system)
    log = LogTail()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartupError, match="move that file away") as caught:
                await nursery.start(serve_llama_server, spec, log)
    assert str(system) in caught.value.message
    assert not any(line.startswith("[bodhi-trio] spawned") for line in log.tail(100))
