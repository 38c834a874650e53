"""The KPI engine (ivr.domain.kpi, ivr.domain.kpi_calls) and ``ivr report``.

What matters most: every definition gives the figure a person would count by hand, the
queue figures agree with Asterisk's own queue_log on every recording, and the figures do
not depend on the order, the repetition or the path (live / Redis) of the events.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import random
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from queue_log_stats import queue_log_stats

from ivr import kpi_cli
from ivr.domain.events import CallEvent, make_id
from ivr.domain.hours import schedule_from_mapping
from ivr.domain.kpi import (
    KpiAccumulator,
    KpiSettings,
    compute_report,
    percentile,
    report_document,
    report_to_csv,
)
from ivr.domain.kpi_calls import summarize_call
from ivr.domain.queue_log import QueueLogEntry, read_queue_log
from ivr.replay import replay_events

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
PARIS = ZoneInfo("Europe/Paris")
#: Wednesday 25 November 2026, 10:00 in Paris: an ordinary open day.
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=PARIS).timestamp()

_seq = itertools.count()


def ev(
    type_: str,
    call: str,
    ts: float,
    *,
    queue: str = "",
    agent: str = "",
    service: str = "caf",
    source: str = "ami",
    **data: Any,
) -> CallEvent:
    """A call event with a fresh id (each built event is a distinct happening)."""
    return CallEvent(
        type=type_,
        call=call,
        ts=ts,
        id=make_id(type_, call, ts, source, next(_seq)),
        service=service,
        queue=queue,
        agent=agent,
        source=source,
        data=data,
    )


def answered(
    call: str,
    t: float,
    *,
    queue: str = "support",
    wait: float = 10,
    talk: float = 60,
    agent: str = "Agent 201",
) -> list[CallEvent]:
    return [
        ev("call.start", call, t, caller_hash=f"h-{call}"),
        ev("agent.requested", call, t + 5, queue=queue, source="agi"),
        ev("queue.join", call, t + 6, queue=queue, position=1),
        ev("queue.leave", call, t + 6 + wait, queue=queue),
        ev("agent.connect", call, t + 6 + wait, queue=queue, agent=agent, wait_s=wait, ring_s=2),
        ev("agent.complete", call, t + 6 + wait + talk, queue=queue, agent=agent, wait_s=wait, talk_s=talk),
        ev("call.end", call, t + 7 + wait + talk),
    ]


def queued_then(call: str, t: float, ending: str, wait: float, *, queue: str = "support") -> list[CallEvent]:
    """Join, then leave the queue by ``ending`` (queue.abandon / queue.timeout / queue.exit_key)."""
    return [
        ev("call.start", call, t),
        ev("agent.requested", call, t + 5, queue=queue, source="agi"),
        ev("queue.join", call, t + 6, queue=queue),
        ev(ending, call, t + 6 + wait, queue=queue, wait_s=wait),
        ev("queue.leave", call, t + 6 + wait, queue=queue),
    ]


def _fields(event: CallEvent) -> Any:
    """Stream fields for redis-py's XADD (whose signature wants a wider dict type)."""
    return event.to_fields()


# -- queue_log as the reference ---------------------------------------------------------------


def events_from_queue_log(entries: Iterable[QueueLogEntry]) -> Iterator[CallEvent]:
    """The call events the AMI tracker produces for the queue calls of a queue_log.

    Mirrors Asterisk's AMI: a timeout emits QueueCallerAbandon as well (FACTS.md), so both
    queue.abandon and queue.timeout are produced for it.
    """
    started: set[str] = set()
    for e in entries:
        named = e.named()
        if e.event == "ENTERQUEUE":
            if e.callid not in started:
                started.add(e.callid)
                yield ev("call.start", e.callid, e.time, service="", caller_hash=named["callerid"])
            yield ev(
                "queue.join", e.callid, e.time, queue=e.queue, service="", position=int(named["position"])
            )
        elif e.event == "CONNECT":
            yield ev(
                "agent.connect",
                e.callid,
                e.time,
                queue=e.queue,
                agent=e.agent,
                service="",
                wait_s=int(named["holdtime"]),
                ring_s=int(named["ringtime"]),
            )
        elif e.event in ("COMPLETEAGENT", "COMPLETECALLER"):
            yield ev(
                "agent.complete",
                e.callid,
                e.time,
                queue=e.queue,
                agent=e.agent,
                service="",
                wait_s=int(named["holdtime"]),
                talk_s=int(named["talktime"]),
            )
            yield ev("call.end", e.callid, e.time, service="")
        elif e.event == "RINGNOANSWER":
            yield ev("agent.noanswer", e.callid, e.time, queue=e.queue, agent=e.agent, service="")
        elif e.event in ("ABANDON", "EXITWITHTIMEOUT", "EXITWITHKEY"):
            wait = int(named["waittime"])
            yield ev(
                "queue.abandon" if e.event != "EXITWITHKEY" else "queue.exit_key",
                e.callid,
                e.time,
                queue=e.queue,
                service="",
                wait_s=wait,
            )
            if e.event == "EXITWITHTIMEOUT":
                yield ev("queue.timeout", e.callid, e.time, queue=e.queue, service="", wait_s=wait)
            yield ev("call.end", e.callid, e.time, service="")


