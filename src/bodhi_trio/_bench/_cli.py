"""``bodhi-trio bench``: the command line of the benchmark harness (see ``_bench``)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import trio

from bodhi_trio._bench._client import BenchConfig, run_bench

__all__ = ["add_bench_parser", "run_bench_command"]

_DESCRIPTION = "A streaming benchmark harness for any OpenAI-compatible server."


def add_bench_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` to a CLI's subcommands (``run=run_bench_command`` is set as default)."""
    p = subparsers.add_parser(
        "bench",
        help="streaming benchmark against an OpenAI-compatible server",
        description=_DESCRIPTION,
    )
    p.add_argument("--base-url", default="http://127.0.0.1:1135/v1", help="API base URL")
    p.add_argument("--model", default="demo:tiny", help="model (alias) to request")
    p.add_argument("--api-key", default=os.environ.get("BODHI_BENCH_API_KEY"), help="bearer key")
    p.add_argument("--concurrency", "-c", type=int, default=1, help="concurrent streams (1)")
    p.add_argument("--duration", "-d", type=float, help="seconds to run (default 10)")
    p.add_argument("--requests", "-n", type=int, help="stop after this many requests")
    p.add_argument("--max-tokens", type=int, default=100, help="max_tokens per request (100)")
    eos = p.add_mutually_exclusive_group()
    eos.add_argument("--ignore-eos", dest="ignore_eos", action="store_true", default=True)
    eos.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false")
    p.add_argument("--no-usage", action="store_true", help="don't ask for the usage chunk")
    p.add_argument(
        "--endpoint",
        choices=["chat", "completions", "ollama"],
        default="chat",
        help="chat (default), completions, or ollama: /api/chat, --base-url the server root",
    )
    p.add_argument("--prompt", default="Write a long story.", help="the prompt text")
    p.add_argument("--disconnect-after", type=int, metavar="K", help="close after K events")
    p.add_argument("--upstream-url", help="fake upstream root, for disconnect latency")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (60 s)")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(run=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    """Run ``bodhi-trio bench``: prints a table; 0 without errors, 1 with some."""
    duration = args.duration
    if duration is None and args.requests is None:
        duration = 10.0
    config = BenchConfig(
        base_url=args.base_url,
        model=args.model,
        api_key=args.api_key,
        concurrency=args.concurrency,
        duration=duration,
        requests=args.requests,
        max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos,
        include_usage=not args.no_usage,
        endpoint=args.endpoint,
        prompt=args.prompt,
        disconnect_after=args.disconnect_after,
        timeout=args.timeout,
        upstream_url=args.upstream_url,
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = trio.run(lambda: run_bench(config, progress=progress))
    print(result.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
            f.write("\n")
    return 1 if result.errors else 0
