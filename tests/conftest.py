"""Shared fixtures: the fake and the real llama-server, the demo model."""

from __future__ import annotations

import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from bodhi_trio._exceptions import LlamaServerNotFoundError, RpcServerNotFoundError
from fake_hub import TINY_FILE, TINY_REPO, FakeHub, FakeRepo, Fault, fake_hub
from remote_stub import Transport

TESTS = Path(__file__).parent
FAKE_SERVER = TESTS / "fake_llama_server.py"

sys.path.insert(0, str(TESTS))  # the helper modules next to the tests (procs.py, ...)


@pytest.fixture(scope="session")
def fake_llama_server() -> Path:
    """Our own fault-injecting stand-in for llama-server (an executable script)."""
    return FAKE_SERVER


def _installed(find: Callable[[str], Path]) -> Path:
    """The real binary ``find`` finds for the cpu variant. Missing means the test setup
    is broken: fail, never skip."""
    try:
        return find("cpu")
    except (LlamaServerNotFoundError, RpcServerNotFoundError) as exc:
        pytest.fail(f"{exc.message}\n(the README's test command installs it first)")


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    """The real llama-server."""
    from bodhi_trio._llama._runtime import find_llama_server

    return _installed(find_llama_server)


@pytest.fixture(scope="session")
def rpc_server_binary() -> Path:
    """The real rpc-server (built with ``llama-server install --rpc``)."""
    from bodhi_trio._llama._runtime import find_rpc_server

    return _installed(find_rpc_server)


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf") / "hub"


@pytest.fixture(scope="session")
def demo_model_path(hub_cache: Path) -> Path:
    """The tiny demo GGUF in an HF cache layout (its snapshot path)."""
    from bodhi_trio._config._demo import ensure_demo_model

    return ensure_demo_model(hub_cache).path


@pytest.fixture(scope="session")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The tiny demo model's bytes (real llama-server loads it), for a fake Hub to serve."""
    from bodhi_trio._config._demo import build_demo_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    build_demo_gguf(path)
    return path.read_bytes()


# The pull tests over HTTP (bodhi's and Ollama's): a fake Hub whose download of the tiny
# model waits at half its bytes until the test opens the gate.


@pytest.fixture
def gate() -> threading.Event:
    return threading.Event()


@pytest.fixture
def gated_hub(
    gguf: bytes, gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeHub]:
    """The Hub holds each download of TINY_FILE after half its bytes until ``gate`` is set."""
    repos = {TINY_REPO: FakeRepo({TINY_FILE: gguf}, faults={TINY_FILE: Fault(gate=gate)})}
    with fake_hub(repos) as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)  # the server's pull workers inherit it
        yield running


# Remote aliases (tests/remote): a private CA, a stub's certificate for localhost, and the
# two ways our server reaches a remote.


@pytest.fixture(scope="session")
def private_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(private_ca: trustme.CA) -> ssl.SSLContext:
    """A stub's HTTPS (``remote_stub(ssl_context=...)``): a certificate for ``localhost``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    private_ca.issue_cert("localhost").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def ca_bundle(private_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """:func:`private_ca`'s certificate as a PEM file, for an alias's ``ca_bundle``."""
    path = tmp_path_factory.mktemp("tls") / "private-ca.pem"
    private_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(params=["plain", "https"])
def transport(
    request: pytest.FixtureRequest, server_tls: ssl.SSLContext, ca_bundle: str
) -> Transport:
    """``plain``: http:// (our own HTTP/1.1 client); ``https``: with a CA bundle (httpx)."""
    if request.param == "plain":
        return Transport(None, {})
    return Transport(server_tls, {"ca_bundle": ca_bundle})
