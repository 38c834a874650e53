"""Fold the events of one call into a :class:`CallSummary`: what happened to that caller.

Every KPI is a count or a statistic over call summaries, and a summary depends only on the
*set* of the call's events: they are sorted by (Asterisk time, type rank, id) before
folding, so arrival order does not matter, and the accumulator drops repeated ids, so a
replay does not count twice. That is what makes live figures (events folded as they come)
and a recomputation from the stream (the same events read back) agree exactly.

Events consumed (type: fields read; anything else is ignored):

* ``call.start`` / ``call.end``: the call's start and end; ``data.caller`` (hashed number);
  ``call.end`` ``data.asked_for_agent`` (the dialplan reached Queue() even if no queue event
  followed) and, for such a call, ``data.outcome`` (``abandoned_before_queue``, ``unknown``).
* ``ivr.*``: only for the start time and opening hours (see below).
* ``agent.requested``: the caller asked for a human (``queue`` when known).
* ``queue.join`` opens a *visit* of ``queue``; ``queue.join_empty`` is a refused visit.
* ``queue.abandon`` / ``queue.timeout`` / ``queue.exit_key`` / ``agent.connect`` end the
  visit, with ``data.wait_s`` (Asterisk's HoldTime); without it the wait is the time since
  the join. A ``queue.abandon`` or ``queue.timeout`` whose ``data.outcome``, ``reason`` or
  ``status`` says ``timeout``, ``leave_empty``/``LEAVEEMPTY`` or ``withdrawn``/``WITHDRAW``
  counts as that (the tracker sends LEAVEEMPTY and WITHDRAW as ``queue.timeout``). A visit
  with several endings keeps the strongest: answered > timeout > leave_empty > withdrawn >
  exit_key > abandoned -- Asterisk itself emits QueueCallerAbandon for a timeout, an exit
  on an empty queue and a withdrawal (``record_abandoned()`` in apps/app_queue.c), so both
  may be present.
* ``queue.leave``: ``data.outcome`` / ``data.reason`` may name the ending (``leave_empty``,
  ``withdrawn`` ...); otherwise it only tells that the caller left.
* ``agent.complete``: ``data.talk_s`` (else time since the connect); ``agent.noanswer``
  counts ring attempts.
* ``callback.*`` carry the *original* call id, with ``data.callback_id`` (or
  ``data.callback``) naming the request (default: one request per call). Status: completed
  once ``callback.connected`` is seen, else the last of failed / expired / cancelled, else
  pending. ``callback.failed`` is the final failure (a retried attempt is ``callback.retry``).
* ``appointment.booked``; ``survey.answer`` with ``data.score`` 1..5.
* A call whose events carry ``data.kind == "callback"`` or a ``data.callback_of`` is the
  outgoing leg of a callback: its queue visits count in the queue figures (as in
  Asterisk's), never as a call asking for an agent.

Opening hours: what the caller was told wins -- the first event carrying ``data.in_hours``,
else an ``ivr.end`` with ``data.action == "closed"`` (the IVR played the closed message);
otherwise the injected ``in_hours(service, start)`` decides (the same schedule the IVR uses).

The after-queue and exit-key scripts report some queue endings that the AMI tracker also
reports (``source="agi"`` vs ``"ami"``, different ids): endings of one visit merge by the
precedence above, and repeated ``queue.join_empty`` for one queue count once until the
caller asks again (``agent.requested``) or joins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final

from ivr.domain.events import CallEvent, Scalar

__all__ = [
    "CALLBACK_STATUSES",
    "OUTCOMES",
    "VISIT_OUTCOMES",
    "CallSummary",
    "CallbackSummary",
    "QueueVisit",
    "event_order",
    "summarize_call",
]

#: Outcomes of a call, most decisive first.
OUTCOMES: Final = (
    "answered",
    "callback_requested",
    "appointment",
    "abandoned",
    "timeout",
    "exit_key",
    "leave_empty",
    "withdrawn",
    "join_empty",
    "abandoned_before_queue",
    "ivr_only",
    "in_queue",
    "in_progress",
    "unknown",
    "callback_leg",
)

#: Outcomes of one queue visit.
VISIT_OUTCOMES: Final = (
    "answered",
    "abandoned",
    "timeout",
    "exit_key",
    "leave_empty",
    "withdrawn",
    "join_empty",
    "unknown",
    "waiting",
)

CALLBACK_STATUSES: Final = ("completed", "failed", "expired", "cancelled", "pending")

#: Precedence of the endings of one visit (see module docstring).
_ENDING_RANK: Final = {
    "answered": 6,
    "timeout": 5,
    "leave_empty": 4,
    "withdrawn": 3,
    "exit_key": 2,
    "abandoned": 1,
}
_ENDING_OF: Final = {
    "queue.abandon": "abandoned",
    "queue.timeout": "timeout",
    "queue.exit_key": "exit_key",
    "agent.connect": "answered",
}
_REASONS: Final = {
    "timeout": "timeout",
    "exitwithtimeout": "timeout",
    "leave_empty": "leave_empty",
    "leaveempty": "leave_empty",
    "exit_empty": "leave_empty",
    "exitempty": "leave_empty",
    "leaveunavail": "leave_empty",
    "withdrawn": "withdrawn",
    "withdraw": "withdrawn",
    "exit_key": "exit_key",
    "exitwithkey": "exit_key",
    "abandon": "abandoned",
    "abandoned": "abandoned",
}
_VISIT_EVENTS: Final = frozenset(
    {
        "queue.abandon",
        "queue.timeout",
        "queue.exit_key",
        "queue.leave",
        "agent.ring",
        "agent.noanswer",
        "agent.connect",
        "agent.complete",
    }
)
#: Every event :func:`_visits` looks at.
_VISIT_INPUT: Final = _VISIT_EVENTS | {"agent.requested", "queue.join", "queue.join_empty"}
_CALLBACK_STATE: Final = frozenset(
    {
        "callback.requested",
        "callback.updated",
        "callback.dialing",
        "callback.connected",
        "callback.failed",
        "callback.retry",
        "callback.expired",
        "callback.cancelled",
    }
)
_CALLBACK_END: Final = {
    "callback.failed": "failed",
    "callback.expired": "expired",
    "callback.cancelled": "cancelled",
}
#: Outcomes a ``call.end`` may state that the other events cannot show (see summarize_call).
_FROM_END: Final = frozenset({"abandoned_before_queue", "callback_requested", "unknown"})
#: Types that do not belong to the live inbound call (they may come hours later).
_LATER: Final = ("callback.", "survey.", "appointment.")
#: Order of events stamped with the same Asterisk time: the causal order of a call.
_RANK: Final = {
    "call.start": 0,
    "ivr.start": 1,
    "ivr.menu": 2,
    "ivr.input": 3,
    "ivr.invalid": 3,
    "agent.requested": 4,
    "callback.offered": 5,
    "appointment.offered": 5,
    "queue.join": 6,
    "queue.join_empty": 6,
    "agent.ring": 7,
    "agent.noanswer": 8,
    "queue.abandon": 9,
    "queue.timeout": 9,
    "queue.exit_key": 9,
    "agent.connect": 9,
    "queue.leave": 10,
    "agent.complete": 11,
    "ivr.end": 12,
    "callback.requested": 13,
    "appointment.booked": 13,
    "callback.updated": 14,
    "callback.dialing": 15,
    "callback.retry": 16,
    "callback.connected": 16,
    "callback.failed": 17,
    "callback.expired": 17,
    "callback.cancelled": 17,
    "appointment.cancelled": 17,
    "survey.answer": 18,
    "call.end": 19,
}


def event_order(event: CallEvent) -> tuple[float, int, str]:
    """Sort key that puts a call's events in one order whatever order they arrived in."""
    return (event.ts, _RANK.get(event.type, 12), event.id)


