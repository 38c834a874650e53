"""The ingest, AGI and state benchmarks run end to end on tiny inputs and report consistent figures.

Speed is never asserted here (it depends on the machine and on what else runs on it):
only that each benchmark prints one JSON object on stdout, with its keys, and that its
counts agree with each other and with the other benchmarks.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ivr.domain.state import StateTracker

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SEED = "7"


def run_bench(name: str, *args: str) -> dict[str, Any]:
    """Run ``bench/<name>.py --json ARGS``; its stdout must be exactly one JSON object."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--json", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout[:3000]
    figures = json.loads(lines[0])
    assert isinstance(figures, dict)
    return figures


@pytest.fixture(scope="module")
def util() -> ModuleType:
    """``bench/_util.py`` (not a package: loaded from its path, registered for its dataclasses)."""
    name = "bench_util"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH / "_util.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def state_figures() -> dict[str, Any]:
    return run_bench("state", "--events", "2000", "--seed", SEED, "--repeat", "2")


def test_state_bench(state_figures: dict[str, Any]) -> None:
    f = state_figures
    assert {"events", "events_per_s", "call_events"} <= f.keys()
    assert f["events"] == 2000
    assert f["events_per_s"] > 0
    assert 0 < f["call_events"] < f["events"]


@pytest.mark.parametrize(
    "extra", [(), ("--server", "inline", "--broadcast")], ids=["server-process", "server-inline-broadcast"]
)
def test_ingest_bench(extra: tuple[str, ...], state_figures: dict[str, Any]) -> None:
    f = run_bench("ingest", "--events", "2000", "--baseline-events", "500", "--seed", SEED, *extra)
    keys = {
        "events",
        "events_per_s",
        "call_events_written",
        "baseline_events_per_s",
        "ratio",
        "loop_lag_p99_ms",
    }
    assert keys <= f.keys()
    assert f["events"] == 2000
    assert f["events_dropped"] == 0 and f["events_spooled"] == 0
    # Every call event the tracker produced is in the stream, once; the same as the state bench.
    assert f["call_events_written"] == f["call_events"] == f["writer_events_written"]
    assert f["call_events_written"] == state_figures["call_events"]
    # The naive baseline stores every AMI event it was sent.
    assert f["baseline_events"] == f["baseline_events_written"] == 500
    assert f["events_per_s"] > 0 and f["baseline_events_per_s"] > 0
    assert f["ratio"] == pytest.approx(f["events_per_s"] / f["baseline_events_per_s"], rel=0.01)
    assert 0 <= f["loop_lag_p99_ms"] <= f["loop_lag_max_ms"]
    assert f["server"] == ("inline" if extra else "process")


def test_agi_sessions_bench() -> None:
    f = run_bench(
        "agi_sessions", "--sessions", "300", "--concurrency", "40", "--generators", "2", "--seed", SEED
    )
    keys = {"sessions", "concurrency", "sessions_per_s", "first_command_p50_ms", "first_command_p99_ms"}
    assert keys <= f.keys()
    assert (f["sessions"], f["concurrency"], f["generators"]) == (300, 40, 2)
    # Every session got its first command, went through the menus to a queue, and the server
    # counted each exactly once.
    assert f["routed_to_queue"] == f["agent_requested_events"] == f["server_sessions_total"] == 300
    assert f["connect_errors"] == f["unanswered"] == f["server_rejected"] == f["server_failed"] == 0
    assert f["commands"] >= 300 * 5  # ANSWER, welcome, menu, transfer, the EXEC MSet at least
    assert 0 < f["first_command_p50_ms"] <= f["first_command_p99_ms"] <= f["first_command_max_ms"]
    assert f["sessions_per_s"] > 0


def test_stream_copies_are_distinct_calls_in_time_order(util: ModuleType) -> None:
    """Rewritten copies of a recording give each copy's calls again, under new ids, later."""
    recording = util.load_recording("mixed_a")
    n = len(recording.events)
    stream = list(util.iter_stream(3 * n, 1, ("mixed_a",)))
    assert len(stream) == 3 * n
    stamps = [float(dict(headers)["Timestamp"]) for _, headers in stream]
    assert stamps == sorted(stamps)
    copies = [stream[i * n : (i + 1) * n] for i in range(3)]

    def values(copy: list[tuple[str, list[tuple[str, str]]]], key: str) -> set[str]:
        # "none": Asterisk's Channel/Uniqueid of an event about no channel (a global VarSet)
        return {v for _, headers in copy for k, v in headers if k == key and v != "none"}

    uniqueids = [values(copy, "Uniqueid") for copy in copies]
    channels = [values(copy, "Channel") for copy in copies]
    assert all(len(ids) == 60 for ids in uniqueids)  # the recording's 60 channels, in each copy
    for i in range(3):
        for j in range(i + 1, 3):
            assert not uniqueids[i] & uniqueids[j]
            assert not channels[i] & channels[j]
    # Same names, same order, same number of headers: only ids and times change.
    assert [name for name, _ in copies[0]] == [name for name, _ in copies[2]]

    def call_events(n_events: int) -> Counter[str]:
        tracker = StateTracker(keep_ended=None)
        out: Counter[str] = Counter()
        for batch in util.event_batches(n_events, 1, ("mixed_a",), batch=1000):
            for event in batch:
                out.update(e.type for e in tracker.feed(event))
        out.update(e.type for e in tracker.flush())
        return out

    one, three = call_events(n), call_events(3 * n)
    assert one["call.start"] == 15  # the recording's 15 callers
    assert three == Counter({kind: 3 * count for kind, count in one.items()})


def test_stream_is_seeded(util: ModuleType) -> None:
    a = util.encoded_stream(5000, 3)
    assert a == util.encoded_stream(5000, 3)
    assert a != util.encoded_stream(5000, 4)
