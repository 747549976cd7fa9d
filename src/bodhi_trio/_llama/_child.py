"""The supervised llama-server child.

:func:`serve_llama_server` is a long-running task in the Trio style: start it
with ``await nursery.start(serve_llama_server, spec)``. It hands back a
:class:`LlamaServer` only once the child's ``/health`` says it is usable, then
supervises the child until the child exits (an error: it was expected to run)
or the task is cancelled (the normal way to stop it).

Lifecycle of one start::

    private socket dir ─► spawn (own process group, parent-death signal, run record)
        │                  │
        │                  ├─ pump: output → LogTail + log file; any byte pushes the stall deadline
        │                  └─ race: /health every 10 ms  vs  child exit  vs  stall deadline
        │                           200 → started(handle)   exit → StartupError / bind retry
        ▼
    supervise: wait for exit → LlamaServerExitedError(code, log tail)
    finally (shielded, bounded): SIGTERM group → grace → SIGKILL group → drain output
                                 → remove the socket dir

The child is ours alone: it listens on a Unix socket in a directory only our
user can enter (``mkdtemp``: mode 0700), not on a TCP port, and its environment
carries none of our keys (:func:`child_environment`).

Its command line is all it is told: llama-server applies a user's and the system's
``llama.cpp/config.ini`` before its arguments, where any flag could be set past the
checks of what may reach it (``_config/_arg_policy``). The user's is never found (the
child's ``XDG_CONFIG_HOME`` is its private socket directory); a system one
(:data:`SYSTEM_CONFIG`) makes every start fail, saying so.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import NoReturn, final

import attrs
import trio

from bodhi_trio._core._address import MAX_UNIX_PATH_BYTES, Address
from bodhi_trio._core._http1 import FramingError, split_head
from bodhi_trio._exceptions import LlamaServerExitedError, StartupError
from bodhi_trio._llama._launch import LaunchSpec, child_environment
from bodhi_trio._llama._leftovers import (
    SOCKET_DIR_PREFIX,
    SOCKET_NAME,
    forget_child,
    record_child,
)
from bodhi_trio._llama._logtail import LogTail
from bodhi_trio._llama._process import ChildProcess, spawn_child

# LaunchSpec and child_environment live in ._launch; they are this module's inputs, so
# they are importable from here as well.
__all__ = ["LaunchSpec", "LlamaServer", "child_environment", "serve_llama_server"]

_HEALTH_INTERVAL = 0.01
_HEALTH_TIMEOUT = 1.0
_DRAIN_TIMEOUT = 2.0
_MAX_LINE = 64 * 1024
_BIND_FAILURE_MARKERS = ("couldn't bind HTTP server socket", "address already in use")
_TAIL_LINES = 20
SYSTEM_CONFIG = Path("/etc/llama.cpp/config.ini")
"""llama-server's system-wide config file (``common/arg.cpp``), applied before its args."""


@final
@attrs.define(eq=False)
class LlamaServer:
    """A running, healthy llama-server, as handed back by :func:`serve_llama_server`.

    Attributes:
        spec: What was started.
        pid: The child's pid (also its process group id).
        address: Its Unix socket.
        log: Its recent output.
        started_at: Wall-clock time (``time.time()``) it became ready.
        startup_seconds: Spawn to first healthy ``/health``.
    """

    spec: LaunchSpec
    pid: int
    address: Address
    log: LogTail
    started_at: float
    startup_seconds: float
    _process: ChildProcess = attrs.field(repr=False)

    def kill(self) -> None:
        """SIGKILL its process group now (a hung child cannot be asked to stop).

        The supervising task still reaps it and cleans up.
        """
        self._process.signal_group(signal.SIGKILL)

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