RECORDINGS = sorted(p.parent.name for p in FIXTURES.glob("*/queue_log"))


@pytest.mark.parametrize("scenario", RECORDINGS)
def test_queue_figures_agree_with_asterisk_queue_log(scenario: str) -> None:
    entries = read_queue_log(FIXTURES / scenario / "queue_log")
    ref = queue_log_stats(entries)
    report = compute_report(events_from_queue_log(entries))
    assert sorted(report["queues"]) == sorted(ref.queues)
    for name, fig in [*ref.queues.items(), ("", ref.overall)]:
        got = report["queues"][name] if name else report["overall"]
        want = fig.as_dict()
        for key in ("entered", "answered", "abandoned", "timeouts", "exit_with_key", "waiting"):
            assert got[key] == want[key], (scenario, name, key)
        assert got["pickup_rate"] == (None if want["pickup_rate"] is None else round(want["pickup_rate"], 4))
        assert got["asa_s"] == (None if want["asa_s"] is None else round(want["asa_s"], 3))
        assert got["wait_max_s"] == want["wait_max_s"]
        assert got["wait_p50_s"] == percentile(want["waits"], 50)
        assert got["wait_p90_s"] == percentile(want["waits"], 90)
        assert got["talk_total_s"] == sum(want["talk"])
    calls = {
        c["call"]: c["outcome"]
        for c in compute_report(events_from_queue_log(entries), include_calls=True)["calls"]
    }
    assert calls == ref.outcomes


TRANSCRIPTS = sorted(p.parent.name for p in FIXTURES.glob("*/ami.txt"))


@pytest.mark.parametrize("scenario", TRANSCRIPTS)
def test_replayed_recordings_agree_with_queue_log_and_the_tracker(scenario: str) -> None:
    """The real path: AMI transcript -> StateTracker -> call events -> KPIs, vs queue_log."""
    replayed = replay_events([FIXTURES / scenario])
    report = compute_report(replayed.events, include_calls=True)
    ref = queue_log_stats(read_queue_log(FIXTURES / scenario / "queue_log"))
    # a queue that only refused callers (join_empty) has no queue_log line at all
    assert set(ref.queues) <= set(report["queues"])
    assert all(report["queues"][q]["entered"] == 0 for q in set(report["queues"]) - set(ref.queues))
    for name, fig in ref.queues.items():
        got, want = report["queues"][name], fig.as_dict()
        for key in ("entered", "answered", "abandoned", "timeouts", "exit_with_key", "waiting", "wait_max_s"):
            assert got[key] == want[key], (scenario, name, key)
        assert got["pickup_rate"] == (None if want["pickup_rate"] is None else round(want["pickup_rate"], 4))
        assert got["asa_s"] == (None if want["asa_s"] is None else round(want["asa_s"], 3))
        assert got["wait_p90_s"] == percentile(want["waits"], 90)
        assert got["talk_total_s"] == sum(want["talk"])
    # one truth for each call's outcome: the KPI reducer and the tracker agree
    assert {c["call"]: c["outcome"] for c in report["calls"]} == {c.call: c.outcome for c in replayed.calls}
    # callback legs (originated by the dispatcher) are never callers asking for an agent
    legs = [c for c in replayed.calls if c.kind == "callback"]
    assert report["overall"]["calls"] == len(replayed.calls) - len(legs)


def test_join_empty_recording_counts_as_asked_not_handled() -> None:
    report = compute_report(replay_events([FIXTURES / "join_empty"]).events)
    o = report["overall"]
    assert (o["asked_for_agent"], o["handled_by_agent"], o["join_empty"], o["entered"]) == (1, 0, 1, 0)
    assert report["queues"]["empty"]["pickup_rate"] == 0.0


def test_mixed_recording_figures_by_hand() -> None:
    """mixed_a: 15 callers, 11 answered, 4 abandoned (queue_log read by eye)."""
    report = compute_report(events_from_queue_log(read_queue_log(FIXTURES / "mixed_a" / "queue_log")))
    o = report["overall"]
    assert (o["asked_for_agent"], o["handled_by_agent"], o["answered"], o["abandoned"]) == (15, 11, 11, 4)
    assert o["pickup_rate"] == round(11 / 15, 4)
    # answered waits 3 2 9 1 9 32 8 1 2 3 8 -> mean 78/11; abandons 6 7 27 6
    assert o["asa_s"] == round(78 / 11, 3)
    assert o["wait_max_s"] == 32
    # SL(20): every answered caller but the one who waited 32 s
    assert o["service_level"] == round(10 / 15, 4)
    assert o["service_level_asterisk"] == round(10 / 11, 4)
    assert o["service_level_asterisk2"] == round((10 + 3) / 15, 4)
    assert (
        report["agents"]["Local/201@agents"]["answered"] + report["agents"]["Local/202@agents"]["answered"]
        == 11
    )


