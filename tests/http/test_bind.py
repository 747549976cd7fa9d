"""Binding beyond loopback needs an API key or --insecure."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bodhi_trio._config._settings import load_settings
from bodhi_trio._exceptions import ConfigError
from bodhi_trio._http._serve import check_bind


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_nothing(tmp_path: Path, host: str) -> None:
    settings = load_settings(home=tmp_path, env={"BODHI_HOST": host})
    # Nothing but the host can let it through: no key of either kind, not insecure.
    assert (settings.host, settings.api_keys, settings.admin_keys) == (host, (), ())
    assert settings.insecure is False
    check_bind(settings)  # accepted: no ConfigError
    # The control: the same settings on a network address are refused, so the pass
    # above is the loopback rule's doing, not a check that lets everything through.
    network = load_settings(home=tmp_path, env={"BODHI_HOST": "192.0.2.10"})
    with pytest.raises(ConfigError, match=r"refusing to listen on 192\.0\.2\.10"):
        check_bind(network)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_network_bind_without_key_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="--insecure"):
        check_bind(load_settings(home=tmp_path, env={"BODHI_HOST": host}))
    check_bind(load_settings(home=tmp_path, env={"BODHI_HOST": host, "BODHI_API_KEYS": "k"}))
    check_bind(
        load_settings(home=tmp_path, env={"BODHI_HOST": host}, overrides={"BODHI_INSECURE": True})
    )


def test_cli_refuses_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bodhi_trio._cli import main

    assert main(["serve", "--home", str(tmp_path), "--host", "0.0.0.0", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bodhi-trio: error: refusing to listen on 0.0.0.0")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("host", "advice"),
    [
        ("127.0.0.1", "another program listens there"),  # the port below is taken
        ("192.0.2.10", "not an address of this machine"),  # TEST-NET-1: nobody's
    ],
)
def test_a_bind_that_fails_is_one_line(tmp_path: Path, host: str, advice: str) -> None:
    """A taken port or a foreign address: one error line and exit 1, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = ["--home", str(tmp_path), "--host", host, "--port", str(port), "--insecure"]
        done = subprocess.run(
            [sys.executable, "-m", "bodhi_trio", "serve", *options],
            capture_output=True,
            text=True,
            timeout=60,  # liveness bound: it gives up at once
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"bodhi-trio: error: cannot listen on {host}:{port}: "), last
    assert advice in last
