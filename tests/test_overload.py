"""Overload with callbacks: a seeded simulation of 2,000 calls on the shipped dialplan.

The simulator's ``overflow`` profile (``ivr/sim/product.toml``: about twice the agents'
capacity) runs against the controller and a real Redis, fast. As the profile says
(``[traffic] callback_share``), 60 % of the callers take the callback they are offered: their
DTMF script goes on, after the menu keys, with a 1 every three seconds -- "call me back on
this number", then "confirm" once it has been read back; from the queue the same key is the
exit key, which leads to the same offer. The rest wait.

From what the run leaves behind -- the event log in Redis, the callback store, and what the
simulated PBX itself saw -- the guarantees of DESIGN.md ("Overflow and callback") are
checked for every request:

* **never two dials in flight**: the PBX never has two live legs of one request, and in the
  log each ``callback.dialing`` is settled before the next;
* **never dialled again after it connected**: no leg, no ``callback.dialing`` after the
  customer answered;
* **never forgotten**: every callback the IVR confirmed (``ivr.end`` with its id) was
  requested, and every request ends completed, failed, expired or cancelled, or is still
  pending in the store (the service closed before its turn came) -- none stuck dialling;
* **original join order**: when a request is dialled, the callers still waiting in its
  queue who joined before it (its original join time) are fewer than the agents not in a
  call -- it never overtakes an earlier caller for want of agents.

And the point of it all: the same seeded traffic with callbacks disabled gives a lower
pickup rate (calls handled by an agent / calls asking for one).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ivr.callbacks.dispatcher import DispatchSettings
from ivr.callbacks.store import CallbackRequest
from ivr.config import Config, default_config
from ivr.demo import start_with_controller
from ivr.domain.events import CallEvent
from ivr.domain.hours import is_open
from ivr.domain.kpi import KpiAccumulator, report_document
from ivr.sim.conf_loader import product_config
from ivr.sim.config import SimConfig
from ivr.sim.traffic import TrafficGenerator
from ivr.storage.reader import read_range
from ivr.storage.writer import make_client

CALLS = 2000
SEED = 20
SPEED = 400.0
#: The queues' wrap-up time (queues.conf's wrapuptime, as configured): an agent is not free that long.
WRAPUP_S = max(q.wrapup_s for q in default_config().queues.values())
#: Real seconds the run may take after the last call arrived.
DRAIN_LIMIT_S = 600.0


def overload_sim(accept: bool, queue_log: Path) -> SimConfig:
    """The ``overflow`` profile with ``CALLS`` calls; without ``accept`` nobody takes a callback.

    Both variants draw the same callers (``callback_keys = ""`` keeps the profile's draws and
    presses nothing), so the same seed gives the same arrivals, numbers, lines, patience and
    menu keys: only the callback keys differ.
    """
    cfg = product_config("overflow")
    cfg.queue_log = str(queue_log)
    keys = cfg.traffic.callback_keys if accept else ""
    cfg.traffic = replace(cfg.traffic, calls=CALLS, duration=0.0, callback_keys=keys)
    return cfg


@dataclass
class Legs:
    """What the PBX saw of the callback legs: live legs per request, answers, dials after one."""

    live: dict[str, str] = field(default_factory=dict)
    active: Counter[str] = field(default_factory=Counter)
    max_active: Counter[str] = field(default_factory=Counter)
    dials: Counter[str] = field(default_factory=Counter)
    answered: set[str] = field(default_factory=set)
    dialled_after_answer: Counter[str] = field(default_factory=Counter)
    confirmed: set[str] = field(default_factory=set)

    def listener(self, name: str, headers: Iterable[tuple[str, str]]) -> None:
        if name not in ("VarSet", "DialEnd", "Hangup"):
            return
        h = dict(headers)
        channel = h.get("Channel", "")
        if name == "VarSet":
            if h.get("Variable") != "IVR_CALLBACK_ID":
                return
            if h.get("ChannelState") == "6":  # set by the IVR on the caller's answered channel
                if h.get("Value"):
                    self.confirmed.add(h["Value"])
                return
            if not channel.endswith(";1") or channel in self.live:
                return  # the originated half only, once
            cid = h.get("Value", "")
            self.live[channel] = cid
            self.active[cid] += 1
            self.dials[cid] += 1
            self.max_active[cid] = max(self.max_active[cid], self.active[cid])
            if cid in self.answered:
                self.dialled_after_answer[cid] += 1
        elif name == "DialEnd":
            dialled = self.live.get(channel)
            if dialled is not None and h.get("DialStatus") == "ANSWER":
                self.answered.add(dialled)
        else:
            gone = self.live.pop(channel, None)
            if gone is not None:
                self.active[gone] -= 1


@dataclass
class Outcome:
    events: list[CallEvent]
    kpi: dict[str, Any]
    legs: Legs
    store: dict[str, CallbackRequest]
    members: Mapping[str, tuple[str, ...]]
    placed: int


def dispatch_settings() -> DispatchSettings:
    return DispatchSettings(
        poll_interval_s=0.05, check_interval_s=1.0, outcome_grace_s=2.0, sweep_interval_s=300.0, lease_s=3.0
    )


async def simulate(redis_url: str, tmp_path: Path, *, callbacks: bool) -> Outcome:
    """One seeded run until the callers are done and the dispatcher has nothing left to dial today."""
    base = default_config()
    config: Config = replace(base, callbacks=replace(base.callbacks, enabled=callbacks))
    cfg = overload_sim(callbacks, tmp_path / f"queue_log-{callbacks}")
    running, controller = await start_with_controller(
        config,
        cfg,
        seed=SEED,
        speed=SPEED,
        secret="overload",
        redis_url=redis_url,
        spool_path=str(tmp_path / f"spool-{callbacks}.jsonl"),
        connect_timeout_s=10,
        web=False,
        dispatch=dispatch_settings(),
        appointment_poll_s=1.0,
        callback_grace_s=2.0,
    )
    sim = running.sim
    legs = Legs()
    sim.add_listener(legs.listener)  # no call yet: the generator starts them below
    store: dict[str, CallbackRequest] = {}
    try:
        generator = TrafficGenerator(sim)
        await asyncio.wait_for(generator.run(), 600)
        # Then until every call has ended and the dispatcher has nothing it may dial today.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_LIMIT_S
        while loop.time() < deadline:
            await asyncio.sleep(0.5)
            if sim.channels:
                continue
            if not callbacks:
                break
            assert controller.callback_store is not None and controller.dispatcher is not None
            pending = await controller.callback_store.open_requests(10_000)
            now = controller.clock()
            if controller.dispatcher.in_flight == 0 and not any(
                r.status == "dialing" or is_open(config.services[r.service].hours, now) for r in pending
            ):
                break
        await asyncio.sleep(0.5)
        if controller.callback_store is not None:
            cb = controller.callback_store
            for req in await cb.open_requests(100_000) + await cb.closed_requests(100_000):
                store[req.id] = req
        await controller.stop()
        client = make_client(redis_url)
        try:
            events = [e async for e in read_range(client)]
        finally:
            await client.aclose()
    finally:
        await controller.stop()
        await running.stop()
    acc = KpiAccumulator(controller.kpi_settings)
    for e in events:
        acc.add(e)
    kpi = report_document(acc.report(None, None))["kpi"]
    members = {name: tuple(m.interface for m in q.members) for name, q in cfg.queues.items()}
    return Outcome(events, kpi, legs, store, members, generator.stats.placed)


# -- reading the log ------------------------------------------------------------------------------

_RANK = {
    "callback.requested": 0,
    "callback.updated": 1,
    "callback.dialing": 2,
    "callback.retry": 3,
    "callback.connected": 3,
    "callback.failed": 3,
    "callback.expired": 3,
    "callback.cancelled": 3,
}
_SETTLED = frozenset({"callback.retry", "callback.connected", "callback.failed"})
_FINAL = frozenset({"callback.connected", "callback.failed", "callback.expired", "callback.cancelled"})
_VISIT_END = frozenset({"agent.connect", "queue.abandon", "queue.timeout", "queue.exit_key", "queue.leave"})


def callback_histories(events: Iterable[CallEvent]) -> dict[str, list[CallEvent]]:
    out: dict[str, list[CallEvent]] = defaultdict(list)
    for e in events:
        if e.type in _RANK and e.data.get("callback_id"):
            out[str(e.data["callback_id"])].append(e)
    for history in out.values():
        history.sort(key=lambda e: (e.ts, _RANK[e.type]))
    return out


def dial_problems(history: list[CallEvent]) -> list[str]:
    """Two dials in flight, or a dial after the customer was reached, in one request's history."""
    problems: list[str] = []
    in_flight = connected = False
    for e in history:
        if e.type == "callback.dialing":
            if in_flight:
                problems.append("second dial in flight")
            if connected:
                problems.append("dialled after connected")
            in_flight = True
        elif e.type in _SETTLED:
            in_flight = False
            connected = connected or e.type == "callback.connected"
    return problems


