"""Historical KPIs: recompute a 50,000-call day (about 550,000 events) from the Redis stream.

What is timed is ``ivr report`` for one day without the printing: ``report_from_redis`` over
``[midnight, midnight)`` of the day, i.e. reading the stream (XRANGE batches, with the
report's look-behind and look-ahead margins), decoding each entry into a ``CallEvent``,
folding every call and computing the report (overall, queues, services, hours, agents, out of
hours). Goal: < 5 s on one core.

The events are **synthesised**, not simulated: the simulator plus the state tracker cost
about 1.5 ms of CPU per call (over a minute for 50,000 calls, only to prepare the data),
and a simulated day without FastAGI has no IVR events. The synthetic day is built to look
like what the controller stores for an IVR line, with the event types, sources, ids and
``data`` keys that the state tracker (``ivr.domain.state``), the IVR flow
(``ivr.domain.ivr_flow``) and the callback service (``ivr.callbacks``) emit: per call
``call.start``, ``ivr.start``, ``ivr.menu`` (``ivr.invalid`` and a second menu now and then),
``ivr.input``, then either an IVR-only ending, the closed message (out of hours), a callback
request (with its dialing / connected / failed / expired events and the outgoing leg's own
call), a refused join, or ``agent.requested``, ``ivr.end``, ``queue.join``, ring attempts
(``agent.ring`` / ``agent.noanswer``) and an ending -- answered (``agent.connect``,
``agent.complete``, sometimes a ``survey.answer``), abandoned, timeout or exit with a key
-- and ``call.end`` with the tracker's summary. Four services with their real opening hours
(``ivr/data/default.toml``), Poisson arrivals from 07:30 to 18:30 on a Tuesday, waits,
patience and talk times drawn from a seeded ``random.Random``.

The events are stored by the real :class:`~ivr.storage.writer.EventLogWriter` into a private
``redis-server`` (``ivr.storage.server``), untimed. The recomputed report is checked against
the same events folded in memory (``compute_report``), so a fast but wrong reader fails here.

    python bench/kpi_recompute.py --json [--calls 50000] [--seed S] [--repeat R]

Prints ``calls``, ``events``, ``seconds`` (best of ``--repeat`` runs, wall clock),
``events_per_s``, ``cpu_seconds`` (client process), the untimed ``write_seconds``,
``hiredis`` (whether redis-py parses replies in C, as the reader expects: see
``ivr/storage/reader.py``) and ``load_avg_1m``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import redis.asyncio
import structlog
from _common import emit
from redis.utils import HIREDIS_AVAILABLE

from ivr.config import default_config
from ivr.domain.events import CallEvent, Scalar, make_id
from ivr.domain.kpi import KpiSettings, compute_report
from ivr.kpi_cli import report_from_redis, settings_from_config
from ivr.storage.server import RedisServerProcess
from ivr.storage.writer import EventLogWriter

PARIS: Final = ZoneInfo("Europe/Paris")
#: Tuesday 18 November 2025, long past: stream ids (Asterisk time) stay behind the Redis clock.
DAY: Final = datetime(2025, 11, 18, tzinfo=PARIS)
#: (service = queue, share of the calls, agents) as in ivr/data/default.toml.
SERVICES: Final = (("caf", 0.4, 30), ("france-travail", 0.3, 22), ("cpam", 0.2, 15), ("carsat", 0.1, 8))
#: Relative arrival rate of each hour of the day (07:00 .. 18:00): a morning peak.
HOURLY: Final = (0.4, 1.6, 1.8, 1.5, 1.2, 0.8, 1.0, 1.2, 1.1, 0.9, 0.6, 0.3)


@dataclass
class _Call:
    """The events of one call, built in time order."""

    uid: str
    service: str
    caller_hash: str
    events: list[CallEvent] = field(default_factory=list)
    seq: int = 0

    def add(
        self,
        type_: str,
        ts: float,
        *,
        source: str = "ami",
        queue: str = "",
        agent: str = "",
        call: str | None = None,
        extra: dict[str, Scalar] | None = None,
        **data: Scalar,
    ) -> None:
        """Append one event; ``data`` and ``extra`` (shared fields) make its ``data``."""
        if extra:
            data.update(extra)
        self.seq += 1
        self.events.append(
            CallEvent(
                type=type_,
                call=self.uid if call is None else call,
                ts=round(ts, 6),
                id=make_id(source, self.uid, type_, self.seq),
                service=self.service,
                queue=queue,
                agent=agent,
                source=source,
                data=data,
            )
        )


def synthesise(calls: int, seed: int, settings: KpiSettings) -> list[CallEvent]:
    """A realistic day of ``calls`` calls (see the module docstring), in time order."""
    rng = random.Random(seed)
    start = DAY.replace(hour=7, minute=30).timestamp()
    end = DAY.replace(hour=18, minute=30).timestamp()
    # A Poisson day with ``calls`` arrivals: each arrival falls in an hour with probability
    # proportional to that hour's rate times its length inside [start, end), then uniformly.
    spans: list[tuple[float, float]] = []
    weights_h: list[float] = []
    for i, weight in enumerate(HOURLY):
        lo = max(start, DAY.replace(hour=7 + i).timestamp())
        hi = min(end, DAY.replace(hour=8 + i).timestamp())
        if hi > lo:
            spans.append((lo, hi))
            weights_h.append(weight * (hi - lo))
    arrivals = [rng.uniform(*span) for span in rng.choices(spans, weights_h, k=calls)]
    arrivals.sort()
    names = [s for s, _, _ in SERVICES]
    weights = [w for _, w, _ in SERVICES]
    agents = {s: [f"PJSIP/{s[:3]}-{i:02d}" for i in range(n)] for s, _, n in SERVICES}
    out: list[CallEvent] = []
    for n, t0 in enumerate(arrivals):
        service = rng.choices(names, weights)[0]
        call = _Call(f"{int(t0)}.{n}", service, f"{rng.getrandbits(64):016x}")
        _one_call(call, t0, rng, settings, agents[service])
        out.extend(call.events)
    for i in range(200):  # supervisors pausing agents: no call, ignored by the KPIs
        service = rng.choice(names)
        ts = start + rng.random() * (end - start)
        member = rng.choice(agents[service])
        kind = "member.paused" if i % 2 == 0 else "member.unpaused"
        out.append(
            CallEvent(
                type=kind,
                call="",
                ts=round(ts, 6),
                id=make_id("member", i),
                queue=service,
                agent=member,
                data={"interface": member, "member_name": member, "paused": i % 2 == 0},
            )
        )
    out.sort(key=lambda e: e.ts)
    return out


def _one_call(c: _Call, t: float, rng: random.Random, settings: KpiSettings, members: list[str]) -> None:
    q = c.service
    open_now = settings.in_hours(q, t)
    c.add("call.start", t, channel=f"PJSIP/trunk-{c.uid}", kind="inbound")
    t += 0.4
    c.add("ivr.start", t, source="agi", script="ivr", lang="fr", in_hours=open_now)
    t += rng.uniform(1.5, 4)
    if not open_now:
        c.add("ivr.end", t + 6, source="agi", action="closed", reason="closed", lang="fr")
        _end(c, t + 7, "ivr_only", asked=False)
        return
    c.add("ivr.menu", t, source="agi", menu="main", attempt=1, lang="fr")
    t += rng.uniform(3, 12)
    if rng.random() < 0.08:
        c.add("ivr.invalid", t, source="agi", menu="main", reason="invalid", keys="7", attempt=1)
        t += 2
        c.add("ivr.menu", t, source="agi", menu="main", attempt=2, lang="fr")
        t += rng.uniform(3, 8)
    roll = rng.random()
    if roll < 0.12:  # information only
        c.add("ivr.input", t, source="agi", menu="main", key="1", choice="info", target="info-horaires")
        c.add("ivr.end", t + 25, source="agi", action="hangup", reason="info", lang="fr")
        _end(c, t + 26, "ivr_only", asked=False)
        return
    c.add("ivr.input", t, source="agi", menu="main", key="3", choice="queue", target=q)
    if roll < 0.17:  # a callback instead of the wait
        _callback(c, t, rng, members)
        return
    c.add("agent.requested", t, source="agi", queue=q, action="queue", reason=q, priority=0, case_given=False)
    t += rng.uniform(2, 4)
    c.add("ivr.end", t, source="agi", queue=q, action="queue", reason=q, lang="fr")
    t += 0.2
    if roll < 0.19:  # nobody logged in: refused
        c.add("queue.join_empty", t, queue=q, status="JOINEMPTY")
        _end(c, t + 1, "join_empty", queue=q, queue_outcome="join_empty")
        return
    c.add("queue.join", t, queue=q, position=rng.randint(1, 12), count=rng.randint(1, 12))
    wait = rng.expovariate(1 / 45)
    patience = rng.uniform(2, 600)
    timeout = 180.0
    if roll < 0.21:  # exit with a key
        w = min(wait, patience, rng.uniform(10, 60))
        c.add("queue.exit_key", t + w, queue=q, position=1, original_position=2, wait_s=int(w), key="1")
        c.add("queue.leave", t + w, queue=q, position=1, count=3)
        _end(c, t + w + 3, "exit_key", queue=q, wait_s=int(w), queue_outcome="exit_key")
        return
    ring_at = t + max(0.0, wait - 15)
    if wait > 20 and rng.random() < 0.3:
        agent = rng.choice(members)
        c.add("agent.ring", ring_at - 16, queue=q, agent=agent, member_name=agent)
        c.add("agent.noanswer", ring_at - 1, queue=q, agent=agent, ring_ms=15000, member_name=agent)
    if wait < patience and wait < timeout:
        agent = rng.choice(members)
        ring_s = rng.randint(1, 6)
        connect = t + wait
        talk = rng.uniform(45, 420)
        c.add("agent.ring", connect - ring_s, queue=q, agent=agent, member_name=agent)
        c.add("queue.leave", connect, queue=q, position=1, count=rng.randint(0, 8))
        c.add(
            "agent.connect",
            connect,
            queue=q,
            agent=agent,
            wait_s=int(wait),
            ring_s=ring_s,
            member_name=agent,
            member_uniqueid=f"{int(connect)}.{c.uid}",
            original_position=2,
        )
        done = connect + talk
        c.add(
            "agent.complete",
            done,
            queue=q,
            agent=agent,
            wait_s=int(wait),
            talk_s=int(talk),
            reason=rng.choice(("caller", "agent")),
            member_name=agent,
            original_position=2,
        )
        if rng.random() < 0.25:
            c.add(
                "survey.answer",
                done + 8,
                source="agi",
                queue=q,
                agent=agent,
                score=rng.choice((2, 3, 4, 5, 5)),
            )
        _end(c, done + 12, "answered", queue=q, agent=agent, wait_s=int(wait), talk_s=int(talk))
        return
    gone = min(patience, timeout)
    kind = "queue.timeout" if timeout <= patience else "queue.abandon"
    extra: dict[str, Scalar] = {"status": "TIMEOUT"} if kind == "queue.timeout" else {}
    c.add(kind, t + gone, queue=q, position=1, original_position=3, wait_s=int(gone), extra=extra)
    c.add("queue.leave", t + gone, queue=q, position=1, count=4)
    outcome = "timeout" if kind == "queue.timeout" else "abandoned"
    _end(c, t + gone + 0.5, outcome, queue=q, wait_s=int(gone), queue_outcome=outcome)


def _callback(c: _Call, t: float, rng: random.Random, members: list[str]) -> None:
    q = c.service
    cb = f"cb-{c.uid}"
    c.add(
        "agent.requested", t, source="agi", queue=q, action="callback", reason=q, priority=0, case_given=True
    )
    c.add("callback.offered", t + 1, source="agi", queue=q, reason="estimated_wait")
    c.add("ivr.end", t + 6, source="agi", queue=q, action="callback", reason=q, lang="fr")
    common: dict[str, Scalar] = {"callback_id": cb, "original_join_ts": round(t, 3)}
    c.add(
        "callback.requested",
        t + 6,
        source="callback",
        queue=q,
        number_kind="mobile",
        attempts=0,
        extra=common,
    )
    _end(c, t + 8, "callback_requested", queue=q, queue_outcome="")
    fate = rng.random()
    if fate < 0.05:
        return  # still pending at the end of the day
    dial = t + rng.uniform(120, 3600)
    c.add("callback.dialing", dial, source="callback", queue=q, attempt=1, extra=common)
    if fate < 0.85:
        c.add("callback.connected", dial + 20, source="callback", queue=q, attempt=1, extra=common)
        leg = f"{int(dial)}.cb{c.uid}"
        agent = rng.choice(members)
        talk = rng.uniform(60, 300)
        leg_events: tuple[tuple[str, float, dict[str, Scalar]], ...] = (
            ("call.start", dial, {"channel": f"Local/cb-{leg};2", "kind": "callback"}),
            ("queue.join", dial + 1, {"position": 1, "count": 1}),
            (
                "agent.connect",
                dial + 4,
                {"wait_s": 3, "ring_s": 3, "member_name": agent, "original_position": 1},
            ),
            ("agent.complete", dial + 4 + talk, {"wait_s": 3, "talk_s": int(talk), "reason": "agent"}),
            (
                "call.end",
                dial + 5 + talk,
                {"outcome": "answered", "kind": "callback", "asked_for_agent": True},
            ),
        )
        for type_, ts, data in leg_events:
            c.add(
                type_,
                ts,
                call=leg,
                queue=q if type_ != "call.start" else "",
                agent=agent if type_.startswith("agent.") else "",
                callback_id=cb,
                extra=data,
            )
    elif fate < 0.95:
        c.add("callback.failed", dial + 30, source="callback", queue=q, reason="no_answer", extra=common)
    else:
        c.add("callback.expired", dial + 7200, source="callback", queue=q, extra=common)


def _end(
    c: _Call,
    ts: float,
    outcome: str,
    *,
    asked: bool = True,
    queue: str = "",
    agent: str = "",
    wait_s: int | None = None,
    talk_s: int | None = None,
    queue_outcome: str | None = None,
) -> None:
    data: dict[str, Scalar] = {
        "outcome": outcome,
        "kind": "inbound",
        "asked_for_agent": asked,
        "attempts": 1 if queue else 0,
        "duration_s": 0,
        "cause": "16",
        "caller_hash": c.caller_hash,
    }
    if wait_s is not None:
        data["wait_s"] = wait_s
    if talk_s is not None:
        data["talk_s"] = talk_s
    if queue_outcome is not None or outcome == "answered":
        data["queue_outcome"] = queue_outcome or outcome
    c.add("call.end", ts, queue=queue, agent=agent, extra=data)


# -- storing and timing ----------------------------------------------------------------------------


async def store(url: str, events: list[CallEvent], spool_dir: str) -> float:
    """Write the events with the controller's writer; seconds taken (not part of the figure)."""
    started = time.perf_counter()
    writer = EventLogWriter(
        url,
        spool_path=Path(spool_dir) / "spool.jsonl",
        batch_size=2000,
        max_pending=len(events) + 1,
        fsync=False,
    )
    async with writer:
        for event in events:
            writer.submit(event)
        await writer.wait_drained()
    if writer.stats.events_written != len(events):
        raise RuntimeError(f"stored {writer.stats.events_written} of {len(events)} events: {writer.stats}")
    return time.perf_counter() - started


