"""One supervised ``rpc-server``: a llama.cpp RPC worker on a TCP port.

:func:`serve_rpc_worker` is a long-running task in the Trio style: start it with
``await nursery.start(serve_rpc_worker, binary, host, port, log=..., threads=...)``.
It hands back an :class:`RpcWorker` once the worker accepts connections, then
supervises it until it exits (an error: it was expected to run) or the task is
cancelled (the normal way to stop it).

The worker gets the same guarantees as a llama-server child
(:func:`._process.spawn_child`): its own process group, the parent-death
signal, an environment without our keys, and a run record so a later start
kills it if we died without stopping it.

Readiness: a TCP connection to its port, closed at once, and then its own
"Accepted client connection" line. The line matters: if another program holds
the port, our connection reaches that program while the worker fails to bind
and exits, and without the line that would count as started.

rpc-server has no authentication: whoever reaches its port can use it (and
read what llama-server sent it). Binding beyond loopback is the caller's
decision (the CLI and the settings refuse it unless told ``insecure``).

Cancellation: the whole process group gets SIGTERM, then SIGKILL after
``stop_grace``, shielded and bounded; the task returns only once the worker
has been reaped and its output drained.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn, final

import attrs
import trio

from bodhi_trio._exceptions import RpcWorkerError
from bodhi_trio._llama._launch import DEFAULT_STOP_GRACE_SECS, child_environment
from bodhi_trio._llama._leftovers import forget_child, record_child
from bodhi_trio._llama._logtail import LogTail
from bodhi_trio._llama._process import ChildProcess, spawn_child

__all__ = ["ACCEPTED_LINE", "RpcWorker", "serve_rpc_worker"]

ACCEPTED_LINE = "Accepted client connection"
"""What rpc-server prints when a client connects (also ours, at readiness)."""
# What it prints when it cannot bind (the port is taken, or the address is not ours).
_BIND_FAILED_LINE = "Failed to create server socket"
DEFAULT_STARTUP_TIMEOUT_SECS = 30.0
_PROBE_INTERVAL = 0.02
_DRAIN_TIMEOUT = 2.0
_MAX_LINE = 64 * 1024
_TAIL_LINES = 20


@final
@attrs.frozen(eq=False)
class RpcWorker:
    """A running rpc-server, as handed back by :func:`serve_rpc_worker`.

    Attributes:
        host: The address it bound.
        port: Its port.
        pid: Its pid (also its process group id).
        log: Its recent output (and the log file, if one was given).
    """

    host: str
    port: int
    pid: int
    log: LogTail

    @property
    def endpoint(self) -> str:
        """``host:port``, as ``--rpc`` takes it."""
        return f"{self.host}:{self.port}"


async def serve_rpc_worker(
    binary: Path,
    host: str,
    port: int,
    *,
    log: Path | None,
    threads: int | None,
    stop_grace: float = DEFAULT_STOP_GRACE_SECS,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_SECS,
    run_dir: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[RpcWorker] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Start ``rpc-server`` on ``host:port``, report it once it accepts, supervise it.

    Args:
        binary: The rpc-server executable (:func:`._runtime.find_rpc_server`).
        host: The IPv4 address to bind.
        port: The port to bind.
        log: A file that receives every output line, or ``None``.
        threads: CPU threads for its computations; ``None`` for rpc-server's default.
        stop_grace: Seconds between SIGTERM and SIGKILL when stopped.
        startup_timeout: Seconds it may take to accept a connection.
        run_dir: Where its run record goes (``BODHI_HOME/run``), or ``None`` for none.
        on_line: Also called with every output line (the CLI echoes them).
        env: The environment it starts from (``None``: this process's);
            :func:`child_environment` scrubs our keys and HF's from it.
        task_status: Receives the :class:`RpcWorker` once it accepted a connection.

    Raises:
        RpcWorkerError: It could not be executed, exited or did not accept in time
            while starting, or exited later; the message holds its last lines.
    """
    argv = [str(binary), "--host", host, "--port", str(port)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    tail = LogTail(path=log)
    try:
        tail.append(f"[bodhi-trio] starting: {' '.join(argv)}")
        try:
            child = spawn_child(argv, env=child_environment(os.environ if env is None else env))
        except OSError as exc:
            raise RpcWorkerError(f"could not execute {binary}: {exc.strerror or exc}") from exc
        tail.append(f"[bodhi-trio] spawned pid {child.pid}")
        record: Path | None = None
        try:
            if run_dir is not None:
                record = record_child(run_dir, child.pid, argv[0])
            await _run(child, host, port, tail, on_line, stop_grace, startup_timeout, task_status)
        finally:
            if child.returncode is None:  # only if something failed before _run's own stop
                with trio.CancelScope(shield=True):
                    await child.stop(stop_grace)
            child.close()
            if record is not None and not child.abandoned:  # else the next start kills it
                forget_child(record)
    finally:
        tail.close()


async def _run(
    child: ChildProcess,
    host: str,
    port: int,
    tail: LogTail,
    on_line: Callable[[str], None] | None,
    stop_grace: float,
    startup_timeout: float,
    task_status: trio.TaskStatus[RpcWorker],
) -> NoReturn:
    drained = trio.Event()
    # Made here and shielded: the pump must keep reading while the worker shuts down
    # (a closed pipe would kill it with SIGPIPE before its last lines); it is cancelled
    # below if the output does not end in time.
    pump_scope = trio.CancelScope(shield=True)
    failure: RpcWorkerError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_pump_output, child, tail, on_line, drained, pump_scope)
        try:
            # Returned, not raised, and raised below: raised in here, it would reach the
            # caller wrapped in the nursery's ExceptionGroup.
            failure = await _supervise(
                child, host, port, tail, startup_timeout, drained, task_status
            )
        finally:
            # Inside the nursery: it waits for the pump, and the pump for the output to
            # end, which the stop brings about.
            with trio.CancelScope(shield=True):
                await child.stop(stop_grace)
                with trio.move_on_after(_DRAIN_TIMEOUT):
                    await drained.wait()
                pump_scope.cancel()
    assert failure is not None  # _supervise returns only with what to raise
    raise failure


