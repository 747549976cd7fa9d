"""Downloading with huggingface_hub from our fake Hub: resume, verification, what is
left after a failure, quant and split plans; and placing local GGUF files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from bodhi_trio._config._hf_cache import repo_cache_dir, resolve_model_file
from bodhi_trio._config._hub_pull import download_plan, plan_pull, remove_partial_downloads
from bodhi_trio._config._hub_refs import PullRequest
from bodhi_trio._config._local_gguf import check_gguf_file, place_local_gguf
from bodhi_trio._exceptions import (
    InvalidModelFileError,
    ModelFileNotFoundError,
    PullFailedError,
    RemoteFileNotFoundError,
    RepoNotFoundError,
)
from fake_hub import FakeHub, FakeRepo, Fault, fake_hub, sha256

REPO = "acme/tiny-GGUF"
FILE = "tiny-Q4_K_M.gguf"


@pytest.fixture
def hub(gguf: bytes, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    files = {
        FILE: gguf,
        "tiny-Q8_0.gguf": gguf[::-1],
        "split/tiny-Q6_K-00001-of-00002.gguf": gguf[:1000],
        "split/tiny-Q6_K-00002-of-00002.gguf": gguf[1000:],
        "README.md": b"# tiny\n",
    }
    with fake_hub({REPO: FakeRepo(files)}) as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        yield running


def snapshot_files(hub_cache: Path) -> list[str]:
    """Everything under any snapshots/ folder (what a load could open)."""
    return sorted(str(p.relative_to(hub_cache)) for p in hub_cache.rglob("snapshots/**/*.gguf"))


def leftovers(hub_cache: Path) -> list[str]:
    return sorted(str(p.relative_to(hub_cache)) for p in hub_cache.rglob("*.incomplete"))


async def pull(request: PullRequest, hub_cache: Path) -> Path:
    """Plan and download in a worker thread (the fake Hub answers from its own)."""

    def run() -> Path:
        return download_plan(plan_pull(request), hub_cache)

    with trio.fail_after(60):  # the thread is let go (the fake Hub's end ends it)
        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


async def test_a_pull_lands_in_the_cache_layout(hub: FakeHub, gguf: bytes, tmp_path: Path) -> None:
    path = await pull(PullRequest.from_files(REPO, FILE), tmp_path)
    assert path == resolve_model_file(tmp_path, REPO, FILE, FakeRepo({}).commit)
    assert path.is_symlink()
    assert os.readlink(path) == f"../../blobs/{sha256(gguf)}"
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(gguf).digest()
    assert resolve_model_file(tmp_path, REPO, FILE, "main") == path  # refs/main written
    assert len(hub.gets(FILE)) == 1
    await pull(PullRequest.from_files(REPO, FILE), tmp_path)  # cached: no second download
    assert len(hub.gets(FILE)) == 1


async def test_a_connection_cut_at_half_is_retried(
    hub: FakeHub, gguf: bytes, tmp_path: Path
) -> None:
    hub.repos[REPO].faults[FILE] = Fault(cut_at=0.5, cuts=1)
    path = await pull(PullRequest.from_files(REPO, FILE), tmp_path)
    assert sha256(path.read_bytes()) == sha256(gguf)
    assert len(hub.gets(FILE)) == 2
    assert leftovers(tmp_path) == []


async def test_a_pull_that_fails_for_good_leaves_nothing_a_load_would_trust(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.repos[REPO].faults[FILE] = Fault(cut_at=0.5, cuts=-1)
    with pytest.raises(PullFailedError) as caught:
        await pull(PullRequest.from_files(REPO, FILE), tmp_path)
    assert "\n" not in caught.value.message
    assert len(hub.gets(FILE)) == 6  # the library's five retries
    assert snapshot_files(tmp_path) == []
    assert leftovers(tmp_path) == []
    with pytest.raises(ModelFileNotFoundError):
        resolve_model_file(tmp_path, REPO, FILE, "main")


TRAVERSAL = "../../../../../outside-the-cache"


@pytest.mark.parametrize("etag_from", [0, 1], ids=["our-head", "the-librarys-head"])
async def test_a_hub_etag_that_names_a_path_is_refused_and_nothing_lands_outside(
    hub: FakeHub, tmp_path: Path, etag_from: int
) -> None:
    """The library makes the blob's path of the ETag: a Hub answering with a path would
    have the download written there. Refused whether our HEAD sees it (the plan) or only
    the library's own (the download: its HEAD comes second)."""
    hub.repos[REPO].faults[FILE] = Fault(etag=TRAVERSAL, etag_from=etag_from)
    cache = tmp_path / "x" / "y" / "cache" / "hub"  # five levels above blobs/: x
    with pytest.raises(PullFailedError, match="an ETag that is not a hash") as caught:
        await pull(PullRequest.from_files(REPO, FILE), cache)
    assert "\n" not in caught.value.message
    assert hub.repos[REPO].faults[FILE].heads == etag_from + 1  # which HEAD it came in
    assert not (tmp_path / "x" / "outside-the-cache").exists()
    assert [p for p in files_under(tmp_path) if not p.is_relative_to(cache)] == []
    assert snapshot_files(cache) == []


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if not p.is_dir()]


