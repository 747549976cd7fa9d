"""Where things are, for tests in any folder under tests/."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FAKE_LLAMA_SERVER = TESTS / "fake_llama_server.py"
