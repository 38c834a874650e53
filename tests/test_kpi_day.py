"""A simulated day of 10,000 calls: the live KPIs equal a recomputation from the Redis stream.

The controller sends every call event both to the event log writer and to the live
:class:`~ivr.domain.kpi.KpiAccumulator` (``Controller.emit``); ``ivr report`` and the
dashboard's history recompute the figures from the stream (``report_from_redis``). This
test runs that wiring on a whole seeded day: the simulated Asterisk (no FastAGI: a
dialplan that sets the service, answers and queues) produces AMI events, the
:class:`~ivr.domain.state.StateTracker` turns them into call events, and each event goes to
the live accumulator and to a real :class:`~ivr.storage.writer.EventLogWriter` on the test
Redis server. The recomputed reports must be *equal* to the live ones -- the whole day with
every call's summary, single hours (around opening and closing times too), one queue --
not close: equal dicts, floats included.

The traffic covers opening hours and beyond (07:30 to about 17:30 on a Tuesday, Paris
time; the CAF opens 08:30-16:30), with three queues: ``support`` (CAF, exit key 1),
``cpam`` and ``closed`` (CARSAT, no agent: every caller is refused), so the day has answered
calls, abandons (short ones too), timeouts, exits with a key, refused joins and calls out
of hours. The figures are also checked against what the simulated Asterisk itself wrote
in its queue_log, so that two equally wrong paths could not agree by accident.

The engine runs at ``speed=inf`` (virtual time as fast as the CPU allows). Stream ids
follow Asterisk time, so the day lies in the past (ids never ahead of the Redis clock).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio
import structlog

from ivr.config import default_config
from ivr.domain.events import CallEvent
from ivr.domain.kpi import KpiAccumulator, KpiSettings
from ivr.domain.queue_log import parse_queue_log
from ivr.domain.state import StateTracker
from ivr.kpi_cli import report_from_redis, settings_from_config
from ivr.protocol.ami import Event
from ivr.sim.config import SimConfig, TrafficConfig, parse_config
from ivr.sim.engine import Simulator
from ivr.sim.traffic import TrafficGenerator
from ivr.storage.privacy import NumberHasher
from ivr.storage.writer import EventLogWriter

PARIS = ZoneInfo("Europe/Paris")
#: Tuesday 18 November 2025: an ordinary working day, long past (stream ids <= Redis time).
DAY = datetime(2025, 11, 18, tzinfo=PARIS)
START = DAY.replace(hour=7, minute=30).timestamp()
CALLS = 10_000
SEED = 20251118
HASH_KEY = "kpi-day-hash-key-0123456789abcdef"
BENCH = Path(__file__).resolve().parent.parent / "bench" / "kpi_recompute.py"

#: queue_log event -> the visit figure of the report that counts it.
QUEUE_LOG_FIGURE = {
    "CONNECT": "answered",
    "ABANDON": "abandoned",
    "EXITWITHTIMEOUT": "timeouts",
    "EXITWITHKEY": "exit_with_key",
}
#: Visit figures summed over the open and the closed hours (queue_log knows no opening hours).
VISIT_FIGURES = ("entered", *QUEUE_LOG_FIGURE.values(), "join_empty")


def _hour(h: int) -> float:
    return (DAY + timedelta(hours=h)).timestamp()


def sim_config() -> SimConfig:
    """Three queues, 32 agents, callers who may press 1 (an exit key of ``support`` only)."""
    support = [f"Local/{1000 + i}@agents" for i in range(24)]
    cpam = [f"Local/{1100 + i}@agents" for i in range(8)]
    return parse_config(
        {
            "dialplan": {
                "public": {
                    "100": ["Answer()", "Set(IVR_SERVICE=caf)", "Queue(support,c,,,120)", "Hangup()"],
                    "101": ["Answer()", "Set(IVR_SERVICE=cpam)", "Queue(cpam,c,,,30)", "Hangup()"],
                    "102": ["Answer()", "Set(IVR_SERVICE=carsat)", "Queue(closed,c,,,60)", "Hangup()"],
                },
                "caller": {
                    "ivr-patient": ["Wait(${WAIT1})", "SendDTMF(${DIGITS},250)", "Goto(patient,1)"],
                    "patient": ["Patience(${PATIENCE})", "Hangup()"],
                },
                "agents": {"_1XXX": ["AgentPlan()"]},
                "queue-exit": {"1": ["Hangup()"]},
            },
            "globals": {},
            "queues": {
                "support": {
                    "strategy": "rrmemory",
                    "timeout": 15,
                    "retry": 2,
                    "ringinuse": False,
                    "context": "queue-exit",
                    "members": support,
                },
                "cpam": {
                    "strategy": "ringall",
                    "timeout": 15,
                    "retry": 2,
                    "ringinuse": False,
                    "members": cpam,
                },
                "closed": {"joinempty": "no", "members": []},
            },
            "agents": {
                m[6:10]: {"answer_delay": [1, 6], "talk_time": [30, 150], "no_answer": 0.05}
                for m in support + cpam
            },
        }
    )


def traffic(base: TrafficConfig) -> list[tuple[TrafficConfig, int]]:
    """(traffic, seed) of each stream of callers: 72 % CAF, 25 % CPAM, 3 % CARSAT over ~10 h."""
    support = round(CALLS * 0.72)
    cpam = round(CALLS * 0.25)
    per_hour = CALLS / 10
    return [
        (
            replace(
                base,
                exten="100",
                calls=support,
                arrivals_per_hour=per_hour * 0.72,
                caller_exten="ivr-patient",
                wait_before_digits=12.0,
                digits=("5", "1"),
                digit_weights=(0.85, 0.15),
                patience=(2.0, 300.0),
                number_prefix="06",
            ),
            SEED + 1,
        ),
        (
            replace(
                base,
                exten="101",
                calls=cpam,
                arrivals_per_hour=per_hour * 0.25,
                patience=(2.0, 240.0),
                number_prefix="07",
            ),
            SEED + 2,
        ),
        (
            replace(
                base,
                exten="102",
                calls=CALLS - support - cpam,
                arrivals_per_hour=per_hour * 0.03,
                number_prefix="09",
            ),
            SEED + 3,
        ),
    ]


def ami_event(name: str, headers: Sequence[tuple[str, str]]) -> Event:
    """The :class:`Event` that :class:`AMIParser` makes of ``encode_event(name, headers)``.

    Built directly: encoding a million events and parsing them back would triple the run
    time, and the codec's round trip is tested on its own (test_ami_codec) and end to end
    over a socket (test_e2e).
    """
    fields = dict(headers)
    return Event(fields=fields, repeated=None if len(fields) == len(headers) else tuple(headers), name=name)


@dataclass
class Day:
    live: KpiAccumulator
    settings: KpiSettings
    emitted: int
    placed: int
    queue_log: Counter[str]
    writer_stats: dict[str, Any]


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """The engine logs each agent's no-answer and each call's end: keep a 10k-call day quiet."""
    previous = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        yield
    finally:
        structlog.configure(**previous)


async def run_day(redis_url: str, spool: Path) -> Day:
    """The controller's wiring (tracker -> emit -> writer + live KPIs) over one simulated day."""
    settings = settings_from_config(default_config())
    hasher = NumberHasher(HASH_KEY)
    tracker = StateTracker(hash_number=hasher)
    live = KpiAccumulator(settings)
    writer = EventLogWriter(redis_url, spool_path=spool, hasher=hasher)
    emitted = 0

    def emit(event: CallEvent) -> None:  # Controller.emit
        nonlocal emitted
        writer.submit(event)
        live.add(event)
        emitted += 1

    def on_ami(name: str, headers: Sequence[tuple[str, str]]) -> None:
        for event in tracker.feed(ami_event(name, headers)):
            emit(event)

    sim = Simulator(sim_config(), seed=SEED, speed=math.inf, start_epoch=START)
    sim.add_listener(on_ami)
    await writer.start()
    await sim.start()
    try:
        generators = [TrafficGenerator(sim, cfg, seed=seed) for cfg, seed in traffic(sim.config.traffic)]
        await asyncio.gather(*(g.run() for g in generators))
        await sim.idle()
        for event in tracker.flush():  # as Controller.stop does
            emit(event)
    finally:
        await sim.stop()
        await writer.close()
    queue_log = Counter(e.event for e in parse_queue_log("\n".join(sim.queue_log_lines) + "\n"))
    return Day(
        live=live,
        settings=settings,
        emitted=emitted,
        placed=sum(g.stats.placed for g in generators),
        queue_log=queue_log,
        writer_stats=writer.stats.as_dict(),
    )


