"""bodhi-trio: a local, OpenAI-compatible LLM server on Trio that owns llama-server processes."""

from __future__ import annotations
