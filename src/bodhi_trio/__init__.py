"""bodhi-trio: a local, OpenAI-compatible LLM server on Trio that owns llama-server processes.

The public surface; everything else lives in private subpackages, and the lower
tier (locks, launch specs, the child supervisor, the args merge) is in
:mod:`bodhi_trio.lowlevel`. Library use::

    import bodhi_trio
    import trio

    async def main() -> None:
        settings = bodhi_trio.load_settings()
        async with bodhi_trio.open_context(settings) as ctx:
            request = {"model": "demo:tiny", "messages": [...], "stream": True}
            async with ctx.forward("/v1/chat/completions", request) as response:
                async for chunk in response:
                    ...

    trio.run(main)

Or the whole HTTP server inside your own Trio program::

    url = await nursery.start(bodhi_trio.serve, settings)
"""

from __future__ import annotations

from bodhi_trio._config._alias_store import AliasFileProblem as AliasFileProblem
from bodhi_trio._config._alias_store import AliasStore as AliasStore
from bodhi_trio._config._aliases import Alias as Alias
from bodhi_trio._config._aliases import RequestParams as RequestParams
from bodhi_trio._config._settings import Settings as Settings
from bodhi_trio._config._settings import load_settings as load_settings
from bodhi_trio._context._open import ContextStatistics as ContextStatistics
from bodhi_trio._context._open import SharedContext as SharedContext
from bodhi_trio._context._root import open_context as open_context
from bodhi_trio._core._listeners import ListenerStatistics as ListenerStatistics
from bodhi_trio._core._listeners import StateListener as StateListener
from bodhi_trio._core._state import EventKind as EventKind
from bodhi_trio._core._state import ModelState as ModelState
from bodhi_trio._core._state import ServerEvent as ServerEvent
from bodhi_trio._core._state import ServerState as ServerState
from bodhi_trio._core._state import SlotStatus as SlotStatus
from bodhi_trio._exceptions import AdminKeyRequiredError as AdminKeyRequiredError
from bodhi_trio._exceptions import AliasExistsError as AliasExistsError
from bodhi_trio._exceptions import AliasNotFoundError as AliasNotFoundError
from bodhi_trio._exceptions import AnswersOverBudgetError as AnswersOverBudgetError
from bodhi_trio._exceptions import AuthenticationError as AuthenticationError
from bodhi_trio._exceptions import BodhiError as BodhiError
from bodhi_trio._exceptions import ConfigError as ConfigError
from bodhi_trio._exceptions import ConflictError as ConflictError
from bodhi_trio._exceptions import ForbiddenError as ForbiddenError
from bodhi_trio._exceptions import InsufficientMemoryError as InsufficientMemoryError
from bodhi_trio._exceptions import InvalidAliasError as InvalidAliasError
from bodhi_trio._exceptions import InvalidRequestError as InvalidRequestError
from bodhi_trio._exceptions import LlamaServerExitedError as LlamaServerExitedError
from bodhi_trio._exceptions import LlamaServerInstallError as LlamaServerInstallError
from bodhi_trio._exceptions import LlamaServerNotFoundError as LlamaServerNotFoundError
from bodhi_trio._exceptions import ModelFileNotFoundError as ModelFileNotFoundError
from bodhi_trio._exceptions import NotFoundError as NotFoundError
from bodhi_trio._exceptions import RemoteConnectError as RemoteConnectError
from bodhi_trio._exceptions import RemoteKeyMissingError as RemoteKeyMissingError
from bodhi_trio._exceptions import RemoteKeyRefusedError as RemoteKeyRefusedError
from bodhi_trio._exceptions import RemoteStalledError as RemoteStalledError
from bodhi_trio._exceptions import RequestTooLargeError as RequestTooLargeError
from bodhi_trio._exceptions import ResponseInterruptedError as ResponseInterruptedError
from bodhi_trio._exceptions import ServerArgsError as ServerArgsError
from bodhi_trio._exceptions import ServerBusyError as ServerBusyError
from bodhi_trio._exceptions import SettingsError as SettingsError
from bodhi_trio._exceptions import StartupError as StartupError
from bodhi_trio._exceptions import UnavailableError as UnavailableError
from bodhi_trio._exceptions import UpstreamError as UpstreamError
from bodhi_trio._exceptions import UpstreamUnavailableError as UpstreamUnavailableError
from bodhi_trio._exports import fix_module_names
from bodhi_trio._http._serve import serve as serve
from bodhi_trio._transport._loopback import UpstreamResponse as UpstreamResponse

__version__ = "0.1.0"

__all__ = [
    "AdminKeyRequiredError",
    "AnswersOverBudgetError",
    "Alias",
    "AliasExistsError",
    "AliasFileProblem",
    "AliasNotFoundError",
    "AliasStore",
    "AuthenticationError",
    "BodhiError",
    "ConfigError",
    "ConflictError",
    "ContextStatistics",
    "EventKind",
    "ForbiddenError",
    "InsufficientMemoryError",
    "InvalidAliasError",
    "InvalidRequestError",
    "ListenerStatistics",
    "LlamaServerExitedError",
    "LlamaServerInstallError",
    "LlamaServerNotFoundError",
    "ModelFileNotFoundError",
    "ModelState",
    "NotFoundError",
    "RequestParams",
    "RemoteConnectError",
    "RemoteKeyMissingError",
    "RemoteKeyRefusedError",
    "RemoteStalledError",
    "RequestTooLargeError",
    "ResponseInterruptedError",
    "ServerArgsError",
    "ServerBusyError",
    "ServerEvent",
    "ServerState",
    "Settings",
    "SettingsError",
    "SharedContext",
    "SlotStatus",
    "StartupError",
    "StateListener",
    "UnavailableError",
    "UpstreamError",
    "UpstreamUnavailableError",
    "UpstreamResponse",
    "load_settings",
    "open_context",
    "serve",
]

fix_module_names(__name__, globals(), __all__)
