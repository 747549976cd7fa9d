"""What bodhi-trio writes about its children is its user's alone: the logs (they can hold
prompts) and the run records, also where an earlier version left them open."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import trio

from bodhi_trio._llama._leftovers import record_child
from fake_context import harness


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_logs_and_run_records_are_private(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    logs.chmod(0o755)  # as an earlier version left it (umask aside)
    old = logs / "llama-server.log"
    old.write_text("an earlier run's line\n")
    old.chmod(0o644)
    with trio.fail_after(30):
        async with harness(tmp_path) as h:
            await h.chat("a")
    files = sorted(logs.iterdir())
    assert old in files
    assert len(files) >= 2  # the combined log and the alias's own
    assert mode(logs) == 0o700
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert mode(tmp_path / "run") == 0o700

    record = record_child(tmp_path / "records", os.getpid(), "llama-server")
    assert mode(record) == 0o600
    assert mode(tmp_path / "records") == 0o700
