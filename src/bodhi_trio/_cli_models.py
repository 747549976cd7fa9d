"""The CLI's model commands: ``pull`` and ``alias create --file`` (see :mod:`._cli`).

Errors are :class:`BodhiError` and become one line in :func:`._cli.main`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import attrs

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._arg_policy import ArgPolicy
from bodhi_trio._config._hub_pull import download_plan, hub_endpoint, plan_pull
from bodhi_trio._config._hub_refs import PullRequest, check_alias_target, write_pull_alias
from bodhi_trio._config._local_gguf import check_gguf_file, place_local_gguf
from bodhi_trio._config._settings import Settings, load_settings
from bodhi_trio._exceptions import AliasExistsError, AliasNotFoundError, InvalidRequestError

__all__ = ["ProgressDisplay", "add_pull_parser", "create_alias_from_file", "pull_request"]

_PLACEMENT = {
    "hardlink": "linked into the HF cache (a hard link: no space used)",
    "symlink": "linked into the HF cache (a symlink: keep the original where it is)",
    "copy": "copied into the HF cache (no link was possible)",
    "cached": "already in the HF cache",
}


def _mb(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


class ProgressDisplay:
    """``progress(phase, done, total)`` for a terminal: a bar redrawn in place on a
    TTY, else a line per phase and per tenth done."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._phase = ""
        self._tenth = -1
        self._drawn = 0.0
        self._started = time.monotonic()

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        percent = None if not total else min(100, done * 100 // total)
        size = _mb(done) if total is None else f"{_mb(done)} / {_mb(total)}"
        if self._tty:
            now = time.monotonic()
            if phase == self._phase and now - self._drawn < 0.1 and percent != 100:
                return
            if phase != self._phase:
                self._started = now
            self._phase, self._drawn = phase, now
            filled = (percent or 0) // 5
            rate = done / max(now - self._started, 1e-3) / 1e6
            bar = f"|{'#' * filled}{' ' * (20 - filled)}|" if percent is not None else ""
            line = f"\r{phase:<11} {percent if percent is not None else '?':>3}% {bar} {size}"
            self._out.write(f"{line} {rate:.1f} MB/s  ")
            self._out.flush()
            return
        tenth = -1 if percent is None else percent // 10
        if phase != self._phase or tenth != self._tenth:
            self._phase, self._tenth = phase, tenth
            shown = "" if percent is None else f"{percent}% "
            print(f"{phase}: {shown}({size})", file=self._out, flush=True)

    def close(self) -> None:
        if self._tty and self._phase:
            self._out.write("\n")
            self._out.flush()


def add_pull_parser(commands: Any, home: argparse.ArgumentParser) -> None:
    """``bodhi-trio pull``; its handler is :func:`run_pull`."""
    pull = commands.add_parser(
        "pull",
        parents=[home],
        help="download a GGUF model from the Hugging Face Hub and make an alias for it",
        description="Download into the Hugging Face cache (HF_ENDPOINT, HF_TOKEN honoured),"
        " then write an alias. REPO FILENAME names a file (any part of a split GGUF fetches"
        " every part); hf.co/REPO:QUANT the GGUF whose name carries QUANT (default Q4_K_M).",
    )
    pull.add_argument("model", metavar="REPO | hf.co/REPO[:QUANT]")
    pull.add_argument("filename", nargs="?", metavar="FILENAME", help="the GGUF file in REPO")
    pull.add_argument(
        "--alias",
        help="alias to write (default: the repo name without -GGUF, ':' and the quant, lower-case)",
    )
    pull.add_argument("--revision", default="main", help="branch, tag or commit (main)")
    pull.set_defaults(run=run_pull)


def pull_request(
    model: str, filename: str | None, *, revision: str, alias: str | None
) -> PullRequest:
    """The request the command line names.

    Raises:
        InvalidRequestError: Neither or both forms, or a bad field.
    """
    if model.lower().startswith(("hf.co/", "huggingface.co/", "https://")):
        if filename is not None:
            raise InvalidRequestError(
                f"give either hf.co/REPO:QUANT or REPO FILENAME, not both ({model} {filename})"
            )
        return PullRequest.from_ref(model, revision=revision, alias=alias)
    if filename is None:
        raise InvalidRequestError(
            f"give the GGUF file to pull from {model} (REPO FILENAME), or hf.co/{model}:QUANT"
        )
    return PullRequest.from_files(model, filename, revision=revision, alias=alias)


def run_pull(args: argparse.Namespace) -> int:
    """``bodhi-trio pull``: plan, download with progress, write the alias."""
    home = getattr(args, "home", None)
    settings = load_settings(home=None if home is None else Path(home))
    request = pull_request(args.model, args.filename, revision=args.revision, alias=args.alias)
    store = AliasStore.for_settings(settings)
    name = request.alias_name
    check_alias_target(store, name, request.repo, request.filename)  # before any download
    print(f"pulling {request.describe()} from {hub_endpoint()}", flush=True)
    plan = plan_pull(request)
    total = plan.total
    parts = f" in {len(plan.files)} parts" if len(plan.files) > 1 else ""
    size = "" if total is None else f", {_mb(total)}"
    print(f"{plan.filename}{parts}{size} (commit {plan.commit[:12]})", flush=True)
    display = ProgressDisplay(sys.stderr)
    try:
        path = download_plan(plan, settings.hub_cache, progress=display)
    finally:
        display.close()
    alias = write_pull_alias(store, name, request.repo, plan.filename, plan.commit)
    print(f"pulled into {path}")
    print(f"alias {alias.alias}: {alias.repo} {alias.filename} (snapshot {alias.snapshot[:12]})")
    return 0


def create_alias_from_file(
    settings: Settings, data: dict[str, object], file: str, *, force: bool
) -> int:
    """``bodhi-trio alias create NAME --file PATH``: check everything, place the file in
    the cache layout, then write the alias. Nothing is written if a check fails.

    Raises:
        InvalidAliasError, ServerArgsError: A field of the alias is bad.
        InvalidModelFileError: The file is missing, not a file or not GGUF.
        AliasExistsError: The alias exists (without ``force``).
    """
    placeholder = {"repo": "local/placeholder", "filename": "placeholder.gguf", "snapshot": None}
    draft = Alias.from_dict({**data, **placeholder}, source="command line")
    store = AliasStore.for_settings(settings)
    ArgPolicy.from_settings(settings).check(
        draft.context_params, source=f"alias {draft.alias!r} context_params"
    )
    check_gguf_file(file)
    if not force:
        try:
            store.get(draft.alias)
        except AliasNotFoundError:
            pass
        else:
            raise AliasExistsError(f"alias {draft.alias!r} already exists (--force replaces it)")
    placed = place_local_gguf(settings.hub_cache, file)
    alias = attrs.evolve(
        draft, repo=placed.repo, filename=placed.filename, snapshot=placed.snapshot
    )
    written = store.put(alias) if force else store.create(alias)
    print(f"created {alias.alias}: {written}")
    print(f"{file}: {_PLACEMENT[placed.placement]} at {placed.path}")
    return 0