# -- definitions, by hand ------------------------------------------------------------------------


def scenario_events() -> list[CallEvent]:
    """Eight calls covering every way of asking for (or not asking for) an agent."""
    t = T0
    evs = answered("c1", t, wait=10, talk=60)
    # c2: timed out after 60 s, took a callback that connected 10 minutes later
    evs += queued_then("c2", t + 100, "queue.timeout", 60)
    evs += [
        ev("callback.offered", "c2", t + 167, queue="support", source="agi"),
        ev("callback.requested", "c2", t + 170, queue="support", source="agi", callback_id="cb-2"),
        ev("call.end", "c2", t + 180),
        ev("callback.dialing", "c2", t + 770, queue="support", source="dispatcher", callback_id="cb-2"),
        ev(
            "callback.connected",
            "c2",
            t + 775,
            queue="support",
            source="dispatcher",
            callback_id="cb-2",
            agent="Agent 202",
        ),
    ]
    # c3: asked for an agent and chose a callback straight away; still pending
    evs += [
        ev("call.start", "c3", t + 200),
        ev("agent.requested", "c3", t + 205, queue="support", source="agi", action="callback"),
        ev("callback.requested", "c3", t + 210, queue="support", source="agi"),
        ev("call.end", "c3", t + 215),
    ]
    # c4: refused by an empty queue
    evs += [
        ev("call.start", "c4", t + 300),
        ev("agent.requested", "c4", t + 305, queue="support", source="agi"),
        ev("queue.join_empty", "c4", t + 306, queue="support"),
        ev("call.end", "c4", t + 307),
    ]
    # c5: asked, hung up before the queue
    evs += [
        ev("call.start", "c5", t + 400),
        ev("agent.requested", "c5", t + 405, queue="support", source="agi"),
        ev("call.end", "c5", t + 406),
    ]
    # c6: resolved in the IVR
    evs += [
        ev("call.start", "c6", t + 500),
        ev("ivr.start", "c6", t + 501, source="agi"),
        ev("ivr.menu", "c6", t + 502, source="agi", menu="main"),
        ev("ivr.end", "c6", t + 530, source="agi", action="hangup", reason="info"),
        ev("call.end", "c6", t + 531),
    ]
    # c7: a short abandon (3 s)
    evs += [*queued_then("c7", t + 600, "queue.abandon", 3), ev("call.end", "c7", t + 610)]
    # c8: took an appointment instead of waiting
    evs += [
        ev("call.start", "c8", t + 700),
        ev("agent.requested", "c8", t + 705, queue="support", source="agi", action="appointment"),
        ev("appointment.booked", "c8", t + 720, queue="support", source="agi"),
        ev("call.end", "c8", t + 721),
    ]
    return evs


def test_pickup_rate_and_companions_by_hand() -> None:
    report = compute_report(scenario_events(), include_calls=True)
    o = report["overall"]
    assert o["calls"] == 8
    assert o["asked_for_agent"] == 7  # all but c6
    assert o["handled_by_agent"] == 2  # c1 directly, c2 by callback
    assert (o["handled_immediately"], o["handled_by_callback"]) == (1, 1)
    assert o["pickup_rate"] == round(2 / 7, 4)
    assert o["immediate_pickup_rate"] == round(1 / 7, 4)
    assert o["ivr_only"] == 1
    assert o["global_rate"] == round(3 / 8, 4)
    assert o["service_level"] == round(1 / 7, 4)  # c1 answered after 10 s
    assert o["abandoned_before_queue"] == 1
    # queue visits: c1, c2, c7 entered; c4 refused at the door
    assert (o["entered"], o["answered"], o["abandoned"], o["abandoned_short"]) == (3, 1, 1, 1)
    assert (o["timeouts"], o["join_empty"], o["exit_with_key"], o["waiting"]) == (1, 1, 0, 0)
    assert o["abandon_rate"] == round(1 / 3, 4)
    assert o["abandon_rate_excl_short"] == 0.0
    assert o["asa_s"] == 10
    # finished waits 10, 60, 3 -> nearest rank: p50 = 2nd = 10, p90 = 3rd = 60
    assert (o["wait_p50_s"], o["wait_p90_s"], o["wait_max_s"]) == (10, 60, 60)
    assert o["service_level_asterisk"] == 1.0
    # (1 answered <= 20 + 1 abandoned <= 20 (c7; c2's 60 s timeout is not)) / (1 + 2)
    assert o["service_level_asterisk2"] == round(2 / 3, 4)
    assert o["talk_mean_s"] == 60
    cb = o["callbacks"]
    assert (cb["offered"], cb["requested"], cb["completed"], cb["pending"]) == (1, 2, 1, 1)
    assert cb["success_rate"] == 1.0  # 1 / (2 - 0 cancelled - 1 pending)
    assert cb["time_to_callback_p50_s"] == cb["time_to_callback_p90_s"] == 605
    assert o["appointments"] == 1
    assert o["outcomes"]["answered"] == 1
    assert o["outcomes"]["callback_requested"] == 2
    assert o["outcomes"]["join_empty"] == 1
    assert o["outcomes"]["abandoned_before_queue"] == 1
    assert o["outcomes"]["ivr_only"] == 1
    assert o["outcomes"]["abandoned"] == 1
    assert o["outcomes"]["appointment"] == 1
    outcomes = {c["call"]: c["outcome"] for c in report["calls"]}
    assert outcomes == {
        "c1": "answered",
        "c2": "callback_requested",
        "c3": "callback_requested",
        "c4": "join_empty",
        "c5": "abandoned_before_queue",
        "c6": "ivr_only",
        "c7": "abandoned",
        "c8": "appointment",
    }
    c1 = next(c for c in report["calls"] if c["call"] == "c1")
    assert (c1["caller"], c1["queue"], c1["wait_s"], c1["talk_s"], c1["agent"]) == (
        "h-c1",
        "support",
        10,
        60,
        "Agent 201",
    )
    # the queue row sees the same calls (everyone asked for "support")
    q = report["queues"]["support"]
    assert (q["asked_for_agent"], q["handled_by_agent"], q["pickup_rate"]) == (7, 2, round(2 / 7, 4))
    assert q["global_rate"] is None and q["ivr_only"] is None
    assert report["services"]["caf"]["asked_for_agent"] == 7


