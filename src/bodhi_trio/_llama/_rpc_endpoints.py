"""``host:port`` endpoints of llama.cpp's RPC workers, read strictly.

llama-server's ``--rpc a:1,b:2`` splits its value at every comma (no quoting,
empty items kept), then reads each item's host up to the *first* ``:`` and its
port with ``std::stoi`` (which skips leading spaces and ignores trailing junk),
and connects over IPv4 (``gethostbyname``). ``rpc-server`` binds an IPv4
address only (``inet_addr``: no host names).

:func:`parse_rpc_endpoint` accepts a subset of what llama.cpp would read, so
that what bodhi-trio checks is exactly what llama-server connects to: one
``:``, a host of letters, digits, ``.`` and ``-``, and a decimal port 1-65535.
IPv6 cannot be written in this syntax at all.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

__all__ = ["RpcEndpoint", "bind_address", "parse_rpc_endpoint", "split_rpc_servers"]

_HOST = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")
_PORT = re.compile(r"[0-9]{1,5}")
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@attrs.frozen(order=True)
class RpcEndpoint:
    """One RPC worker's address.

    Attributes:
        host: An IPv4 address or a host name, lower case.
        port: 1-65535.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """Whether the host is this machine: ``localhost`` or an address in 127.0.0.0/8."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.IPv4Address(self.host) in _LOOPBACK
        except ValueError:
            return False


def split_rpc_servers(value: str) -> list[str]:
    """The items of an ``--rpc`` value as llama.cpp splits it: at every comma, empties kept."""
    return value.split(",")


def parse_rpc_endpoint(text: str) -> RpcEndpoint:
    """Read one ``host:port``.

    Raises:
        ValueError: It is not one; the message says what is wrong with it.
    """
    if not text:
        raise ValueError("is empty (a stray comma?)")
    if any(char.isspace() for char in text):
        raise ValueError("holds spaces")
    if "://" in text:
        raise ValueError("has a scheme; llama.cpp's RPC takes plain host:port")
    if text.count(":") != 1:
        raise ValueError(
            "must be host:port with one ':' (llama.cpp reads the host up to the first ':',"
            " so IPv6 addresses cannot be used)"
        )
    host, _, port = text.partition(":")
    host = host.lower()
    if _HOST.fullmatch(host) is None:
        raise ValueError("has no valid host (an IPv4 address or a host name)")
    if _PORT.fullmatch(port) is None or not 1 <= int(port) <= 65535:
        raise ValueError("has no valid port (1-65535)")
    return RpcEndpoint(host, int(port))


def bind_address(endpoint: RpcEndpoint) -> str:
    """The IPv4 address ``rpc-server`` can bind for ``endpoint`` (``localhost`` is 127.0.0.1).

    Raises:
        ValueError: The host is a name: rpc-server binds addresses only.
    """
    if endpoint.host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.IPv4Address(endpoint.host))
    except ValueError:
        raise ValueError(
            f"{endpoint.host!r} is not an IPv4 address; rpc-server binds IPv4 addresses only"
        ) from None