@dataclass(frozen=True)
class Visit:
    call: str
    queue: str
    join: float
    end: float


def inbound_visits(events: Iterable[CallEvent]) -> list[Visit]:
    """Queue stints of callers (callback legs left out), from the tracker's events."""
    by_call: dict[str, list[CallEvent]] = defaultdict(list)
    legs: set[str] = set()
    for e in events:
        if e.source != "ami":
            continue
        by_call[e.call].append(e)
        if e.type == "call.start" and e.data.get("kind") == "callback":
            legs.add(e.call)
    visits: list[Visit] = []
    for call, evs in by_call.items():
        if call in legs:
            continue
        evs.sort(key=lambda e: e.ts)
        open_at: dict[str, float] = {}
        for e in evs:
            if e.type == "queue.join":
                open_at[e.queue] = e.ts
            elif e.type in _VISIT_END and e.queue in open_at:
                visits.append(Visit(call, e.queue, open_at.pop(e.queue), e.ts))
        for queue, join in open_at.items():
            visits.append(Visit(call, queue, join, float("inf")))
    return visits


def busy_intervals(events: Iterable[CallEvent]) -> dict[str, list[tuple[float, float]]]:
    """When each agent (interface) was in a call or its wrap-up."""
    start: dict[tuple[str, str], float] = {}
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in sorted((e for e in events if e.source == "ami"), key=lambda e: e.ts):
        if e.type == "agent.connect" and e.agent:
            start[(e.call, e.agent)] = e.ts
        elif e.type == "agent.complete" and e.agent:
            began = start.pop((e.call, e.agent), None)
            if began is not None:
                out[e.agent].append((began, e.ts + WRAPUP_S))
    for (_, agent), began in start.items():
        out[agent].append((began, float("inf")))
    return out


