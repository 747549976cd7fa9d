"""Shared fixtures: the fake and the real llama-server, the demo model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bodhi_trio._exceptions import LlamaServerNotFoundError

TESTS = Path(__file__).parent
FAKE_SERVER = TESTS / "fake_llama_server.py"

sys.path.insert(0, str(TESTS))  # the helper modules next to the tests (procs.py, ...)


@pytest.fixture(scope="session")
def fake_llama_server() -> Path:
    """Our own fault-injecting stand-in for llama-server (an executable script)."""
    return FAKE_SERVER


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    """The real llama-server. Missing means the test setup is broken: fail, never skip."""
    from bodhi_trio._llama._runtime import find_llama_server

    try:
        return find_llama_server("cpu")
    except LlamaServerNotFoundError as exc:
        pytest.fail(f"{exc.message}\n(the README's test command installs it first)")


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf") / "hub"


@pytest.fixture(scope="session")
def demo_model_path(hub_cache: Path) -> Path:
    """The tiny demo GGUF in an HF cache layout (its snapshot path)."""
    from bodhi_trio._config._demo import ensure_demo_model

    return ensure_demo_model(hub_cache).path
