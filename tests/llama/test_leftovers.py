"""Run records and the cleanup of leftovers from a run that was SIGKILLed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bodhi_trio._llama._leftovers import forget_child, kill_leftovers, record_child
from procs import is_alive


def dead_pid() -> int:
    with subprocess.Popen(["true"]) as proc:
        pass
    return proc.pid


def test_leftover_of_a_dead_owner_is_killed(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "60"], start_new_session=True) as orphan:
        path = record_child(tmp_path, orphan.pid, "sleep")
        record = json.loads(path.read_text())
        record["owner_pid"] = dead_pid()  # as if bodhi-trio had been SIGKILLed
        path.write_text(json.dumps(record))
        assert kill_leftovers(tmp_path) == [orphan.pid]
        assert orphan.wait(timeout=5) == -9
    assert not path.exists()


def test_child_of_a_live_owner_is_kept(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "60"], start_new_session=True) as child:
        try:
            path = record_child(tmp_path, child.pid, "sleep")  # owner: this test process
            assert kill_leftovers(tmp_path) == []
            assert is_alive(child.pid)
            assert path.exists()
            forget_child(path)
            assert not path.exists()
        finally:
            child.kill()


def test_reused_pid_is_not_killed(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "60"], start_new_session=True) as other:
        try:
            path = record_child(tmp_path, other.pid, "llama-server")
            record = json.loads(path.read_text())
            record["owner_pid"] = dead_pid()
            record["start_time"] = record["start_time"] - 1  # same pid, another process
            path.write_text(json.dumps(record))
            assert kill_leftovers(tmp_path) == []
            assert is_alive(other.pid)
            assert not path.exists()
        finally:
            other.kill()


def test_unreadable_record_is_dropped(tmp_path: Path) -> None:
    bad = tmp_path / "llama-server-1.json"
    bad.write_text("{not json")
    assert kill_leftovers(tmp_path) == []
    assert not bad.exists()
    assert kill_leftovers(tmp_path / "missing") == []
    assert os.listdir(tmp_path) == []
