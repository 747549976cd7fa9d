"""The lower tier, as ``trio.lowlevel`` is to ``trio``: the parts the context is built from.

For programs that supervise llama-server themselves, reuse the lock, or need
the pieces the server uses: the child supervisor and its launch spec, the args
merge, the binary lookup and build, the demo model, the log ring, the
writer-preferring RW lock, the address of a child, the budget of answers read whole.
"""

from __future__ import annotations

from bodhi_trio._config._aliases import apply_request_params as apply_request_params
from bodhi_trio._config._demo import DEMO_ALIAS as DEMO_ALIAS
from bodhi_trio._config._demo import DemoModel as DemoModel
from bodhi_trio._config._demo import ensure_demo_model as ensure_demo_model
from bodhi_trio._core._address import Address as Address
from bodhi_trio._core._rwlock import RWLock as RWLock
from bodhi_trio._core._rwlock import RWLockStatistics as RWLockStatistics
from bodhi_trio._exports import fix_module_names
from bodhi_trio._llama._child import LlamaServer as LlamaServer
from bodhi_trio._llama._child import serve_llama_server as serve_llama_server
from bodhi_trio._llama._install import install_llama_server as install_llama_server
from bodhi_trio._llama._launch import LaunchSpec as LaunchSpec
from bodhi_trio._llama._launch import child_environment as child_environment
from bodhi_trio._llama._logtail import LogTail as LogTail
from bodhi_trio._llama._runtime import find_llama_server as find_llama_server
from bodhi_trio._llama._server_args import merge_server_args as merge_server_args
from bodhi_trio._transport._whole import AnswerBudget as AnswerBudget
from bodhi_trio._transport._whole import AnswerBudgetStatistics as AnswerBudgetStatistics

__all__ = [
    "DEMO_ALIAS",
    "Address",
    "AnswerBudget",
    "AnswerBudgetStatistics",
    "DemoModel",
    "LaunchSpec",
    "LlamaServer",
    "LogTail",
    "RWLock",
    "RWLockStatistics",
    "apply_request_params",
    "child_environment",
    "ensure_demo_model",
    "find_llama_server",
    "install_llama_server",
    "merge_server_args",
    "serve_llama_server",
]

fix_module_names(__name__, globals(), __all__)
