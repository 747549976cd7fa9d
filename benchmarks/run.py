"""bodhi-trio's benchmarks, side by side and interleaved A/B (``nox -s bench`` runs this).

Suites (each starts its own ``bodhi-trio serve --demo --port 0`` with a temporary
BODHI_HOME and HF_HOME, and stops it, with its child, at the end):

- ``fake`` (default): bodhi-trio whose llama-server is ``fake_upstream.py``; arms ``direct``
  (the child's Unix socket, found in bodhi-trio's log), ``bodhi-trio`` and with ``--litellm``
  LiteLLM's proxy (own venv, ``benchmarks/.venv-litellm``) against a twin of the child on a
  TCP port (children have none; LiteLLM cannot reach a Unix socket). Scenarios: 1 stream,
  64 streams, disconnect. See :mod:`bench_suites`.
- ``memory`` (default): bodhi-trio's RSS idle and with 1,000 open idle streams. See
  :mod:`bench_startup`.
- ``llama``, ``llama-t1`` and ``swap`` (``--llama``): the real llama-server on the demo
  model, direct (its Unix socket) vs bodhi-trio at 1 and 8 streams (``llama``:
  llama-server's default threads; ``llama-t1``: ``--threads 1``, which leaves a core to the
  proxy and the client); then the time to the first token across model swaps and cold
  starts, minus the child's own start-to-ready time.

Writes the whole run to ``benchmarks/results/latest.json`` and renders
``benchmarks/RESULTS.md`` from it (machine, command, tables of medians with ratios to
``direct``, the issue-5 targets with MET / MISSED). Loopback and Unix sockets only.

    python benchmarks/run.py [--quick] [--llama] [--litellm] [--suites fake,memory,...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_report as report
import bench_startup as startup
import bench_suites as suites

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
SUITES = ("fake", "llama", "llama-t1", "swap", "memory")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=HERE)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip() if done.returncode == 0 else ""


def _machine() -> dict[str, Any]:
    import bodhi_trio

    git = _output(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    if _output(["git", "status", "--porcelain", "--untracked-files=no"]):
        git += " plus uncommitted changes"
    binary = _output([sys.executable, "-m", "bodhi_trio", "llama-server", "path"])
    version = _output([binary, "--version"]).splitlines() if binary else []
    llama = next((v for v in version if v.startswith("version")), "unknown")
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "bodhi_trio": getattr(bodhi_trio, "__version__", "?"),
        "git": git,
        "llama_server": f"{binary or 'not found'} ({llama})",
    }


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _errors(name: str, result: dict[str, Any]) -> int:
    if name != "memory":
        return sum(int(r["errors"]) for r in result["runs"])
    failed = int(result.get("failed") or 0) + int(result.get("first_request_errors") or 0)
    return failed + (result.get("in_flight_zero_after_s") is None)


def _run_suites(
    args: argparse.Namespace, chosen: list[str], workdir: Path, doc: dict[str, Any]
) -> None:
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "fake": lambda: suites.fake_suite(workdir, args.quick, doc["rounds"], args.litellm),
        "llama": lambda: suites.llama_suite(workdir, args.quick, doc["rounds"], "llama"),
        "llama-t1": lambda: suites.llama_suite(workdir, args.quick, doc["rounds"], "llama-t1"),
        "swap": lambda: startup.swap_suite(workdir, args.quick),
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
        if name != "memory" and name != "swap":
            result["summary"] = report.summary(result["runs"])
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
        "--llama", action="store_true", help="also the llama, llama-t1 and swap suites"
    )
    parser.add_argument("--litellm", action="store_true", help="also LiteLLM in the fake suite")
    parser.add_argument("--suites", help=f"exactly these, comma-separated: {','.join(SUITES)}")
    parser.add_argument("--streams", type=int, default=1000, help="idle streams (1000)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-results-md", action="store_true", help="don't write RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, homes)")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only re-render RESULTS.md")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        saved["targets"] = report.check_targets(saved)
        args.results_md.write_text(report.render_results(saved))
        print(f"rendered {args.render} into {args.results_md}")
        return 0
    if args.suites:
        chosen = [s.strip() for s in args.suites.split(",") if s.strip()]
        if unknown := set(chosen) - set(SUITES):
            parser.error(f"unknown suites: {', '.join(sorted(unknown))}")
    else:
        chosen = list(SUITES) if args.llama else ["fake", "memory"]
    doc: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/run.py", *argv]),
        "argv": argv,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "rounds": args.rounds or (2 if args.quick else 5),
        "litellm": args.litellm,
        "machine": _machine(),
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    for name in ("fake", "llama", "llama-t1"):
        rate = "events_per_s" if name == "fake" else "tokens_per_s"
        if name in doc["suites"]:
            print(f"{name}:\n{report.throughput_table(doc['suites'][name]['summary'], rate)}\n")
    for t in doc["targets"]:
        print(f"target {t['n']:>3}: {t['measured']}  →  {t['result']}")
    if not args.no_results_md:
        args.results_md.write_text(report.render_results(doc))
        print(f"\nwritten to {args.out} and {args.results_md}")
    else:
        print(f"\nwritten to {args.out}")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
