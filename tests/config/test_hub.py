"""Model files in a hand-built Hugging Face cache layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from bodhi_trio._config._hf_cache import (
    hub_cache_dir,
    repo_cache_dir,
    resolve_model_file,
    validate_filename,
    validate_repo_id,
    validate_snapshot,
)
from bodhi_trio._exceptions import InvalidAliasError, ModelFileNotFoundError

REPO = "TheOrg/Tiny-GGUF"
COMMIT = "5007652f7a641fe7170e0bad4f63839419bd9213"
FILE = "tiny.Q8_0.gguf"


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    """``models--TheOrg--Tiny-GGUF`` with refs/main (trailing newline) -> COMMIT."""
    cache = tmp_path / "hub"
    repo_dir = cache / "models--TheOrg--Tiny-GGUF"
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "blobs" / "abc123").write_bytes(b"GGUF")
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / FILE).symlink_to(Path("..", "..", "blobs", "abc123"))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT + "\n")
    return cache


def test_hub_cache_dir_is_hf_home_hub(tmp_path: Path) -> None:
    assert hub_cache_dir(tmp_path) == tmp_path / "hub"


def test_repo_cache_dir_uses_the_hub_layout(hub: Path) -> None:
    assert repo_cache_dir(hub, REPO) == hub / "models--TheOrg--Tiny-GGUF"


def test_ref_name_resolves_through_refs_file_with_trailing_newline(hub: Path) -> None:
    path = resolve_model_file(hub, REPO, FILE)
    assert path == hub / "models--TheOrg--Tiny-GGUF" / "snapshots" / COMMIT / FILE
    assert path.is_symlink()  # returned as the snapshot path, not the blob
    assert path.read_bytes() == b"GGUF"


def test_commit_hash_resolves_directly(hub: Path) -> None:
    path = resolve_model_file(hub, REPO, FILE, snapshot=COMMIT)
    assert path == hub / "models--TheOrg--Tiny-GGUF" / "snapshots" / COMMIT / FILE


def test_nested_ref_names_work(hub: Path) -> None:
    pr_ref = hub / "models--TheOrg--Tiny-GGUF" / "refs" / "refs" / "pr" / "1"
    pr_ref.parent.mkdir(parents=True)
    pr_ref.write_text(COMMIT)
    assert resolve_model_file(hub, REPO, FILE, snapshot="refs/pr/1").name == FILE


def test_file_in_a_subfolder(hub: Path) -> None:
    sub = hub / "models--TheOrg--Tiny-GGUF" / "snapshots" / COMMIT / "Q4"
    sub.mkdir()
    (sub / "part-1.gguf").write_bytes(b"x")
    assert resolve_model_file(hub, REPO, "Q4/part-1.gguf") == sub / "part-1.gguf"


def test_missing_repo_names_repo_snapshot_file_and_folder(hub: Path) -> None:
    with pytest.raises(ModelFileNotFoundError) as caught:
        resolve_model_file(hub, "Other/Repo", FILE)
    error = caught.value
    assert (error.repo, error.snapshot, error.filename) == ("Other/Repo", "main", FILE)
    assert error.message == (
        f"model file not found: repo 'Other/Repo', snapshot 'main', file {FILE!r}"
        f" (repo folder not in the cache at {hub / 'models--Other--Repo'})"
    )
    assert error.status == 404
    assert error.code == "model_file_not_found"


def test_missing_snapshot(hub: Path) -> None:
    with pytest.raises(ModelFileNotFoundError) as caught:
        resolve_model_file(hub, REPO, FILE, snapshot="dev")
    assert caught.value.message == (
        f"model file not found: repo {REPO!r}, snapshot 'dev', file {FILE!r}"
        f" (no ref or snapshot named 'dev' in {hub / 'models--TheOrg--Tiny-GGUF'})"
    )


def test_ref_pointing_to_a_missing_snapshot(hub: Path) -> None:
    (hub / "models--TheOrg--Tiny-GGUF" / "refs" / "dev").write_text("f" * 40)
    with pytest.raises(ModelFileNotFoundError, match=r"ref 'dev' points to commit f{40} but"):
        resolve_model_file(hub, REPO, FILE, snapshot="dev")


def test_ref_file_with_a_path_inside_is_refused(hub: Path) -> None:
    (hub / "models--TheOrg--Tiny-GGUF" / "refs" / "evil").write_text("../../..")
    with pytest.raises(ModelFileNotFoundError, match=r"holds '\.\./\.\./\.\.', not a commit hash"):
        resolve_model_file(hub, REPO, FILE, snapshot="evil")


def test_missing_file_names_the_resolved_commit(hub: Path) -> None:
    with pytest.raises(ModelFileNotFoundError) as caught:
        resolve_model_file(hub, REPO, "other.gguf")
    expected_path = hub / "models--TheOrg--Tiny-GGUF" / "snapshots" / COMMIT / "other.gguf"
    assert caught.value.message == (
        f"model file not found: repo {REPO!r}, snapshot 'main', file 'other.gguf'"
        f" (file not in snapshot {COMMIT} (looked for {expected_path}))"
    )


def test_dangling_symlink(hub: Path) -> None:
    (hub / "models--TheOrg--Tiny-GGUF" / "blobs" / "abc123").unlink()
    with pytest.raises(ModelFileNotFoundError, match=r"is a symlink to \.\./\.\./blobs/abc123,"):
        resolve_model_file(hub, REPO, FILE)


def test_a_folder_is_not_a_model_file(hub: Path) -> None:
    (hub / "models--TheOrg--Tiny-GGUF" / "snapshots" / COMMIT / "dir.gguf").mkdir()
    with pytest.raises(ModelFileNotFoundError, match=r"is a folder, not a file"):
        resolve_model_file(hub, REPO, "dir.gguf")


@pytest.mark.parametrize(
    "repo",
    ["../x", "a/..", "./b", "a", "a/b/c", "/a/b", "a/b c", "", "a\\b/c", "a/b\0"],
)
def test_bad_repo_ids_are_rejected(hub: Path, repo: str) -> None:
    with pytest.raises(InvalidAliasError, match=r"must be 'owner/name'"):
        resolve_model_file(hub, repo, FILE)


def test_non_string_repo_is_rejected() -> None:
    with pytest.raises(InvalidAliasError, match=r"repo must be a string 'owner/name', got int"):
        validate_repo_id(3)


@pytest.mark.parametrize(
    "filename",
    ["../../../blobs/abc123", "a/../../x", "/etc/passwd", "./x.gguf", "a//b", "", "a\\b", "x\0"],
)
def test_filename_traversal_is_rejected(hub: Path, filename: str) -> None:
    with pytest.raises(InvalidAliasError, match=r"^filename "):
        resolve_model_file(hub, REPO, filename)


@pytest.mark.parametrize("snapshot", ["..", "../main", "refs/../../x", "", "/abs", "a b"])
def test_snapshot_traversal_is_rejected(hub: Path, snapshot: str) -> None:
    with pytest.raises(InvalidAliasError, match=r"^snapshot "):
        resolve_model_file(hub, REPO, FILE, snapshot=snapshot)


def test_commit_hash_with_slash_is_not_looked_up_as_snapshot_folder(hub: Path) -> None:
    nested = hub / "models--TheOrg--Tiny-GGUF" / "snapshots" / "a" / "b"
    nested.mkdir(parents=True)
    with pytest.raises(ModelFileNotFoundError, match=r"no ref or snapshot named 'a/b'"):
        resolve_model_file(hub, REPO, FILE, snapshot="a/b")


def test_validators_return_their_input() -> None:
    assert validate_repo_id("a.b/c_d-e") == "a.b/c_d-e"
    assert validate_snapshot("refs/pr/1") == "refs/pr/1"
    assert validate_filename("Q4/x.gguf") == "Q4/x.gguf"


@pytest.mark.parametrize(
    "name",
    ["x\nFAKE WARNING-Q4_K_M.gguf", "x\x1b[31mRED\x1b[0m-Q4_K_M.gguf", "a\0b.gguf", "a\tb.gguf"],
)
def test_a_filename_must_be_printable(name: str) -> None:
    """A Hub's file list names the files a pull writes and an alias keeps: a newline or a
    terminal escape would reach a console and the alias file."""
    with pytest.raises(InvalidAliasError, match="not printable"):
        validate_filename(name)
    assert validate_filename("Qwen 2.5 \u2013 Q4_K_M.gguf") == "Qwen 2.5 \u2013 Q4_K_M.gguf"
