"""A child process in its own process group that dies with us.

Why not ``trio.run_process``: it calls ``subprocess.Popen`` in a worker thread,
and Linux delivers ``PR_SET_PDEATHSIG`` when the *thread* that forked the child
exits. Trio's idle worker threads exit after 10 s, so a child armed with a
parent-death signal from there is killed 10 s after it starts. We therefore fork
from the Trio thread itself (the fork+exec takes a few milliseconds) and wait for
the exit through a pidfd, the same mechanism Trio uses.

The child gets:

- its own session and process group (``start_new_session``), so a stop reaches
  every process it forked (``killpg``) and a Ctrl-C on our terminal does not;
- ``PR_SET_PDEATHSIG = SIGKILL``, so it dies if bodhi-trio is SIGKILLed;
- one pipe carrying stdout and stderr, read by the owner as a Trio stream.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import final

import attrs
import trio

__all__ = ["REAP_TIMEOUT", "ChildProcess", "spawn_child"]

logger = logging.getLogger("bodhi_trio.llama")

REAP_TIMEOUT = 10.0
"""Seconds :meth:`ChildProcess.stop` waits for the child to exit after SIGKILL. A process
in uninterruptible sleep (a hung GPU driver, a dead network mount) does not die even then:
it is left to the kernel instead of holding its model's stop, and every load and the
shutdown behind it, for ever."""

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None
if sys.platform == "linux":  # pragma: no branch
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _make_preexec(parent_pid: int) -> Callable[[], None]:
    libc = _libc

    def preexec() -> None:  # runs in the forked child, before exec: keep it minimal
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


@final
@attrs.define(eq=False)
class ChildProcess:
    """A spawned child. Create with :func:`spawn_child`.

    Attributes:
        pid: The child's pid, which is also its process group id.
        output: The read side of the child's merged stdout/stderr pipe.
    """

    _popen: subprocess.Popen[bytes]
    _pidfd: int
    output: trio.lowlevel.FdStream
    abandoned: bool = attrs.field(default=False, init=False)
    """Still there :data:`REAP_TIMEOUT` seconds after SIGKILL: left behind, unreaped."""

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has been reaped by :meth:`wait`, else ``None``.

        Negative means the child was killed by that signal.
        """
        return self._popen.returncode

    async def wait(self) -> int:
        """Wait for the child to exit and reap it.

        Returns:
            The exit code (negative: killed by that signal).

        Cancellation: safe; the child keeps running and a later call waits again.
        """
        if self._popen.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            self._popen.wait()  # the pidfd is readable: the child is a zombie, this does not block
        return self._popen.returncode

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child's whole process group; a gone group is not an error."""
        # Also after the leader was reaped: a forked helper keeps the group id alive, and a
        # group id is not reused while any member lives.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def stop(self, grace: float) -> int | None:
        """Stop the whole group: SIGTERM, up to ``grace`` seconds, then SIGKILL.

        Finishes within ``grace`` plus :data:`REAP_TIMEOUT`: a KILL cannot be ignored, but
        a process stuck in the kernel does not die until it leaves it; such a child is
        logged and left (:attr:`abandoned`, its run record kept for the next start). Call
        it shielded.

        Returns:
            The child's exit code; None if it was left behind.
        """
        if self.abandoned:
            return None
        if self._popen.returncode is None:
            self.signal_group(signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.wait()
        # KILL the group even if the leader exited on TERM: a forked helper may linger.
        self.signal_group(signal.SIGKILL)
        with trio.move_on_after(REAP_TIMEOUT):
            return await self.wait()
        self.abandoned = True
        logger.error(
            "pid %d is still there %g s after SIGKILL (stuck in the kernel: a hung driver or"
            " mount?); left behind",
            self.pid,
            REAP_TIMEOUT,
        )
        return None

    def close(self) -> None:
        """Release the pidfd. Call once the child has been reaped."""
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


def spawn_child(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> ChildProcess:
    """Start ``argv`` in a new process group, armed to die with this process.

    Must be called from the Trio thread (see the module docstring). It blocks for
    the few milliseconds fork+exec takes.

    Raises:
        OSError: The program could not be executed (missing, not executable, ...).
    """
    read_fd, write_fd = os.pipe()
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=None if env is None else dict(env),
            cwd=cwd,
            close_fds=True,
            start_new_session=True,
            preexec_fn=_make_preexec(os.getpid()),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        pidfd = os.pidfd_open(popen.pid)
    except BaseException:
        popen.kill()
        popen.wait()
        os.close(read_fd)
        raise
    return ChildProcess(popen, pidfd, trio.lowlevel.FdStream(read_fd))