async def recompute(url: str, settings: KpiSettings, repeat: int) -> tuple[float, float, dict[str, Any]]:
    """Best wall and CPU seconds of ``repeat`` recomputations of the day, and the report."""
    since = DAY.timestamp()
    until = (DAY + timedelta(days=1)).timestamp()
    best_wall = best_cpu = float("inf")
    report: dict[str, Any] = {}
    for _ in range(repeat):
        client = redis.asyncio.Redis.from_url(url)
        try:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            report = await report_from_redis(client, settings, since=since, until=until)
            best_wall = min(best_wall, time.perf_counter() - wall0)
            best_cpu = min(best_cpu, time.process_time() - cpu0)
        finally:
            await client.aclose()
    return best_wall, best_cpu, report


async def run(calls: int, seed: int, repeat: int) -> dict[str, Any]:
    settings = settings_from_config(default_config())
    events = synthesise(calls, seed, settings)
    n_events = len(events)
    expected = compute_report(
        events, settings, since=DAY.timestamp(), until=(DAY + timedelta(days=1)).timestamp()
    )
    with tempfile.TemporaryDirectory(prefix="kpi-bench-") as spool_dir, RedisServerProcess() as server:
        write_s = await store(server.url, events, spool_dir)
        # ``ivr report`` holds nothing else: the half million events made here are let go
        # before the timed runs, so as not to time a process carrying them as well
        del events
        seconds, cpu, report = await recompute(server.url, settings, repeat)
    if report != expected:
        raise RuntimeError("the report recomputed from Redis differs from the in-memory one")
    overall, closed = report["overall"], report["out_of_hours"]
    if overall["calls"] + closed["calls"] != calls:
        raise RuntimeError(f"{overall['calls']} + {closed['calls']} calls reported, {calls} made")
    return {
        "calls": calls,
        "events": n_events,
        "seconds": round(seconds, 3),
        "events_per_s": round(n_events / seconds),
        "cpu_seconds": round(cpu, 3),
        "write_seconds": round(write_s, 2),
        "pickup_rate": overall["pickup_rate"],
        "hiredis": HIREDIS_AVAILABLE,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=20251118)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeat < 1:
        parser.error("--calls and --repeat must be >= 1")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    emit(asyncio.run(run(args.calls, args.seed, args.repeat)), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
