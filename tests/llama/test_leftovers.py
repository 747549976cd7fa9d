"""Run records and the cleanup of leftovers from a run that was SIGKILLed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bodhi_trio._llama._leftovers import (
    forget_child,
    kill_leftovers,
    record_child,
    sweep_socket_dirs,
)
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


def _aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def socket_dir(root: Path) -> Path:
    """A directory as a child's is made (``mkdtemp``: our prefix, mode 0700)."""
    return Path(tempfile.mkdtemp(prefix="bodhi-trio-", dir=root))


def test_stale_socket_dirs_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    """A child started without a run record leaves its socket directory when its parent is
    killed; the next context removes it, but never a live child's or a starting one's."""
    dead = socket_dir(tmp_path)
    (dead / "llama.sock").write_text("")  # a socket file nothing listens on
    empty = socket_dir(tmp_path)
    live = socket_dir(tmp_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(live / "llama.sock"))
    listener.listen(1)
    starting = socket_dir(tmp_path)  # young: its child has not bound yet
    other = tmp_path / "not-ours"
    other.mkdir()
    for path in (dead, empty, live, other):
        _aged(path, 3600)
    try:
        removed = sweep_socket_dirs(tmp_path)
    finally:
        listener.close()
    assert sorted(removed) == sorted([dead, empty])
    assert not dead.exists()
    assert not empty.exists()
    assert live.exists()
    assert starting.exists()
    assert other.exists()


def test_a_folder_that_only_shares_the_prefix_is_never_swept(tmp_path: Path) -> None:
    """A user's ``/tmp/bodhi-trio-dev`` checkout (an earlier version removed such folders
    at every start, and a benchmark's worktrees under ``/tmp/bodhi-trio-ab`` with them),
    or a directory of that shape holding anything but a socket, or open to others."""
    checkout = tmp_path / "bodhi-trio-ab"
    checkout.mkdir()
    (checkout / "README.md").write_text("mine")
    named_like_ours = tmp_path / "bodhi-trio-abcd1234"  # mkdtemp's shape, but 0755
    named_like_ours.mkdir(mode=0o755)
    named_like_ours.chmod(0o755)
    holding_more = socket_dir(tmp_path)
    (holding_more / "llama.sock").write_text("")
    (holding_more / "notes.txt").write_text("not a child's")
    for path in (checkout, named_like_ours, holding_more):
        _aged(path, 3600)
    assert sweep_socket_dirs(tmp_path) == []
    assert (checkout / "README.md").read_text() == "mine"
    assert named_like_ours.exists()
    assert (holding_more / "notes.txt").exists()
