"""Who may call the server: API keys, and the Host/Origin checks.

A local server is reachable by every web page the user visits (the browser
sends the request; the page cannot read the answer unless CORS allows it, but
a POST still runs). Two checks stop that:

- ``Host`` must name this server (a loopback name when bound to loopback), which
  defeats DNS rebinding: the attacker's domain, re-pointed at 127.0.0.1, still
  arrives with the attacker's host name.
- ``Origin``, when a browser sends one, must be a loopback page or one listed in
  ``BODHI_ALLOWED_ORIGINS``.

API keys are compared in constant time, against every configured key.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from typing import final
from urllib.parse import urlsplit

import attrs

from ._exceptions import AuthenticationError, ForbiddenError

__all__ = ["AccessPolicy", "is_loopback_host"]

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_OPEN_PATHS = frozenset({"/ping"})


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, no port) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header value (``[::1]:1135`` -> ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@final
@attrs.frozen
class AccessPolicy:
    """The access rules for one server.

    Attributes:
        bind_host: The address the server listens on.
        api_keys: Accepted bearer tokens; empty means no authentication.
        allowed_origins: Extra web origins allowed (``*`` allows every origin).
    """

    bind_host: str
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    allowed_origins: frozenset[str] = frozenset()

    def check(self, path: str, headers: Mapping[str, str]) -> None:
        """Raise unless a request for ``path`` with ``headers`` may proceed.

        Args:
            path: The request path.
            headers: Request headers with lower-case names.

        Raises:
            ForbiddenError: A foreign ``Host`` or ``Origin`` (403).
            AuthenticationError: A missing or wrong API key (401).
        """
        self._check_host(headers.get("host", ""))
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin):
            raise ForbiddenError(f"requests from the web origin {origin!r} are not allowed")
        if self.api_keys and path not in _OPEN_PATHS:
            self._check_key(headers)

    def _check_host(self, host_header: str) -> None:
        if not is_loopback_host(self.bind_host):
            return  # reachable by address from the network anyway; keys guard it
        name = _host_name(host_header)
        if name and (is_loopback_host(name) or name == self.bind_host.lower()):
            return
        raise ForbiddenError(
            f"Host {host_header!r} is not this server; use http://127.0.0.1 or http://localhost"
        )

    def origin_allowed(self, origin: str) -> bool:
        """Whether a browser page at ``origin`` may call the server."""
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and is_loopback_host(parts.hostname or "")

    def _check_key(self, headers: Mapping[str, str]) -> None:
        presented = ""
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            presented = token.strip()
        elif "x-api-key" in headers:
            presented = headers["x-api-key"].strip()
        if not presented:
            raise AuthenticationError("an API key is required: send 'Authorization: Bearer <key>'")
        given = presented.encode()
        matched = False
        for key in self.api_keys:  # every key, always: no early exit to time
            matched |= hmac.compare_digest(given, key.encode())
        if not matched:
            raise AuthenticationError("the API key is not valid")