async def _supervise(
    child: ChildProcess,
    host: str,
    port: int,
    tail: LogTail,
    startup_timeout: float,
    drained: trio.Event,
    task_status: trio.TaskStatus[RpcWorker],
) -> RpcWorkerError:
    """Wait until the worker accepts, hand it over, wait for its exit: return what to raise."""
    problem = await _wait_until_accepting(child, host, port, tail, startup_timeout, drained)
    if problem is not None:
        return problem
    worker = RpcWorker(host=host, port=port, pid=child.pid, log=tail)
    tail.append(f"[bodhi-trio] rpc-server ready on {worker.endpoint}")
    task_status.started(worker)
    returncode = await child.wait()
    with trio.move_on_after(_DRAIN_TIMEOUT):
        await drained.wait()
    return RpcWorkerError(
        f"rpc-server on {worker.endpoint} exited unexpectedly with code {returncode}",
        log_tail=tail.tail(_TAIL_LINES),
        returncode=returncode,
    )


async def _wait_until_accepting(
    child: ChildProcess,
    host: str,
    port: int,
    tail: LogTail,
    startup_timeout: float,
    drained: trio.Event,
) -> RpcWorkerError | None:
    """``None`` once the worker accepted our probe connection; the error if it exited or
    did not accept in time."""
    # A worker on 0.0.0.0 listens on loopback too; connecting to 0.0.0.0 is not portable.
    probe_host = "127.0.0.1" if host == "0.0.0.0" else host
    accepted = False
    exited = False
    seen = tail.total

    async def watch_exit() -> None:
        nonlocal exited
        await child.wait()
        exited = True
        race.cancel()

    async def probe_then_await_acceptance() -> None:
        nonlocal accepted
        while True:
            printed = tail.total
            try:
                stream = await trio.open_tcp_stream(probe_host, port)
            except OSError:
                # Again after the interval, or at once when the worker prints a line:
                # it prints its last start-up line just before it listens.
                with trio.move_on_after(_PROBE_INTERVAL):
                    await tail.wait_for_more(printed)
                continue
            await stream.aclose()
            break
        while not any(ACCEPTED_LINE in line for line in tail.since(seen)[0]):
            await tail.wait_for_more(tail.total)
        accepted = True
        race.cancel()

    with trio.move_on_after(startup_timeout):
        async with trio.open_nursery() as race_nursery:
            race = race_nursery.cancel_scope
            race_nursery.start_soon(watch_exit)
            race_nursery.start_soon(probe_then_await_acceptance)
    if accepted:
        return None
    if exited:
        with trio.move_on_after(_DRAIN_TIMEOUT):
            await drained.wait()
        lines = tail.tail(_TAIL_LINES)
        in_use = any(_BIND_FAILED_LINE in line for line in lines)
        return RpcWorkerError(
            f"rpc-server exited with code {child.returncode} before it accepted connections"
            f" on {host}:{port}" + (" (is the port in use?)" if in_use else ""),
            log_tail=lines,
            returncode=child.returncode,
        )
    return RpcWorkerError(
        f"rpc-server did not accept a connection on {host}:{port} within {startup_timeout:g} s",
        log_tail=tail.tail(_TAIL_LINES),
    )


async def _pump_output(
    child: ChildProcess,
    tail: LogTail,
    on_line: Callable[[str], None] | None,
    drained: trio.Event,
    scope: trio.CancelScope,
) -> None:
    """Copy the worker's output into ``tail`` (and ``on_line``) until EOF."""

    def emit(raw: bytes) -> None:
        line = raw.rstrip(b"\r").decode(errors="replace")
        tail.append(line)
        if on_line is not None:
            on_line(line)

    pending = b""
    with scope:
        try:
            while chunk := await child.output.receive_some(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    emit(line)
                if len(pending) > _MAX_LINE:
                    emit(pending)
                    pending = b""
        except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
            pass
        finally:
            if pending:
                emit(pending)
            drained.set()
            await child.output.aclose()
