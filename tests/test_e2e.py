"""End to end: simulated PBX (real AMI and FastAGI over loopback) + controller + real Redis.

Every generated call must reach the Redis stream with a consistent event sequence, and
the outcomes the controller stored must equal what the simulated Asterisk wrote in its
own queue_log, also when the AMI connection is dropped in the middle of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rigs import Rig, running_rig, stored_events

from ivr.domain.events import CallEvent
from ivr.domain.queue_log import parse_queue_log
from ivr.sim.config import AgentModel, SimConfig
from ivr.sim.traffic import TrafficGenerator
from ivr.storage.server import RedisServerProcess

QUEUE_LOG_OUTCOME = {
    "CONNECT": "answered",
    "ABANDON": "abandoned",
    "EXITWITHTIMEOUT": "timeout",
    "EXITWITHKEY": "exit_key",
    "EXITEMPTY": "leave_empty",
}


def _short_talks(cfg: SimConfig) -> None:
    """Agents talk 20 to 60 s, so that a run of minutes ends many calls."""
    cfg.agents = {ext: replace(model, talk_time=(20.0, 60.0)) for ext, model in cfg.agents.items()} or {
        ext: AgentModel(talk_time=(20.0, 60.0)) for ext in ("201", "202")
    }


def make_rig(redis_url: str, tmp_path: Path) -> contextlib.AbstractAsyncContextManager[Rig]:
    return running_rig(redis_url, tmp_path, seed=7, secret="e2e-secret", sim_setup=_short_talks, web=False)


@pytest.fixture
async def rig(redis_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    async with make_rig(redis_url, tmp_path) as made:
        yield made


async def _run_traffic(rig: Rig, calls: int, per_hour: float, during: Any = None) -> int:
    sim = rig.running.sim
    traffic_cfg = replace(sim.config.traffic, calls=calls, arrivals_per_hour=per_hour, duration=0.0)
    generator = TrafficGenerator(sim, traffic_cfg)
    task = asyncio.create_task(generator.run())
    if during is not None:
        await during(sim)
    await asyncio.wait_for(task, 120)
    await sim.idle(real_seconds=120)
    # let the last AMI events reach the controller before it stops
    await asyncio.sleep(0.5)
    await rig.controller.stop()
    return generator.stats.placed


def _by_call(events: list[CallEvent]) -> dict[str, list[CallEvent]]:
    calls: dict[str, list[CallEvent]] = defaultdict(list)
    for e in events:
        if e.call:
            calls[e.call].append(e)
    return calls


def _queue_log_outcomes(path: Path) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    for entry in parse_queue_log(path.read_text()):
        outcome = QUEUE_LOG_OUTCOME.get(entry.event)
        if outcome is not None and entry.callid not in outcomes:
            outcomes[entry.callid] = outcome
    return outcomes


def _check_sequence(call: str, events: list[CallEvent]) -> None:
    types = [e.type for e in sorted(events, key=lambda e: e.ts)]
    assert types.count("call.start") == 1, (call, types)
    assert types.count("call.end") == 1, (call, types)
    if "agent.connect" in types:
        assert "queue.join" in types and types.index("queue.join") < types.index("agent.connect"), types
    if "agent.complete" in types:
        assert types.index("agent.connect") < types.index("agent.complete"), types


async def test_two_hundred_calls_reach_redis_with_the_queue_log_outcomes(rig: Rig) -> None:
    placed = await _run_traffic(rig, 200, per_hour=1800)
    assert placed == 200
    events = await stored_events(rig.redis_url)
    calls = {
        call: evs
        for call, evs in _by_call(events).items()
        if any(e.type == "call.start" and e.data.get("kind") == "inbound" for e in evs)
    }
    assert len(calls) == 200
    for call, evs in calls.items():
        _check_sequence(call, evs)
    expected = _queue_log_outcomes(rig.queue_log)
    assert expected, "the simulated queue_log recorded no queue exits"
    ends = {call: next(e for e in evs if e.type == "call.end") for call, evs in calls.items()}
    for callid, outcome in expected.items():
        assert callid in ends, f"{callid} in queue_log but not in the stream"
        got = ends[callid].data["outcome"]
        assert got == outcome, (callid, got, outcome)
    # stored once: ids unique
    assert len({e.id for e in events}) == len(events)


async def test_dropped_ami_connection_loses_no_call(rig: Rig) -> None:
    async def drop_twice(sim: Any) -> None:
        for _ in range(2):
            await asyncio.sleep(1.5)
            assert rig.running.ami is not None
            rig.running.ami.drop_connections()

    placed = await _run_traffic(rig, 120, per_hour=2400, during=drop_twice)
    events = await stored_events(rig.redis_url)
    gaps = [e for e in events if e.type == "controller.gap"]
    assert len(gaps) >= 1
    assert rig.controller.ami.stats.reconnects >= 2
    by_call = _by_call(events)
    inbound = {call for call, evs in by_call.items() if any(e.type == "call.start" for e in evs)}
    queue_log_calls = set(_queue_log_outcomes(rig.queue_log))
    assert queue_log_calls <= inbound, sorted(queue_log_calls - inbound)[:5]
    assert len(inbound) >= placed * 0.95
    for call in inbound:
        types = [e.type for e in by_call[call]]
        assert "call.end" in types, (call, types)


async def test_redis_killed_and_restarted_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """The event log spools while Redis is away and drains in order when it returns."""
    server = RedisServerProcess(appendonly=True)
    server.start()
    try:
        async with make_rig(server.url, tmp_path) as rig:
            submitted: set[str] = set()
            submit = rig.controller.writer.submit

            def recording_submit(event: CallEvent) -> None:
                submitted.add(event.id)
                submit(event)

            rig.controller.writer.submit = recording_submit  # type: ignore[method-assign]

            async def kill_and_restart(sim: Any) -> None:
                await asyncio.sleep(1.0)
                server.kill()
                await asyncio.sleep(1.5)
                server.restart()

            placed = await _run_traffic(rig, 100, per_hour=2400, during=kill_and_restart)
            assert rig.controller.writer.stats.events_spooled > 0
        events = await stored_events(server.url)
        assert len({e.id for e in events}) == len(events), "an event was stored twice"
        assert {e.id for e in events} == submitted, "an event was lost"
        starts = {e.call for e in events if e.type == "call.start" and e.data.get("kind") == "inbound"}
        ends = {e.call for e in events if e.type == "call.end"}
        assert len(starts) == placed
        assert starts <= ends
        assert set(_queue_log_outcomes(rig.queue_log)) <= starts
    finally:
        server.stop()
