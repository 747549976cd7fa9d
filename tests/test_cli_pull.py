"""``bodhi-trio pull`` against our fake Hub, and ``alias create --file``: what lands in
the cache, the alias written, one-line errors, and chats through both kinds of alias."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import yaml

from bodhi_trio._cli import main
from bodhi_trio._config._hf_cache import resolve_model_file
from fake_hub import FakeHub, FakeRepo, Fault, fake_hub, sha256
from httpserver import running_server

REPO = "acme/Tiny-Llama-GGUF"
FILE = "Tiny-Llama-Q4_K_M.gguf"
COMMIT = FakeRepo({}).commit


@pytest.fixture
def hub(gguf: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    files = {
        FILE: gguf,
        "Tiny-Llama-Q8_0.gguf": gguf,
        "Tiny-Llama-IQ4_XS.gguf": gguf,
        "other-Q8_0.gguf": gguf,
        "mmproj-Tiny-Llama-Q4_K_M.gguf": b"GGUF projector",
    }
    with fake_hub({REPO: FakeRepo(files)}) as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
        yield running


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``bodhi-trio ARGV`` in a worker thread (the fake Hub answers from its own)."""
    with trio.fail_after(60):
        code = await trio.to_thread.run_sync(main, list(argv), abandon_on_cancel=True)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The ``bodhi-trio: error:`` line, checking it is the only one of its kind."""
    errors = [line for line in err.splitlines() if line.startswith("bodhi-trio: error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


def alias_file(home: Path, name: str) -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load((home / "aliases" / name).read_text())
    return data


async def test_pull_a_quant_writes_the_file_and_the_default_alias(
    tmp_path: Path, hub: FakeHub, gguf: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(tmp_path / "home")
    code, out, err = await cli(capsys, "pull", f"hf.co/{REPO}:Q4_K_M", "--home", home)
    assert code == 0, err
    assert out.splitlines()[0] == f"pulling hf.co/{REPO}:Q4_K_M from {hub.url}"
    assert out.splitlines()[1] == f"{FILE}, 0.5 MB (commit {COMMIT[:12]})"
    assert (
        out.splitlines()[-1] == f"alias tiny-llama:q4_k_m: {REPO} {FILE} (snapshot {COMMIT[:12]})"
    )
    assert "downloading: 100% (0.5 MB / 0.5 MB)" in err.splitlines()  # plain lines: no TTY
    assert alias_file(tmp_path / "home", "tiny-llama--q4_k_m.yaml") == {
        "alias": "tiny-llama:q4_k_m", "repo": REPO, "filename": FILE, "snapshot": COMMIT,
    }  # fmt: skip
    path = resolve_model_file(tmp_path / "hub", REPO, FILE, COMMIT)
    assert sha256(path.read_bytes()) == sha256(gguf)
    assert [g.path for g in hub.gets(".gguf")] == [f"/{REPO}/resolve/main/{FILE}"]


async def test_pull_errors_are_one_line(
    tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(tmp_path / "home")
    cases = [
        (("pull", "acme/missing", FILE), "repo 'acme/missing' not found on"),
        (("pull", "hf.co/acme/missing:Q4_K_M"), "repo 'acme/missing' not found on"),
        (("pull", f"hf.co/{REPO}:Q2_K"), "none of the GGUF files of"),
        (("pull", f"hf.co/{REPO}:Q8_0"), "2 of the GGUF files of"),
        (("pull", REPO), "give the GGUF file to pull from"),
        (("pull", f"hf.co/{REPO}", FILE), "not both"),
        (("pull", REPO, "model.safetensors"), "is not a .gguf file"),
        (("pull", REPO, FILE, "--alias", "demo/x"), "alias name 'demo/x'"),
    ]
    for argv, text in cases:
        code, _, err = await cli(capsys, *argv, "--home", home)
        assert code == 1, argv
        assert text in one_error_line(err), err
    code, _, err = await cli(capsys, "pull", f"hf.co/{REPO}:Q8_0", "--home", home)
    listed = one_error_line(err).split("GGUF files: ")[1]
    assert listed == "Tiny-Llama-Q8_0.gguf, other-Q8_0.gguf"
    assert not (tmp_path / "home" / "aliases").exists()
    assert hub.gets(".gguf") == []


async def test_a_failed_pull_in_a_console_prints_its_error_line_alone(
    tmp_path: Path, hub: FakeHub
) -> None:
    """The real command line (its own logging set up, unlike in-process calls under
    pytest): httpx's INFO line for each request it makes stays out of the console."""
    argv = [sys.executable, "-m", "bodhi_trio", "pull", "acme/missing", FILE]
    with trio.fail_after(60):  # liveness bound: two requests to the fake Hub
        done = await trio.run_process(
            [*argv, "--home", str(tmp_path / "home")],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=dict(os.environ),  # HF_ENDPOINT: the fake Hub
        )
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert err.splitlines() == [one_error_line(err)]
    assert hub.requests != []  # it did ask the Hub (and httpx would have logged it)


