#!/usr/bin/env python3
"""What a change bought: the quick fake suite for several git revisions, interleaved.

    python benchmarks/ab_revisions.py 4f6d14b HEAD [--rounds 3] [--suites fake,llama]

Each revision is checked out into its own worktree (under the system temp dir) and
its own ``benchmarks/run.py --quick`` runs with ``PYTHONPATH`` pointing at that
worktree's ``src``, so the harness and the server are both that revision's. Rounds
rotate the order of the revisions. Every run has its own ``direct`` arm, so each
ratio below is measured side by side within one run; the table shows medians over
the rounds. Nothing here is written into RESULTS.md. The worktrees stay for the next
run; ``git worktree remove <dir>`` (or delete them and ``git worktree prune``) when done.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# (label, suite, scenario, how to read it from the run's summary[, arm: bodhi-trio's if not])
METRICS: list[tuple[str, ...]] = [
    ("1 stream events/s (x direct)", "fake", "1 stream", "ratio"),
    ("64 streams events/s (x direct)", "fake", "64 streams", "ratio"),
    ("+TTFT p50 ms, 1 stream", "fake", "1 stream", "ttft"),
    ("CPU µs/event, 1 stream", "fake", "1 stream", "cpu"),
    ("CPU µs/event, paced", "fake", "1 stream, paced", "cpu"),
    ("paced events/s (x direct)", "fake", "1 stream, paced", "ratio"),
    ("disconnect→upstream p99 ms", "fake", "disconnect", "disconnect"),
    ("ollama 1 stream events/s (x direct)", "fake", "1 stream", "ratio", "ollama"),
    ("ollama CPU µs/event, 1 stream", "fake", "1 stream", "cpu", "ollama"),
    ("ollama CPU µs/event, paced", "fake", "1 stream, paced", "cpu", "ollama"),
    ("llama 1 stream tokens/s (x direct)", "llama", "1 stream", "tokens"),
    ("llama 8 streams tokens/s (x direct)", "llama", "8 streams", "tokens"),
    ("llama CPU µs/event, 1 stream", "llama", "1 stream", "cpu"),
    ("llama-t1 1 stream tokens/s (x direct)", "llama-t1", "1 stream", "tokens"),
    ("llama-t1 8 streams tokens/s (x direct)", "llama-t1", "8 streams", "tokens"),
    ("scale 256 x 50/s CPU µs/event", "scale", "256 x 50/s", "cpu"),
    ("scale 256 x 50/s delivered (x offered)", "scale", "256 x 50/s", "delivered"),
    ("scale 256 x 50/s +gap p99 ms", "scale", "256 x 50/s", "gap"),
    ("scale 256 in step CPU µs/event", "scale", "256 x 50/s, in step", "cpu"),
    ("scale 1 x 50/s CPU µs/event", "scale", "1 x 50/s", "cpu"),
]
_FORMATS = {"ratio": "{:.3f}x", "tokens": "{:.3f}x", "cpu": "{:.1f}", "delivered": "{:.3f}x"}


def _worktree(rev: str, base: Path) -> tuple[str, Path]:
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    path = base / sha
    if not path.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), sha],
            check=True, capture_output=True,
        )  # fmt: skip
    return sha, path


def _run(tree: Path, out: Path, suites: str) -> dict[str, Any]:
    """The run's summaries, by suite."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    argv = [sys.executable, str(tree / "benchmarks" / "run.py"), "--suites", suites, "--quick"]
    out.unlink(missing_ok=True)
    done = subprocess.run([*argv, "--no-results-md", "--out", str(out)], check=False, env=env)
    if not out.exists():  # it failed before writing its results
        done.check_returncode()
    if done.returncode:  # an arm had errors (the tables show which): its figures still count
        print(f"(the run exited with {done.returncode}: errors in some arm)", flush=True)
    suites_run: dict[str, Any] = json.loads(out.read_text())["suites"]
    return {name: suite.get("summary", {}) for name, suite in suites_run.items()}


def _value(
    summary: dict[str, Any], scenario: str, kind: str, arm: str = "bodhi-trio"
) -> float | None:
    arms = summary.get(scenario, {})
    direct, bodhi = arms.get("direct"), arms.get(arm)
    if not direct or not bodhi:
        return None
    if kind == "ratio":
        return float(bodhi["events_per_s"] / direct["events_per_s"])
    if kind == "tokens":
        return float(bodhi["tokens_per_s"] / direct["tokens_per_s"])
    if kind == "ttft":
        return float(bodhi["ttft_p50_ms"] - direct["ttft_p50_ms"])
    if kind == "cpu":
        return float(bodhi["cpu_us_per_event"])
    if kind == "delivered":
        return float(bodhi["delivered_ratio"])
    if kind == "gap":
        return float(bodhi["gap_p99_ms"] - direct["gap_p99_ms"])
    value = bodhi.get("disconnect_p99_ms")
    return None if value is None else float(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revisions", nargs="+", help="git revisions, oldest first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--suites", default="fake")
    args = parser.parse_args()
    # not "bodhi-trio-*": servers before the fix of 2026-12-03 swept such folders at start
    base = Path(tempfile.gettempdir()) / "bodhi-ab-worktrees"
    base.mkdir(exist_ok=True)
    trees = [_worktree(rev, base) for rev in args.revisions]
    values: dict[str, dict[str, list[float]]] = {sha: {} for sha, _ in trees}
    for round_no in range(args.rounds):
        shift = round_no % len(trees)
        for sha, tree in trees[shift:] + trees[:shift]:
            print(f"--- round {round_no + 1}/{args.rounds}: {sha}", flush=True)
            summaries = _run(tree, base / f"{sha}-{round_no}.json", args.suites)
            for label, suite, scenario, *how in METRICS:
                value = _value(summaries.get(suite, {}), scenario, *how)
                if value is not None:
                    values[sha].setdefault(label, []).append(value)
    shas = [sha for sha, _ in trees]
    print(f"\n| metric (median of {args.rounds} rounds) | " + " | ".join(shas) + " |")
    print("|---|" + "---:|" * len(shas))
    for label, _suite, _scenario, kind, *_arm in METRICS:
        cells = []
        for sha in shas:
            got = values[sha].get(label)
            fmt = _FORMATS.get(kind, "{:.2f}")
            cells.append(fmt.format(statistics.median(got)) if got else "-")
        if any(cell != "-" for cell in cells):
            print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
