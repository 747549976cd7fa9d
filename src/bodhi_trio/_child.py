"""The supervised llama-server child.

:func:`serve_llama_server` is a long-running task in the Trio style: start it
with ``await nursery.start(serve_llama_server, spec)``. It hands back a
:class:`LlamaServer` only once the child's ``/health`` says it is usable, then
supervises the child until the child exits (an error: it was expected to run)
or the task is cancelled (the normal way to stop it).

Lifecycle of one start::

    pick a free port ─► spawn (own process group, parent-death signal, run record)
        │                  │
        │                  ├─ pump: output → LogTail + log file; any byte pushes the stall deadline
        │                  └─ race: /health every 10 ms  vs  child exit  vs  stall deadline
        │                           200 → started(handle)   exit → StartupError / bind retry
        ▼
    supervise: wait for exit → LlamaServerExitedError(code, log tail)
    finally (shielded, bounded): SIGTERM group → grace → SIGKILL group → drain output
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn, final

import attrs
import trio

from ._exceptions import LlamaServerExitedError, StartupError
from ._leftovers import forget_child, record_child
from ._logtail import LogTail
from ._process import ChildProcess, spawn_child

__all__ = ["LaunchSpec", "LlamaServer", "serve_llama_server"]

_HEALTH_INTERVAL = 0.01
_HEALTH_TIMEOUT = 1.0
_DRAIN_TIMEOUT = 2.0
_MAX_LINE = 64 * 1024
_BIND_FAILURE_MARKERS = ("couldn't bind HTTP server socket", "address already in use")
_TAIL_LINES = 20


@attrs.frozen
class LaunchSpec:
    """Everything needed to start one llama-server.

    Attributes:
        binary: The llama-server executable.
        model: The GGUF file (an HF snapshot path is fine; symlinks are followed by the child).
        alias: Passed as ``--alias``; llama-server reports it as ``model`` in responses.
        server_args: Merged extra args (never host/port/model/alias: those are ours).
        variant: The exec variant the binary belongs to (for state and logs).
        host: Where the child listens; always loopback.
        startup_timeout: Seconds without any child output or progress before a start fails.
        stop_grace: Seconds between SIGTERM and SIGKILL when stopping.
        bind_attempts: Starts on fresh ports when the chosen port was taken.
        log_path: File the child's output is appended to; ``None`` for none.
        run_dir: Where the run record goes (see ``_leftovers``); ``None`` for none.
        env: The child's environment; ``None`` inherits ours. ``GGML_NO_BACKTRACE=1`` is
            added unless set: on an assert ggml would otherwise attach gdb, taking seconds
            and burying the error line under a backtrace.
    """

    binary: Path
    model: Path
    alias: str
    server_args: tuple[str, ...] = ()
    variant: str = "cpu"
    host: str = "127.0.0.1"
    startup_timeout: float = 120.0
    stop_grace: float = 5.0
    bind_attempts: int = 3
    log_path: Path | None = None
    run_dir: Path | None = None
    env: Mapping[str, str] | None = attrs.field(default=None, eq=False)

    def argv(self, port: int) -> list[str]:
        """The child's command line for ``port``."""
        return [
            str(self.binary),
            "--alias",
            self.alias,
            "--model",
            str(self.model),
            "--host",
            self.host,
            "--port",
            str(port),
            *self.server_args,
        ]


@final
@attrs.define(eq=False)
class LlamaServer:
    """A running, healthy llama-server, as handed back by :func:`serve_llama_server`.

    Attributes:
        spec: What was started.
        pid: The child's pid (also its process group id).
        port: The loopback port it listens on.
        log: Its recent output.
        started_at: Wall-clock time (``time.time()``) it became ready.
        startup_seconds: Spawn to first healthy ``/health``.
    """

    spec: LaunchSpec
    pid: int
    port: int
    log: LogTail
    started_at: float
    startup_seconds: float
    _process: ChildProcess = attrs.field(repr=False)

    @property
    def host(self) -> str:
        return self.spec.host

    @property
    def base_url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    @property
    def returncode(self) -> int | None:
        """``None`` while running; the exit code once the child is gone."""
        return self._process.returncode