def order_problems(outcome: Outcome) -> tuple[list[str], int]:
    """Dials that overtook earlier callers for want of agents; and how many dials had any
    earlier caller still waiting (served at the same time, agents permitting)."""
    visits = inbound_visits(outcome.events)
    busy = busy_intervals(outcome.events)
    problems: list[str] = []
    shared = 0
    for e in outcome.events:
        if e.type != "callback.dialing":
            continue
        when, joined, queue = e.ts, float(e.data["original_join_ts"]), e.queue
        earlier = [v for v in visits if v.queue == queue and v.join < joined and v.join <= when < v.end]
        not_in_call = sum(
            1 for m in outcome.members[queue] if not any(a <= when < b for a, b in busy.get(m, ()))
        )
        if earlier:
            shared += 1
        if len(earlier) >= max(1, not_in_call):
            problems.append(
                f"{e.data['callback_id']} (joined {joined:.1f}) dialled at {when:.1f} with "
                f"{len(earlier)} earlier caller(s) waiting in {queue} "
                f"({', '.join(f'{v.call} joined {v.join:.1f}' for v in earlier)}) "
                f"and {not_in_call} agent(s) not in a call"
            )
    return problems, shared


# -- the run --------------------------------------------------------------------------------------


async def test_two_thousand_calls_in_overload_keep_every_callback_guarantee(
    redis_url: str, tmp_path: Path
) -> None:
    with_cb = await simulate(redis_url, tmp_path, callbacks=True)
    assert with_cb.placed == CALLS

    histories = callback_histories(with_cb.events)
    requested = {
        cid for cid, h in histories.items() if h[0].type in ("callback.requested", "callback.updated")
    }
    assert len(requested) > CALLS // 10, "too few callbacks to prove anything"
    # never two dials in flight, never dialled again after the customer answered
    assert max(with_cb.legs.max_active.values()) == 1
    assert not with_cb.legs.dialled_after_answer
    problems = {cid: p for cid, h in histories.items() if (p := dial_problems(h))}
    assert problems == {}
    # never forgotten: every confirmed callback was requested, every request ends or waits
    assert with_cb.legs.confirmed <= requested
    for cid in requested:
        stored = with_cb.store.get(cid)
        assert stored is not None, cid
        final = [e.type for e in histories[cid] if e.type in _FINAL]
        if stored.status == "pending":
            assert not final, (cid, final)
        else:
            assert stored.status in ("completed", "failed", "expired", "cancelled"), (cid, stored.status)
            assert len(final) == 1, (cid, final)
    assert not [r for r in with_cb.store.values() if r.status == "dialing"]
    # original join order
    overtaken, shared = order_problems(with_cb)
    assert overtaken == []

    without = await simulate(redis_url, tmp_path, callbacks=False)
    assert without.placed == CALLS
    rate_with = with_cb.kpi["overall"]["pickup_rate"]
    rate_without = without.kpi["overall"]["pickup_rate"]
    assert rate_with > rate_without
    cb = with_cb.kpi["overall"]["callbacks"]
    print(
        f"\noverload {CALLS} calls seed {SEED}: pickup {rate_with:.1%} with callbacks "
        f"(immediate {with_cb.kpi['overall']['immediate_pickup_rate']:.1%}) vs {rate_without:.1%} without; "
        f"callbacks offered {cb['offered']}, requested {cb['requested']}, completed {cb['completed']}, "
        f"failed {cb['failed']}, expired {cb['expired']}, pending {cb['pending']}, "
        f"to callback p50 {cb['time_to_callback_p50_s']} s p90 {cb['time_to_callback_p90_s']} s; "
        f"dials {sum(with_cb.legs.dials.values())}, dials with earlier callers served alongside {shared}"
    )
