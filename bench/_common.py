"""Shared pieces of the protocol benchmarks (``ami_parse.py``, ``agi_parse.py``).

Timing: each benchmark runs its loops a few times and keeps the best run, measured with
``time.process_time`` (CPU seconds of this single-threaded process). On a machine shared
with other work, wall-clock time also counts the time the process waited for a core; CPU
time does not, although contention (shared caches) still slows it down, so the load
average is reported alongside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
FIXTURES: Final = ROOT / "tests" / "fixtures" / "asterisk"
SHARED: Final = Path("/work/shared/asterisk")


def transcripts(name: str) -> list[Path]:
    """Every recorded ``name`` (``ami.txt``, ``fastagi.txt``) of the fixtures, else of the shared copy."""
    for base in (FIXTURES, SHARED):
        found = sorted(p for p in base.glob(f"*/{name}") if p.stat().st_size)
        if found:
            return found
    raise SystemExit(f"no recorded {name} under {FIXTURES} or {SHARED}")


def best_of(repeat: int, run: Callable[[], int]) -> tuple[int, float, float]:
    """Run ``run`` (which returns a count) ``repeat`` times.

    Returns the count, which every run must agree on, and the best CPU and wall-clock
    seconds.
    """
    counts: set[int] = set()
    cpu = wall = float("inf")
    for _ in range(repeat):
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        counts.add(run())
        cpu = min(cpu, time.process_time() - started_cpu)
        wall = min(wall, time.perf_counter() - started_wall)
    if len(counts) != 1:
        raise RuntimeError(f"runs disagree: {sorted(counts)}")
    return counts.pop(), cpu, wall


def arguments(doc: str, **defaults: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args()
    if any(getattr(args, name) < 1 for name in defaults):
        parser.error("every count must be >= 1")
    return args


def emit(figures: dict[str, Any], as_json: bool) -> None:
    """Print the figures: one JSON object (``--json``) or one ``key: value`` line each."""
    figures["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if as_json:
        sys.stdout.write(json.dumps(figures, separators=(",", ":")) + "\n")
    else:
        for key, value in figures.items():
            sys.stdout.write(f"{key}: {value}\n")
    sys.stdout.flush()
