"""The open-files limit, and the connection cap derived from it.

Every accepted connection is a file descriptor, a completion holds a second one to
llama-server, and a paced stream parked in the relay hub two more (the hub's thread
writes through copies of both sockets). Under the common soft limit of 1024, some 1000 idle sockets
used to exhaust the process: ``accept`` failed with EMFILE, every 0.1 s, for as
long as they stayed, and nobody (not even ``/ping``) got in. So ``serve`` raises
the soft limit to the hard one (no privilege needed) and caps connections below
what that limit leaves (:func:`connection_limit`); the HTTP server refuses the
rest with a 503 instead of running out.
"""

from __future__ import annotations

import logging
import resource

__all__ = [
    "FDS_PER_CONNECTION",
    "MAX_DEFAULT_CONNECTIONS",
    "RESERVED_FDS",
    "connection_limit",
    "raise_open_files_limit",
]

logger = logging.getLogger("bodhi_trio.serve")

RESERVED_FDS = 256
"""Descriptors kept out of the connection budget: the listener, the child's pipes and
socket, log files, alias files, the idle upstream pool (64) and refusals in progress (32)."""

FDS_PER_CONNECTION = 4
"""A client's socket and, while it runs a completion, the connection to llama-server; while
its stream is parked in the relay hub, the hub's copies of both."""

MAX_DEFAULT_CONNECTIONS = 10_000
"""The default cap even when the open-files limit would allow more: a local server has
no use for more, and each connection costs memory besides its descriptor."""

_UNLIMITED_TARGET = 65_536  # soft limit to ask for when the hard limit is "unlimited"


def raise_open_files_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit, if it is lower.

    A failure (a platform that refuses the value) is logged and leaves the limit as
    it was; it never stops the server.

    Returns:
        The soft limit now in effect.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        logger.debug("open-files limit %s (hard %s): nothing to raise", soft, hard)
        return _UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        logger.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
        return soft
    logger.info("open-files limit raised from %d to %d", soft, target)
    return target


def connection_limit(configured: int, open_files: int) -> int:
    """The cap on concurrent connections.

    Args:
        configured: ``BODHI_MAX_CONNECTIONS``; 0 means the default, which is what the
            open-files limit leaves after :data:`RESERVED_FDS`, divided by
            :data:`FDS_PER_CONNECTION`, and at most :data:`MAX_DEFAULT_CONNECTIONS`
            (192 under a limit of 1024; 10,000 under 1,048,576).
        open_files: The soft open-files limit in effect.

    Returns:
        ``configured`` if set (with a warning if the limit leaves no room for it),
        else the default; always at least 1.
    """
    budget = max(1, (open_files - RESERVED_FDS) // FDS_PER_CONNECTION)
    if configured <= 0:
        return min(MAX_DEFAULT_CONNECTIONS, budget)
    if configured > budget:
        logger.warning(
            "BODHI_MAX_CONNECTIONS=%d is more than the open-files limit %d has room for (%d):"
            " a flood of connections can still exhaust it",
            configured,
            open_files,
            budget,
        )
    return configured
