"""Several models at once with the real llama-server on the demo model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from bodhi_trio._config._settings import load_settings
from bodhi_trio._context._open import SharedContext
from bodhi_trio._context._root import open_context
from bodhi_trio._core._state import SlotStatus
from bodhi_trio._exceptions import InsufficientMemoryError
from bodhi_trio._llama._memory import estimate_model_memory
from procs import is_alive

pytestmark = pytest.mark.llama

ARGS = ("--ctx-size 512", "--threads 1")


@asynccontextmanager
async def models(
    tmp_path: Path, hub_cache: Path, aliases: Mapping[str, Sequence[str]], **env: str
) -> AsyncIterator[SharedContext]:
    settings = load_settings(
        home=tmp_path,
        env={"HF_HUB_CACHE": str(hub_cache), "BODHI_KEEP_ALIVE_SECS": "-1", **env},
    )
    store = AliasStore(settings.aliases_dir)
    for name, params in aliases.items():
        store.create(Alias(name, DEMO_REPO, DEMO_FILENAME, context_params=tuple(params)))
    async with open_context(settings) as ctx:
        yield ctx


async def chat(ctx: SharedContext, alias: str) -> int:
    request = {"model": alias, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with ctx.forward("/v1/chat/completions", request) as response:
        await response.aread()
        return response.status_code


def pid_of(ctx: SharedContext, alias: str) -> int:
    model = ctx.state.model(alias)
    assert model is not None
    assert model.pid is not None
    return model.pid


async def test_two_aliases_alternated_fifty_times_start_two_children(
    tmp_path: Path, hub_cache: Path, demo_model_path: Path
) -> None:
    aliases = {"tiny:a": ARGS, "tiny:b": ARGS}
    with trio.fail_after(120):  # liveness bound
        async with models(tmp_path, hub_cache, aliases, BODHI_MAX_LOADED_MODELS="2") as ctx:
            statuses = [await chat(ctx, alias) for alias in ("tiny:a", "tiny:b") * 50]
            pids = {pid_of(ctx, "tiny:a"), pid_of(ctx, "tiny:b")}
            assert ctx.statistics().starts == 2
            assert all(is_alive(pid) for pid in pids)
    assert statuses == [200] * 100
    assert not any(is_alive(pid) for pid in pids)


async def test_a_third_alias_evicts_the_least_recently_used(
    tmp_path: Path, hub_cache: Path, demo_model_path: Path
) -> None:
    aliases = {"tiny:a": ARGS, "tiny:b": ARGS, "tiny:c": ARGS}
    with trio.fail_after(120):  # liveness bound
        async with models(tmp_path, hub_cache, aliases, BODHI_MAX_LOADED_MODELS="2") as ctx:
            await chat(ctx, "tiny:a")
            await chat(ctx, "tiny:b")
            await chat(ctx, "tiny:a")
            evicted = pid_of(ctx, "tiny:b")
            assert await chat(ctx, "tiny:c") == 200
            assert ctx.state.model("tiny:b") is None
            assert not is_alive(evicted)
            assert {m.alias for m in ctx.state.models} == {"tiny:a", "tiny:c"}


async def test_a_budget_for_one_model_and_one_too_large(
    tmp_path: Path, hub_cache: Path, demo_model_path: Path
) -> None:
    one = estimate_model_memory(demo_model_path, ("--ctx-size", "512")).total
    huge = ("--ctx-size 131072", "--threads 1")
    aliases = {"tiny:a": ARGS, "tiny:b": ARGS, "tiny:huge": huge}
    budget = str(int(one * 1.2))  # room for one demo model, not two; less than the huge one
    with trio.fail_after(120):  # liveness bound
        async with models(tmp_path, hub_cache, aliases, BODHI_MEMORY_BUDGET=budget) as ctx:
            await chat(ctx, "tiny:a")
            first = pid_of(ctx, "tiny:a")
            await chat(ctx, "tiny:b")
            assert ctx.state.model("tiny:a") is None  # evicted for b
            assert not is_alive(first)
            loaded = pid_of(ctx, "tiny:b")
            with pytest.raises(InsufficientMemoryError, match="budget"):
                await chat(ctx, "tiny:huge")
            assert ctx.state.status_of("tiny:b") is SlotStatus.READY
            assert pid_of(ctx, "tiny:b") == loaded  # untouched
            used = ctx.state.memory_used
            assert 0 < used <= int(budget)
