"""The Ollama routes on a remote alias: only what an OpenAI-compatible server takes goes
out, and the answer keeps Ollama's promises."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio
from remote_helpers import remote_alias

from httpserver import running_server
from remote_stub import Script, remote_stub

EMBEDDINGS = {
    "object": "list",
    "model": "text-embedding-3-small",
    "data": [{"object": "embedding", "index": 0, "embedding": [3.0, 4.0, 0.0]}],
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}


async def test_api_embed_sends_no_llama_server_field_and_answers_unit_vectors(
    tmp_path: Path, hub_cache: Path
) -> None:
    """``embd_normalize`` is llama-server's; OpenAI refuses a field it does not know. The
    remote's vector (here of length 5) comes back of length 1, as ``/api/embed`` says."""
    with trio.fail_after(30):  # liveness bound
        async with remote_stub(Script(body=json.dumps(EMBEDDINGS).encode())) as stub:
            far = remote_alias("far", stub.base_url)
            async with (
                running_server(tmp_path, hub_cache, aliases=(far,)) as server,
                httpx.AsyncClient(timeout=20) as http,
            ):
                embed = await http.post(
                    server.url + "/api/embed", json={"model": "far", "input": "hello"}
                )
                legacy = await http.post(
                    server.url + "/api/embeddings", json={"model": "far", "prompt": "hello"}
                )
    assert embed.status_code == 200, embed.text
    assert embed.json()["embeddings"] == [[0.6, 0.8, 0.0]]
    assert legacy.status_code == 200, legacy.text
    assert legacy.json()["embedding"] == [3.0, 4.0, 0.0]  # the legacy route: as it came
    for request in stub.requests:
        sent = request.json()
        assert request.target.endswith("/embeddings")
        assert "embd_normalize" not in sent
        assert sent["input"] == ["hello"]