def test_callback_statuses_and_success_rate() -> None:
    evs: list[CallEvent] = []
    fates = {
        "k1": [("callback.connected", 120)],
        "k2": [("callback.retry", 300), ("callback.connected", 600)],
        "k3": [("callback.failed", 900)],
        "k4": [("callback.expired", 3600)],
        "k5": [("callback.cancelled", 60)],
        "k6": [],
    }
    for i, (call, steps) in enumerate(fates.items()):
        t = T0 + i * 1000
        evs += [
            ev("call.start", call, t),
            ev("callback.requested", call, t + 10, queue="support", source="agi"),
        ]
        evs += [
            ev("callback.dialing", call, t + 10 + d - 5, queue="support")
            for typ, d in steps
            if typ != "callback.cancelled"
        ]
        evs += [ev(typ, call, t + 10 + d, queue="support") for typ, d in steps]
        evs.append(ev("call.end", call, t + 15))
    cb = compute_report(evs)["overall"]["callbacks"]
    assert cb["requested"] == 6
    assert (cb["completed"], cb["failed"], cb["expired"], cb["cancelled"], cb["pending"]) == (2, 1, 1, 1, 1)
    assert cb["success_rate"] == 0.5  # 2 / (6 - 1 - 1)
    assert (cb["time_to_callback_p50_s"], cb["time_to_callback_p90_s"]) == (120, 600)
    o = compute_report(evs)["overall"]
    assert (o["asked_for_agent"], o["handled_by_agent"], o["handled_by_callback"]) == (6, 2, 2)


def test_a_timeout_reported_also_as_an_abandon_counts_once_as_a_timeout() -> None:
    evs = queued_then("a", T0, "queue.abandon", 30)
    evs.append(ev("queue.timeout", "a", T0 + 36, queue="support", wait_s=30, source="agi", status="TIMEOUT"))
    # the abandon may carry the reason itself
    evs += queued_then("b", T0 + 100, "queue.abandon", 30)
    evs[-2] = ev("queue.abandon", "b", T0 + 136, queue="support", wait_s=30, reason="timeout")
    o = compute_report(evs)["overall"]
    assert (o["entered"], o["timeouts"], o["abandoned"]) == (2, 2, 0)


def test_agi_and_ami_reports_of_one_ending_count_once() -> None:
    evs = [
        ev("call.start", "j", T0),
        ev("agent.requested", "j", T0 + 1, queue="support", source="agi"),
        ev("queue.join_empty", "j", T0 + 2, queue="support", source="ami"),
        ev("queue.join_empty", "j", T0 + 2.4, queue="support", source="agi", status="JOINEMPTY"),
        ev("call.end", "j", T0 + 5),
    ]
    evs += queued_then("k", T0 + 100, "queue.exit_key", 7)
    evs.append(ev("queue.exit_key", "k", T0 + 113.5, queue="support", source="agi", key="1", wait_s=7))
    # the exit-key script sends the caller back: a second stay in the queue
    evs += [
        ev("queue.join", "k", T0 + 115, queue="support"),
        ev("agent.connect", "k", T0 + 120, queue="support", agent="A", wait_s=5),
        ev("agent.complete", "k", T0 + 150, queue="support", agent="A", wait_s=5, talk_s=30),
    ]
    # and a caller refused twice, asking again in between, is refused twice
    evs += [
        ev("call.start", "r", T0 + 200),
        ev("agent.requested", "r", T0 + 201, queue="support", source="agi"),
        ev("queue.join_empty", "r", T0 + 202, queue="support"),
        ev("agent.requested", "r", T0 + 230, queue="support", source="agi"),
        ev("queue.join_empty", "r", T0 + 231, queue="support"),
    ]
    report = compute_report(evs, include_calls=True)
    o = report["overall"]
    assert o["join_empty"] == 3
    assert (o["entered"], o["exit_with_key"], o["answered"]) == (2, 1, 1)
    k = next(c for c in report["calls"] if c["call"] == "k")
    assert (k["outcome"], k["wait_s"]) == ("answered", 12)  # 7 s, then 5 s
    assert (o["asked_for_agent"], o["handled_by_agent"]) == (3, 1)


