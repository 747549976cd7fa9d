"""The public surface is exactly what __init__ says, and nothing private leaks."""

from __future__ import annotations

import bodhi_trio
import bodhi_trio.lowlevel


def test_all_names_exist_and_are_public() -> None:
    for name in bodhi_trio.__all__:
        assert hasattr(bodhi_trio, name), name
        assert not name.startswith("_")
    assert len(set(bodhi_trio.__all__)) == len(bodhi_trio.__all__)


PUBLIC = {
    "AdminKeyRequiredError", "Alias", "AliasExistsError", "AliasFileProblem",
    "AliasNotFoundError", "AnswersOverBudgetError", "AliasStore", "AuthenticationError",
    "BodhiError", "ConfigError",
    "ConflictError", "ContextStatistics", "EventKind", "ForbiddenError",
    "InsufficientMemoryError", "InvalidAliasError",
    "InvalidRequestError", "ListenerStatistics", "LlamaServerExitedError",
    "LlamaServerInstallError", "LlamaServerNotFoundError", "ModelFileNotFoundError", "ModelState",
    "NotFoundError", "RemoteConnectError", "RemoteKeyMissingError", "RemoteKeyRefusedError",
    "RemoteStalledError", "RequestParams", "RequestTooLargeError", "ResponseInterruptedError",
    "ServerArgsError", "ServerBusyError", "ServerEvent", "ServerState", "Settings", "SettingsError",
    "SharedContext", "SlotStatus", "StartupError", "StateListener", "UnavailableError",
    "UpstreamError", "UpstreamResponse", "UpstreamUnavailableError", "load_settings",
    "open_context", "serve",
}  # fmt: skip
LOWLEVEL = {
    "DEMO_ALIAS", "Address", "AnswerBudget", "AnswerBudgetStatistics", "DemoModel",
    "LaunchSpec", "LlamaServer", "LogTail",
    "RWLock", "RWLockStatistics", "apply_request_params",
    "child_environment", "ensure_demo_model", "find_llama_server",
    "install_llama_server", "merge_server_args", "serve_llama_server",
}  # fmt: skip


def test_the_two_tiers_are_exactly_these() -> None:
    """A name added to or dropped from either tier is a decision: make it here too."""
    assert set(bodhi_trio.__all__) == PUBLIC
    assert set(bodhi_trio.lowlevel.__all__) == LOWLEVEL
    for name in bodhi_trio.lowlevel.__all__:
        assert hasattr(bodhi_trio.lowlevel, name), name
    assert bodhi_trio.lowlevel.RWLock.__module__ == "bodhi_trio.lowlevel"


def test_public_classes_report_the_public_module() -> None:
    assert bodhi_trio.SharedContext.__module__ == "bodhi_trio"
    assert bodhi_trio.open_context.__module__ == "bodhi_trio"
    assert repr(bodhi_trio.SlotStatus.READY).startswith("<SlotStatus")


def test_every_error_is_a_bodhi_error_with_a_status() -> None:
    errors = [getattr(bodhi_trio, n) for n in bodhi_trio.__all__ if n.endswith("Error")]
    assert len(errors) >= 18
    for error in errors:
        assert issubclass(error, bodhi_trio.BodhiError)
        assert 400 <= error.status < 600
