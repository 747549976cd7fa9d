"""bodhi-trio: a local, OpenAI-compatible LLM server on Trio that owns llama-server processes.

The public surface; everything else lives in private modules. Library use::

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
"""

from __future__ import annotations

import contextlib as _contextlib

from ._alias_store import AliasFileProblem as AliasFileProblem
from ._alias_store import AliasStore as AliasStore
from ._aliases import Alias as Alias
from ._aliases import RequestParams as RequestParams
from ._aliases import apply_request_params as apply_request_params
from ._child import LaunchSpec as LaunchSpec
from ._child import LlamaServer as LlamaServer
from ._child import serve_llama_server as serve_llama_server
from ._context import ContextStatistics as ContextStatistics
from ._context import SharedContext as SharedContext
from ._context import open_context as open_context
from ._demo import DEMO_ALIAS as DEMO_ALIAS
from ._demo import DemoModel as DemoModel
from ._demo import ensure_demo_model as ensure_demo_model
from ._exceptions import AliasExistsError as AliasExistsError
from ._exceptions import AliasNotFoundError as AliasNotFoundError
from ._exceptions import BodhiError as BodhiError
from ._exceptions import ConfigError as ConfigError
from ._exceptions import ConflictError as ConflictError
from ._exceptions import InvalidAliasError as InvalidAliasError
from ._exceptions import InvalidRequestError as InvalidRequestError
from ._exceptions import LlamaServerExitedError as LlamaServerExitedError
from ._exceptions import LlamaServerInstallError as LlamaServerInstallError
from ._exceptions import LlamaServerNotFoundError as LlamaServerNotFoundError
from ._exceptions import ModelFileNotFoundError as ModelFileNotFoundError
from ._exceptions import NotFoundError as NotFoundError
from ._exceptions import RequestTooLargeError as RequestTooLargeError
from ._exceptions import ResponseInterruptedError as ResponseInterruptedError
from ._exceptions import ServerArgsError as ServerArgsError
from ._exceptions import SettingsError as SettingsError
from ._exceptions import StartupError as StartupError
from ._exceptions import UnavailableError as UnavailableError
from ._exceptions import UpstreamError as UpstreamError
from ._listeners import ListenerStatistics as ListenerStatistics
from ._listeners import StateListener as StateListener
from ._logtail import LogTail as LogTail
from ._runtime import find_llama_server as find_llama_server
from ._runtime import install_llama_server as install_llama_server
from ._rwlock import RWLock as RWLock
from ._rwlock import RWLockStatistics as RWLockStatistics
from ._server_args import merge_server_args as merge_server_args
from ._settings import Settings as Settings
from ._settings import load_settings as load_settings
from ._state import EventKind as EventKind
from ._state import ModelLoadStrategy as ModelLoadStrategy
from ._state import ServerEvent as ServerEvent
from ._state import ServerState as ServerState
from ._state import SlotStatus as SlotStatus
from ._state import choose_strategy as choose_strategy
from ._upstream import UpstreamResponse as UpstreamResponse

__version__ = "0.1.0"

__all__ = [
    "DEMO_ALIAS",
    "Alias",
    "AliasExistsError",
    "AliasFileProblem",
    "AliasNotFoundError",
    "AliasStore",
    "BodhiError",
    "ConfigError",
    "ConflictError",
    "ContextStatistics",
    "DemoModel",
    "EventKind",
    "InvalidAliasError",
    "InvalidRequestError",
    "LaunchSpec",
    "ListenerStatistics",
    "LlamaServer",
    "LlamaServerExitedError",
    "LlamaServerInstallError",
    "LlamaServerNotFoundError",
    "LogTail",
    "ModelFileNotFoundError",
    "ModelLoadStrategy",
    "NotFoundError",
    "RWLock",
    "RWLockStatistics",
    "RequestParams",
    "RequestTooLargeError",
    "ResponseInterruptedError",
    "ServerArgsError",
    "ServerEvent",
    "ServerState",
    "SettingsError",
    "Settings",
    "SharedContext",
    "SlotStatus",
    "StartupError",
    "StateListener",
    "UnavailableError",
    "UpstreamError",
    "UpstreamResponse",
    "apply_request_params",
    "choose_strategy",
    "ensure_demo_model",
    "find_llama_server",
    "install_llama_server",
    "load_settings",
    "merge_server_args",
    "open_context",
    "serve_llama_server",
]

# Show public names as bodhi_trio.X in reprs and tracebacks (as trio does).
for _name in __all__:
    _value = globals()[_name]
    if getattr(_value, "__module__", "").startswith("bodhi_trio._"):
        with _contextlib.suppress(AttributeError, TypeError):
            _value.__module__ = __name__
del _name, _value