async def test_a_simulated_day_live_and_recomputed_from_redis_agree_exactly(
    redis_url: str, tmp_path: Path, quiet_logs: None
) -> None:
    day = await run_day(redis_url, tmp_path / "spool.jsonl")
    live, settings = day.live, day.settings

    # every event reached the stream once, nothing is left in the spool
    stats = day.writer_stats
    assert stats["events_submitted"] == day.emitted
    assert stats["events_written"] == day.emitted, stats
    assert stats["spool_depth"] == 0 and stats["queue_depth"] == 0, stats
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.xlen("ivr:events") == day.emitted

        async def recomputed(**kw: Any) -> dict[str, Any]:
            return await report_from_redis(client, settings, **kw)

        # the whole stream, every call's summary included
        whole = live.report(include_calls=True)
        assert await recomputed(include_calls=True) == whole
        # single hours (across opening and closing times), one queue for the day, another for a morning
        for since, until, queue in [
            (_hour(8), _hour(9), None),
            (_hour(16), _hour(17), None),
            (_hour(0), _hour(24), "cpam"),
            (_hour(10), _hour(12), "support"),
        ]:
            expected = live.report(since, until, queue=queue)
            assert expected["overall"]["calls"] > 0
            assert await recomputed(since=since, until=until, queue=queue) == expected, (since, until, queue)
    finally:
        await client.aclose()

    # ... and the day is the one asked for: every placed call is counted, once
    overall, closed = whole["overall"], whole["out_of_hours"]
    assert day.placed == CALLS
    assert overall["calls"] + closed["calls"] == CALLS
    assert whole["partial_calls"] == 0 and whole["gaps"] == 0
    assert len(whole["calls"]) == CALLS
    # with every kind of ending, and calls on both sides of the opening hours
    for figure in ("answered", "abandoned", "abandoned_short", "timeouts", "exit_with_key", "join_empty"):
        assert overall[figure] > 0, figure
    assert closed["calls"] > 0 and closed["asked_for_agent"] > 0
    assert 0 < overall["handled_by_agent"] < overall["asked_for_agent"]
    # the queue visits are those Asterisk logged in its queue_log
    for event, figure in QUEUE_LOG_FIGURE.items():
        assert overall[figure] + closed[figure] == day.queue_log[event], (event, figure)
    assert overall["entered"] + closed["entered"] == day.queue_log["ENTERQUEUE"]
    # hours partition the open calls; queues see every visit of their own
    hours = whole["hours"].values()
    for figure in ("calls", "asked_for_agent", "handled_by_agent", *VISIT_FIGURES):
        assert sum(block[figure] for block in hours) == overall[figure], figure
    for figure in VISIT_FIGURES:
        assert sum(q[figure] for q in whole["queues"].values()) == overall[figure], figure
    assert set(whole["services"]) == {"caf", "cpam", "carsat"}
    assert whole["queues"]["closed"]["join_empty"] == whole["queues"]["closed"]["asked_for_agent"]


