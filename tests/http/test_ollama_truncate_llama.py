"""Ollama's ``truncate`` on ``/api/embed`` and ``/api/embeddings`` with the official
``ollama`` client, over real Hypercorn on port 0 with the real llama-server and demo model:
an input longer than the child embeds at once is cut to fit (the default), the cut keeps
the model's special tokens, and ``truncate: false`` gets Ollama's 400.

Two aliases with two limits: ``cut:batch`` a physical batch of 64 tokens, ``cut:context``
one slot's context, 1024 tokens over 4 slots. llama.cpp holds a generative model's batch to
its slot's context, so the child names the batch (256) there too; the refusal that names
the context (an embedding model's, whose batch is not held) and the second cut it needs are
checked without a child in ``test_ollama_truncate.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import trio

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from bodhi_trio._http._ollama._embed import TOO_LONG_MESSAGE
from httpserver import running_server

pytestmark = pytest.mark.llama

BATCH_ARGS = "--ctx-size 2048 --parallel 1 --ubatch-size 64 --batch-size 64"
BATCH = Alias("cut:batch", DEMO_REPO, DEMO_FILENAME, context_params=(BATCH_ARGS,))
CONTEXT = Alias(
    "cut:context", DEMO_REPO, DEMO_FILENAME, context_params=("--ctx-size 1024 --parallel 4",)
)
LONG = " ".join(f"word{i}" for i in range(400))  # well over 512 tokens
SHORT = "a cat"


def norm(vector: Any) -> float:
    return math.sqrt(sum(x * x for x in vector))


def unit(vector: Any) -> list[float]:
    return [x / norm(vector) for x in vector]


async def test_a_long_input_is_cut_to_what_the_child_embeds_at_once(
    tmp_path: Path, hub_cache: Path
) -> None:
    with trio.fail_after(120):
        async with running_server(tmp_path, hub_cache, aliases=(BATCH, CONTEXT)) as server:

            def calls() -> dict[str, Any]:
                out: dict[str, Any] = {}
                # the client's own timeout: fail_after cannot reach into its thread
                with ollama.Client(host=server.url, timeout=60) as client:
                    out["both"] = client.embed(BATCH.alias, [SHORT, LONG])
                    out["short"] = client.embed(BATCH.alias, SHORT)
                    out["legacy"] = client.embeddings(BATCH.alias, LONG)
                    out["context"] = client.embed(CONTEXT.alias, LONG)
                    with pytest.raises(ollama.ResponseError) as refused:
                        client.embed(BATCH.alias, [SHORT, LONG], truncate=False)
                    out["refused"] = refused.value
                    out["fits"] = client.embed(BATCH.alias, SHORT, truncate=False)
                return out

            out = await trio.to_thread.run_sync(calls)
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                tokens = await http.post(
                    "/tokenize", json={"model": BATCH.alias, "content": LONG, "add_special": True}
                )
                tokens.raise_for_status()
                whole = tokens.json()["tokens"]
                # the demo model adds a BOS only, so the cut is the first 64 tokens
                first_64 = await http.post(
                    "/v1/embeddings", json={"model": BATCH.alias, "input": [whole[:64]]}
                )
                first_64.raise_for_status()
    assert len(whole) > 512
    short_vector, long_vector = out["both"].embeddings
    # the short input went as it was, the long one as its first 64 tokens
    assert short_vector == pytest.approx(out["short"].embeddings[0], abs=1e-6)
    assert out["both"].prompt_eval_count == out["short"].prompt_eval_count + 64
    assert norm(long_vector) == pytest.approx(1, abs=1e-5)
    expected = unit(first_64.json()["data"][0]["embedding"])
    assert long_vector == pytest.approx(expected, abs=1e-5)
    # the legacy route cuts the same way (its vectors are not normalised: the same direction)
    assert norm(out["legacy"].embedding) != pytest.approx(1, abs=1e-3)
    assert unit(out["legacy"].embedding) == pytest.approx(expected, abs=1e-5)
    # the context's limit: one slot of 1024 / 4 tokens
    assert out["context"].prompt_eval_count == 256
    assert len(out["context"].embeddings) == 1
    # truncate: false, as Ollama answers it; an input that fits is embedded all the same
    assert out["refused"].status_code == 400
    assert out["refused"].error == TOO_LONG_MESSAGE
    assert out["fits"].embeddings[0] == pytest.approx(out["short"].embeddings[0], abs=1e-6)