def test_overflow_between_queues() -> None:
    evs = queued_then("o", T0, "queue.timeout", 15, queue="support")
    evs += [
        ev("queue.join", "o", T0 + 22, queue="overflow"),
        ev("agent.connect", "o", T0 + 30, queue="overflow", agent="B", wait_s=8),
        ev("agent.complete", "o", T0 + 90, queue="overflow", agent="B", wait_s=8, talk_s=60),
    ]
    report = compute_report(evs, include_calls=True)
    o, sup, ovf = report["overall"], report["queues"]["support"], report["queues"]["overflow"]
    assert (o["asked_for_agent"], o["handled_by_agent"], o["entered"]) == (1, 1, 2)
    assert (sup["asked_for_agent"], sup["handled_by_agent"], sup["timeouts"], sup["pickup_rate"]) == (
        1,
        0,
        1,
        0.0,
    )
    assert (ovf["asked_for_agent"], ovf["handled_by_agent"], ovf["asa_s"], ovf["service_level"]) == (
        1,
        1,
        8,
        1.0,
    )
    # the caller waited 15 + 8 = 23 s in all: over the 20 s of SL(20) overall
    assert report["calls"][0]["wait_s"] == 23
    assert o["service_level"] == 0.0
    assert report["calls"][0]["queue"] == "overflow"
    assert compute_report(evs, KpiSettings(service_level_s=25))["overall"]["service_level"] == 1.0


def test_opening_hours_keep_closed_calls_apart() -> None:
    office = schedule_from_mapping({"mon-fri": "08:30-12:00, 13:30-17:00"})
    s = KpiSettings(schedules={"caf": office})
    evening = datetime(2026, 11, 25, 20, 0, tzinfo=PARIS).timestamp()
    evs = answered("day", T0) + queued_then("night", evening, "queue.abandon", 40)
    # the IVR told this caller it was closed (its clock, its decision) although the
    # schedule says open: what the caller heard wins
    evs += [
        ev("call.start", "told", T0 + 50),
        ev("ivr.end", "told", T0 + 55, source="agi", action="closed", reason="holiday"),
        ev("call.end", "told", T0 + 56),
    ]
    # an explicit in_hours flag wins too
    evs += queued_then("flag", evening + 60, "queue.abandon", 5)
    evs[-5] = ev("call.start", "flag", evening + 60, in_hours=True)
    report = compute_report(evs, s)
    assert report["overall"]["calls"] == 2  # day, flag
    assert report["overall"]["asked_for_agent"] == 2
    assert report["overall"]["pickup_rate"] == 0.5
    closed = report["out_of_hours"]
    assert (closed["calls"], closed["asked_for_agent"], closed["abandoned"]) == (2, 1, 1)
    # a service without its own schedule uses the "" default; none at all: always open
    assert compute_report(evs, KpiSettings(schedules={"": office}))["overall"]["calls"] == 2
    assert compute_report(evs)["overall"]["calls"] == 3  # only the IVR's "closed" remains apart


def test_satisfaction() -> None:
    evs = answered("s", T0)
    for score in (5, 4, 2, 7, "x", 0, 3.5):
        evs.append(ev("survey.answer", "s", T0 + 200, source="agi", score=score))
    sat = compute_report(evs)["overall"]["satisfaction"]
    assert sat == {"responses": 3, "mean": round(11 / 3, 3), "share_4_5": round(2 / 3, 4)}
    assert compute_report(answered("n", T0))["overall"]["satisfaction"] == {
        "responses": 0,
        "mean": None,
        "share_4_5": None,
    }


def test_short_abandon_threshold_is_configurable() -> None:
    evs = queued_then("a", T0, "queue.abandon", 4) + queued_then("b", T0 + 60, "queue.abandon", 5)
    assert compute_report(evs)["overall"]["abandoned_short"] == 1  # 4 < 5, 5 is not short
    assert compute_report(evs, KpiSettings(short_abandon_s=3))["overall"]["abandoned_short"] == 0
    o = compute_report(evs, KpiSettings(short_abandon_s=10))["overall"]
    assert (o["abandoned_short"], o["abandon_rate"], o["abandon_rate_excl_short"]) == (2, 1.0, None)