async def test_a_pull_that_fails_for_good_writes_nothing_trusted(
    tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.repos[REPO].faults[FILE] = Fault(cut_at=0.5, cuts=-1)
    code, _, err = await cli(capsys, "pull", REPO, FILE, "--home", str(tmp_path / "home"))
    assert code == 1
    line = one_error_line(err)
    assert line.startswith(f"bodhi-trio: error: pulling {REPO}/{FILE} from {hub.url} failed: ")
    assert "without sending complete message body" in line
    assert len(hub.gets(FILE)) == 6
    repo_dir = tmp_path / "hub" / "models--acme--Tiny-Llama-GGUF"
    assert list(repo_dir.rglob("snapshots/**/*.gguf")) == []
    assert list(repo_dir.rglob("*.incomplete")) == []
    assert not (tmp_path / "home" / "aliases").exists()


async def test_alias_create_file_refuses_what_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "notes.txt").write_text("not a model")
    home = str(tmp_path / "home")
    for file, text in [
        (tmp_path / "missing.gguf", "missing.gguf does not exist"),
        (tmp_path / "notes.txt", "is not a GGUF file"),
        (tmp_path, "is not a regular file"),
    ]:
        code, out, err = await cli(
            capsys, "alias", "create", "m", "--file", str(file), "--home", home
        )
        assert (code, out) == (1, "")
        assert text in one_error_line(err)
    code, _, err = await cli(
        capsys, "alias", "create", "m", "--file", str(tmp_path / "x.gguf"), "--repo", "a/b",
        "--home", home,
    )  # fmt: skip
    assert "not both" in one_error_line(err)
    code, _, err = await cli(capsys, "alias", "create", "m", "--home", home)
    assert "--repo and --filename, or --file" in one_error_line(err)
    assert not (tmp_path / "home" / "aliases").exists()
    assert not (tmp_path / "hub").exists()


@pytest.mark.llama
async def test_pulled_and_local_aliases_both_chat(
    tmp_path: Path, hub: FakeHub, gguf: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    code, out, err = await cli(capsys, "pull", REPO, FILE, "--alias", "pulled", "--home", str(home))
    assert code == 0, err
    outside = tmp_path / "elsewhere" / "my-model.gguf"
    outside.parent.mkdir()
    outside.write_bytes(gguf)
    code, out, err = await cli(
        capsys, "alias", "create", "local:mine", "--file", str(outside),
        "--context-param", "--ctx-size 1024", "--home", str(home),
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[1].startswith(f"{outside}: linked into the HF cache (a hard link")
    local = alias_file(home, "local--mine.yaml")
    assert local["repo"] == "local/my-model"
    assert local["filename"] == "my-model.gguf"
    with trio.fail_after(60):
        async with (
            running_server(home, tmp_path / "hub") as server,
            httpx.AsyncClient(base_url=server.url, timeout=50) as client,
        ):
            for model in ("pulled", "local:mine"):
                answer = await client.post(
                    "/v1/chat/completions",
                    json={"model": model, "max_tokens": 4,
                          "messages": [{"role": "user", "content": "hi"}]},
                )  # fmt: skip
                assert answer.status_code == 200, answer.text
                assert answer.json()["model"] == model
                assert answer.json()["usage"]["completion_tokens"] >= 1