@dataclass(frozen=True, slots=True)
class QueueVisit:
    """One stay of the caller in one queue (or a refused join)."""

    queue: str
    join_ts: float
    outcome: str
    wait_s: float | None = None
    talk_s: float | None = None
    agent: str = ""
    ring_attempts: int = 0

    @property
    def finished(self) -> bool:
        """Whether the wait is over (the visit ended, or never started: join_empty)."""
        return self.outcome not in ("waiting", "join_empty")


@dataclass(frozen=True, slots=True)
class CallbackSummary:
    """One callback request of a call."""

    id: str
    queue: str
    status: str
    requested_ts: float | None = None
    connected_ts: float | None = None
    attempts: int = 0

    @property
    def time_to_callback_s(self) -> float | None:
        """From the request to the connection with an agent (None unless both are known)."""
        if self.requested_ts is None or self.connected_ts is None:
            return None
        return max(0.0, self.connected_ts - self.requested_ts)


@dataclass(frozen=True, slots=True)
class CallSummary:
    """Everything the KPIs need to know about one call."""

    call: str
    start: float
    outcome: str
    service: str = ""
    queue: str = ""
    caller: str = ""
    agent: str = ""
    asked_for_agent: bool = False
    handled: bool = False
    handled_directly: bool = False
    in_hours: bool = True
    ended: bool = False
    callback_leg: bool = False
    #: Only later events (callback, survey, appointment) are known: the call itself is
    #: outside the events given, so its start and hours are unknown; reports leave it out.
    partial: bool = False
    #: Total queue wait (all finished visits, up to the answering one), None if never queued.
    wait_s: float | None = None
    #: Total queue wait before the answer, for SL(T); None unless answered.
    answer_wait_s: float | None = None
    talk_s: float | None = None
    visits: tuple[QueueVisit, ...] = ()
    callbacks: tuple[CallbackSummary, ...] = ()
    callback_offered: bool = False
    appointment_booked: bool = False
    scores: tuple[int, ...] = ()
    #: Queues the caller asked for (joined, was refused by, or took a callback from), in order.
    asked_queues: tuple[str, ...] = ()
    #: Queues where the caller reached an agent, directly or through a completed callback.
    handled_queues: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``calls`` entry of ``ivr replay`` / ``ivr report`` JSON."""
        return {
            "call": self.call,
            "caller": self.caller,
            "service": self.service,
            "queue": self.queue,
            "outcome": self.outcome,
            "start": self.start,
            "wait_s": self.wait_s,
            "talk_s": self.talk_s,
            "agent": self.agent,
            "asked_for_agent": self.asked_for_agent,
            "handled": self.handled,
            "in_hours": self.in_hours,
            "callbacks": [cb.status for cb in self.callbacks],
        }


def _num(data: Mapping[str, Scalar], key: str) -> float | None:
    """A finite, non-negative number from event data, or None (absent or malformed)."""
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _flag(value: Scalar) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "open"}:
        return True
    if text in {"0", "false", "no", "closed"}:
        return False
    return None


def _reason(event: CallEvent) -> str | None:
    """The queue ending an event names in ``data.outcome``, ``reason`` or ``status``, if any."""
    for key in ("outcome", "reason", "status"):
        found = _REASONS.get(str(event.data.get(key, "")).strip().lower())
        if found is not None:
            return found
    return None


class _Visit:
    """Mutable visit while folding."""

    __slots__ = (
        "agent",
        "complete_ts",
        "connect_ts",
        "ending",
        "ending_ts",
        "ending_wait",
        "join_ts",
        "leave_reason",
        "left",
        "queue",
        "rings",
        "talk",
    )

    def __init__(self, queue: str, join_ts: float) -> None:
        self.queue = queue
        self.join_ts = join_ts
        self.ending: str | None = None
        self.ending_wait: float | None = None
        self.ending_ts: float | None = None
        self.connect_ts: float | None = None
        self.complete_ts: float | None = None
        self.talk: float | None = None
        self.agent = ""
        self.rings = 0
        self.left = False
        self.leave_reason: str | None = None

    def end(self, kind: str, event: CallEvent) -> None:
        if self.ending is not None and _ENDING_RANK[self.ending] >= _ENDING_RANK[kind]:
            if self.ending_wait is None:
                self.ending_wait = _num(event.data, "wait_s")
            return
        self.ending = kind
        self.ending_ts = event.ts
        self.ending_wait = _num(event.data, "wait_s")

    def freeze(self, call_ended: bool) -> QueueVisit:
        outcome = self.ending or self.leave_reason
        if outcome is None:
            outcome = "unknown" if (call_ended or self.left) else "waiting"
        wait: float | None = self.ending_wait
        if wait is None and outcome != "waiting" and self.ending_ts is not None:
            wait = max(0.0, self.ending_ts - self.join_ts)
        talk = self.talk
        if talk is None and self.connect_ts is not None and self.complete_ts is not None:
            talk = max(0.0, self.complete_ts - self.connect_ts)
        return QueueVisit(
            queue=self.queue,
            join_ts=self.join_ts,
            outcome=outcome,
            wait_s=wait,
            talk_s=talk if outcome == "answered" else None,
            agent=self.agent,
            ring_attempts=self.rings,
        )


def _visits(events: list[CallEvent], call_ended: bool) -> list[QueueVisit]:
    building: list[_Visit] = []
    refused: list[QueueVisit] = []
    current: dict[str, _Visit] = {}
    last: _Visit | None = None
    refused_open: set[str] = set()  # queues refused since the caller last asked for one
    for e in events:
        if e.type == "agent.requested":
            refused_open.clear()
            continue
        if e.type == "queue.join":
            refused_open.discard(e.queue)
            last = current[e.queue] = _Visit(e.queue, e.ts)
            building.append(last)
            continue
        if e.type == "queue.join_empty":
            # AMI (QUEUESTATUS) and the after-queue script both report the refusal: one visit
            if e.queue not in refused_open:
                refused_open.add(e.queue)
                refused.append(QueueVisit(queue=e.queue, join_ts=e.ts, outcome="join_empty"))
            continue
        if e.type not in _VISIT_EVENTS:
            continue
        visit = current.get(e.queue) if e.queue else last
        if visit is None:
            # The join was not seen (lost, or before the events we were given): rebuild it.
            wait = _num(e.data, "wait_s")
            visit = _Visit(e.queue, e.ts - wait if wait is not None else e.ts)
            building.append(visit)
            current[e.queue] = visit
        last = visit
        if e.agent and e.type in ("agent.connect", "agent.complete") and not visit.agent:
            visit.agent = e.agent
        kind = _ENDING_OF.get(e.type)
        if e.type in ("queue.abandon", "queue.timeout"):
            kind = _reason(e) or kind
        if kind is not None:
            visit.end(kind, e)
        if e.type == "agent.connect" and visit.connect_ts is None:
            visit.connect_ts = e.ts
        elif e.type == "agent.complete":
            visit.complete_ts = e.ts
            visit.talk = _num(e.data, "talk_s")
            if visit.ending is None:  # connect lost: the completion proves the answer
                visit.end("answered", e)
        elif e.type == "agent.noanswer":
            visit.rings += 1
        elif e.type == "queue.leave":
            visit.left = True
            reason = _reason(e)
            if reason is not None:
                visit.leave_reason = reason
    frozen = [v.freeze(call_ended) for v in building] + refused
    frozen.sort(key=lambda v: (v.join_ts, v.queue))
    return frozen


def _callbacks(call: str, events: list[CallEvent], default_queue: str) -> list[CallbackSummary]:
    groups: dict[str, list[CallEvent]] = {}
    for e in events:
        if e.type in _CALLBACK_STATE:
            key = str(e.data.get("callback_id") or e.data.get("callback") or call)
            groups.setdefault(key, []).append(e)
    out: list[CallbackSummary] = []
    for key, evs in groups.items():
        requested = [e.ts for e in evs if e.type == "callback.requested"]
        connected = [e.ts for e in evs if e.type == "callback.connected"]
        ends = [e for e in evs if e.type in _CALLBACK_END]
        if connected:
            status = "completed"
        elif ends:
            status = _CALLBACK_END[ends[-1].type]
        else:
            status = "pending"
        queue = next((e.queue for e in evs if e.queue), default_queue)
        out.append(
            CallbackSummary(
                id=key,
                queue=queue,
                status=status,
                requested_ts=requested[0] if requested else None,
                connected_ts=connected[0] if connected else None,
                attempts=sum(1 for e in evs if e.type == "callback.dialing"),
            )
        )
    out.sort(key=lambda cb: (cb.requested_ts if cb.requested_ts is not None else math.inf, cb.id))
    return out


_join_ts: Final = attrgetter("join_ts")


def _ordered_unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(filter(None, items)))


def summarize_call(
    call: str,
    events: Iterable[CallEvent],
    in_hours: Callable[[str, float], bool] | None = None,
) -> CallSummary:
    """Fold one call's events (any order, no duplicates expected) into its summary."""
    evs = sorted(events, key=event_order)
    if not evs:
        raise ValueError(f"call {call!r} has no events")
    # One pass sorts out what each part below needs (a day's recomputation folds tens of
    # thousands of calls: one loop instead of one per question). Every "first" is in the
    # canonical order above.
    start: float | None = None  # first event of the live inbound call
    ended = False
    service = ""
    caller: str | None = None
    leg = False
    hours_flag: bool | None = None  # first data.in_hours that reads as a flag
    closed_by_ivr = False  # an ivr.end with action=closed
    offered = False
    visit_events: list[CallEvent] = []
    callback_events: list[CallEvent] = []
    requested_queues: list[str] = []
    appointment: list[CallEvent] = []
    end_says: list[Mapping[str, Scalar]] = []
    scores: list[int] = []
    for e in evs:
        kind = e.type
        data = e.data
        if start is None and not kind.startswith(_LATER):
            start = e.ts
        if not service and e.service:
            service = e.service
        if data:
            if caller is None and "caller_hash" in data:
                caller = str(data["caller_hash"])
            if not leg and ("callback_of" in data or data.get("kind") == "callback"):
                leg = True
            if hours_flag is None and "in_hours" in data:
                hours_flag = _flag(data["in_hours"])
        if kind in _VISIT_INPUT:
            visit_events.append(e)
            if kind == "agent.requested":
                requested_queues.append(e.queue)
        elif kind in _CALLBACK_STATE:
            callback_events.append(e)
        elif kind == "call.end":
            ended = True
            end_says.append(data)
        elif kind == "appointment.booked":
            appointment.append(e)
        elif kind == "survey.answer":
            score = _num(data, "score")
            if score is not None and score == int(score) and 1 <= score <= 5:
                scores.append(int(score))
        elif kind == "ivr.end":
            closed_by_ivr = closed_by_ivr or data.get("action") == "closed"
        elif kind == "callback.offered":
            offered = True
    # what the caller was told wins (see the module docstring), else the schedule
    if hours_flag is None and closed_by_ivr:
        hours_flag = False
    partial = start is None
    if start is None:
        start = evs[0].ts
    open_now = hours_flag if hours_flag is not None else (in_hours(service, start) if in_hours else True)

    # Below, plain loops and lists rather than generators: tens of thousands of calls a day
    # recomputed, most with one visit and no callback.
    visits = _visits(visit_events, ended) if visit_events else []
    visit_queues = [v.queue for v in visits]
    first_queue = next(filter(None, requested_queues + visit_queues), "")
    callbacks = _callbacks(call, callback_events, first_queue) if callback_events else []
    # The AMI tracker's call.end says whether the dialplan reached Queue() even when no
    # queue event followed (hung up before joining) and no IVR event told us.
    end_asked = False
    end_outcome: str | None = None
    for said in end_says:
        if not end_asked and _flag(said.get("asked_for_agent", "")) is True:
            end_asked = True
        if end_outcome is None and said.get("outcome") in _FROM_END:
            end_outcome = str(said["outcome"])
    agent_requested = bool(requested_queues) or end_asked

    answered = [v for v in visits if v.outcome == "answered"]
    asked = not leg and bool(agent_requested or visits or callbacks or appointment)
    handled_directly = bool(answered) and not leg
    completed = [cb for cb in callbacks if cb.status == "completed"]
    handled = handled_directly or (bool(completed) and not leg)
    if leg:
        asked_queues: tuple[str, ...] = ()
        handled_queues: tuple[str, ...] = ()
    else:
        names = requested_queues + visit_queues
        if callbacks:
            names += [cb.queue for cb in callbacks]
        if appointment:
            names += [e.queue for e in appointment]
        asked_queues = _ordered_unique(names)
        handled_queues = _ordered_unique([v.queue for v in answered] + [cb.queue for cb in completed])

    # waits: every finished visit up to (and including) the first answered one
    upto = visits.index(answered[0]) + 1 if answered else len(visits)
    waits = [v.wait_s for v in visits[:upto] if v.finished and v.wait_s is not None]
    wait = math.fsum(waits) if waits else None
    talks = [v.talk_s for v in answered if v.talk_s is not None]

    if leg:
        outcome = "callback_leg"
    elif answered:
        outcome = "answered"
    elif callbacks:
        outcome = "callback_requested"
    elif appointment:
        outcome = "appointment"
    elif visits:
        last = max(visits, key=_join_ts)
        outcome = "in_queue" if last.outcome == "waiting" else last.outcome
    elif agent_requested:
        outcome = end_outcome or ("abandoned_before_queue" if ended else "in_progress")
    else:
        outcome = "ivr_only" if ended else "in_progress"

    decisive = answered[0] if answered else (max(visits, key=_join_ts) if visits else None)
    queue = decisive.queue if decisive and decisive.queue else first_queue
    if not queue and callbacks:
        queue = callbacks[0].queue
    return CallSummary(
        call=call,
        start=start,
        outcome=outcome,
        service=service,
        queue=queue,
        caller=caller or "",
        agent=answered[0].agent if answered else "",
        asked_for_agent=asked,
        handled=handled,
        handled_directly=handled_directly,
        in_hours=open_now,
        ended=ended,
        callback_leg=leg,
        partial=partial,
        wait_s=wait,
        answer_wait_s=wait if answered else None,
        talk_s=math.fsum(talks) if talks else None,
        visits=tuple(visits),
        callbacks=tuple(callbacks),
        callback_offered=offered,
        appointment_booked=bool(appointment),
        scores=tuple(scores),
        asked_queues=asked_queues,
        handled_queues=handled_queues,
    )