async def test_a_hub_commit_that_names_a_path_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    hub.repos[REPO].commit = TRAVERSAL
    with pytest.raises(PullFailedError, match="a commit that is not a hash"):
        await pull(PullRequest.from_files(REPO, FILE), tmp_path)
    assert snapshot_files(tmp_path) == []


async def test_a_corrupted_download_is_removed(hub: FakeHub, gguf: bytes, tmp_path: Path) -> None:
    hub.repos[REPO].faults[FILE] = Fault(corrupt=True)
    with pytest.raises(PullFailedError, match=r"sha256 .* removed: pull again"):
        await pull(PullRequest.from_files(REPO, FILE), tmp_path)
    assert snapshot_files(tmp_path) == []
    assert list((repo_cache_dir(tmp_path, REPO) / "blobs").iterdir()) == []


async def test_an_interrupted_check_removes_the_unchecked_file(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bodhi_trio._config import _hub_pull

    def interrupted(path: Path, on_bytes: object) -> str:
        raise RuntimeError("interrupted while hashing")

    monkeypatch.setattr(_hub_pull, "file_sha256", interrupted)
    with pytest.raises(RuntimeError, match="interrupted while hashing"):
        await pull(PullRequest.from_files(REPO, FILE), tmp_path)
    assert snapshot_files(tmp_path) == []
    assert list((repo_cache_dir(tmp_path, REPO) / "blobs").iterdir()) == []


async def test_a_quant_picks_its_file_and_a_split_model_fetches_every_part(
    hub: FakeHub, gguf: bytes, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        request = PullRequest.from_ref(f"hf.co/{REPO}:q8_0")
        plan = await trio.to_thread.run_sync(plan_pull, request, abandon_on_cancel=True)
    assert [f.name for f in plan.files] == ["tiny-Q8_0.gguf"]
    assert plan.total == len(gguf)
    path = await pull(PullRequest.from_ref(f"hf.co/{REPO}:Q6_K"), tmp_path)
    assert path.name == "tiny-Q6_K-00001-of-00002.gguf"
    assert snapshot_files(tmp_path) == [
        f"models--acme--tiny-GGUF/snapshots/{FakeRepo({}).commit}/split/tiny-Q6_K-0000{i}-of-00002.gguf"
        for i in (1, 2)
    ]
    assert path.read_bytes() + path.with_name("tiny-Q6_K-00002-of-00002.gguf").read_bytes() == gguf


@pytest.mark.parametrize(
    ("request_", "error", "text"),
    [
        (PullRequest.from_files("acme/nope", FILE), RepoNotFoundError, "'acme/nope' not found"),
        (PullRequest.from_ref("hf.co/acme/nope:Q4_K_M"), RepoNotFoundError, "not found on"),
        (PullRequest.from_files(REPO, FILE, revision="v9"), RepoNotFoundError, "revision 'v9'"),
        (PullRequest.from_files(REPO, "gone.gguf"), RemoteFileNotFoundError, "no file 'gone.gguf'"),
    ],
)  # fmt: skip
async def test_hub_errors_are_one_line(
    hub: FakeHub, tmp_path: Path, request_: PullRequest, error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as caught:
        await pull(request_, tmp_path)
    assert text in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_an_unreachable_hub_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.socket.socket() as sock:  # a port nothing listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(PullFailedError, match=f"cannot reach http://127.0.0.1:{port}"):
        await pull(PullRequest.from_files(REPO, FILE), tmp_path)


def test_remove_partial_downloads_spares_a_download_in_progress(tmp_path: Path) -> None:
    from filelock import FileLock

    blobs = repo_cache_dir(tmp_path, REPO) / "blobs"
    blobs.mkdir(parents=True)
    etag = "ab" * 32
    (blobs / f"{etag}.1234abcd.incomplete").write_bytes(b"x")
    lock_dir = tmp_path / ".locks" / "models--acme--tiny-GGUF"
    lock_dir.mkdir(parents=True)
    with FileLock(lock_dir / f"{etag}.lock"):  # another process downloading it
        assert remove_partial_downloads(tmp_path, REPO, [etag]) == []
    assert remove_partial_downloads(tmp_path, REPO, [etag, "*"]) == [
        blobs / f"{etag}.1234abcd.incomplete"
    ]
    assert list(blobs.iterdir()) == []


# ---------------------------------------------------------------------------- local files


def test_a_local_gguf_is_hard_linked_into_the_cache(gguf: bytes, tmp_path: Path) -> None:
    source = tmp_path / "My Model.Q4_K_M.gguf"
    source.write_bytes(gguf)
    placed = place_local_gguf(tmp_path / "hub", source)
    assert (placed.repo, placed.filename) == ("local/My-Model.Q4_K_M", "My-Model.Q4_K_M.gguf")
    assert placed.placement == "hardlink"
    assert placed.snapshot == sha256(gguf)[:40]
    path = resolve_model_file(tmp_path / "hub", placed.repo, placed.filename, placed.snapshot)
    assert path == placed.path
    assert path.resolve().stat().st_ino == source.stat().st_ino
    again = place_local_gguf(tmp_path / "hub", source)
    assert again.placement == "cached"
    assert again.path == placed.path


def test_a_local_gguf_falls_back_to_a_symlink_then_a_copy(
    gguf: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "m.gguf"
    source.write_bytes(gguf)

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    placed = place_local_gguf(tmp_path / "a", source)
    assert placed.placement == "symlink"
    assert placed.path.resolve() == source.resolve()
    symlink_to = Path.symlink_to

    def relative_symlinks_only(self: Path, target: str | Path) -> None:
        if os.path.isabs(target):
            raise OSError(1, "Operation not permitted")
        symlink_to(self, target)

    monkeypatch.setattr(Path, "symlink_to", relative_symlinks_only)
    copied = place_local_gguf(tmp_path / "b", source)
    assert copied.placement == "copy"
    assert not Path(os.path.realpath(copied.path)).samefile(source)
    assert copied.path.read_bytes() == gguf
    assert leftovers(tmp_path / "b") == []


@pytest.mark.parametrize(
    ("name", "content", "text"),
    [
        ("missing.gguf", None, "does not exist"),
        ("model.bin", b"PK\x03\x04 not a gguf", "is not a GGUF file"),
        ("empty.gguf", b"", "is not a GGUF file"),
        ("folder.gguf", "dir", "is not a regular file"),
    ],
)
def test_a_bad_local_file_is_refused(
    tmp_path: Path, name: str, content: bytes | str | None, text: str
) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(InvalidModelFileError, match=text):
        place_local_gguf(tmp_path / "hub", path)
    assert not (tmp_path / "hub").exists()
    with pytest.raises(InvalidModelFileError):
        check_gguf_file(path)