def test_hours_and_days_in_paris_time() -> None:
    # 25 Oct 2026: 02:30 happens twice in Paris (CEST, then CET)
    first = datetime(2026, 10, 25, 0, 30, tzinfo=ZoneInfo("UTC")).timestamp()
    second = first + 3600
    late = datetime(2026, 11, 26, 23, 30, tzinfo=ZoneInfo("UTC")).timestamp()  # 00:30 on the 27th in Paris
    evs = answered("x", first) + answered("y", second) + answered("z", late)
    report = compute_report(evs)
    assert list(report["hours"]) == [
        "2026-10-25T02:00+02:00",
        "2026-10-25T02:00+01:00",
        "2026-11-27T00:00+01:00",
    ]
    assert list(report["days"]) == ["2026-10-25", "2026-11-27"]
    assert report["days"]["2026-10-25"]["handled_by_agent"] == 2
    utc_report = compute_report(evs, KpiSettings(timezone="UTC"))
    assert list(utc_report["days"]) == ["2026-10-25", "2026-11-26"]


def test_percentile_nearest_rank() -> None:
    values = [15, 20, 35, 40, 50]  # the usual nearest-rank textbook example
    assert [percentile(values, p) for p in (5, 30, 40, 50, 100)] == [15, 20, 20, 35, 50]
    assert percentile([3, 1, 2], 50) == 2
    assert percentile([7], 90) == 7
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 0)
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_csv_has_one_row_per_block_with_the_json_values() -> None:
    report = compute_report(scenario_events())
    rows = list(csv.DictReader(io.StringIO(report_to_csv(report))))
    scopes = [(r["scope"], r["key"]) for r in rows]
    expected = [("overall", "")]
    expected += [("queue", k) for k in report["queues"]]
    expected += [("service", k) for k in report["services"]]
    expected += [("day", k) for k in report["days"]]
    expected += [("hour", k) for k in report["hours"]]
    expected.append(("out_of_hours", ""))
    assert scopes == expected
    overall = rows[0]
    o = report["overall"]
    assert overall["asked_for_agent"] == str(o["asked_for_agent"])
    assert overall["pickup_rate"] == str(o["pickup_rate"])
    assert overall["callbacks.success_rate"] == str(o["callbacks"]["success_rate"])
    assert overall["outcomes.answered"] == "1"
    assert rows[1]["global_rate"] == ""  # undefined ratio: empty cell


def test_range_selects_calls_by_start() -> None:
    evs = answered("before", T0 - 100) + scenario_events() + answered("after", T0 + 10_000)
    report = compute_report(evs, since=T0, until=T0 + 5_000, include_calls=True)
    assert {c["call"] for c in report["calls"]} == {f"c{i}" for i in range(1, 9)}
    # c2's callback connected after its own call ended: still counted for c2
    assert report["overall"]["handled_by_callback"] == 1
    assert report["range"]["since"] == "2026-11-25T10:00:00+01:00"


def test_calls_known_only_by_later_events_are_left_out() -> None:
    evs = [
        ev("callback.connected", "old", T0 + 50, queue="support"),
        ev("survey.answer", "old2", T0, score=5),
    ]
    report = compute_report(evs + answered("a", T0))
    assert report["partial_calls"] == 2
    assert report["overall"]["calls"] == 1
    assert report["overall"]["satisfaction"]["responses"] == 0


def test_a_callback_leg_is_not_a_new_caller() -> None:
    evs = [
        *answered("leg", T0)[2:],  # queued and answered...
        ev("call.start", "leg", T0, kind="callback", callback_of="c2"),  # ...but it is our own outgoing call
    ]
    o = compute_report(evs)["overall"]
    assert (o["calls"], o["asked_for_agent"], o["handled_by_agent"]) == (0, 0, 0)
    assert (o["entered"], o["answered"]) == (1, 1)  # Asterisk's queue counts it, so do the queue figures


def test_still_waiting_and_still_in_ivr() -> None:
    evs = [
        ev("call.start", "w", T0),
        ev("queue.join", "w", T0 + 1, queue="support"),
        ev("call.start", "i", T0),
        ev("ivr.menu", "i", T0 + 1, source="agi"),
    ]
    report = compute_report(evs, include_calls=True)
    o = report["overall"]
    assert (o["waiting"], o["entered"], o["asked_for_agent"], o["wait_max_s"]) == (1, 1, 1, None)
    assert {c["call"]: c["outcome"] for c in report["calls"]} == {"w": "in_queue", "i": "in_progress"}


