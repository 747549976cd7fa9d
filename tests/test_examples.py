"""The runnable examples, run as a user would: a subprocess with its own homes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from paths import REPO
from procs import group_members, is_alive

EXAMPLES = REPO / "examples"


def run_example(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.llama
def test_stream_and_cancel(tmp_path: Path, llama_server_binary: Path) -> None:
    home = tmp_path / "home"
    env = {"BODHI_HOME": str(home), "HF_HOME": str(tmp_path / "hf"), "BODHI_KEEP_ALIVE_SECS": "-1"}
    result = run_example("stream_and_cancel.py", "--home", str(home), env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[short] status 200" in out
    assert "[short] [DONE]" in out
    assert "[long] cancelled after 5 chunks: True" in out
    state = re.search(r"state: ready alias=demo:tiny pid=(\d+) in_flight=0 starts=1", out)
    assert state is not None, out
    assert "after close: stopped models=0" in out
    pid = int(state.group(1))
    assert not is_alive(pid)  # the context stopped llama-server on exit
    assert group_members(pid) == []
    assert (home / "aliases" / "demo--tiny.yaml").is_file()
    assert (tmp_path / "hf" / "hub" / "models--bodhi-trio--tiny-random-llama").is_dir()


# No llama-server runs here: the binary is missing on purpose, so no llama marker.
def test_stream_and_cancel_reports_a_missing_binary(tmp_path: Path) -> None:
    env = {
        "BODHI_HOME": str(tmp_path / "home"),
        "HF_HOME": str(tmp_path / "hf"),
        "BODHI_LLAMA_SERVER": str(tmp_path / "no-such-llama-server"),
    }
    result = run_example("stream_and_cancel.py", env=env)
    assert result.returncode == 1
    assert result.stderr.count("error: no runnable llama-server") == 1, result.stderr
    assert "Traceback" not in result.stderr
