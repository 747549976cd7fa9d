"""The ``pace`` suite's figures and RESULTS.md section (``token_pace.py`` measures them).

Pure functions of the suite's JSON, so that ``run.py --render`` derives the same page from
the same file. Each round holds one turn per arm: its answers' first-token time, time per
token and tail (medians over the turn's answers), the turn's time from the first send to
the last end, its content tokens, and the relay's CPU per token (None for ``direct``).
"""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["PARTS", "TARGET", "head_to_head", "section", "summary", "table", "target"]

PARTS = ("first_ms", "per_token_ms", "tail_ms")
TARGET = 0.98  # issue 17, target 17.5: tokens/s through bodhi-trio >= 0.98x direct

Round = dict[str, dict[str, Any]]  # arm -> its turn


def summary(rounds: list[Round]) -> dict[str, dict[str, float | None]]:
    """Per arm: the median of each part, of each round's part over direct's, of each
    round's tokens/s over direct's (with the rounds it was faster in), and of the relay's
    CPU per token."""
    out: dict[str, dict[str, float | None]] = {}
    for name in rounds[0]:
        row: dict[str, float | None] = {}
        for part in PARTS:
            row[part] = statistics.median(run[name][part] for run in rounds)
            if name != "direct":
                row[f"{part}_x_direct"] = statistics.median(
                    run[name][part] / run["direct"][part] for run in rounds
                )
        if name != "direct":
            speeds = [_rate(run[name]) / _rate(run["direct"]) for run in rounds]
            row["tokens_per_s_x_direct"] = statistics.median(speeds)
            row["faster_rounds"] = sum(speed > 1 for speed in speeds)
        cpu = [run[name]["cpu_us_per_token"] for run in rounds]
        row["cpu_us_per_token"] = None if None in cpu else statistics.median(cpu)
        out[name] = row
    return out


def _rate(turn: dict[str, Any]) -> float:
    return float(turn["tokens"]) / float(turn["answer_ms"])


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def table(rows: dict[str, dict[str, float | None]], rounds: int) -> str:
    """:func:`summary`'s rows (of ``rounds`` rounds) as a Markdown table."""
    lines = [
        "| arm | first token ms (x direct) | ms per token (x direct) | tail ms"
        " | tokens/s x direct (rounds faster) | relay CPU µs/token |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        faster = row.get("faster_rounds")
        lines.append(
            f"| {name} | {_num(row['first_ms'], '{:.2f}')}"
            f" ({_num(row.get('first_ms_x_direct'), '{:.3f}x')})"
            f" | {_num(row['per_token_ms'], '{:.3f}')}"
            f" ({_num(row.get('per_token_ms_x_direct'), '{:.4f}x')})"
            f" | {_num(row['tail_ms'], '{:.2f}')}"
            f" | {_num(row.get('tokens_per_s_x_direct'), '{:.4f}x')}"
            + ("" if faster is None else f" ({faster:.0f} of {rounds})")
            + f" | {_num(row['cpu_us_per_token'], '{:.1f}')} |"
        )
    return "\n".join(lines)


def target(pace: dict[str, Any]) -> dict[str, str] | None:
    """Target 17.5 read answer by answer: bodhi-trio's tokens/s over direct's in each round,
    median, on every scenario the suite ran (the router's beside it); None without them."""
    shown, short = [], []
    for name, scenario in pace.get("scenarios", {}).items():
        rows = scenario.get("summary", {})
        ours = rows.get("bodhi-trio", {}).get("tokens_per_s_x_direct")
        if ours is None:
            continue
        theirs = rows.get("router", {}).get("tokens_per_s_x_direct")
        shown.append(
            f"demo:smol, {name}: {ours:.3f}x"
            + ("" if theirs is None else f" (llama.cpp's router {theirs:.3f}x)")
        )
        if ours < TARGET:
            short.append(f"{name} by {TARGET - ours:.3f}x")
    if not shown:
        return None
    return {
        "n": "17.5, by answer",
        "target": "real model (`demo:smol`): tokens/s through bodhi-trio >= 0.98x direct, each"
        " answer (or 8 at once) against direct's in the same round, median over the rounds"
        " (`token_pace.py`)",
        "measured": "; ".join(shown),
        "result": "MET" if not short else f"MISSED on {', '.join(short)}",
    }


def head_to_head(pace: dict[str, Any]) -> dict[str, str] | None:
    """Target 17.4 read answer by answer: bodhi-trio's tokens/s over the router's in each
    round, median >= 1 on every scenario the suite ran with both; None without them."""
    shown, behind = [], []
    for name, scenario in pace.get("scenarios", {}).items():
        rounds = scenario.get("rounds", [])
        pairs = [run for run in rounds if "bodhi-trio" in run and "router" in run]
        if not pairs:
            continue
        ratios = [_rate(run["bodhi-trio"]) / _rate(run["router"]) for run in pairs]
        ratio = statistics.median(ratios)
        ahead = sum(r > 1 for r in ratios)
        shown.append(f"demo:smol, {name}: {ratio:.3f}x, ahead in {ahead} of {len(pairs)} rounds")
        if ratio < 1:
            behind.append(name)
    if not shown:
        return None
    return {
        "n": "17.4, by answer",
        "target": "relay overhead below llama-server router mode's, real model (`demo:smol`):"
        " bodhi-trio's tokens/s over the router's, each answer (or 8 at once) against the"
        " router's in the same round, median >= 1 (`token_pace.py`)",
        "measured": "; ".join(shown),
        "result": "MET" if not behind else f"MISSED on {', '.join(behind)}",
    }


def section(pace: dict[str, Any]) -> list[str]:
    """The RESULTS.md section of the ``pace`` suite."""
    lines = [
        "",
        "## A real model's pace, answer by answer (`demo:smol`)",
        "",
        "`benchmarks/token_pace.py`: the same answer (100 tokens at `temperature` 0) through each"
        " arm in turn, the order rotated each round; each turn timed on its own and split into"
        " the time to the first content token, the time per token between the first and the"
        " last, and the tail after the last. Each round's figure over direct's in the same"
        " round, median over the rounds: the windows of the llama suites above hold a few"
        " answers each and swing by more than a relay costs here. llama-server's args:"
        f" `{' '.join(pace.get('params', []))}`.",
    ]
    for name, scenario in pace.get("scenarios", {}).items():
        count = len(scenario["rounds"])
        lines += ["", f"**{name}** ({count} rounds):", "", table(scenario["summary"], count)]
    return lines
