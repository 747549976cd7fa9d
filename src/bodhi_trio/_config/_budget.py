"""``BODHI_MEMORY_BUDGET``: its spellings, its default per variant, and the machine's memory.

A budget is written as a number of bytes (``8589934592``), a size with a unit
(``8GiB``, ``512MiB``, ``8GB``; binary ``KiB``... are powers of 1024, decimal ``kB``...
powers of 1000, case does not matter), a percentage of the machine's memory (``75%``)
or ``unlimited``. Bare ``G``/``M`` are refused rather than guessed: ``8G`` is 8 GiB to
some tools and 8 GB to others. Unset, the ``cpu`` variant gets 80% of the machine's
memory (models live in RAM there) and every other variant no budget (their weights
live in device memory, which this budget does not see).

Settings keep the spec as written (:func:`as_memory_budget` checks it);
:func:`resolve_memory_budget` turns it into bytes for a variant and a machine size,
a pure function so that it can be tested with any size.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import attrs

from bodhi_trio._config._setting_values import setting_error

__all__ = [
    "CPU_DEFAULT_BUDGET",
    "MemoryBudget",
    "as_memory_budget",
    "machine_memory_bytes",
    "parse_memory_budget",
    "resolve_memory_budget",
]

CPU_DEFAULT_BUDGET = "80%"
"""The budget of the ``cpu`` variant when none is set."""
_CPU_VARIANT = "cpu"
_UNLIMITED = "unlimited"
_EXPECTED = (
    "a memory budget: bytes (8589934592), a size with a unit (8GiB, 512MiB, 8GB),"
    " a percentage of the machine's memory (75%) or 'unlimited'"
)
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SPEC = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[A-Za-z]*|%)")
# cgroup limits that may be lower than MemTotal inside a container (v2, then v1); the
# v1 file reads 2**63 rounded down to a page when there is no limit.
_CGROUP_LIMITS = ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes")


@attrs.frozen
class MemoryBudget:
    """A parsed budget: ``size`` bytes, ``percent`` of the machine, or neither (unlimited)."""

    size: int | None = None
    percent: float | None = None

    def resolve(self, total_memory: int | None) -> int | None:
        """Bytes, or ``None`` for no limit (also for a percentage of an unknown total)."""
        if self.size is not None:
            return self.size
        if self.percent is None or total_memory is None:
            return None
        return max(1, math.floor(total_memory * self.percent / 100))


def parse_memory_budget(spec: str) -> MemoryBudget:
    """Parse a budget as written (see the module docstring).

    Raises:
        ValueError: ``spec`` is none of the accepted forms, or is zero, or is more than
            100%; the message says what is wrong.
    """
    text = spec.strip()
    if text.lower() == _UNLIMITED:
        return MemoryBudget()
    match = _SPEC.fullmatch(text)
    if match is None:
        raise ValueError("not a number with an optional unit")
    number, unit = float(match["number"]), match["unit"].lower()
    if unit == "%":
        if not 0 < number <= 100:
            raise ValueError("a percentage must be more than 0 and at most 100")
        return MemoryBudget(percent=number)
    if unit not in _UNITS:
        raise ValueError(
            f"unknown unit {match['unit']!r} (use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    if unit == "" and "." in match["number"]:
        raise ValueError("a number of bytes must be whole")
    size = math.floor(number * _UNITS[unit])
    if size < 1:
        raise ValueError("a budget must be at least 1 byte")
    return MemoryBudget(size=size)


def as_memory_budget(key: str, value: object, source: str) -> str:
    """A setting's budget spec, checked, as written (an integer from YAML as its digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise setting_error(key, source, value, _EXPECTED)
    try:
        parse_memory_budget(value)
    except ValueError as exc:
        raise setting_error(key, source, value, f"{_EXPECTED}; {exc}") from None
    return value.strip()


def resolve_memory_budget(spec: str | None, variant: str, total_memory: int | None) -> int | None:
    """The budget in bytes for ``variant``, or ``None`` for no limit.

    Args:
        spec: The setting as written, ``None`` if unset (then the ``cpu`` variant gets
            :data:`CPU_DEFAULT_BUDGET` and the others no limit).
        variant: The exec variant the children run.
        total_memory: The machine's memory in bytes (:func:`machine_memory_bytes`);
            ``None`` if unknown, which makes a percentage mean no limit.

    Raises:
        ValueError: ``spec`` does not parse (settings have checked it already).
    """
    if spec is None:
        if variant.lower() != _CPU_VARIANT:
            return None
        spec = CPU_DEFAULT_BUDGET
    return parse_memory_budget(spec).resolve(total_memory)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):  # absent, or "max" (cgroup v2: no limit)
        return None


def machine_memory_bytes(root: Path = Path("/")) -> int | None:
    """The machine's memory: ``MemTotal`` of ``/proc/meminfo``, or a lower cgroup limit.

    Inside a container MemTotal is the host's; the container's memory limit (cgroup v2
    ``memory.max`` or v1 ``memory.limit_in_bytes``) is what its processes may use.

    Args:
        root: Where ``proc`` and ``sys`` are, for tests.

    Returns:
        Bytes, or ``None`` where ``/proc/meminfo`` cannot be read (not Linux).
    """
    try:
        meminfo = (root / "proc" / "meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    if found is None:
        return None
    total = int(found[1]) * 1024
    for limit_file in _CGROUP_LIMITS:
        limit = _read_int(root / limit_file)
        if limit is not None and 0 < limit < total:
            total = limit
    return total
