"""Developer sessions: ``nox -s tests``, ``lint``, ``serve``, ``bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Provision llama-server (with rpc-server) if the per-user cache lacks it, then run the
    whole suite."""
    session.install("-e", ".[test]")
    session.run("bodhi-trio", "llama-server", "install", "--rpc")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (with the ASYNC rules), mypy --strict, and the import-linter layer contracts."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("mypy")
    session.run("lint-imports")


@nox.session
def serve(session: nox.Session) -> None:
    """Serve the demo model on http://127.0.0.1:1135 (extra args go to `bodhi-trio serve`)."""
    session.install("-e", ".")
    session.run("bodhi-trio", "serve", "--demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark harness (see docs/benchmarks.md)."""
    session.install("-e", ".[test]")
    session.run("bodhi-trio", "llama-server", "install", "--rpc")
    session.run("python", "benchmarks/run.py", *session.posargs)
