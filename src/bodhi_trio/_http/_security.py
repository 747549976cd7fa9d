"""Who may call the server: API and admin keys, and the Host/Origin checks.

A local server is reachable by every web page the user visits (the browser
sends the request; the page cannot read the answer unless CORS allows it, but
a POST still runs). Two checks stop that:

- ``Host`` must name this server, which defeats DNS rebinding: the attacker's
  domain, re-pointed at 127.0.0.1 (or at the machine's network address), still
  arrives with the attacker's host name. Bound to loopback, that is a loopback name
  or the bound address; bound beyond it, also any IP address (a rebinding page has
  a name, not an address), the machine's host name (``socket.gethostname()``, and
  with ``.local``) and the hosts of ``BODHI_ALLOWED_ORIGINS``.
- ``Origin``, when a browser sends one, must be a loopback page or one listed in
  ``BODHI_ALLOWED_ORIGINS``.

Keys: every route is registered with its :class:`Access`.
``BODHI_API_KEYS`` may call :attr:`Access.API` routes (inference, reading state,
models and metrics); ``BODHI_ADMIN_KEYS`` may also call :attr:`Access.ADMIN`
routes (anything that changes the server, and its logs, which can hold prompts).
With only API keys set they are admin keys, as before admin keys existed; with
only admin keys set, auth is on and every accepted key is an admin key. A valid
key that is not enough for the route gets 403, no or a wrong key 401. A
presented key is compared in constant time against every configured key of
both kinds, whatever matches.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from typing import final
from urllib.parse import urlsplit

import attrs

from bodhi_trio._exceptions import (
    AdminKeyRequiredError,
    AuthenticationError,
    ForbiddenError,
    InvalidRequestError,
)

__all__ = [
    "Access",
    "AccessPolicy",
    "is_loopback_host",
    "machine_host_names",
    "refuse_repeated_access_headers",
]

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_SINGLE_HEADERS = frozenset({"host", "origin", "authorization", "x-api-key", "sec-fetch-site"})
"""The headers the access check reads: each must come at most once."""


def refuse_repeated_access_headers(
    pairs: Sequence[tuple[str, str]], headers: Mapping[str, str]
) -> None:
    """Refuse a request whose ``pairs`` (names lower-cased; ``headers`` is ``dict(pairs)``)
    give a header the access check reads more than once.

    Raises:
        InvalidRequestError: One came twice (400): which one it read would be a choice a
            proxy in front may make differently (one that appends an ``Origin`` or a key
            to the client's, say).
    """
    if len(headers) == len(pairs):  # no name came twice: nothing to look for
        return
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen and name in _SINGLE_HEADERS:
            raise InvalidRequestError(f"the {name} header must come once", param=name)
        seen.add(name)


class Access(enum.Enum):
    """What a route needs when keys are configured (the Host/Origin checks apply to all)."""

    PUBLIC = "public"
    """No key: liveness (``/ping``) and the page's own files (``/``, ``/ui/...``), which hold
    no data."""
    API = "api"
    """Any valid key: the model routes, and reading state, models, aliases and metrics."""
    ADMIN = "admin"
    """An admin key: changing aliases or the server, and its logs (they can hold prompts)."""


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, no port) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def machine_host_names() -> frozenset[str]:
    """This machine's host name, and as mDNS gives it (``NAME.local``), lower case: the
    names a ``Host`` may give a server bound beyond loopback (no DNS lookup)."""
    name = socket.gethostname().lower().rstrip(".")
    return frozenset({name, f"{name}.local"}) if name else frozenset()


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _origin_host_name(origin: str) -> str:
    """The host of an allowed origin (lower case); ``""`` for one that does not parse."""
    try:
        return urlsplit(origin).hostname or ""
    except ValueError:  # "http://[::1": it can never name a Host
        return ""


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header value (``[::1]:1135`` -> ``::1``); ``""`` for
    a value that is not ``host[:port]`` (``localhost:1135@evil.example``, ``[::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return ""
        return value[1:end]
    if value.count(":") == 1:
        name, _, port = value.partition(":")
        return name if port.isdigit() else ""
    return value


@final
@attrs.frozen
class AccessPolicy:
    """The access rules for one server.

    Attributes:
        bind_host: The address the server listens on.
        api_keys: ``BODHI_API_KEYS``: bearer tokens for :attr:`Access.API` routes
            (admin keys too when ``admin_keys`` is empty).
        allowed_origins: Extra web origins allowed (``*`` allows every origin and
            every ``Host``).
        admin_keys: ``BODHI_ADMIN_KEYS``: bearer tokens for every route. No keys of
            either kind means no authentication.
        host_names: The names of this machine a ``Host`` may give when the server is
            bound beyond loopback (lower case; :func:`machine_host_names`).
    """

    bind_host: str
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    allowed_origins: frozenset[str] = frozenset()
    admin_keys: tuple[str, ...] = attrs.field(default=(), repr=False, kw_only=True)
    host_names: frozenset[str] = attrs.field(default=frozenset(), kw_only=True)
    _origin_hosts: frozenset[str] = attrs.field(init=False, repr=False)

    @_origin_hosts.default
    def _hosts_of_allowed_origins(self) -> frozenset[str]:
        return frozenset(filter(None, map(_origin_host_name, self.allowed_origins)))

    def check(self, headers: Mapping[str, str], access: Access) -> None:
        """Raise unless a request with ``headers`` may call a route that needs ``access``.

        Args:
            headers: Request headers with lower-case names.
            access: What the route needs (see :class:`Access`).

        Raises:
            ForbiddenError: A foreign ``Host`` or ``Origin`` (403).
            AuthenticationError: A missing or wrong key (401).
            AdminKeyRequiredError: An API key on an admin route (403).
        """
        self._check_host(headers.get("host", ""))
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin):
            raise ForbiddenError(f"requests from the web origin {origin!r} are not allowed")
        if (
            origin is None
            and access is not Access.PUBLIC
            and headers.get("sec-fetch-site") == "cross-site"
            and "*" not in self.allowed_origins
        ):
            # A browser's request from another site's page that carries no Origin: an
            # <img> or a link to /upstream/<alias>/... (a GET that loads a model).
            raise ForbiddenError("requests from another site's page are not allowed")
        if access is Access.PUBLIC or not (self.api_keys or self.admin_keys):
            return
        if self._granted(headers) is Access.API and access is Access.ADMIN:
            raise AdminKeyRequiredError(
                "this route changes the server or shows its logs: it needs an admin key"
                " (one of BODHI_ADMIN_KEYS)"
            )

    def _check_host(self, host_header: str) -> None:
        name = _host_name(host_header)
        if name and (is_loopback_host(name) or name == self.bind_host.lower()):
            return
        if is_loopback_host(self.bind_host):
            raise ForbiddenError(
                f"Host {host_header!r} is not this server; use http://127.0.0.1 or http://localhost"
            )
        if name and (_is_address(name) or name in self.host_names or self._origin_host(name)):
            return
        raise ForbiddenError(
            f"Host {host_header!r} is not a name of this server; reach it by its address or"
            " host name, or list the name's origin (http://NAME:PORT) in BODHI_ALLOWED_ORIGINS"
        )

    def _origin_host(self, name: str) -> bool:
        """Whether ``name`` is the host of an allowed origin (or every origin is)."""
        return "*" in self.allowed_origins or name in self._origin_hosts

    def origin_allowed(self, origin: str) -> bool:
        """Whether a browser page at ``origin`` may call the server."""
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        try:
            parts = urlsplit(origin)
            _ = parts.port  # a port that is not a number up to 65535: not an origin
        except ValueError:  # "http://[::1", "http://[zz]"
            return False
        if "@" in parts.netloc or "\\" in origin or parts.path or parts.query or parts.fragment:
            return False  # an origin is scheme://host[:port]: nothing a browser sends
        return parts.scheme in ("http", "https") and is_loopback_host(parts.hostname or "")

    def cors_headers(self, origin: str | None) -> dict[str, str]:
        """The CORS headers of an answer to a request from ``origin`` (none unless the
        origin is allowed)."""
        if origin is None or not self.origin_allowed(origin):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def _granted(self, headers: Mapping[str, str]) -> Access:
        """What the request's key allows: :attr:`Access.API` or :attr:`Access.ADMIN`."""
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
        is_api = is_admin = False
        for key in self.api_keys:  # every key of both kinds, always: no early exit to time
            is_api |= hmac.compare_digest(given, key.encode())
        for key in self.admin_keys:
            is_admin |= hmac.compare_digest(given, key.encode())
        if is_admin or (is_api and not self.admin_keys):
            return Access.ADMIN  # only API keys configured: they are the admin keys
        if is_api:
            return Access.API
        raise AuthenticationError("the API key is not valid")
