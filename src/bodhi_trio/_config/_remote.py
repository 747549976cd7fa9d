"""The ``remote:`` block of an alias: an OpenAI-compatible server elsewhere.

A remote alias sends its requests to another server (another bodhi-trio, a
llama-server, vLLM, SGLang, a KServe or Ray Serve deployment, a hosted API) instead
of a llama-server child of ours::

    alias: big:70b
    remote:
      base_url: https://gpu-box:8000/v1        # with the engine's prefix
      replicas: [https://gpu-box-2:8000/v1]    # more base URLs serving the same model
      model: meta-llama/Llama-3.1-70B-Instruct # written into the forwarded body
      api_key_env: GPU_BOX_KEY                 # read per request; never stored
      api_key_header: api-key                  # optional: else Authorization: Bearer
      headers: {Host: big.ns.example.com}
      ca_bundle: /etc/ssl/private-ca.pem
      connect_timeout_secs: 5
      idle_timeout_secs: 300                   # between bytes, never a total timeout
      cooldown_secs: 30

Every field is checked as an attacker would write it (whoever holds an admin key
may write aliases): a URL with credentials in it is refused (they would be stored
and listed), the key is only ever the *name* of an environment variable, and not
one of bodhi-trio's own (an alias must not be able to send our keys elsewhere),
static headers cannot carry credentials (no header whose name says key, token, secret,
auth, session, cookie, password, credential or signature: its value would be stored and
listed) or reframe the request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from bodhi_trio._exceptions import InvalidAliasError, SettingsError

__all__ = ["REMOTE_KEYS", "RemoteSpec", "remote_key_envs_setting"]

REMOTE_KEYS = (
    "base_url",
    "replicas",
    "model",
    "api_key_env",
    "api_key_header",
    "headers",
    "ca_bundle",
    "connect_timeout_secs",
    "idle_timeout_secs",
    "cooldown_secs",
    "honor_retry_after",
    "probe_interval_secs",
    "fallback",  # read by the alias (``Alias.fallback``), kept here for the YAML shape
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
# Headers a static extra may not set: credentials come from ``api_key_env`` alone,
# and framing or hop-by-hop headers would let an alias reframe the request.
_FORBIDDEN_HEADERS = frozenset(
    {
        "authorization", "proxy-authorization", "cookie", "content-length", "content-type",
        "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
        "proxy-connection", "expect",
    }
)  # fmt: skip
# Secrets bodhi-trio itself reads (pulls from the Hub) or keeps from its children
# (_llama._launch): an alias must not send them to a server of its choosing.
_OUR_SECRETS = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "LLAMA_API_KEY"})
# Header names that carry a credential (Azure's ``api-key``, ``x-api-key``, a token): a
# static value would be stored in the alias file and listed to every API key; the key
# goes in ``api_key_env`` (and its header name in ``api_key_header``) instead.
_CREDENTIAL_NAME = re.compile(
    r"key|token|secret|auth|passw|session|cookie|credential|signature", re.IGNORECASE
)
_MAX_REPLICAS = 32
_MAX_SECONDS = 86_400.0


def _fail(source: str, field: str, message: str) -> InvalidAliasError:
    return InvalidAliasError(f"{source}: remote.{field} {message}", param=f"remote.{field}")


def check_base_url(value: object, source: str, field: str = "base_url") -> str:
    """An ``http``/``https`` URL with a host, no credentials, query or fragment; returned
    without a trailing ``/``."""
    if not isinstance(value, str) or not value:
        raise _fail(source, field, f"must be a URL string, got {value!r}")
    if any(char.isspace() or ord(char) < 32 for char in value) or len(value) > 2048:
        raise _fail(source, field, "must be one URL without spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise _fail(source, field, f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise _fail(source, field, f"must start with http:// or https://, got {value!r}")
    if not parts.hostname:
        raise _fail(source, field, f"has no host: {value!r}")
    if parts.username is not None or parts.password is not None:
        # Said without echoing the URL: it holds a secret.
        raise _fail(source, field, "must not hold credentials (user:password@); use api_key_env")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise _fail(source, field, "must not have a query or fragment")
    del port
    return value.rstrip("/")


def _seconds(data: Mapping[str, Any], key: str, default: float, source: str) -> float:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(source, key, f"must be a number of seconds, got {value!r}")
    if not 0 < value <= _MAX_SECONDS:  # NaN compares false; a huge int is no float
        raise _fail(source, key, f"must be in (0, {_MAX_SECONDS:g}], got {value!r}")
    return float(value)


def _env_name(value: object, source: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or _ENV_NAME.fullmatch(value) is None:
        raise _fail(source, "api_key_env", f"must be an environment variable's name, got {value!r}")
    if value.upper().startswith("BODHI_") or value.upper() in _OUR_SECRETS:
        raise _fail(
            source, "api_key_env", f"must not name one of bodhi-trio's own variables ({value})"
        )
    return value


def remote_key_envs_setting(key: str, names: tuple[str, ...], source: str) -> tuple[str, ...]:
    """``BODHI_REMOTE_KEY_ENVS``: the variables remote aliases may send as their key.

    Raises:
        SettingsError: A name that is not an environment variable's, or one of ours.
    """
    for name in names:
        if _ENV_NAME.fullmatch(name) is None or name.upper().startswith("BODHI_"):
            raise SettingsError(
                f"{source}: {key} must list environment variable names other than"
                f" bodhi-trio's own (BODHI_*), got {name!r}"
            )
    return names


def _headers(value: object, source: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise _fail(source, "headers", f"must be a mapping of names to strings, got {value!r}")
    result: list[tuple[str, str]] = []
    for name, text in value.items():
        if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
            raise _fail(source, "headers", f"has an invalid header name {name!r}")
        if name.lower() in _FORBIDDEN_HEADERS:
            raise _fail(source, "headers", f"must not set {name!r} (api_key_env sends the key)")
        if _CREDENTIAL_NAME.search(name):
            raise _fail(
                source,
                "headers",
                f"must not set {name!r}: a credential's value would be stored and listed;"
                " name its environment variable in api_key_env (and the header in"
                " api_key_header)",
            )
        # Printable ASCII (and tab) only: no CR/LF to smuggle a header, and httpx sends
        # values as ASCII (anything else would fail every request of the alias).
        if not isinstance(text, str) or any(not (32 <= ord(c) < 127 or c == "\t") for c in text):
            raise _fail(source, "headers", f"{name}: the value must be one line of printable ASCII")
        if len(text) > 4096:
            raise _fail(source, "headers", f"{name}: the value is longer than 4096 characters")
        result.append((name, text))
    return tuple(result)


def _key_header(value: object, key_env: str | None, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or _HEADER_NAME.fullmatch(value) is None:
        raise _fail(source, "api_key_header", f"must be a header name, got {value!r}")
    if value.lower() in _FORBIDDEN_HEADERS:  # Authorization: the default, with Bearer
        raise _fail(
            source,
            "api_key_header",
            f"must not be {value!r} (leave it out for Authorization: Bearer)",
        )
    if key_env is None:
        raise _fail(source, "api_key_header", "needs api_key_env (the key it carries)")
    return value


def _ca_bundle(value: object, source: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise _fail(source, "ca_bundle", f"must be an absolute path, got {value!r}")
    return value


@attrs.frozen
class RemoteSpec:
    """Where a remote alias's requests go and how (see the module docstring).

    Attributes:
        base_url: The first replica's base URL, with the engine's prefix (``/v1``).
        replicas: More base URLs serving the same model.
        model: Written into each forwarded body's ``model`` (``None``: the alias name).
        api_key_env: The environment variable holding the key, read per request.
        api_key_header: The header the key goes in, as it is (``api-key`` for Azure
            OpenAI, ``x-api-key``); ``None``: ``Authorization: Bearer <key>``.
        headers: Static extra headers (``Host`` for an ingress, say); never a credential.
        ca_bundle: A PEM file of CA certificates to trust instead of the system's.
        connect_timeout_secs: For the TCP and TLS handshake.
        idle_timeout_secs: Longest wait for the next bytes (never a total timeout).
        cooldown_secs: How long a failed replica is tried last.
        honor_retry_after: Cool a replica for its ``Retry-After`` if longer.
        probe_interval_secs: How often a cooling replica's ``GET {base}/models`` is tried.
    """

    base_url: str
    replicas: tuple[str, ...] = ()
    model: str | None = None
    api_key_env: str | None = None
    api_key_header: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    ca_bundle: str | None = None
    connect_timeout_secs: float = 5.0
    idle_timeout_secs: float = 300.0
    cooldown_secs: float = 30.0
    honor_retry_after: bool = True
    probe_interval_secs: float = 10.0

    @property
    def urls(self) -> tuple[str, ...]:
        """Every replica's base URL, the first one first."""
        return (self.base_url, *self.replicas)

    @classmethod
    def from_dict(cls, data: object, *, source: str) -> RemoteSpec:
        """Validate a ``remote:`` block.

        Raises:
            InvalidAliasError: An unknown key or a field that breaks a rule above; the
                message names ``source`` and the field (never a secret's value).
        """
        if not isinstance(data, Mapping):
            raise InvalidAliasError(
                f"{source}: remote must be a mapping, got {type(data).__name__}", param="remote"
            )
        unknown = sorted(str(key) for key in data if key not in REMOTE_KEYS)
        if unknown:
            raise InvalidAliasError(
                f"{source}: unknown remote key(s) {', '.join(map(repr, unknown))};"
                f" allowed: {', '.join(REMOTE_KEYS)}",
                param="remote",
            )
        if data.get("base_url") is None:
            raise InvalidAliasError(f"{source}: remote needs base_url", param="remote.base_url")
        base_url = check_base_url(data["base_url"], source)
        raw_replicas = data.get("replicas") or []
        if not isinstance(raw_replicas, list | tuple):
            raise _fail(source, "replicas", f"must be a list of URLs, got {raw_replicas!r}")
        if len(raw_replicas) > _MAX_REPLICAS:
            raise _fail(source, "replicas", f"may list at most {_MAX_REPLICAS} URLs")
        replicas = tuple(check_base_url(url, source, "replicas") for url in raw_replicas)
        if len({base_url, *replicas}) != 1 + len(replicas):
            raise _fail(source, "replicas", "lists a base URL twice")
        model = data.get("model")
        if model is not None and (
            not isinstance(model, str)
            or not model
            or len(model) > 512
            or not (model.isascii() and model.isprintable())
        ):
            raise _fail(source, "model", f"must be a model name, got {model!r}")
        key_env = _env_name(data.get("api_key_env"), source)
        honor = data.get("honor_retry_after", True)
        if not isinstance(honor, bool):
            raise _fail(source, "honor_retry_after", f"must be true or false, got {honor!r}")
        return cls(
            base_url=base_url,
            replicas=replicas,
            model=model,
            api_key_env=key_env,
            api_key_header=_key_header(data.get("api_key_header"), key_env, source),
            headers=_headers(data.get("headers"), source),
            ca_bundle=_ca_bundle(data.get("ca_bundle"), source),
            connect_timeout_secs=_seconds(data, "connect_timeout_secs", 5.0, source),
            idle_timeout_secs=_seconds(data, "idle_timeout_secs", 300.0, source),
            cooldown_secs=_seconds(data, "cooldown_secs", 30.0, source),
            honor_retry_after=honor,
            probe_interval_secs=_seconds(data, "probe_interval_secs", 10.0, source),
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON shape: the key's variable name only, defaults omitted."""
        result: dict[str, Any] = {"base_url": self.base_url}
        if self.replicas:
            result["replicas"] = list(self.replicas)
        defaults = RemoteSpec(self.base_url)
        for field in attrs.fields(RemoteSpec):
            name = field.name
            if name in ("base_url", "replicas", "headers"):
                continue
            value = getattr(self, name)
            if value != getattr(defaults, name):
                result[name] = value
        if self.headers:
            result["headers"] = dict(self.headers)
        return result
