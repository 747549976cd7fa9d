"""The pull registry with stand-in workers: joining, queueing, the end of each kind of
worker (done, error, crash, stall, one that ignores SIGTERM), and what a kill leaves."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._hub_refs import PullRequest
from bodhi_trio._context._pull_job import PullState
from bodhi_trio._context._pulls import PullRegistry
from bodhi_trio._exceptions import AliasExistsError, UnavailableError

REPO = "acme/tiny-GGUF"
ETAG = "ab" * 32

# Each stand-in reads the registry's JSON argument like the real worker.
PRELUDE = f"""
import json, os, pathlib, signal, sys, time
spec = json.loads(sys.argv[1])
def say(**event): print(json.dumps(event), flush=True)
say(event="plan", commit="c" * 40, files=[{{"name": "m.gguf", "size": 10, "etag": "{ETAG}"}}])
"""
WORKERS = {
    "done": 'say(event="progress", phase="downloading", done=10, total=10)\n'
    'say(event="done", commit="c" * 40, filename="m.gguf")',
    "error": 'say(event="error", status=404, error={"message": "repo gone", "type": "t",'
    ' "code": "repo_not_found", "param": None}); sys.exit(1)',
    "crash": 'print("Traceback (most recent call last):", flush=True)\n'
    'print("ValueError: boom", flush=True); sys.exit(1)',
    "stall": "time.sleep(60)",
    "stubborn": "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    'blobs = pathlib.Path(spec["hub_cache"]) / "models--acme--tiny-GGUF" / "blobs"\n'
    "blobs.mkdir(parents=True)\n"
    f'(blobs / "{ETAG}.1234abcd.incomplete").write_bytes(b"half")\n'
    'say(event="progress", phase="downloading", done=5, total=10)\n'
    "time.sleep(60)",
    # waits for the test's go-ahead: a file (polled; the test never sleeps)
    "gated": 'go = pathlib.Path(spec["hub_cache"]) / "go"\n'
    "while not go.exists(): time.sleep(0.01)\n"
    'say(event="done", commit="c" * 40, filename="m.gguf")',
}


def worker(kind: str) -> tuple[str, ...]:
    return (sys.executable, "-c", PRELUDE + textwrap.dedent(WORKERS[kind]))


@asynccontextmanager
async def registry(tmp_path: Path, kind: str, **options: float) -> AsyncIterator[PullRegistry]:
    (tmp_path / "hub").mkdir()
    async with trio.open_nursery() as nursery:
        pulls = PullRegistry(
            nursery,
            tmp_path / "hub",
            AliasStore(tmp_path / "aliases"),
            worker=worker(kind),
            **options,  # type: ignore[arg-type]
        )
        yield pulls
        pulls.close()
        nursery.cancel_scope.cancel()


def request(filename: str = "m.gguf", alias: str | None = None) -> PullRequest:
    return PullRequest.from_files(REPO, filename, alias=alias)


async def test_a_done_job_writes_every_alias_asked_for(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with registry(tmp_path, "done") as pulls:
            job = pulls.start_or_join(request())
            assert pulls.start_or_join(request(alias="other")) is job
            final = await job.wait()
    assert final.state is PullState.DONE
    assert final.error is None
    assert (final.bytes_done, final.bytes_total, final.files) == (10, 10, ("m.gguf",))
    aliases, _ = AliasStore(tmp_path / "aliases").load()
    assert [(a.alias, a.filename, a.snapshot) for a in aliases] == [
        ("other", "m.gguf", "c" * 40),
        ("tiny", "m.gguf", "c" * 40),
    ]


@pytest.mark.parametrize(
    ("kind", "code", "text"),
    [
        ("error", "repo_not_found", "repo gone"),
        ("crash", "pull_failed", "exited without a result: Traceback"),
        ("stall", "pull_failed", "stalled: nothing happened for 0.5 s"),
    ],
)
async def test_a_failing_worker_fails_the_job(
    tmp_path: Path, kind: str, code: str, text: str
) -> None:
    with trio.fail_after(30):
        async with registry(tmp_path, kind, stall_timeout=0.5, stop_grace=0.5) as pulls:
            final = await pulls.start_or_join(request()).wait()
    assert final.state is PullState.FAILED
    assert final.error is not None
    assert final.error.code == code
    assert text in final.error.message
    assert not (tmp_path / "aliases").exists()


async def test_a_worker_that_ignores_sigterm_is_killed_and_its_partial_file_removed(
    tmp_path: Path,
) -> None:
    partial = tmp_path / "hub" / "models--acme--tiny-GGUF" / "blobs" / f"{ETAG}.1234abcd.incomplete"
    with trio.fail_after(30):
        async with registry(tmp_path, "stubborn", stop_grace=0.5) as pulls:
            job = pulls.start_or_join(request())
            async for progress in job.watch():
                if progress.bytes_done == 5:
                    break
            assert partial.exists()
            final = await pulls.cancel(job.id)
            assert final.state is PullState.CANCELLED
            assert final.error is not None
            assert final.error.code == "pull_cancelled"
            assert not partial.exists()
            assert pulls.jobs() == [final]


async def test_jobs_beyond_the_limit_wait_and_can_be_cancelled_while_queued(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with registry(tmp_path, "gated", max_running=1) as pulls:
            first = pulls.start_or_join(request("a.gguf"))
            second = pulls.start_or_join(request("b.gguf", alias="b"))
            third = pulls.start_or_join(request("c.gguf", alias="c"))
            async for progress in first.watch():
                if progress.state is PullState.RUNNING:
                    break
            assert (second.progress.state, third.progress.state) == (PullState.QUEUED,) * 2
            assert (await pulls.cancel(third.id)).state is PullState.CANCELLED
            (tmp_path / "hub" / "go").touch()
            assert (await first.wait()).state is PullState.DONE
            assert (await second.wait()).state is PullState.DONE


async def test_alias_conflicts_are_refused_before_anything_runs(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with registry(tmp_path, "gated") as pulls:
            pulls.start_or_join(request("a.gguf", alias="x"))
            with pytest.raises(AliasExistsError, match="is being pulled for"):
                pulls.start_or_join(request("b.gguf", alias="x"))
            pulls.close()
            with pytest.raises(UnavailableError):
                pulls.start_or_join(request("c.gguf"))
            (tmp_path / "hub" / "go").touch()
    assert json.loads(json.dumps([p.to_json() for p in pulls.jobs()]))[0]["aliases"] == ["x"]
