"""The one exception hierarchy of bodhi-trio.

Every error this package raises on purpose is a :class:`BodhiError`. Each class
carries the HTTP status, the OpenAI error ``type`` and a stable ``code``; the
HTTP layer maps them to ``{"error": {"message", "type", "code", "param"}}`` at a
single boundary, and the CLI prints ``message`` as one line.

::

    BodhiError                          500 internal_server_error
    ├── ConfigError                     400 invalid_request_error  invalid_config
    │   ├── SettingsError                                          invalid_settings
    │   └── ServerArgsError                                        invalid_server_args
    ├── InvalidRequestError             400 invalid_request_error  invalid_request
    │   ├── InvalidAliasError                                      invalid_alias
    │   ├── InvalidModelFileError                                  invalid_model_file
    │   ├── QuantNotFoundError                                     quant_not_found
    │   └── RequestTooLargeError        413                        request_too_large
    ├── AuthenticationError             401 authentication_error   invalid_api_key
    ├── ForbiddenError                  403 permission_error       forbidden
    │   └── AdminKeyRequiredError                                  admin_key_required
    ├── NotFoundError                   404 not_found_error
    │   ├── AliasNotFoundError                                     alias_not_found
    │   ├── ModelFileNotFoundError                                 model_file_not_found
    │   ├── RepoNotFoundError                                      repo_not_found
    │   ├── RemoteFileNotFoundError                                remote_file_not_found
    │   └── PullNotFoundError                                      pull_not_found
    ├── ConflictError                   409 conflict_error
    │   ├── AliasExistsError                                       alias_exists
    │   └── PullCancelledError                                     pull_cancelled
    ├── LlamaServerNotFoundError        500 internal_server_error  llama_server_not_found
    ├── LlamaServerInstallError         500 internal_server_error  llama_server_install_failed
    ├── RpcServerNotFoundError          500 internal_server_error  rpc_server_not_found
    ├── RpcWorkerError                  500 internal_server_error  rpc_worker_failed
    ├── StartupError                    500 internal_server_error  server_startup_failed
    ├── UnavailableError                503 service_unavailable    service_unavailable
    │   ├── ServerBusyError             429 rate_limit_error       server_busy
    │   ├── InsufficientMemoryError                                insufficient_memory
    │   ├── ResponseInterruptedError                               response_interrupted
    │   └── AnswersOverBudgetError                                 answers_over_budget
    └── UpstreamError                   502 upstream_error         upstream_error
        ├── LlamaServerExitedError                                 llama_server_exited
        ├── PullFailedError                                        pull_failed
        ├── RemoteConnectError                                     upstream_connect_failed
        ├── RemoteStalledError                                     upstream_stalled
        ├── RemoteKeyMissingError                                  remote_key_missing
        ├── RemoteKeyRefusedError                                  remote_key_not_allowed
        └── UpstreamUnavailableError                               upstream_unavailable
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

__all__ = [
    "AdminKeyRequiredError",
    "AnswersOverBudgetError",
    "AliasExistsError",
    "AliasNotFoundError",
    "AuthenticationError",
    "BodhiError",
    "ConfigError",
    "ConflictError",
    "ForbiddenError",
    "InvalidAliasError",
    "InvalidModelFileError",
    "InvalidRequestError",
    "LlamaServerExitedError",
    "LlamaServerInstallError",
    "LlamaServerNotFoundError",
    "ModelFileNotFoundError",
    "NotFoundError",
    "PullCancelledError",
    "PullFailedError",
    "PullNotFoundError",
    "QuantNotFoundError",
    "RemoteConnectError",
    "RemoteKeyMissingError",
    "RemoteKeyRefusedError",
    "RemoteStalledError",
    "RemoteFileNotFoundError",
    "RepoNotFoundError",
    "RequestTooLargeError",
    "RpcServerNotFoundError",
    "RpcWorkerError",
    "ServerArgsError",
    "SettingsError",
    "StartupError",
    "InsufficientMemoryError",
    "ResponseInterruptedError",
    "ServerBusyError",
    "UnavailableError",
    "UpstreamError",
    "UpstreamUnavailableError",
    "error_envelope",
]


def error_envelope(
    message: str, error_type: str, code: str | int, param: str | None = None
) -> dict[str, dict[str, str | int | None]]:
    """``{"error": {"message", "type", "code", "param"}}``: every error body we send."""
    return {"error": {"message": message, "type": error_type, "code": code, "param": param}}


class BodhiError(Exception):
    """Base of every error bodhi-trio raises on purpose.

    Attributes:
        message: One human-readable line (or a line plus a log tail).
        param: The request field the error is about, if any.
    """

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_envelope(self) -> dict[str, dict[str, str | int | None]]:
        """The OpenAI-style error body for this error."""
        return error_envelope(self.message, self.error_type, self.code, self.param)


class ConfigError(BodhiError):
    """Settings, aliases or server args that cannot be used."""

    status = 400
    error_type = "invalid_request_error"
    code = "invalid_config"


class SettingsError(ConfigError):
    """A setting has a value of the wrong type or out of range."""

    code = "invalid_settings"


class ServerArgsError(ConfigError):
    """llama-server args that cannot be parsed or that try to set a reserved flag."""

    code = "invalid_server_args"


class ListenError(ConfigError):
    """The server cannot listen on its host and port (the port is taken, or the host is
    not an address of this machine)."""

    code = "cannot_listen"


class InvalidRequestError(BodhiError):
    """The request is malformed: bad JSON, wrong field types, missing fields."""

    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class InvalidAliasError(InvalidRequestError):
    """An alias name or alias file content is not valid."""

    code = "invalid_alias"


class InvalidModelFileError(InvalidRequestError):
    """A local model file that cannot be used: missing, not a regular file, not GGUF,
    or outside the directories a request may name."""

    code = "invalid_model_file"


class QuantNotFoundError(InvalidRequestError):
    """``hf.co/REPO:QUANT`` matches no GGUF file of the repo, or several; the message
    lists the repo's GGUF files."""

    code = "quant_not_found"