def test_the_recompute_benchmark_runs_and_checks_itself() -> None:
    """``bench/kpi_recompute.py`` on a small day: one JSON object, and its own check passed.

    The benchmark compares the report read back from Redis with the same synthetic IVR day
    folded in memory (IVR steps, callbacks and their legs, surveys, out-of-hours calls) and
    fails on any difference; speed is not judged here.
    """
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--json", "--calls", "300", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCH.parent.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout[:3000]
    figures = json.loads(lines[0])
    assert figures["calls"] == 300
    assert figures["events"] > 8 * 300
    assert figures["seconds"] > 0 and figures["events_per_s"] > 0
    assert 0 < figures["pickup_rate"] < 1


async def test_report_from_redis_gives_the_garbage_collector_back(redis_client: redis.asyncio.Redis) -> None:
    """The fold pauses the cyclic collector (kpi_cli._collector_paused), and only for its time."""
    assert gc.isenabled()
    settings = KpiSettings()
    await report_from_redis(redis_client, settings)
    assert gc.isenabled()
    await asyncio.gather(*(report_from_redis(redis_client, settings) for _ in range(3)))
    assert gc.isenabled()
    gc.disable()  # turned off by someone else: left off
    try:
        await report_from_redis(redis_client, settings)
        assert not gc.isenabled()
    finally:
        gc.enable()
