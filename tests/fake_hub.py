"""A Hugging Face Hub of our own for pull tests (``HF_ENDPOINT`` points at it).

It answers what ``huggingface_hub`` asks when it downloads (read from its source,
``file_download.get_hf_file_metadata`` and ``http_get``, ``hf_api.model_info``):

* ``HEAD|GET /{owner}/{name}/resolve/{revision}/{path}``: ``X-Repo-Commit``, a quoted
  ``ETag`` (the sha256, as the Hub sends for LFS files), ``Content-Length``,
  ``Accept-Ranges``; a ``Range: bytes=N-`` GET gets 206 with ``Content-Range``;
* ``GET /api/models/{owner}/{name}/revision/{revision}``: ``{"id", "sha", "siblings"}``;
* errors as the Hub signals them: ``X-Error-Code`` ``RepoNotFound`` (401),
  ``RevisionNotFound`` or ``EntryNotFound`` (404).

Faults per file: cut the connection after a fraction of the body (the first N GETs,
or every one), hold a GET after half its body until a gate opens, or send other
bytes of the same length. Every request is recorded. It is a stdlib threading
server, so blocking in-process callers (the CLI) and other processes (the server's
pull workers) can use it alike.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import attrs

TINY_REPO = "acme/tiny-GGUF"  # the pull tests' repo and file (the tiny demo model)
TINY_FILE = "tiny-Q4_K_M.gguf"
GATE_TIMEOUT = 60.0  # a held GET goes on after this even if no test opens the gate


@attrs.define
class Fault:
    """What goes wrong when a file is fetched.

    Attributes:
        cut_at: Close the connection after this fraction of the body (``None``: never).
        cuts: How many GETs to cut (``-1``: every one).
        gate: Hold each GET after half its body until this is set.
        corrupt: Send different bytes of the same length.
        etag: Send this ETag (quoted) instead of the sha256, from the ``etag_from``-th
            HEAD of the file on (0: every one); ``heads`` counts them.
    """

    cut_at: float | None = None
    cuts: int = 1
    gate: threading.Event | None = None
    corrupt: bool = False
    etag: str | None = None
    etag_from: int = 0
    heads: int = 0


@attrs.define
class FakeRepo:
    files: dict[str, bytes]
    commit: str = "c0ffee" + "0" * 34
    faults: dict[str, Fault] = attrs.field(factory=dict)


@attrs.frozen
class Seen:
    method: str
    path: str
    range: str | None


@attrs.define(eq=False)
class FakeHub:
    """The running hub: its URL, repos (change them freely) and what it was asked."""

    url: str
    repos: dict[str, FakeRepo]
    requests: list[Seen] = attrs.field(factory=list)
    half_sent: threading.Event = attrs.field(factory=threading.Event)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def gets(self, filename: str) -> list[Seen]:
        """The GETs of a file's content."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.path.endswith(filename)]

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_API = re.compile(r"^/api/models/([^/]+/[^/]+)/revision/([^/]+)$")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _error(self, status: int, code: str, commit: str | None = None) -> None:
            body = json.dumps({"error": code}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            if commit is not None:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _repo(self, repo_id: str, revision: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound")
                return None
            if revision not in ("main", repo.commit):
                self._error(404, "RevisionNotFound")
                return None
            return repo

        def do_HEAD(self) -> None:
            self._serve()

        def do_GET(self) -> None:
            self._serve()

        def _serve(self) -> None:
            path = self.path.split("?", 1)[0]
            hub.record(Seen(self.command, path, self.headers.get("Range")))
            if match := _API.match(path):
                repo = self._repo(match[1], match[2])
                if repo is not None:
                    siblings = [{"rfilename": name} for name in sorted(repo.files)]
                    body = json.dumps({"id": match[1], "sha": repo.commit, "siblings": siblings})
                    self._send(200, body.encode(), {"Content-Type": "application/json"})
                return
            match = _RESOLVE.match(path)
            if match is None:
                self._error(404, "NotFound")
                return
            repo = self._repo(match[1], match[2])
            if repo is None:
                return
            name = match[3]
            data = repo.files.get(name)
            if data is None:
                self._error(404, "EntryNotFound", repo.commit)
                return
            headers = {
                "X-Repo-Commit": repo.commit,
                "ETag": f'"{sha256(data)}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            fault = repo.faults.get(name, Fault())
            if self.command == "HEAD":
                fault.heads += 1
            if fault.etag is not None and fault.heads > fault.etag_from:
                headers["ETag"] = f'"{fault.etag}"'
            if fault.corrupt:
                data = bytes(b ^ 0xFF for b in data)
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if ranged and self.command == "GET":
                start = int(ranged[1])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if self.command == "HEAD":
                self._send(200, b"", headers, length=len(data))
                return
            self._send_body(206 if start else 200, data[start:], headers, fault)

        def _send(
            self, status: int, body: bytes, headers: dict[str, str], length: int | None = None
        ) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _send_body(
            self, status: int, body: bytes, headers: dict[str, str], fault: Fault
        ) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = fault.cut_at is not None and fault.cuts != 0
            split = int(len(body) * (fault.cut_at if cut and fault.cut_at else 0.5))
            try:
                self.wfile.write(body[:split])
                self.wfile.flush()
                if cut:
                    if fault.cuts > 0:
                        fault.cuts -= 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                hub.half_sent.set()
                if fault.gate is not None:
                    fault.gate.wait(GATE_TIMEOUT)
                self.wfile.write(body[split:])
                self.wfile.flush()
            except OSError:  # the client left (a cancelled pull)
                self.close_connection = True

    return Handler


@contextmanager
def fake_hub(repos: dict[str, FakeRepo]) -> Iterator[FakeHub]:
    """Serve ``repos`` on 127.0.0.1 (a free port) until the block ends."""
    hub = FakeHub(url="", repos=repos)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    server.block_on_close = False
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield hub
    finally:
        for repo in repos.values():
            for fault in repo.faults.values():
                if fault.gate is not None:
                    fault.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
