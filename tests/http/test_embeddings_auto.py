"""Embeddings on any alias without hand-added flags, over real Hypercorn on port 0 with
the real llama-server and the demo model (a generative GGUF: no pooling type of its own).

The spec builder adds ``--embeddings --pooling mean``; an alias that chose its own
pooling keeps it, and ``--pooling none`` turns embeddings off.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_ALIAS, DEMO_FILENAME, DEMO_REPO
from httpserver import one_model, running_server

pytestmark = pytest.mark.llama

CLS = Alias("cls:1", DEMO_REPO, DEMO_FILENAME, context_params=("--ctx-size 512 --pooling cls",))
OFF = Alias("off:1", DEMO_REPO, DEMO_FILENAME, context_params=("--pooling none",))


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


async def test_a_fresh_alias_serves_embeddings_and_chat(tmp_path: Path, hub_cache: Path) -> None:
    with trio.fail_after(60):
        async with (
            running_server(tmp_path, hub_cache, aliases=(CLS, OFF)) as server,
            httpx.AsyncClient(timeout=30) as client,
        ):

            async def embed(alias: str) -> httpx.Response:
                body = {"model": alias, "input": ["first text", "second text"]}
                return await client.post(server.url + "/v1/embeddings", json=body)

            async def child_args(alias: str) -> list[str]:
                state = (await client.get(server.url + "/bodhi/v1/state")).json()
                return command_line(one_model(state, alias)["pid"])

            demo = await embed(DEMO_ALIAS)
            chat = await client.post(
                server.url + "/v1/chat/completions",
                json={"model": DEMO_ALIAS, "max_tokens": 4, "ignore_eos": True,
                      "messages": [{"role": "user", "content": "hi"}]},
            )  # fmt: skip
            demo_args = await child_args(DEMO_ALIAS)
            cls = await embed(CLS.alias)
            cls_args = await child_args(CLS.alias)
            off = await embed(OFF.alias)
            off_args = await child_args(OFF.alias)
    # No flags in the demo alias: embeddings work, and the same child still chats.
    assert demo.status_code == 200, demo.text
    vectors = [item["embedding"] for item in demo.json()["data"]]
    assert len(vectors) == 2
    assert len(vectors[0]) == 64  # the demo model's embedding length
    assert all(isinstance(x, float) for x in vectors[0])
    assert vectors[0] != vectors[1]
    assert demo.json()["model"] == DEMO_ALIAS
    assert chat.status_code == 200
    assert chat.json()["usage"]["completion_tokens"] == 4
    assert demo_args[-3:] == ["--embeddings", "--pooling", "mean"]
    # An alias that chose its pooling keeps it (and gets embeddings switched on).
    assert cls.status_code == 200, cls.text
    assert "--embeddings" in cls_args
    assert cls_args[cls_args.index("--pooling") + 1] == "cls"
    assert cls_args.count("--pooling") == 1
    # --pooling none: no embeddings; llama-server's refusal is relayed.
    assert "--embeddings" not in off_args
    assert off.status_code == 501
    assert off.json()["error"]["type"] == "not_supported_error"
