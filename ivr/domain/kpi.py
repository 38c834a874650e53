"""The KPI engine: the pickup rate and its companions, from call events, live or historical.

One pure :class:`KpiAccumulator` is fed :class:`~ivr.domain.events.CallEvent` objects one
by one. The live path feeds events as the AMI client and the IVR produce them; ``ivr
report`` feeds the same events read back from the Redis stream; ``ivr replay`` feeds those
rebuilt from a recording. All three run this code and nothing else, so live and historical
figures agree by construction: duplicates (same ``id``) are dropped, each call's events are
folded in a canonical order (:mod:`ivr.domain.kpi_calls`), and aggregates are computed from
the call summaries in a fixed order (so even float sums are bit-identical).

Definitions (Services Publics+; "asked" calls are those inside opening hours, calls made
while the service is closed are reported apart under ``out_of_hours``):

* ``asked_for_agent``: calls whose IVR path requested a human: joined a queue, were refused
  by an empty/closed queue (join_empty), took a callback or an appointment instead, or
  asked (``agent.requested``) and hung up before reaching the queue.
* ``handled_by_agent``: calls connected to an agent directly (``handled_immediately``) or
  through a completed callback (``handled_by_callback``).
* ``pickup_rate`` = handled_by_agent ÷ asked_for_agent; ``immediate_pickup_rate`` =
  handled_immediately ÷ asked_for_agent; ``global_rate`` = (handled_by_agent + ivr_only) ÷
  (asked_for_agent + ivr_only), counting the calls that never asked for a human as
  resolved in the IVR.
* ``service_level`` SL(T) = calls answered with a total queue wait <= T ÷ asked_for_agent.
  Asterisk's own figures over queue visits, as ``apps/app_queue.c`` computes them:
  ``service_level_asterisk`` = answered with wait <= T ÷ answered; and
  ``service_level_asterisk2`` = (answered <= T + abandoned <= T) ÷ (answered + abandoned),
  where "abandoned" is what Asterisk's ``record_abandoned()`` counts: hang-ups, timeouts,
  exits on an empty queue and withdrawals (not exits with a key).
* Visit figures (Asterisk-like, one per queue entry): ``entered``, ``answered``,
  ``abandoned`` (``abandoned_short``: wait < ``short_abandon_s``, default 5 s),
  ``timeouts``, ``exit_with_key``, ``leave_empty``, ``withdrawn``, ``join_empty``,
  ``other_exits`` (ending unknown: events lost), ``waiting`` (still in
  queue); ``abandon_rate`` = abandoned ÷ entered and ``abandon_rate_excl_short`` =
  (abandoned − short) ÷ (entered − short); ``asa_s`` = mean wait of answered visits;
  ``wait_p50_s`` / ``wait_p90_s`` / ``wait_max_s`` over every finished visit (answered,
  abandoned, timeout, exit ...); ``talk_mean_s`` over answered visits.
* ``callbacks``: requested, completed, failed, expired, cancelled, pending; ``success_rate``
  = completed ÷ (requested − cancelled − pending); time from request to connection p50/p90.
* ``satisfaction``: survey answers 1..5: ``mean`` and ``share_4_5``.

Percentiles are **nearest-rank**: the p-th percentile of n sorted values is the value of
rank ⌈p·n/100⌉ (1-based), always an observed value (so "p90 = 42 s" means a real caller
waited 42 s), and exact in integer arithmetic.

Per queue: a call counts in every queue it asked for (so with overflow between queues the
queue rows do not add up to ``overall``, which counts each call once); it is handled there
if it was answered in that queue or through a callback requested from it. Per service and
per hour/day: calls are placed by their start (Asterisk time) in ``timezone`` (hour keys are
ISO with the UTC offset, so the repeated hour of the autumn change stays two buckets).
Ratios with a zero denominator are ``None`` (JSON null), never 0.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any, Final
from zoneinfo import ZoneInfo

from ivr.domain.events import CallEvent
from ivr.domain.hours import Schedule, is_open
from ivr.domain.kpi_calls import (
    CALLBACK_STATUSES,
    OUTCOMES,
    CallSummary,
    QueueVisit,
    summarize_call,
)

__all__ = [
    "KpiAccumulator",
    "KpiSettings",
    "compute_report",
    "kpi_block",
    "percentile",
    "report_document",
    "report_to_csv",
]

#: Event types that never concern one call's KPIs.
_IGNORED: Final = frozenset({"member.added", "member.removed", "member.paused", "member.unpaused"})


@dataclass(frozen=True)
class KpiSettings:
    """What the figures are measured against.

    ``schedules`` maps a service name to its opening hours; the ``""`` entry applies to
    services without their own. No schedule at all means always open (a replay of a
    recording, a 24/7 line).
    """

    service_level_s: float = 20.0
    short_abandon_s: float = 5.0
    timezone: str = "Europe/Paris"
    schedules: Mapping[str, Schedule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("service_level_s", "short_abandon_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        ZoneInfo(self.timezone)

    def in_hours(self, service: str, ts: float) -> bool:
        """Whether ``service`` was open at ``ts`` (True when it has no schedule)."""
        schedule = self.schedules.get(service) or self.schedules.get("")
        return True if schedule is None else is_open(schedule, ts)


def percentile(values: Sequence[float], p: int) -> float | None:
    """Nearest-rank percentile of ``values`` (need not be sorted); None when empty."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in 1..100, got {p}")
    if not values:
        return None
    ordered = sorted(values)
    rank = -(-p * len(ordered) // 100)  # ceil(p * n / 100) without floats
    return ordered[max(rank, 1) - 1]


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def _secs(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _mean(values: Sequence[float]) -> float | None:
    return round(math.fsum(values) / len(values), 3) if values else None


def _visit_figures(visits: Sequence[QueueVisit], settings: KpiSettings) -> dict[str, Any]:
    t, short = settings.service_level_s, settings.short_abandon_s
    by: dict[str, list[QueueVisit]] = {}
    for v in visits:
        by.setdefault(v.outcome, []).append(v)

    def waits(outcome: str) -> list[float]:
        return [v.wait_s for v in by.get(outcome, ()) if v.wait_s is not None]

    answered, abandoned = by.get("answered", []), by.get("abandoned", [])
    entered = len(visits) - len(by.get("join_empty", ()))
    n_short = sum(1 for w in waits("abandoned") if w < short)
    answered_waits = waits("answered")
    finished = [v.wait_s for v in visits if v.finished and v.wait_s is not None]
    talks = [v.talk_s for v in answered if v.talk_s is not None]
    ast_abandoned = [*abandoned, *(v for o in ("timeout", "leave_empty", "withdrawn") for v in by.get(o, ()))]
    ans_in_sl = sum(1 for w in answered_waits if w <= t)
    ab_in_sl = sum(1 for v in ast_abandoned if v.wait_s is not None and v.wait_s <= t)
    return {
        "entered": entered,
        "answered": len(answered),
        "abandoned": len(abandoned),
        "abandoned_short": n_short,
        "timeouts": len(by.get("timeout", ())),
        "exit_with_key": len(by.get("exit_key", ())),
        "leave_empty": len(by.get("leave_empty", ())),
        "withdrawn": len(by.get("withdrawn", ())),
        "join_empty": len(by.get("join_empty", ())),
        "other_exits": len(by.get("unknown", ())),
        "waiting": len(by.get("waiting", ())),
        "abandon_rate": _ratio(len(abandoned), entered),
        "abandon_rate_excl_short": _ratio(len(abandoned) - n_short, entered - n_short),
        "asa_s": _mean(answered_waits),
        "wait_p50_s": _secs(percentile(finished, 50)),
        "wait_p90_s": _secs(percentile(finished, 90)),
        "wait_max_s": _secs(max(finished)) if finished else None,
        "talk_mean_s": _mean(talks),
        "talk_total_s": _secs(math.fsum(talks)),
        "service_level_asterisk": _ratio(ans_in_sl, len(answered)),
        "service_level_asterisk2": _ratio(ans_in_sl + ab_in_sl, len(answered) + len(ast_abandoned)),
    }


def _touches(call: CallSummary, queue: str) -> bool:
    if queue in call.asked_queues:
        return True
    # the queues a caller asked for include every named queue visited (summarize_call): only
    # a callback's outgoing leg (which asks for none) can be in a queue it did not ask for
    return (call.callback_leg or not queue) and any(v.queue == queue for v in call.visits)


def kpi_block(
    calls: Sequence[CallSummary], settings: KpiSettings, queue: str | None = None
) -> dict[str, Any]:
    """The figures of a set of calls; with ``queue``, as seen from that queue (see module doc)."""
    t = settings.service_level_s
    if queue is not None:
        calls = [c for c in calls if _touches(c, queue)]
    people = [c for c in calls if not c.callback_leg]
    if queue is None:
        asked = [c for c in people if c.asked_for_agent]
        handled = [c for c in asked if c.handled]
        direct = [c for c in asked if c.handled_directly]
        within = [c for c in direct if c.answer_wait_s is not None and c.answer_wait_s <= t]
        visits = [v for c in calls for v in c.visits]
        callbacks = [cb for c in people for cb in c.callbacks]
        ivr_only: int | None = sum(1 for c in people if c.outcome == "ivr_only")
    else:
        asked = [c for c in people if queue in c.asked_queues]
        handled = [c for c in asked if queue in c.handled_queues]
        direct = [c for c in asked if any(v.queue == queue and v.outcome == "answered" for v in c.visits)]
        within = [
            c
            for c in direct
            if any(
                v.queue == queue and v.outcome == "answered" and v.wait_s is not None and v.wait_s <= t
                for v in c.visits
            )
        ]
        visits = [v for c in calls for v in c.visits if v.queue == queue]
        callbacks = [cb for c in people for cb in c.callbacks if cb.queue == queue]
        ivr_only = None
    n_asked, n_handled, n_direct = len(asked), len(handled), len(direct)
    outcomes = Counter(c.outcome for c in people)
    scores = [s for c in people for s in c.scores]
    statuses = Counter(cb.status for cb in callbacks)
    to_cb = [d for cb in callbacks if (d := cb.time_to_callback_s) is not None]
    cb_requested = len(callbacks)
    cb_base = cb_requested - statuses["cancelled"] - statuses["pending"]
    block: dict[str, Any] = {
        "calls": len(people),
        "asked_for_agent": n_asked,
        "handled_by_agent": n_handled,
        "handled_immediately": n_direct,
        "handled_by_callback": n_handled - n_direct,
        "pickup_rate": _ratio(n_handled, n_asked),
        "immediate_pickup_rate": _ratio(n_direct, n_asked),
        "ivr_only": ivr_only,
        "global_rate": None if ivr_only is None else _ratio(n_handled + ivr_only, n_asked + ivr_only),
        "answered_within_sl": len(within),
        "service_level": _ratio(len(within), n_asked),
        "abandoned_before_queue": sum(1 for c in asked if c.outcome == "abandoned_before_queue"),
    }
    block.update(_visit_figures(visits, settings))
    block["callbacks"] = {
        "offered": sum(
            1 for c in people if c.callback_offered and (queue is None or queue in c.asked_queues)
        ),
        "requested": cb_requested,
        **{status: statuses[status] for status in CALLBACK_STATUSES},
        "success_rate": _ratio(statuses["completed"], cb_base),
        "time_to_callback_p50_s": _secs(percentile(to_cb, 50)),
        "time_to_callback_p90_s": _secs(percentile(to_cb, 90)),
    }
    block["appointments"] = sum(1 for c in asked if c.appointment_booked)
    block["satisfaction"] = {
        "responses": len(scores),
        "mean": _mean([float(s) for s in scores]),
        "share_4_5": _ratio(sum(1 for s in scores if s >= 4), len(scores)),
    }
    block["outcomes"] = {o: outcomes[o] for o in OUTCOMES if o != "callback_leg"}
    return block


def _agents(calls: Sequence[CallSummary], queue: str | None) -> dict[str, dict[str, Any]]:
    talks: dict[str, list[float]] = {}
    counts: Counter[str] = Counter()
    for c in calls:
        for v in c.visits:
            if v.outcome == "answered" and v.agent and (queue is None or v.queue == queue):
                counts[v.agent] += 1
                if v.talk_s is not None:
                    talks.setdefault(v.agent, []).append(v.talk_s)
    return {
        a: {
            "answered": counts[a],
            "talk_total_s": _secs(math.fsum(talks.get(a, ()))),
            "talk_mean_s": _mean(talks.get(a, [])),
        }
        for a in sorted(counts)
    }


_start_then_call: Final = attrgetter("start", "call")


def _iso(ts: float | None, tz: ZoneInfo) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz).isoformat()


class KpiAccumulator:
    """Call events in, KPI report out; the one code path for live and historical figures.

    ``add`` is cheap (it files the event under its call and marks that call's summary
    stale); summaries are refolded on demand, and the report is computed from them.
    ``forget_before`` bounds memory in a long-running process.
    """

    def __init__(self, settings: KpiSettings | None = None) -> None:
        self.settings = settings or KpiSettings()
        self._tz = ZoneInfo(self.settings.timezone)
        self._events: dict[str, dict[str, CallEvent]] = {}
        self._seen: set[str] = set()
        self._summaries: dict[str, CallSummary] = {}
        self._gaps: dict[str, CallEvent] = {}
        self._bucket_cache: dict[int, tuple[str, str]] = {}
        self.rejected = 0

    def __len__(self) -> int:
        """Number of calls known."""
        return len(self._events)

    def add(self, event: CallEvent) -> bool:
        """File one event; False if it was already seen (same id) or cannot concern a call."""
        if event.id in self._seen:
            return False
        if not math.isfinite(event.ts):
            self.rejected += 1
            return False
        self._seen.add(event.id)
        if event.type == "controller.gap":
            self._gaps[event.id] = event
            return True
        if event.type in _IGNORED or not event.call:
            return False
        self._events.setdefault(event.call, {})[event.id] = event
        self._summaries.pop(event.call, None)
        return True

    def extend(self, events: Iterable[CallEvent]) -> int:
        """File many events (as :meth:`add` each); returns how many were new.

        The same steps as :meth:`add`, inlined: a day's recomputation files half a million.
        """
        seen, by_call, summaries, gaps = self._seen, self._events, self._summaries, self._gaps
        new = 0
        for event in events:
            event_id = event.id
            if event_id in seen:
                continue
            ts = event.ts
            if ts - ts != 0:  # not finite (inf - inf and nan - nan are nan): math.isfinite, inlined
                self.rejected += 1
                continue
            seen.add(event_id)
            kind, call = event.type, event.call
            if kind == "controller.gap":
                gaps[event_id] = event
            elif kind in _IGNORED or not call:
                continue
            else:
                filed = by_call.get(call)
                if filed is None:
                    filed = by_call[call] = {}
                filed[event_id] = event
                if summaries:
                    summaries.pop(call, None)
            new += 1
        return new

    def summary(self, call: str) -> CallSummary | None:
        """The current summary of one call (None if unknown)."""
        events = self._events.get(call)
        if events is None:
            return None
        cached = self._summaries.get(call)
        if cached is None:
            cached = summarize_call(call, events.values(), self.settings.in_hours)
            self._summaries[call] = cached
        return cached

    def summaries(self, since: float | None = None, until: float | None = None) -> list[CallSummary]:
        """Summaries of the calls that started in ``[since, until)``, by start then call id."""
        out = []
        for call in self._events:
            s = self.summary(call)
            assert s is not None
            if (since is None or s.start >= since) and (until is None or s.start < until):
                out.append(s)
        out.sort(key=_start_then_call)
        return out

    def forget_before(self, ts: float) -> int:
        """Drop the calls whose last event is older than ``ts``; returns how many.

        Their event ids are forgotten too, so keep the horizon longer than any replay or
        late callback you expect (a day or more).
        """
        old = [c for c, evs in self._events.items() if max(e.ts for e in evs.values()) < ts]
        for call in old:
            for event_id in self._events.pop(call):
                self._seen.discard(event_id)
            self._summaries.pop(call, None)
        self._bucket_cache.clear()
        for gap_id in [g for g, e in self._gaps.items() if e.ts < ts]:
            del self._gaps[gap_id]
            self._seen.discard(gap_id)
        return len(old)

    def _buckets(self, start: float) -> tuple[str, str]:
        """(hour key, day key) of a start time; memoised per minute (UTC offsets are whole minutes)."""
        minute = math.floor(start / 60)
        keys = self._bucket_cache.get(minute)
        if keys is None:
            local = datetime.fromtimestamp(minute * 60, self._tz)
            hour = local.replace(minute=0, second=0, microsecond=0).isoformat(timespec="minutes")
            keys = self._bucket_cache[minute] = (hour, local.date().isoformat())
        return keys

    def report(
        self,
        since: float | None = None,
        until: float | None = None,
        *,
        queue: str | None = None,
        include_calls: bool = False,
    ) -> dict[str, Any]:
        """The JSON-able KPI report of the calls started in ``[since, until)``.

        With ``queue``, only the calls that asked for that queue, every figure as seen from
        it. With ``include_calls``, a ``calls`` list (one entry per call) is added. Calls
        known only by later events (a callback or survey of a call that started before the
        events we hold) are left out and counted in ``partial_calls``; ``gaps`` counts the
        ``controller.gap`` events in the range (figures may miss calls there).
        """
        settings = self.settings
        every = self.summaries(since, until)
        calls = [c for c in every if not c.partial]
        if queue is not None:
            calls = [c for c in calls if _touches(c, queue)]
        open_calls = [c for c in calls if c.in_hours]
        closed_calls = [c for c in calls if not c.in_hours]

        def grouped(keys: Iterable[str], *, by_name: bool = False) -> dict[str, list[CallSummary]]:
            # calls are in start order, so time buckets come out in time order (the
            # repeated hour of the autumn change included, which sorting names would swap)
            groups: dict[str, list[CallSummary]] = {}
            for key, c in zip(keys, open_calls, strict=True):
                groups.setdefault(key, []).append(c)
            return dict(sorted(groups.items())) if by_name else groups

        buckets = [self._buckets(c.start) for c in open_calls]  # (hour, day) of each call
        by_day = grouped([day for _, day in buckets])
        by_hour = grouped([hour for hour, _ in buckets])

        if queue is None:
            named: set[str] = set()
            for c in open_calls:
                named.update(c.asked_queues)
                named.update([v.queue for v in c.visits])
            queue_names = sorted(filter(None, named))
        else:
            queue_names = [queue]
        gaps = [
            e
            for e in self._gaps.values()
            if (since is None or e.ts >= since) and (until is None or e.ts < until)
        ]
        report: dict[str, Any] = {
            "range": {
                "since": _iso(since, self._tz),
                "until": _iso(until, self._tz),
                "timezone": settings.timezone,
                "queue": queue,
            },
            "settings": {
                "service_level_s": settings.service_level_s,
                "short_abandon_s": settings.short_abandon_s,
            },
            "overall": kpi_block(open_calls, settings, queue),
            "queues": {q: kpi_block(open_calls, settings, q) for q in queue_names},
            "services": {
                k: kpi_block(cs, settings, queue)
                for k, cs in grouped([c.service for c in open_calls], by_name=True).items()
            },
            "days": {k: kpi_block(cs, settings, queue) for k, cs in by_day.items()},
            "hours": {k: kpi_block(cs, settings, queue) for k, cs in by_hour.items()},
            "agents": _agents(open_calls, queue),
            "out_of_hours": kpi_block(closed_calls, settings, queue),
            "gaps": len(gaps),
            "partial_calls": len(every) - len(calls),
        }
        if include_calls:
            report["calls"] = [c.to_json() for c in calls]
        return report


def compute_report(
    events: Iterable[CallEvent],
    settings: KpiSettings | None = None,
    *,
    since: float | None = None,
    until: float | None = None,
    queue: str | None = None,
    include_calls: bool = False,
) -> dict[str, Any]:
    """The historical path: a fresh accumulator fed ``events``, then :meth:`KpiAccumulator.report`.

    ``events`` may reach outside ``[since, until)`` (a call that started before ``until``
    may have its callback completed later): calls are selected by their start only.
    """
    acc = KpiAccumulator(settings)
    acc.extend(events)
    return acc.report(since, until, queue=queue, include_calls=include_calls)


def report_document(report: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ivr replay`` / ``ivr report`` JSON object (DESIGN.md): ``{"calls": [...], "kpi": {...}}``.

    ``calls`` is the report's per-call list (empty unless it was asked for), ``kpi`` the rest.
    """
    return {
        "calls": list(report.get("calls", [])),
        "kpi": {key: value for key, value in report.items() if key != "calls"},
    }


def _flatten(block: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in block.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def report_to_csv(report: Mapping[str, Any]) -> str:
    """One CSV row per block (overall, each queue, service, day, hour, out_of_hours).

    Columns: ``scope``, ``key``, then every figure, nested ones dotted
    (``callbacks.completed``); empty cells for undefined ratios.
    """
    rows: list[tuple[str, str, Mapping[str, Any]]] = [("overall", "", report["overall"])]
    for scope in ("queues", "services", "days", "hours"):
        rows.extend((scope.rstrip("s"), key, block) for key, block in report[scope].items())
    rows.append(("out_of_hours", "", report["out_of_hours"]))
    columns = list(_flatten(report["overall"]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["scope", "key", *columns])
    for scope, key, block in rows:
        flat = _flatten(block)
        writer.writerow([scope, key, *("" if flat.get(c) is None else flat[c] for c in columns)])
    return buf.getvalue()
