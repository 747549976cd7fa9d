"""Addresses and ports for tests that start servers."""

from __future__ import annotations

import socket

__all__ = ["free_ports", "outward_address"]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports nothing listens on now on ``host`` (bound once by us and released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def outward_address() -> str:
    """This machine's IPv4 address on its default route: not a loopback one.

    A UDP socket's ``connect`` picks the source address and sends nothing.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never answered, never sent to
        address: str = probe.getsockname()[0]
    assert not address.startswith("127."), address
    return address