def _private_socket_dir(root: Path | None) -> Path:
    """A fresh directory only our user can enter (``mkdtemp`` makes it 0700)."""
    try:
        directory = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX, dir=root))
    except OSError as exc:
        raise StartupError(f"could not create a socket directory: {exc}") from exc
    socket_path = directory / SOCKET_NAME
    if len(os.fsencode(socket_path)) > MAX_UNIX_PATH_BYTES:
        shutil.rmtree(directory, ignore_errors=True)
        raise StartupError(
            f"the socket path {socket_path} is longer than {MAX_UNIX_PATH_BYTES} bytes;"
            " set TMPDIR to a shorter directory"
        )
    return directory


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
            socket_dir = _private_socket_dir(spec.socket_root)
            try:
                await _run_once(spec, socket_dir, tail, task_status)
            except _BindFailed:
                tail.append(f"[bodhi-trio] could not bind {socket_dir} (attempt {attempt})")
                continue
            finally:
                shutil.rmtree(socket_dir, ignore_errors=True)
        raise StartupError(
            f"llama-server could not bind its socket after {spec.bind_attempts} attempts",
            log_tail=tail.tail(_TAIL_LINES),
        )
    finally:
        if own_log:
            tail.close()


async def _run_once(
    spec: LaunchSpec, socket_dir: Path, tail: LogTail, task_status: trio.TaskStatus[LlamaServer]
) -> NoReturn:
    address = Address.unix(str(socket_dir / SOCKET_NAME))
    argv = spec.argv(str(address.unix_socket))
    mark = tail.total  # errors quote this child's lines only, not an earlier child's
    tail.append(f"[bodhi-trio] starting: {' '.join(argv)}")
    spawned_at = trio.current_time()
    env = child_environment(os.environ if spec.env is None else spec.env)
    # llama-server reads $XDG_CONFIG_HOME/llama.cpp/config.ini: there is none in here.
    env["XDG_CONFIG_HOME"] = str(socket_dir)
    if SYSTEM_CONFIG.exists():  # noqa: ASYNC240 - one stat of a local file, per start
        raise StartupError(
            f"llama-server would apply {SYSTEM_CONFIG} before its command line, past"
            " bodhi-trio's checks of what may reach it: move that file away to use"
            " bodhi-trio on this machine (BODHI_LLAMACPP_ARGS takes common llama-server args)"
        )
    try:
        child = spawn_child(argv, env=env)
    except OSError as exc:
        raise StartupError(f"could not execute {spec.binary}: {exc.strerror or exc}") from exc
    record: Path | None = None
    failure: BaseException | None = None
    try:  # from here on the finally stops and reaps the child, whatever fails
        tail.append(f"[bodhi-trio] spawned pid {child.pid}")
        if spec.run_dir:
            record = record_child(spec.run_dir, child.pid, argv[0], socket_dir=socket_dir)
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
                    spec, child, address, tail, mark, activity, drained, spawned_at, task_status
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
        if record is not None and not child.abandoned:  # else the next start kills it
            forget_child(record)
    assert failure is not None  # _supervise returns only with what to raise
    raise failure


async def _supervise(
    spec: LaunchSpec,
    child: ChildProcess,
    address: Address,
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
            seen = tail.total
            status = await _probe_health(address)
            if status == 200:
                ready = True
                race.cancel()
                return
            # Probe again after the interval, or at once when the child writes a line:
            # "listening on ..." comes as it becomes ready, so a load is noticed within
            # the probe's round trip instead of up to a whole interval later.
            with trio.move_on_after(_HEALTH_INTERVAL):
                await tail.wait_for_more(seen)

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
        address=address,
        log=tail,
        started_at=time.time(),
        startup_seconds=trio.current_time() - spawned_at,
        process=child,
    )
    tail.append(f"[bodhi-trio] ready on {address} after {server.startup_seconds:.3f} s")
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


async def _probe_health(address: Address) -> int | None:
    """One ``GET /health``: the HTTP status, or ``None`` if nothing (or nothing valid) answered.

    A raw request on a fresh connection: no client object to build, no pool, about
    a tenth of a millisecond on a Unix socket. (The socket does not exist until the
    child binds it: the connect fails fast until then.)
    """
    with trio.move_on_after(_HEALTH_TIMEOUT):
        try:
            stream = await address.connect()
        except OSError:
            return None
        async with stream:
            try:
                await stream.send_all(
                    b"GET /health HTTP/1.1\r\nHost: " + address.host_header.encode() + b"\r\n"
                    b"Connection: close\r\n\r\n"
                )
                data = b""
                while (found := split_head(data)) is None:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return None
                    data += chunk
            except (OSError, trio.BrokenResourceError, FramingError):
                return None
            head, _body = found
            return head.status
    return None
