"""bodhi-trio's benchmarks, side by side and interleaved A/B (``nox -s bench`` runs this).

Suites (each starts its own ``bodhi-trio serve --demo --port 0`` with a temporary
BODHI_HOME and HF_HOME, and stops it, with its child, at the end):

- ``fake`` (default): bodhi-trio whose llama-server is ``fake_upstream.py``; arms ``direct``
  (the child's Unix socket, found in bodhi-trio's log), ``bodhi-trio``, ``ollama``, the remote
  aliases ``remote`` and ``remote-httpx`` (bodhi-trio relaying a twin of the child on a TCP
  port: children have none), ``direct-tcp`` (that twin straight) and with ``--litellm``
  LiteLLM's proxy (own venv, ``benchmarks/.venv-litellm``) against the twin (LiteLLM cannot
  reach a Unix socket). Scenarios: 1 stream, 64 streams, paced, disconnect. See
  :mod:`bench_suites`.
- ``scale`` (default): hundreds of streams paced at 50 events/s each, as a GPU server sends
  them (1, 64, 256 spread, 256 in step, 1,024 idle + 64), direct vs bodhi-trio (and the
  remote alias at 256), bodhi-trio and the client pinned to core 0, the load to core 1:
  offered vs delivered, proxy CPU per event, gaps, lag, TTFT (issue 17). See
  :mod:`bench_scale`.
- ``memory`` (default): bodhi-trio's RSS idle and with 1,000 open idle streams. See
  :mod:`bench_startup`.
- ``llama``, ``llama-t1`` and ``swap`` (``--llama``): the real llama-server on the demo
  model, direct (its Unix socket) vs bodhi-trio at 1 and 8 streams, with a bare Trio relay
  and llama.cpp's router mode beside them, then the same arms on ``demo:smol``, the real
  SmolLM2-135M (``llama``: llama-server's default threads; ``llama-t1``: ``--threads 1``,
  which leaves a core to the proxy and the client); then the time to the first token across model
  swaps and cold starts, minus the child's own start-to-ready time.
- ``pace`` (``--llama``): ``demo:smol`` answer by answer, direct, bodhi-trio, the bare Trio
  relay and the router in turn, each answer timed on its own (first token, per token,
  tail): target 17.5 read where a 5-second window is too coarse. See :mod:`token_pace`.
- ``rag`` (``--llama``): several models at once, the RAG pattern (embed/chat alternated)
  on bodhi-trio with two slots, with one slot, and llama.cpp's router mode; the load-beside
  overhead and the memory estimate vs. the measured RSS. See :mod:`bench_models`.

Writes the whole run, with its provenance (git revision and whether ``src/`` or
``benchmarks/`` had uncommitted changes, the machine, Python and package versions, the
llama-server version, the date and the command), to ``benchmarks/results.json``, then renders
``benchmarks/RESULTS.md`` from that file (tables of medians with ratios to ``direct``, the
issue-5 targets with MET / MISSED). Both are committed: ``--render benchmarks/results.json``
writes RESULTS.md again, byte for byte. A ``--quick`` run goes to the ignored
``benchmarks/results/`` instead, so it never replaces the committed pair by accident.
Loopback and Unix sockets only.

    python benchmarks/run.py [--quick] [--llama] [--litellm] [--suites fake,scale,...]
    python benchmarks/run.py --render benchmarks/results.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_models as models
import bench_report as report
import bench_scale as scale
import bench_startup as startup
import bench_suites as suites
import pace_report
import token_pace as pace

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SUITES = ("fake", "scale", "llama", "llama-t1", "pace", "swap", "rag", "memory")
DEFAULT_SUITES = ("fake", "scale", "memory")  # the rest need the real llama-server (--llama)
RESULTS_JSON = HERE / "results.json"  # committed, with RESULTS.md rendered from it
QUICK_JSON = HERE / "results" / "quick.json"  # ignored: quick runs are not the record
PACKAGES = ("bodhi-trio", "trio", "hypercorn", "quart", "quart-trio", "h11")
GIT_PATHS = ("src", "benchmarks")  # a change here can move the numbers


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_mib() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024  # the line is in KiB
    return None


def _output(argv: list[str], cwd: Path = HERE, stderr: bool = True) -> str | None:
    """The command's output (stdout, and stderr unless told not), or None if it failed."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    # rstrip: a line of `git status --porcelain` may start with a space
    return (done.stdout + (done.stderr if stderr else "")).rstrip()


def _in_repo(path: Path) -> str | None:
    """``path`` relative to the repository's root, or None if it lies outside."""
    with contextlib.suppress(ValueError):
        return path.resolve().relative_to(ROOT).as_posix()
    return None