class RequestTooLargeError(InvalidRequestError):
    """The request body is larger than ``BODHI_MAX_BODY_BYTES``."""

    status = 413
    code = "request_too_large"


class AuthenticationError(BodhiError):
    """No API key, or not one of ``BODHI_API_KEYS``."""

    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class ForbiddenError(BodhiError):
    """The request comes from a foreign web page (``Origin``) or names a foreign ``Host``."""

    status = 403
    error_type = "permission_error"
    code = "forbidden"


class AdminKeyRequiredError(ForbiddenError):
    """A valid API key on a route that needs one of ``BODHI_ADMIN_KEYS``."""

    code = "admin_key_required"


class NotFoundError(BodhiError):
    """Something the request names does not exist."""

    status = 404
    error_type = "not_found_error"
    code = "not_found"


class AliasNotFoundError(NotFoundError):
    """No alias of that name."""

    code = "alias_not_found"

    def __init__(self, alias: str) -> None:
        super().__init__(f"alias {alias!r} not found", param="model")
        self.alias = alias


class ModelFileNotFoundError(NotFoundError):
    """The alias's GGUF file is not in the Hugging Face cache."""

    code = "model_file_not_found"

    def __init__(self, repo: str, snapshot: str, filename: str, reason: str) -> None:
        super().__init__(
            f"model file not found: repo {repo!r}, snapshot {snapshot!r}, file {filename!r}"
            f" ({reason})",
            param="model",
        )
        self.repo = repo
        self.snapshot = snapshot
        self.filename = filename


class RepoNotFoundError(NotFoundError):
    """The Hugging Face Hub has no such repo or revision (or it is private or gated and
    no token with access was given)."""

    code = "repo_not_found"


class RemoteFileNotFoundError(NotFoundError):
    """The repo exists on the Hub but has no such file at that revision."""

    code = "remote_file_not_found"


class PullNotFoundError(NotFoundError):
    """No pull job with that id."""

    code = "pull_not_found"

    def __init__(self, pull_id: str) -> None:
        super().__init__(f"pull {pull_id!r} not found", param="pull_id")
        self.pull_id = pull_id


class ConflictError(BodhiError):
    """The request conflicts with the current state."""

    status = 409
    error_type = "conflict_error"
    code = "conflict"


class AliasExistsError(ConflictError):
    """An alias of that name (or one stored in the same file) already exists."""

    code = "alias_exists"


class PullCancelledError(ConflictError):
    """The pull was cancelled (``DELETE /bodhi/v1/pulls/{id}`` or shutdown) before it finished."""

    code = "pull_cancelled"


class LlamaServerNotFoundError(BodhiError):
    """No runnable llama-server binary for the variant.

    Attributes:
        tried: Every place that was looked at, in order, with why it failed.
    """

    code = "llama_server_not_found"

    def __init__(self, variant: str, tried: Sequence[str]) -> None:
        lines = "; ".join(tried) if tried else "nothing configured"
        super().__init__(
            f"no runnable llama-server for variant {variant!r} (tried: {lines});"
            " run `bodhi-trio llama-server install` or set BODHI_LLAMA_SERVER"
        )
        self.variant = variant
        self.tried = tuple(tried)


