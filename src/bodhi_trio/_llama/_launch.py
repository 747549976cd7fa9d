"""What one start of llama-server needs: the :class:`LaunchSpec`, and the child's environment.

The defaults here are the only copy: ``Settings`` (``BODHI_EXEC_VARIANT``,
``BODHI_STARTUP_TIMEOUT_SECS``, ``BODHI_STOP_GRACE_SECS``) takes its defaults from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs

__all__ = [
    "DEFAULT_STARTUP_TIMEOUT_SECS",
    "DEFAULT_STOP_GRACE_SECS",
    "DEFAULT_VARIANT",
    "LaunchSpec",
    "child_environment",
]

DEFAULT_VARIANT = "cpu"
"""The exec variant when none is configured."""
DEFAULT_STARTUP_TIMEOUT_SECS = 120.0
"""Seconds without any child output or progress before a start fails."""
DEFAULT_STOP_GRACE_SECS = 5.0
"""Seconds between SIGTERM and SIGKILL when a child is stopped."""

# Never passed on to a child: our own settings and keys (BODHI_API_KEYS...), tokens, and
# llama-server's LLAMA_ARG_* variables, which would set flags around the checks on
# what an alias or the settings may pass.
_SCRUBBED_PREFIXES = ("BODHI_", "LLAMA_ARG_")
_SCRUBBED_NAMES = frozenset({"LLAMA_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})


def child_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The environment a llama-server child gets: ``base`` without our keys and tokens.

    ``GGML_NO_BACKTRACE=1`` is added unless set: on an assert ggml would otherwise
    attach gdb, taking seconds and burying the error line under a backtrace.
    """
    env = {
        name: value
        for name, value in base.items()
        if not name.startswith(_SCRUBBED_PREFIXES) and name not in _SCRUBBED_NAMES
    }
    env.setdefault("GGML_NO_BACKTRACE", "1")
    return env


@attrs.frozen
class LaunchSpec:
    """Everything needed to start one llama-server.

    Attributes:
        binary: The llama-server executable.
        model: The GGUF file (an HF snapshot path is fine; symlinks are followed by the child).
        alias: Passed as ``--alias``; llama-server reports it as ``model`` in responses.
        server_args: Merged extra args (never host/port/model/alias: those are ours).
        variant: The exec variant the binary belongs to (for state and logs).
        socket_root: Where the private socket directory of each start is made
            (``None``: the system's temporary directory). Its path must stay short:
            a Unix socket path has at most 107 bytes.
        startup_timeout: Seconds without any child output or progress before a start fails.
        stop_grace: Seconds between SIGTERM and SIGKILL when stopping.
        bind_attempts: Starts on fresh sockets when binding failed.
        log_path: File the child's output is appended to; ``None`` for none.
        run_dir: Where the run record goes (see ``_leftovers``); ``None`` for none.
        env: The child's environment before :func:`child_environment` scrubs it;
            ``None``: ours.
    """

    binary: Path
    model: Path
    alias: str
    server_args: tuple[str, ...] = ()
    variant: str = DEFAULT_VARIANT
    socket_root: Path | None = None
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_SECS
    stop_grace: float = DEFAULT_STOP_GRACE_SECS
    bind_attempts: int = 3
    log_path: Path | None = None
    run_dir: Path | None = None
    env: Mapping[str, str] | None = attrs.field(default=None, eq=False)

    def argv(self, socket_path: str) -> list[str]:
        """The child's command line, listening on the Unix socket ``socket_path``."""
        return [
            str(self.binary),
            "--alias",
            self.alias,
            "--model",
            str(self.model),
            "--host",
            socket_path,
            *self.server_args,
        ]
