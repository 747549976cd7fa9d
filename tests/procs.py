"""Process inspection helpers for tests (Linux /proc)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import trio

from bodhi_trio._core._address import Address


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


async def wait_gone(pid: int) -> None:
    """Wait until ``pid`` has exited (gone, or a zombie nobody reaps); callers set the deadline.

    A pidfd works for any process, not only our children, and becomes readable at exit.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def child_client(address: Address, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client for a llama-server child, which listens on a Unix socket."""
    assert address.unix_socket is not None
    transport = httpx.AsyncHTTPTransport(uds=address.unix_socket)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost", **kwargs)
