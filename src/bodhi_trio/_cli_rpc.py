"""The CLI's ``rpc-worker`` command: one supervised llama.cpp RPC worker (see :mod:`._cli`).

It runs ``rpc-server`` until Ctrl-C (which stops it: SIGTERM to its process group,
then SIGKILL after the stop grace) or until the worker exits (an error). A host
beyond loopback is refused without ``--insecure``, exit code 2 as for any refused
command line: llama.cpp's RPC has no authentication.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import trio

from bodhi_trio._config._settings import load_settings
from bodhi_trio._context._rpc_workers import rpc_worker_log
from bodhi_trio._core._groups import sole_exception
from bodhi_trio._exceptions import BodhiError
from bodhi_trio._llama._rpc_endpoints import RpcEndpoint, bind_address, parse_rpc_endpoint
from bodhi_trio._llama._rpc_worker import RpcWorker, serve_rpc_worker
from bodhi_trio._llama._runtime import find_rpc_server

__all__ = ["DEFAULT_RPC_PORT", "add_rpc_worker_parser"]

DEFAULT_RPC_PORT = 50052
"""rpc-server's own default port."""
_USAGE_EXIT = 2  # argparse's exit code for a command line it refuses


def add_rpc_worker_parser(commands: Any, home: argparse.ArgumentParser) -> None:
    """``bodhi-trio rpc-worker``; its handler is :func:`_rpc_worker`."""
    worker = commands.add_parser(
        "rpc-worker",
        parents=[home],
        help="run one llama.cpp RPC worker (rpc-server) that an alias's --rpc can use",
        description="Run rpc-server, supervised: it stops with this command (Ctrl-C) and"
        " its output goes to BODHI_HOME/logs/rpc-worker-PORT.log. llama.cpp's RPC has no"
        " authentication: anyone who reaches the port can use the worker.",
    )
    worker.add_argument("--host", default="127.0.0.1", help="IPv4 address to bind (127.0.0.1)")
    worker.add_argument(
        "--port", type=int, default=DEFAULT_RPC_PORT, help=f"port to bind ({DEFAULT_RPC_PORT})"
    )
    worker.add_argument(
        "--threads", type=int, help="CPU threads for computations (default: half the CPUs)"
    )
    worker.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host (RPC has no authentication: trusted networks only)",
    )
    worker.add_argument("--variant", help="exec variant (default: BODHI_EXEC_VARIANT, cpu)")
    worker.set_defaults(run=_rpc_worker)


def _usage_error(message: str) -> int:
    print(f"bodhi-trio: error: {message}", file=sys.stderr)
    return _USAGE_EXIT


def _rpc_worker(args: argparse.Namespace) -> int:
    try:
        endpoint = parse_rpc_endpoint(f"{args.host}:{args.port}")
        host = bind_address(endpoint)
    except ValueError as exc:
        return _usage_error(f"--host {args.host!r} --port {args.port}: {exc}")
    if not RpcEndpoint(host, endpoint.port).is_loopback and not args.insecure:
        return _usage_error(
            f"refusing to bind the RPC worker to {host}: llama.cpp's RPC has no authentication,"
            f" so anyone who can reach {host}:{endpoint.port} can use this worker and read what"
            " llama-server sends it. Bind 127.0.0.1, or pass --insecure on a network you trust"
        )
    if args.threads is not None and args.threads < 1:
        return _usage_error(f"--threads must be at least 1, got {args.threads}")
    home = getattr(args, "home", None)
    settings = load_settings(home=None if home is None else Path(home))
    binary = find_rpc_server(args.variant or settings.exec_variant)
    log = rpc_worker_log(settings, endpoint.port)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            worker: RpcWorker = await nursery.start(
                functools.partial(
                    serve_rpc_worker,
                    binary,
                    host,
                    endpoint.port,
                    log=log,
                    threads=args.threads,
                    stop_grace=settings.stop_grace_secs,
                    run_dir=settings.run_dir,
                    env=settings.child_base_environment(),
                    on_line=lambda line: print(f"rpc-server: {line}", flush=True),
                )
            )
            print(
                f"RPC worker on {worker.endpoint} (pid {worker.pid}); log {log};"
                f" use it with --rpc {worker.endpoint}; Ctrl-C stops it",
                flush=True,
            )

    try:
        trio.run(run)
    except BaseExceptionGroup as group:  # the worker's error, as the nursery wrapped it
        error = sole_exception(group)
        if isinstance(error, BodhiError | KeyboardInterrupt):
            raise error from None
        raise
    return 0