def _git(outputs: list[Path]) -> dict[str, Any]:
    """The checked-out revision, and the uncommitted changes under ``GIT_PATHS`` (the
    run's own output files left out: a previous run's results are not a code change)."""
    revision = _output(["git", "rev-parse", "HEAD"], ROOT, stderr=False)
    excluded = [f":(exclude){rel}" for p in outputs if (rel := _in_repo(p))]
    status = _output(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", *GIT_PATHS, *excluded],
        ROOT,
        stderr=False,
    )
    changes = status.splitlines() if status else []
    return {
        "revision": revision or None,
        "dirty": None if status is None else bool(changes),
        "changes": changes,
        "paths_checked": list(GIT_PATHS),
    }


def _packages() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _llama_server() -> dict[str, str | None]:
    binary = _output([sys.executable, "-m", "bodhi_trio", "llama-server", "path"], stderr=False)
    lines = (_output([binary, "--version"]) or "").splitlines() if binary else []
    return {
        "path": binary or None,
        "version": next((v for v in lines if v.startswith("version")), None),
        "built_with": next((v for v in lines if v.startswith("built with")), None),
    }


def provenance(argv: list[str], outputs: list[Path]) -> dict[str, Any]:
    """What produced a run: revision, machine, software, date and command line."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/run.py", *argv]),
        "argv": argv,
        "executable": sys.executable,
        "git": _git(outputs),
        "machine": {
            "cpu_model": _cpu_model(),
            "cpus": os.cpu_count(),
            "memory_mib": _memory_mib(),
            "platform": platform.platform(),
        },
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": _packages(),
        "llama_server": _llama_server(),
    }


def _shown(path: Path) -> str:
    """How RESULTS.md names a file: from the repository's root, else absolute."""
    return _in_repo(path) or str(path.resolve())


def write_results(doc: dict[str, Any], out: Path, results_md: Path | None) -> None:
    """Write the run's JSON, then render RESULTS.md from what was written (not from
    ``doc`` in memory), exactly as ``--render`` does, so the two cannot differ."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    if results_md is not None:
        render(out, results_md)


def render(source: Path, results_md: Path) -> None:
    """RESULTS.md from a run's JSON; it names the file and the command that re-derive it."""
    saved = json.loads(source.read_text())
    saved["targets"] = report.check_targets(saved)
    command = ["python", "benchmarks/run.py", "--render", _shown(source)]
    if results_md.resolve() != source.resolve().with_name("RESULTS.md"):
        command += ["--results-md", _shown(results_md)]
    link = Path(os.path.relpath(source.resolve(), results_md.resolve().parent)).as_posix()
    results_md.parent.mkdir(parents=True, exist_ok=True)
    more = pace_report.section(saved["suites"]["pace"]) if "pace" in saved["suites"] else []
    more += models.render_rag(saved["suites"]["rag"]) if "rag" in saved["suites"] else []
    results_md.write_text(report.render_results(saved, link, shlex.join(command), more))


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _errors(name: str, result: dict[str, Any]) -> int:
    if name == "rag":
        return int(result["errors"])
    if name == "pace":  # any error stops the suite (its answers are compared in pairs)
        return 0
    if name != "memory":
        return sum(int(r["errors"]) for r in result["runs"])
    failed = int(result.get("failed") or 0) + int(result.get("first_request_errors") or 0)
    return failed + (result.get("in_flight_zero_after_s") is None)


def _run_suites(
    args: argparse.Namespace, chosen: list[str], workdir: Path, doc: dict[str, Any]
) -> None:
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "fake": lambda: suites.fake_suite(workdir, args.quick, doc["rounds"], args.litellm),
        "scale": lambda: scale.scale_suite(
            workdir,
            args.quick,
            doc["rounds"],
            not args.no_pin,
            args.scale_scenarios,
            args.client_core,
        ),
        "llama": lambda: suites.llama_suite(workdir, args.quick, doc["rounds"], "llama"),
        "llama-t1": lambda: suites.llama_suite(workdir, args.quick, doc["rounds"], "llama-t1"),
        "pace": lambda: pace.pace_suite(workdir, args.quick),
        "swap": lambda: startup.swap_suite(workdir, args.quick),
        "rag": lambda: models.rag_suite(workdir, args.quick),
        "memory": lambda: startup.memory_suite(workdir, args.streams),
    }
    for name in chosen:
        print(f"\n=== suite {name} ===", flush=True)
        started, load_before = time.monotonic(), _loadavg()
        try:
            result = runners[name]()
        except Exception as exc:  # one broken suite must not lose the others' numbers
            traceback.print_exc()
            doc["notes"].append(f"suite {name} failed: {exc!r} (see the console output)")
            doc["errors"] += 1
            continue
        result["wall_s"] = time.monotonic() - started
        result["loadavg"] = [load_before, _loadavg()]  # other work on the machine shows here
        if name not in ("memory", "swap", "rag", "pace"):
            metrics = report.SCALE_METRICS if name == "scale" else None
            result["summary"] = report.summary(
                result["runs"], metrics, paired=name.startswith("llama")
            )
        if name == "swap":
            result["stats"] = report.swap_stats(result["runs"])
        for key in ("same_child_throughout",):
            if result.get(key) is False:
                doc["notes"].append(f"suite {name}: the child was replaced during the suite")
        doc["errors"] += _errors(name, result)
        doc["suites"][name] = result