def test_bad_and_incomplete_events() -> None:
    acc = KpiAccumulator()
    assert not acc.add(ev("queue.join", "x", math.nan, queue="support"))
    assert acc.rejected == 1
    assert not acc.add(ev("member.paused", "", T0, queue="support", agent="A"))
    assert not acc.add(ev("queue.join", "", T0, queue="support"))
    # a malformed wait falls back to the time since the join
    acc.add(ev("call.start", "m", T0))
    acc.add(ev("queue.join", "m", T0 + 1, queue="support"))
    acc.add(ev("queue.abandon", "m", T0 + 13, queue="support", wait_s="abc"))
    # the join was lost: rebuilt from the wait Asterisk gave
    acc.add(ev("call.start", "n", T0))
    acc.add(ev("agent.connect", "n", T0 + 20, queue="support", agent="A", wait_s=9))
    # the connect was lost: the completion proves the answer
    acc.add(ev("call.start", "p", T0))
    acc.add(ev("queue.join", "p", T0 + 1, queue="support"))
    acc.add(ev("agent.complete", "p", T0 + 40, queue="support", agent="A", wait_s=4, talk_s=35))
    m, n, p = acc.summary("m"), acc.summary("n"), acc.summary("p")
    assert m is not None and n is not None and p is not None
    assert (m.outcome, m.wait_s) == ("abandoned", 12)
    assert (n.outcome, n.wait_s, n.visits[0].join_ts) == ("answered", 9, T0 + 11)
    assert (p.outcome, p.wait_s, p.talk_s) == ("answered", 4, 35)
    assert acc.summary("nope") is None
    with pytest.raises(ValueError):
        summarize_call("empty", [])
    with pytest.raises(ValueError):
        KpiSettings(service_level_s=-1)


def test_extend_files_as_add_does() -> None:
    # extend (the bulk path of ivr report) and add (the live path) must file the same events
    evs = rich_events()
    odd = [
        ev("queue.join", "x", math.nan, queue="support"),
        ev("member.paused", "", T0, queue="support", agent="A"),
        ev("queue.join", "", T0, queue="support"),
    ]
    feed = [*evs, *odd, *evs[:5]]  # the repeats are dropped
    one, bulk = KpiAccumulator(), KpiAccumulator()
    assert bulk.extend(feed) == sum(1 for e in feed if one.add(e)) == len(evs)
    assert (bulk.rejected, len(bulk)) == (one.rejected, len(one)) == (1, len(one))
    assert bulk.report(include_calls=True) == one.report(include_calls=True)
    bulk.report()  # summaries cached: a late event must drop its call's one
    late = ev("survey.answer", evs[-3].call, T0 + 95, source="agi", score=5)
    one.add(late)
    assert bulk.extend([late]) == 1
    assert bulk.report(include_calls=True) == one.report(include_calls=True)


def test_forget_before_bounds_memory() -> None:
    acc = KpiAccumulator()
    acc.extend(answered("old", T0 - 100_000) + answered("new", T0))
    assert len(acc) == 2
    assert acc.forget_before(T0 - 1000) == 1
    assert len(acc) == 1
    assert acc.report()["overall"]["calls"] == 1


def test_queue_filter() -> None:
    evs = answered("s", T0, queue="support") + answered("t", T0 + 60, queue="tax", agent="B")
    report = compute_report(evs, queue="tax", include_calls=True)
    assert list(report["queues"]) == ["tax"]
    assert [c["call"] for c in report["calls"]] == ["t"]
    assert report["overall"]["asked_for_agent"] == 1
    assert list(report["agents"]) == ["B"]


# -- order, duplicates, live vs historical -------------------------------------------------------


def rich_events() -> list[CallEvent]:
    mixed = list(events_from_queue_log(read_queue_log(FIXTURES / "mixed_a" / "queue_log")))
    shift = T0 - mixed[0].ts + 10_000
    moved = [
        CallEvent(e.type, e.call, e.ts + shift, e.id, e.service, e.queue, e.agent, e.source, e.data)
        for e in mixed
    ]
    extra = scenario_events()
    extra += [ev("survey.answer", "c1", T0 + 90, source="agi", score=4)]
    extra += [ev("controller.gap", "", T0 + 50, source="controller", seconds=3)]
    return moved + extra


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.lists(st.integers(min_value=0, max_value=10**6), max_size=40))
def test_order_and_duplicates_do_not_change_the_figures(rng: random.Random, dups: list[int]) -> None:
    evs = rich_events()
    reference = compute_report(evs, include_calls=True)
    shuffled = evs + [evs[i % len(evs)] for i in dups]
    rng.shuffle(shuffled)
    assert compute_report(shuffled, include_calls=True) == reference


def test_live_and_historical_agree_at_every_step() -> None:
    """The live accumulator fed in arrival order vs recomputations from stored copies."""
    evs = sorted(rich_events(), key=lambda e: e.ts)
    live = KpiAccumulator()
    stored: list[dict[str, str]] = []
    for i, e in enumerate(evs):
        live.add(e)
        stored.append(e.to_fields())
        if i % 17 == 0 or i == len(evs) - 1:
            read_back = [CallEvent.from_fields(f) for f in reversed(stored)]
            assert compute_report(read_back, include_calls=True) == live.report(include_calls=True)
    # and any range
    since, until = T0 + 300, T0 + 12_000
    assert compute_report(evs, since=since, until=until) == live.report(since, until)


