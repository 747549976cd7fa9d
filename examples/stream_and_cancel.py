"""Stream one chat completion while cancelling another, from Trio code (no HTTP).

    python examples/stream_and_cancel.py [--home DIR]

Uses the demo model (``demo:tiny``, random weights: the text is gibberish) from
the Hugging Face cache that the settings name (``HF_HOME``), creating it and its
alias if missing. Without ``--home`` the context runs on a temporary BODHI_HOME.
Needs the llama-server binary (``bodhi-trio llama-server install``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import trio

import bodhi_trio
import bodhi_trio.lowlevel


def prepare(home: Path) -> bodhi_trio.Settings:
    """Settings for ``home``, with the demo model and its ``demo:tiny`` alias in place."""
    settings = bodhi_trio.load_settings(home=home)
    demo = bodhi_trio.lowlevel.ensure_demo_model(settings.hub_cache)
    store = bodhi_trio.AliasStore(settings.aliases_dir)
    with contextlib.suppress(bodhi_trio.AliasExistsError):
        store.create(bodhi_trio.Alias(bodhi_trio.lowlevel.DEMO_ALIAS, demo.repo, demo.filename))
    return settings


def chat(content: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": content}]
    return {"model": bodhi_trio.lowlevel.DEMO_ALIAS, "messages": messages, "stream": True, **extra}


async def sse_data(response: bodhi_trio.UpstreamResponse) -> AsyncIterator[str]:
    """The ``data:`` payloads of an SSE body (chunks are raw bytes, not whole events)."""
    buffer = b""
    async for chunk in response:
        buffer += chunk
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for line in event.decode().splitlines():
                if line.startswith("data: "):
                    yield line.removeprefix("data: ")


async def stream_to_stdout(ctx: bodhi_trio.SharedContext) -> None:
    request = chat("Say hello.", max_tokens=24)
    async with ctx.forward("/v1/chat/completions", request) as response:
        print(f"[short] status {response.status_code}, text: ", end="", flush=True)
        async for data in sse_data(response):
            if data == "[DONE]":
                print("\n[short] [DONE]", flush=True)
                continue
            for choice in json.loads(data)["choices"]:
                print(choice["delta"].get("content") or "", end="", flush=True)


async def stream_and_cancel(ctx: bodhi_trio.SharedContext, after: int) -> None:
    request = chat("Count forever.", max_tokens=100_000, ignore_eos=True)
    chunks = 0
    with trio.CancelScope() as scope:
        async with ctx.forward("/v1/chat/completions", request) as response:
            async for _chunk in response:
                chunks += 1
                if chunks == after:
                    # Leaving the block closes the upstream connection: llama-server
                    # stops generating, and the slot's read hold is given back.
                    scope.cancel()
    print(f"[long] cancelled after {chunks} chunks: {scope.cancelled_caught}", flush=True)


async def run(home: Path) -> None:
    settings = prepare(home)
    async with bodhi_trio.open_context(settings) as ctx:
        # Both requests find nothing loaded: they share one load (one llama-server start).
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream_to_stdout, ctx)
            nursery.start_soon(stream_and_cancel, ctx, 5)
        model = ctx.state.model(bodhi_trio.lowlevel.DEMO_ALIAS)
        assert model is not None
        print(
            f"state: {model.status} alias={model.alias} pid={model.pid}"
            f" in_flight={model.in_flight} starts={ctx.statistics().starts}"
        )
    # Leaving open_context stopped llama-server (SIGTERM to its process group, then reaped).
    status = ctx.state.status_of(bodhi_trio.lowlevel.DEMO_ALIAS)
    print(f"after close: {status} models={len(ctx.state.models)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="BODHI_HOME (default: a temporary directory)")
    args = parser.parse_args()
    failed: list[BaseException] = []
    try:
        if args.home is not None:
            trio.run(run, args.home)
        else:
            with tempfile.TemporaryDirectory(prefix="bodhi-trio-example-") as home:
                trio.run(run, Path(home))
    except* bodhi_trio.BodhiError as group:  # the two requests' own nursery groups their errors
        failed.extend(leaves(group))
    for error in {id(error): error for error in failed}.values():  # waiters share a load's error
        print(f"error: {error}", file=sys.stderr)
    return 1 if failed else 0


def leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error


if __name__ == "__main__":
    sys.exit(main())