def main(argv: list[str] | None = None) -> int:
    """Run the suites; returns the exit code (1 if any run had errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 short rounds, fewer swaps")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, --quick 2)")
    parser.add_argument(
        "--llama", action="store_true", help="also the llama, llama-t1, pace, swap and rag suites"
    )
    parser.add_argument("--litellm", action="store_true", help="also LiteLLM in the fake suite")
    parser.add_argument("--suites", help=f"exactly these, comma-separated: {','.join(SUITES)}")
    parser.add_argument("--streams", type=int, default=1000, help="idle streams (1000)")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="scale suite: pin nothing (default: bodhi-trio and the client on core 0, the fakes"
        " on core 1)",
    )
    parser.add_argument(
        "--client-core",
        choices=sorted(scale.CLIENT_CORES),
        default="proxy",
        help="scale suite: the client (this process) on the proxy's core (default) or on the"
        " load's, beside the fakes (the layout before session 25)",
    )
    parser.add_argument(
        "--scale-scenarios",
        type=lambda v: [s.strip() for s in v.split(",") if s.strip()],
        metavar="NAMES",
        help="scale suite: only these scenarios, comma-separated: "
        + ", ".join(f"{s.key} ({s.name})" for s in scale.SCENARIOS),
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the run's JSON ({_shown(RESULTS_JSON)}; with --quick {_shown(QUICK_JSON)})",
    )
    parser.add_argument(
        "--results-md", type=Path, help="where to render (RESULTS.md next to the JSON)"
    )
    parser.add_argument("--no-results-md", action="store_true", help="don't write RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, homes)")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only render RESULTS.md from a run's JSON"
    )
    args = parser.parse_args(argv)
    if args.render:
        results_md = args.results_md or args.render.with_name("RESULTS.md")
        render(args.render, results_md)
        print(f"rendered {args.render} into {results_md}")
        return 0
    if args.suites:
        chosen = [s.strip() for s in args.suites.split(",") if s.strip()]
        if unknown := set(chosen) - set(SUITES):
            parser.error(f"unknown suites: {', '.join(sorted(unknown))}")
    else:
        chosen = list(SUITES) if args.llama else list(DEFAULT_SUITES)
    out: Path = args.out or (QUICK_JSON if args.quick else RESULTS_JSON)
    results_md = None if args.no_results_md else args.results_md or out.with_name("RESULTS.md")
    doc: dict[str, Any] = {
        "provenance": provenance(argv, [out] + ([results_md] if results_md else [])),
        "rounds": args.rounds or (2 if args.quick else 5),
        "quick": args.quick,
        "litellm": args.litellm,
        "suites": {},
        "notes": [],
        "errors": 0,
    }
    workdir = Path(tempfile.mkdtemp(prefix="bodhi-bench-"))
    started = time.monotonic()
    try:
        _run_suites(args, chosen, workdir, doc)
    finally:
        doc["wall_s"] = time.monotonic() - started
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    doc["targets"] = report.check_targets(doc)
    doc["targets_17"] = report.check_targets_17(doc)  # [] without the scale suite or router
    write_results(doc, out, results_md)
    print()
    for name in ("fake", "llama", "llama-t1"):
        rate = "events_per_s" if name == "fake" else "tokens_per_s"
        if name in doc["suites"]:
            print(f"{name}:\n{report.throughput_table(doc['suites'][name]['summary'], rate)}\n")
    if "scale" in doc["suites"]:
        print(f"scale:\n{report.scale_table(doc['suites']['scale']['summary'])}\n")
    for t in doc["targets"] + doc["targets_17"]:
        print(f"target {t['n']:>12}: {t['measured']}  →  {t['result']}")
    print(f"\nwritten to {out}" + (f" and {results_md}" if results_md else ""))
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