class LlamaServerInstallError(BodhiError):
    """Downloading or building llama-server failed."""

    code = "llama_server_install_failed"


class RpcServerNotFoundError(BodhiError):
    """No runnable ``rpc-server`` (llama.cpp's RPC worker); the message lists where it was
    looked for and says how to build it."""

    code = "rpc_server_not_found"


def _with_log_tail(message: str, log_tail: Sequence[str], program: str = "llama-server") -> str:
    """``message``, then the child's last output lines under a header, if there are any."""
    if not log_tail:
        return message
    return f"{message}\n--- {program} output (last lines) ---\n" + "\n".join(log_tail)


class RpcWorkerError(BodhiError):
    """An ``rpc-server`` worker did not start, or exited while it was expected to run.

    Attributes:
        log_tail: The worker's last output lines, also part of ``message``.
        returncode: Its exit code if it exited, else ``None``.
    """

    code = "rpc_worker_failed"

    def __init__(
        self, reason: str, *, log_tail: Sequence[str] = (), returncode: int | None = None
    ) -> None:
        super().__init__(_with_log_tail(reason, log_tail, "rpc-server"))
        self.log_tail = tuple(log_tail)
        self.returncode = returncode


class StartupError(BodhiError):
    """llama-server did not become ready.

    Attributes:
        log_tail: The child's last output lines, also part of ``message``.
        returncode: The child's exit code if it exited, else ``None``.
    """

    code = "server_startup_failed"

    def __init__(
        self, reason: str, *, log_tail: Sequence[str] = (), returncode: int | None = None
    ) -> None:
        super().__init__(_with_log_tail(reason, log_tail))
        self.reason = reason
        self.log_tail = tuple(log_tail)
        self.returncode = returncode


class UnavailableError(BodhiError):
    """The server cannot take the request now (shutting down, overloaded); retry later.

    Attributes:
        retry_after: Seconds for the ``Retry-After`` header.
    """

    status = 503
    error_type = "service_unavailable"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerBusyError(UnavailableError):
    """A model has ``BODHI_MAX_QUEUE`` requests admitted already: retry later."""

    status = 429
    error_type = "rate_limit_error"
    code = "server_busy"


class InsufficientMemoryError(UnavailableError):
    """A model's memory estimate exceeds the whole memory budget: it can never load."""

    code = "insufficient_memory"


class AnswersOverBudgetError(UnavailableError):
    """The answers read whole for requests in flight hold the whole budget for them
    (:class:`~bodhi_trio.lowlevel.AnswerBudget`): this one would take more; retry later."""

    code = "answers_over_budget"


class ResponseInterruptedError(UnavailableError):
    """An in-flight response was ended by the server: a swap or stop outlasted the
    drain timeout, the child crashed, or bodhi-trio is shutting down."""

    code = "response_interrupted"


class UpstreamError(BodhiError):
    """llama-server failed while serving a request."""

    status = 502
    error_type = "upstream_error"
    code = "upstream_error"


class LlamaServerExitedError(UpstreamError):
    """llama-server exited while it was expected to run.

    Attributes:
        returncode: The exit code; negative means killed by that signal.
        log_tail: The child's last output lines.
    """

    code = "llama_server_exited"

    def __init__(self, returncode: int, log_tail: Sequence[str] = ()) -> None:
        message = f"llama-server exited unexpectedly with code {returncode}"
        super().__init__(_with_log_tail(message, log_tail))
        self.returncode = returncode
        self.log_tail = tuple(log_tail)


class PullFailedError(UpstreamError):
    """Downloading from the Hugging Face Hub failed: the network, the Hub, or a file
    whose size or sha256 did not match what the Hub announced."""

    code = "pull_failed"


class RemoteConnectError(UpstreamError):
    """A remote alias's server was never reached: refused, unresolvable, TLS, handshake
    timeout (nothing was sent: another replica may take the request)."""

    code = "upstream_connect_failed"


class RemoteStalledError(UpstreamError):
    """A remote sent nothing for longer than its alias's ``idle_timeout_secs``."""

    code = "upstream_stalled"


class RemoteKeyMissingError(UpstreamError):
    """A remote alias's ``api_key_env`` variable is not set, or cannot be a header."""

    code = "remote_key_missing"


class RemoteKeyRefusedError(UpstreamError):
    """A remote alias's ``api_key_env`` is not one of ``BODHI_REMOTE_KEY_ENVS``."""

    code = "remote_key_not_allowed"


class UpstreamUnavailableError(UpstreamError):
    """No target of a fallback chain answered.

    Attributes:
        retry_after: Seconds until the first cooling target recovers, when all cool
            (the ``Retry-After`` header); ``None`` otherwise.
    """

    code = "upstream_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
