"""The page at ``/``: plain HTML, CSS and JavaScript shipped in this package.

No CDN, no build step, nothing vendored: ``index.html``, ``style.css`` and ``app.js`` are
read once from the package and served with a Content-Security-Policy that allows only
this origin's scripts, styles and API (the page shows what the server sends with
``textContent``, never as HTML).
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["PAGE_ASSETS", "page_asset", "wants_page"]

PAGE_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
}
"""The files of the page and their content types."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
"""Sent with every page file."""


@functools.cache
def page_asset(name: str) -> tuple[bytes, dict[str, str]] | None:
    """The bytes of page file ``name`` and its headers; ``None`` for any other name."""
    content_type = PAGE_ASSETS.get(name)
    if content_type is None:
        return None
    data = resources.files(__name__).joinpath(name).read_bytes()
    return data, {"Content-Type": content_type, **SECURITY_HEADERS}


def wants_page(accept: str | None) -> bool:
    """Whether a ``GET /`` is a browser's (it accepts HTML) rather than a liveness probe's
    (Ollama clients and scripts send ``*/*`` or nothing and expect "Ollama is running")."""
    return accept is not None and "text/html" in accept.lower()