@attrs.define
class _Activity:
    """The stall deadline: pushed back whenever the child shows a sign of life."""

    timeout: float
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    def touch(self) -> None:
        self.scope.deadline = trio.current_time() + self.timeout


class _BindFailed(Exception):
    pass


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def serve_llama_server(
    spec: LaunchSpec,
    log: LogTail | None = None,
    *,
    task_status: trio.TaskStatus[LlamaServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Start llama-server, report it when healthy, and supervise it.

    Args:
        spec: What to start.
        log: Where the output goes; a fresh :class:`LogTail` on ``spec.log_path`` if ``None``.
        task_status: Receives the :class:`LlamaServer` once ``/health`` answers 200.

    Raises:
        StartupError: The child could not be executed, exited, or stalled before it was
            healthy; the message holds its last output lines.
        LlamaServerExitedError: The child exited after it was ready.

    Cancellation: the normal way to stop it. The whole process group gets SIGTERM,
    then SIGKILL after ``spec.stop_grace``; the task returns only when the child has
    been reaped and its output drained, so nothing is left behind.
    """
    own_log = log is None
    tail = LogTail(path=spec.log_path) if log is None else log
    try:
        for attempt in range(1, spec.bind_attempts + 1):
            port = _free_port(spec.host)
            try:
                await _run_once(spec, port, tail, task_status)
            except _BindFailed:
                tail.append(f"[bodhi-trio] port {port} was taken (attempt {attempt})")
                continue
        raise StartupError(
            f"llama-server could not bind a port after {spec.bind_attempts} attempts",
            log_tail=tail.tail(_TAIL_LINES),
        )
    finally:
        if own_log:
            tail.close()


async def _run_once(
    spec: LaunchSpec, port: int, tail: LogTail, task_status: trio.TaskStatus[LlamaServer]
) -> NoReturn:
    argv = spec.argv(port)
    mark = tail.total  # errors quote this child's lines only, not an earlier child's
    tail.append(f"[bodhi-trio] starting: {' '.join(argv)}")
    spawned_at = trio.current_time()
    env = dict(os.environ if spec.env is None else spec.env)
    env.setdefault("GGML_NO_BACKTRACE", "1")
    try:
        child = spawn_child(argv, env=env)
    except OSError as exc:
        raise StartupError(f"could not execute {spec.binary}: {exc.strerror or exc}") from exc
    tail.append(f"[bodhi-trio] spawned pid {child.pid}")
    record = record_child(spec.run_dir, child.pid, argv[0]) if spec.run_dir else None
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            activity = _Activity(spec.startup_timeout)
            drained = trio.Event()
            # Created here, not handed back by nursery.start: a cancellation arriving
            # while a start() waits would skip the finally below and leave the child
            # running, with the shielded pump waiting for an EOF that never comes.
            pump_scope = trio.CancelScope(shield=True)
            nursery.start_soon(_pump_output, child, tail, activity, drained, pump_scope)
            try:
                failure = await _supervise(
                    spec, child, port, tail, mark, activity, drained, spawned_at, task_status
                )
            finally:
                with trio.CancelScope(shield=True):
                    await child.stop(spec.stop_grace)
                    with trio.move_on_after(_DRAIN_TIMEOUT):
                        await drained.wait()
                    pump_scope.cancel()
    finally:
        if child.returncode is None:  # only if something above failed before its finally
            with trio.CancelScope(shield=True):
                await child.stop(spec.stop_grace)
        child.close()
        if record is not None:
            forget_child(record)
    assert failure is not None  # _supervise returns only with what to raise
    raise failure


async def _supervise(
    spec: LaunchSpec,
    child: ChildProcess,
    port: int,
    tail: LogTail,
    mark: int,
    activity: _Activity,
    drained: trio.Event,
    spawned_at: float,
    task_status: trio.TaskStatus[LlamaServer],
) -> BaseException:
    """Wait for readiness, hand the server over, wait for its exit: return what to raise."""
    ready = False
    exited = False

    async def watch_exit() -> None:
        nonlocal exited
        await child.wait()
        exited = True
        race.cancel()

    async def poll_health() -> None:
        nonlocal ready
        while True:
            status = await _probe_health(spec.host, port)
            if status == 200:
                ready = True
                race.cancel()
                return
            await trio.sleep(_HEALTH_INTERVAL)

    activity.touch()
    with activity.scope:
        async with trio.open_nursery() as race_nursery:
            race = race_nursery.cancel_scope
            race_nursery.start_soon(watch_exit)
            race_nursery.start_soon(poll_health)

    if not ready:
        if exited:
            with trio.move_on_after(_DRAIN_TIMEOUT):
                await drained.wait()
            if any(
                m in line for line in _own_lines(tail, mark)[-5:] for m in _BIND_FAILURE_MARKERS
            ):
                return _BindFailed()
            return StartupError(
                f"llama-server exited with code {child.returncode} before it was ready",
                log_tail=_own_lines(tail, mark),
                returncode=child.returncode,
            )
        return StartupError(
            f"llama-server showed no output or progress for {spec.startup_timeout:g} s"
            " while starting",
            log_tail=_own_lines(tail, mark),
        )

    server = LlamaServer(
        spec=spec,
        pid=child.pid,
        port=port,
        log=tail,
        started_at=time.time(),
        startup_seconds=trio.current_time() - spawned_at,
        process=child,
    )
    tail.append(f"[bodhi-trio] ready on port {port} after {server.startup_seconds:.3f} s")
    task_status.started(server)
    returncode = await child.wait()
    with trio.move_on_after(_DRAIN_TIMEOUT):
        await drained.wait()
    return LlamaServerExitedError(returncode, _own_lines(tail, mark))


def _own_lines(tail: LogTail, mark: int) -> list[str]:
    """The last lines this child printed (the ring is shared by a context's children)."""
    lines, _skipped = tail.since(mark)
    return lines[-_TAIL_LINES:]


async def _pump_output(
    child: ChildProcess,
    tail: LogTail,
    activity: _Activity,
    drained: trio.Event,
    scope: trio.CancelScope,
) -> None:
    """Copy the child's output into ``tail`` until EOF.

    Runs in ``scope``, which the owner made shielded: if the pump stopped reading
    on cancellation, the child could die of SIGPIPE before its graceful shutdown,
    losing its last lines. EOF comes once the whole group is dead; the owner
    cancels ``scope`` if that takes too long.
    """
    pending = b""
    with scope:
        try:
            while chunk := await child.output.receive_some(65536):
                activity.touch()
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    tail.append(line.rstrip(b"\r").decode(errors="replace"))
                if len(pending) > _MAX_LINE:
                    tail.append(pending.decode(errors="replace"))
                    pending = b""
        except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
            pass
        finally:
            if pending:
                tail.append(pending.rstrip(b"\r").decode(errors="replace"))
            drained.set()
            await child.output.aclose()


async def _probe_health(host: str, port: int) -> int | None:
    """One ``GET /health``: the HTTP status, or ``None`` if nothing answered.

    A raw request on a fresh connection: no client object to build, no pool, about
    a tenth of a millisecond on loopback.
    """
    with trio.move_on_after(_HEALTH_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return None
        async with stream:
            try:
                await stream.send_all(
                    b"GET /health HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                    b"Connection: close\r\n\r\n"
                )
                head = b""
                while b"\r\n" not in head:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return None
                    head += chunk
                return int(head.split(b" ", 2)[1])
            except (OSError, trio.BrokenResourceError, ValueError, IndexError):
                return None
    return None
