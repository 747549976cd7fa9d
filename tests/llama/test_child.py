"""The supervised child, driven through our fault-injecting fake llama-server."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
import trio

from bodhi_trio._exceptions import LlamaServerExitedError, StartupError
from bodhi_trio._llama import _process
from bodhi_trio._llama._child import LaunchSpec, LlamaServer, serve_llama_server
from bodhi_trio._llama._logtail import LogTail
from bodhi_trio._llama._process import ChildProcess, spawn_child
from bodhi_trio._transport._loopback import UpstreamPool, send_upstream
from procs import child_client, group_members, is_alive, run_parent_and_sigkill_it, wait_gone


def fake_spec(fake: Path, tmp_path: Path, *args: str, **kw: object) -> LaunchSpec:
    return LaunchSpec(
        binary=fake,
        model=tmp_path / "model.gguf",
        alias="fake:model",
        server_args=args,
        log_path=tmp_path / "logs" / "llama-server.log",
        run_dir=tmp_path / "run",
        **kw,  # type: ignore[arg-type]
    )


def pid_from_log(log: LogTail) -> int:
    for line in log.tail(1000):
        if line.startswith("fake llama-server pid "):
            return int(line.split()[3])
    raise AssertionError(f"no pid line in {log.tail(1000)}")


async def test_start_ready_stop_leaves_nothing(fake_llama_server: Path, tmp_path: Path) -> None:
    spec = fake_spec(fake_llama_server, tmp_path, "--fake-load-delay", "0.3")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server: LlamaServer = await nursery.start(serve_llama_server, spec)
            assert server.startup_seconds >= 0.3  # ready means /health said 200, not "spawned"
            async with child_client(server.address) as client:
                assert (await client.get("/health")).json() == {"status": "ok"}
            assert list((tmp_path / "run").glob("*.json"))  # the run record exists while it runs
            socket_dir = Path(str(server.address.unix_socket)).parent
            assert socket_dir.stat().st_mode & 0o777 == 0o700  # only our user may enter
            assert group_members(server.pid) == [server.pid]
            nursery.cancel_scope.cancel()
    assert server.returncode == 0  # graceful: it exited on SIGTERM
    assert group_members(server.pid) == []
    assert not list((tmp_path / "run").glob("*.json"))
    assert not socket_dir.exists()  # removed with the child
    logged = (tmp_path / "logs" / "llama-server.log").read_text()
    assert "received SIGTERM" in logged


async def test_child_ignoring_sigterm_is_killed_at_end_of_grace(
    fake_llama_server: Path, tmp_path: Path
) -> None:
    spec = fake_spec(fake_llama_server, tmp_path, "--fake-ignore-sigterm", stop_grace=0.5)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server: LlamaServer = await nursery.start(serve_llama_server, spec)
            nursery.cancel_scope.cancel()
            stop_began = trio.current_time()
    stop_took = trio.current_time() - stop_began
    assert server.returncode == -signal.SIGKILL
    assert stop_took >= 0.5
    assert not is_alive(server.pid)


async def test_grandchild_in_group_is_killed_too(fake_llama_server: Path, tmp_path: Path) -> None:
    spec = fake_spec(fake_llama_server, tmp_path, "--fake-fork-grandchild")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server: LlamaServer = await nursery.start(serve_llama_server, spec)
            grandchild = next(
                int(line.split()[-1]) for line in server.log.tail(50) if "grandchild pid" in line
            )
            assert sorted(group_members(server.pid)) == sorted([server.pid, grandchild])
            nursery.cancel_scope.cancel()
    with trio.fail_after(2):  # not our child: init reaps it (or leaves a zombie)
        await wait_gone(grandchild)
    assert group_members(server.pid) == []


async def test_exit_after_ready_is_reported_with_code_and_tail(
    fake_llama_server: Path, tmp_path: Path
) -> None:
    spec = fake_spec(fake_llama_server, tmp_path, "--fake-crash-after", "0.2")
    with trio.fail_after(20), pytest.RaisesGroup(LlamaServerExitedError) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_llama_server, spec)
    error = caught.value.exceptions[0]
    assert isinstance(error, LlamaServerExitedError)
    assert error.returncode == 3
    assert any("fake crash: segmentation fault" in line for line in error.log_tail)
    assert "code 3" in error.message


async def test_bind_failure_is_retried_on_another_socket(
    fake_llama_server: Path, tmp_path: Path
) -> None:
    fail_file = tmp_path / "bind-failures"
    fail_file.write_text("1")
    spec = fake_spec(fake_llama_server, tmp_path, "--fake-bind-fail-file", str(fail_file))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server: LlamaServer = await nursery.start(serve_llama_server, spec)
            nursery.cancel_scope.cancel()
    starts = [line for line in server.log.tail(100) if line.startswith("[bodhi-trio] starting")]
    assert len(starts) == 2
    sockets = [line.split("--host ")[1].split()[0] for line in starts]
    assert sockets[1] == server.address.unix_socket
    assert sockets[0] != sockets[1]
    assert not Path(sockets[0]).parent.exists()  # the failed attempt's directory is gone
    assert fail_file.read_text() == "0"


async def test_bind_failures_beyond_attempts_fail_the_start(
    fake_llama_server: Path, tmp_path: Path
) -> None:
    fail_file = tmp_path / "bind-failures"
    fail_file.write_text("5")
    spec = fake_spec(fake_llama_server, tmp_path, "--fake-bind-fail-file", str(fail_file))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartupError, match="could not bind its socket after 3"):
                await nursery.start(serve_llama_server, spec)
    assert fail_file.read_text() == "2"


async def test_exit_during_startup_fails_with_child_output(
    fake_llama_server: Path, tmp_path: Path
) -> None:
    spec = fake_spec(fake_llama_server, tmp_path, "--fake-exit-at-start", "1")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartupError) as caught:
                await nursery.start(serve_llama_server, spec)
    assert caught.value.returncode == 1
    assert "fake failure to load model: corrupt file" in caught.value.message
    assert caught.value.code == "server_startup_failed"


async def test_hang_at_start_hits_the_stall_timeout(
    fake_llama_server: Path, tmp_path: Path
) -> None:
    log = LogTail()
    spec = fake_spec(fake_llama_server, tmp_path, "--fake-hang-at-start", startup_timeout=0.5)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartupError, match=r"no output or progress for 0\.5 s"):
                await nursery.start(serve_llama_server, spec, log)
    assert not is_alive(pid_from_log(log))


async def test_loading_503s_alone_are_not_progress(fake_llama_server: Path, tmp_path: Path) -> None:
    # /health answers 503 for 3 s and the child prints nothing after its first lines:
    # a 1 s stall timeout must fire even though the child keeps answering.
    spec = fake_spec(fake_llama_server, tmp_path, "--fake-load-delay", "3", startup_timeout=1.0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartupError, match="no output or progress"):
                await nursery.start(serve_llama_server, spec)


async def test_output_during_load_pushes_the_stall_deadline(
    fake_llama_server: Path, tmp_path: Path
) -> None:
    # A 1.5 s load with a 1 s stall timeout succeeds while the child keeps printing.
    spec = fake_spec(
        fake_llama_server, tmp_path,
        "--fake-load-delay", "1.5", "--fake-load-chatter", "0.2", startup_timeout=1.0,
    )  # fmt: skip
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server: LlamaServer = await nursery.start(serve_llama_server, spec)
            assert server.startup_seconds >= 1.5
            nursery.cancel_scope.cancel()


async def test_cancel_during_load_kills_the_child(fake_llama_server: Path, tmp_path: Path) -> None:
    log = LogTail()
    spec = fake_spec(fake_llama_server, tmp_path, "--fake-load-delay", "60")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nursery.start, serve_llama_server, spec, log)
            await log.wait_for_more(1)  # our "starting" line
            while not any(line.startswith("listening") for line in log.tail(10)):
                await log.wait_for_more(log.total)
            nursery.cancel_scope.cancel()
    pid = pid_from_log(log)
    assert not is_alive(pid)
    assert group_members(pid) == []


async def test_missing_binary_is_a_startup_error(tmp_path: Path) -> None:
    spec = LaunchSpec(binary=tmp_path / "nope", model=tmp_path / "m.gguf", alias="x")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartupError, match="could not execute"):
                await nursery.start(serve_llama_server, spec)


async def test_non_executable_binary_is_a_startup_error(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    spec = LaunchSpec(binary=binary, model=tmp_path / "m.gguf", alias="x")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(StartupError, match="Permission denied"):
                await nursery.start(serve_llama_server, spec)


async def test_child_dies_when_its_parent_is_sigkilled(
    fake_llama_server: Path, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        child_pid = await run_parent_and_sigkill_it(fake_llama_server, tmp_path / "m.gguf")
        # liveness bound: the death signal is immediate; without it the child lives on
        with trio.fail_after(15):
            await wait_gone(child_pid)


@pytest.mark.slow
async def test_child_outlives_idle_worker_threads(fake_llama_server: Path, tmp_path: Path) -> None:
    # Trio's idle worker threads exit after 10 s. A child spawned from one with a
    # parent-death signal would be killed then; ours is spawned from the Trio thread.
    await trio.to_thread.run_sync(os.getpid)  # make sure a worker thread exists and idles
    spec = fake_spec(fake_llama_server, tmp_path)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server: LlamaServer = await nursery.start(serve_llama_server, spec)
            await trio.sleep(11)  # the condition under test is time passing, not a sync point
            assert server.returncode is None
            assert is_alive(server.pid)
            nursery.cancel_scope.cancel()


async def slots_processing(client: httpx.AsyncClient) -> bool:
    return any(slot["is_processing"] for slot in (await client.get("/slots")).json())


async def wait_for_line(log: LogTail, text: str) -> None:
    while not any(text in line for line in log.tail(1000)):
        await log.wait_for_more(log.total)


def stream_request(max_tokens: int) -> bytes:
    return json.dumps(
        {"messages": [], "stream": True, "max_tokens": max_tokens, "ignore_eos": True}
    ).encode()


async def test_the_fakes_slots_say_whether_it_generates(
    fake_llama_server: Path, tmp_path: Path
) -> None:
    """Fault tests lean on the fake's ``/slots`` (the hung-stream watch asks it): a slot
    is processing while a completion is generated, idle before, after, once the client
    is gone and once a stream stalls; ``--fake-busy`` says processing regardless."""
    fakes = {
        "plain": ("--fake-tokens", "1000000", "--fake-token-delay", "0.01"),
        "stalls": ("--fake-stall-after", "2"),
        "busy": ("--fake-busy",),
    }
    path = "/v1/chat/completions"
    seen: dict[str, list[bool]] = {}
    for name, args in fakes.items():
        spec = fake_spec(fake_llama_server, tmp_path / name, *args)
        log = LogTail()
        seen[name] = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery, UpstreamPool() as pool:
                server: LlamaServer = await nursery.start(serve_llama_server, spec, log)
                async with child_client(server.address, timeout=10) as client:
                    seen[name].append(await slots_processing(client))  # before anything
                    if name == "plain":
                        async with send_upstream(
                            pool, server.address, path, stream_request(3)
                        ) as short:
                            assert (await short.aread()).endswith(b"data: [DONE]\n\n")
                        seen[name].append(await slots_processing(client))  # after it ended
                        async with send_upstream(
                            pool, server.address, path, stream_request(1_000_000)
                        ) as endless:
                            async for _chunk in endless:
                                break
                            seen[name].append(await slots_processing(client))  # mid-stream
                        await wait_for_line(log, "client disconnected")
                        seen[name].append(await slots_processing(client))  # client gone
                    elif name == "stalls":
                        async with send_upstream(pool, server.address, path, stream_request(50)):
                            await wait_for_line(log, "stalling the stream")
                            seen[name].append(await slots_processing(client))  # stalled
                nursery.cancel_scope.cancel()
    assert seen == {
        "plain": [False, False, True, False],
        "stalls": [False, False],
        "busy": [True],
    }


async def test_a_child_that_outlives_sigkill_is_left_behind_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A process stuck in the kernel does not die on SIGKILL until it leaves it: stop()
    gives up after the reap timeout (logged, ``abandoned``) instead of holding its model's
    stop, the loads behind it and the shutdown for ever. (Simulated: no signal arrives.)"""
    monkeypatch.setattr(_process, "REAP_TIMEOUT", 0.3)
    child = spawn_child(["sleep", "60"])
    try:
        monkeypatch.setattr(ChildProcess, "signal_group", lambda self, sig: None)
        with trio.fail_after(10):
            started = trio.current_time()
            assert await child.stop(0.2) is None
            assert trio.current_time() - started >= 0.5  # the grace, then the reap timeout
        assert child.abandoned
        assert is_alive(child.pid)
        assert f"pid {child.pid} is still there" in caplog.text
        with trio.fail_after(1):
            assert await child.stop(0.2) is None  # at once: it was given up already
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        with trio.fail_after(10):
            await child.wait()
        child.close()
        await child.output.aclose()