async def test_report_from_redis_equals_the_live_figures(redis_client: redis.asyncio.Redis) -> None:
    evs = sorted(rich_events(), key=lambda e: e.ts)
    live = KpiAccumulator()
    live.extend(evs)
    for e in evs:
        await redis_client.xadd("test:events", _fields(e), id=f"{math.floor(e.ts * 1000)}-*")
    # a duplicate stored twice (a spool replay) changes nothing
    await redis_client.xadd("test:events", _fields(evs[3]), id=f"{math.floor(evs[-1].ts * 1000)}-*")
    settings_ = KpiSettings()
    whole = await kpi_cli.report_from_redis(
        redis_client, settings_, stream_key="test:events", include_calls=True
    )
    assert whole == live.report(include_calls=True)
    since, until = T0 + 300, T0 + 12_000
    part = await kpi_cli.report_from_redis(
        redis_client, settings_, since=since, until=until, stream_key="test:events"
    )
    assert part == live.report(since, until)
    assert part["overall"]["calls"] > 0


# -- ivr report ------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ivr")
    sub = parser.add_subparsers(dest="command")
    kpi_cli.add_parser(sub)
    return parser.parse_args(argv)


def test_parse_when() -> None:
    now = datetime(2026, 11, 25, 15, 0, tzinfo=PARIS).timestamp()
    assert kpi_cli.parse_when("2026-11-25", PARIS) == datetime(2026, 11, 25, tzinfo=PARIS).timestamp()
    assert kpi_cli.parse_when("2026-11-25T10:00", PARIS) == T0
    assert kpi_cli.parse_when("2026-11-25T09:00+00:00", PARIS) == T0
    assert kpi_cli.parse_when("1795751253", PARIS) == 1795751253
    assert kpi_cli.parse_when("1795751253.5", PARIS) == 1795751253.5
    assert kpi_cli.parse_when("today", PARIS, now=now) == datetime(2026, 11, 25, tzinfo=PARIS).timestamp()
    assert kpi_cli.parse_when("yesterday", PARIS, now=now) == datetime(2026, 11, 24, tzinfo=PARIS).timestamp()
    assert kpi_cli.parse_when("now", PARIS, now=now) == now
    for bad in ("next week", "2026-13-45", "-5", "nan", ""):
        with pytest.raises(ValueError, match="invalid time"):
            kpi_cli.parse_when(bad, PARIS)


async def _store(url: str, events: list[CallEvent]) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        for e in sorted(events, key=lambda e: e.ts):
            await client.xadd("ivr:events", _fields(e), id=f"{math.floor(e.ts * 1000)}-*")
    finally:
        await client.aclose()


def test_report_command(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    evs = scenario_events()
    asyncio.run(_store(redis_url, evs))
    base = ["report", "--redis", redis_url, "--since", "2026-11-25", "--until", "2026-11-26"]
    assert kpi_cli.run(_parse([*base, "--json"])) == 0
    got = json.loads(capsys.readouterr().out)
    want = compute_report(
        evs,
        since=kpi_cli.parse_when("2026-11-25", PARIS),
        until=kpi_cli.parse_when("2026-11-26", PARIS),
        include_calls=True,
    )
    assert got == json.loads(json.dumps(report_document(want)))
    assert sorted(c["call"] for c in got["calls"]) == [f"c{i}" for i in range(1, 9)]
    assert got["kpi"]["overall"]["asked_for_agent"] == 7
    assert kpi_cli.run(_parse([*base, "--json", "--no-calls"])) == 0
    assert json.loads(capsys.readouterr().out)["calls"] == []
    assert kpi_cli.run(_parse([*base, "--csv", "--queue", "support"])) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["asked_for_agent"] == "7"
    assert kpi_cli.run(_parse(base)) == 0
    text = capsys.readouterr().out
    assert "pickup rate 28.6 %" in text
    assert "support" in text
    # nothing in another range
    assert kpi_cli.run(_parse(["report", "--redis", redis_url, "--since", "2027-01-01", "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["kpi"]["overall"]["calls"] == 0


def test_report_command_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert kpi_cli.run(_parse(["report", "--since", "soon"])) == 2
    assert "invalid time 'soon'" in capsys.readouterr().err
    assert kpi_cli.run(_parse(["report", "--since", "2026-11-26", "--until", "2026-11-25"])) == 2
    assert "--until must be after --since" in capsys.readouterr().err
    assert kpi_cli.run(_parse(["report", "--timezone", "Mars/Olympus"])) == 2
    capsys.readouterr()
    missing = tmp_path / "nope.toml"
    assert kpi_cli.run(_parse(["report", "--config", str(missing)])) == 2
    capsys.readouterr()
    # nothing listens on port 1
    assert kpi_cli.run(_parse(["report", "--redis", "redis://127.0.0.1:1/0"])) == 1
    assert "cannot read the event stream" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["report", "--json", "--csv"])
    with pytest.raises(SystemExit):
        _parse(["report", "--service-level", "-3"])
