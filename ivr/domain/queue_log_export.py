"""Asterisk ``queue_log`` lines rebuilt from the call event stream.

Call-centre tools (QueueMetrics, Asternic) read Asterisk's queue_log, not our stream. This
module turns normalised :class:`~ivr.domain.events.CallEvent` objects back into the lines
app_queue would have written (``apps/app_queue.c`` of Asterisk 22, field layouts in
:data:`ivr.domain.queue_log.EVENT_FIELDS`), so those tools can report on data we stored,
including periods where Asterisk's own file was rotated away or never kept.

What is written, per event (``time`` = the event's Asterisk time truncated to the second,
as ``time(NULL)``; ``callid`` = our call id, the caller channel's Uniqueid):

=================  ===========================  ===========================================
event              queue_log line               data
=================  ===========================  ===========================================
queue.join         ENTERQUEUE (agent ``NONE``)  url (empty), callerid (see below), position
agent.noanswer     RINGNOANSWER                 ring time, ms
agent.connect      CONNECT                      hold s, member channel Uniqueid, ring s
agent.complete     COMPLETEAGENT/COMPLETECALLER hold s, talk s, original position
                   (BLINDTRANSFER for a          (extension and context empty: events do
                   transfer)                     not carry them)
queue.abandon      [RINGCANCELED...] ABANDON     position, original position, wait s
queue.exit_key     [RINGCANCELED...] EXITWITHKEY key, position, original position, wait s
queue.timeout      EXITWITHTIMEOUT, EXITEMPTY    position, original position, wait s
                   or WITHDRAW (by ``status``)   (+ empty withdraw info)
member.added       ADDMEMBER (callid MANAGER)    ``PAUSED`` or empty
member.removed     REMOVEMEMBER (callid MANAGER) empty
member.(un)paused  PAUSE / UNPAUSE (callid NONE) reason
=================  ===========================  ===========================================

``queue.join_empty`` writes nothing, like Asterisk (JOINEMPTY is not logged). Not written
because no event carries them: ``QUEUESTART`` (an Asterisk restart), ``PAUSEALL`` /
``UNPAUSEALL`` (a QueuePause without a queue; its per-queue PAUSE lines are written),
``PENALTY``, ``RINGINUSE``, ``AGENTDUMP``, ``ATTENDEDTRANSFER``. ADDMEMBER / REMOVEMEMBER
say ``MANAGER`` (the AMI QueueAdd/QueueRemove the dashboard uses): the AMI event does not
tell it from ``CLI`` or a dialplan AddQueueMember.

Field decisions:

* **callerid** (ENTERQUEUE): raw numbers never go into events, so the line gets the keyed
  hash of the caller's number (``caller_hash`` of ``queue.join``, present when the
  controller runs with its privacy key), else stays empty; ``callerid=False`` always
  leaves it empty. A pseudonymous id still lets the tools count repeat callers.
* **agent**: app_queue writes the member *name* on call lines and PAUSE/UNPAUSE, and the
  interface on ADDMEMBER/REMOVEMEMBER (``log_membername_as_agent = no``); that is
  ``agent="asterisk"``, the default. A member without a name is named by its interface
  (``Local/201@agents``), so both agree then. ``agent="interface"`` writes the interface
  everywhere (a stable id when names change), ``agent="name"`` the name everywhere (as
  ``log_membername_as_agent = yes``).
* **RINGCANCELED**: app_queue writes one per member still ringing when the caller hangs
  up or presses an exit key (``wait_for_answer()``), with the ms since that ring attempt
  began. Events have no ring-cancel type, so it is derived: a ring (``agent.ring``)
  not ended by ``agent.noanswer`` or ``agent.connect`` when the call's ``queue.abandon`` /
  ``queue.exit_key`` comes is cancelled, at the exit's time, for ``exit ts - ring ts`` ms
  (counted from the earliest ring still going: app_queue's ``start_time_tv`` is taken as
  ``wait_for_answer()`` starts, right after the ring). A member rung after another failed
  within the same attempt would be timed from its own ring instead of the attempt's
  start; the recordings never show that case.

Order: lines come in Asterisk-time order. Events may reach us out of order (the tracker
decides an abandon after the leave that follows it; a stream shared by two controllers),
so :class:`QueueLogExporter` holds events in a reorder window before turning them into
lines; :func:`export_queue_log` sorts its whole input.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from ivr.domain.events import CallEvent, Scalar
from ivr.domain.queue_log import QueueLogEntry

__all__ = [
    "AGENT_MODES",
    "DEFAULT_REORDER_S",
    "AgentMode",
    "QueueLogExporter",
    "export_queue_log",
]

AgentMode = Literal["asterisk", "interface", "name"]
AGENT_MODES: Final[tuple[AgentMode, ...]] = ("asterisk", "interface", "name")

#: How long (Asterisk time) an event is held for late events that belong before it; the
#: stream reader's own margin (``ivr.storage.reader.DEFAULT_MARGIN_S``).
DEFAULT_REORDER_S: Final = 300.0

#: The event types that produce lines or state; anything else is skipped at once.
_USED: Final = frozenset(
    {
        "queue.join",
        "agent.ring",
        "agent.noanswer",
        "agent.connect",
        "agent.complete",
        "queue.abandon",
        "queue.exit_key",
        "queue.timeout",
        "call.end",
        "member.added",
        "member.removed",
        "member.paused",
        "member.unpaused",
    }
)
_MEMBER_TYPES: Final = frozenset({"member.added", "member.removed", "member.paused", "member.unpaused"})
#: ``status`` of ``queue.timeout`` (the caller's QUEUESTATUS) -> queue_log event.
_TIMEOUT_EVENTS: Final = {"TIMEOUT": "EXITWITHTIMEOUT", "LEAVEEMPTY": "EXITEMPTY", "WITHDRAW": "WITHDRAW"}
#: ``reason`` of ``agent.complete`` (AgentComplete ``Reason``) -> queue_log event.
_COMPLETE_EVENTS: Final = {"agent": "COMPLETEAGENT", "caller": "COMPLETECALLER", "transfer": "BLINDTRANSFER"}


def _int(value: Scalar | None, default: int = 0) -> int:
    """A numeric data field as Asterisk prints it (``%d`` / ``%ld``); bad or absent -> default."""
    if value is None or isinstance(value, bool):
        return default
    try:
        number = float(value)
    except ValueError:
        return default
    return int(number) if math.isfinite(number) else default


def _text(value: Scalar | None) -> str:
    """A text field for a line: no ``|`` nor line break may reach the file."""
    if value is None:
        return ""
    return str(value).replace("|", "_").replace("\r", " ").replace("\n", " ")


@dataclass(slots=True)
class _Ring:
    ts: float
    agent: str
    name: str
    queue: str


@dataclass(slots=True)
class _CallState:
    """What a call's later lines need from its earlier events."""

    join_ts: float | None = None
    original_position: int = 0
    member_name: str = ""
    rings: dict[str, _Ring] = field(default_factory=dict)  # interface -> ring still going


class QueueLogExporter:
    """Turn call events into queue_log entries, incrementally.

    ``feed(event)`` returns the entries that are settled (their events older than the
    newest one by more than ``reorder_s``), ``finish()`` the rest; together they are in
    time order. Only lines whose event has ``since <= ts < until`` and (if ``queues`` is
    given) whose queue is listed are returned; the events before ``since`` are still used
    (a ring before it, cancelled after it). The same event id fed twice counts once.
    """

    def __init__(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        queues: Collection[str] | None = None,
        callerid: bool = True,
        members: bool = True,
        agent: AgentMode = "asterisk",
        reorder_s: float = DEFAULT_REORDER_S,
    ) -> None:
        if agent not in AGENT_MODES:
            raise ValueError(f"agent must be one of {', '.join(AGENT_MODES)}, not {agent!r}")
        if reorder_s < 0 or math.isnan(reorder_s):
            raise ValueError(f"reorder_s must be >= 0, not {reorder_s}")
        if since is not None and until is not None and until < since:
            raise ValueError(f"empty range: until ({until}) is before since ({since})")
        self.since = since
        self.until = until
        self.queues = None if queues is None else frozenset(queues)
        self.callerid = callerid
        self.members = members
        self.agent = agent
        self.reorder_s = reorder_s
        self._heap: list[tuple[float, int, CallEvent]] = []
        self._seq = 0
        self._newest = -math.inf
        self._seen: set[str] = set()
        self._calls: dict[str, _CallState] = {}
        self._out: list[QueueLogEntry] = []

    # ------------------------------------------------------------------------ public API
    def feed(self, event: CallEvent) -> list[QueueLogEntry]:
        """Take one event; return the entries now settled."""
        if event.type not in _USED or (event.type in _MEMBER_TYPES and not self.members):
            return []
        if not math.isfinite(event.ts) or event.ts < 0:
            return []  # no Asterisk time to write
        if event.id in self._seen:
            return []
        self._seen.add(event.id)
        heapq.heappush(self._heap, (event.ts, self._seq, event))
        self._seq += 1
        self._newest = max(self._newest, event.ts)
        horizon = self._newest - self.reorder_s
        while self._heap and self._heap[0][0] <= horizon:
            self._apply(heapq.heappop(self._heap)[2])
        return self._drain()

    def finish(self) -> list[QueueLogEntry]:
        """Every entry still held (end of the input)."""
        while self._heap:
            self._apply(heapq.heappop(self._heap)[2])
        return self._drain()

    # ------------------------------------------------------------------------ internals
    def _drain(self) -> list[QueueLogEntry]:
        out, self._out = self._out, []
        return out

    def _line(self, e: CallEvent, callid: str, agent: str, name: str, data: tuple[str, ...]) -> None:
        if self.since is not None and e.ts < self.since:
            return
        if self.until is not None and e.ts >= self.until:
            return
        queue = e.queue or "NONE"
        if self.queues is not None and queue not in self.queues:
            return
        self._out.append(QueueLogEntry(int(e.ts), callid or "NONE", queue, agent or "NONE", name, data))

    def _call_agent(self, e: CallEvent, name: str) -> str:
        """Agent field of a call line: app_queue's ``member->membername``."""
        return e.agent if self.agent == "interface" else (name or e.agent)

    def _apply(self, e: CallEvent) -> None:
        d = e.data
        if e.type in _MEMBER_TYPES:
            self._member(e, d)
            return
        if not e.call:
            return
        if e.type == "call.end":
            st = self._calls.get(e.call)
            # Keep what a late AgentComplete needs; forget the rest.
            if st is not None and d.get("queue_outcome") != "answered":
                del self._calls[e.call]
            elif st is not None:
                st.rings.clear()
            return
        st = self._calls.setdefault(e.call, _CallState())
        if e.type == "queue.join":
            position = _int(d.get("position"))
            st.join_ts = e.ts
            st.original_position = position
            st.rings.clear()
            callerid = _text(d.get("caller_hash")) if self.callerid else ""
            self._line(e, e.call, "NONE", "ENTERQUEUE", ("", callerid, str(position)))
        elif e.type == "agent.ring":
            ring = _Ring(e.ts, e.agent, _text(d.get("member_name")), e.queue)
            st.rings.pop(e.agent, None)  # re-inserted last: rings keep the order they started in
            st.rings[e.agent] = ring
        elif e.type == "agent.noanswer":
            st.rings.pop(e.agent, None)
            agent = self._call_agent(e, _text(d.get("member_name")))
            self._line(e, e.call, agent, "RINGNOANSWER", (str(_int(d.get("ring_ms"))),))
        elif e.type == "agent.connect":
            st.rings.clear()  # the others are hung up by hangupcalls(), which logs nothing
            st.member_name = _text(d.get("member_name"))
            if d.get("original_position"):
                st.original_position = _int(d.get("original_position"))
            data = (str(_int(d.get("wait_s"))), _text(d.get("member_uniqueid")), str(_int(d.get("ring_s"))))
            self._line(e, e.call, self._call_agent(e, st.member_name), "CONNECT", data)
        elif e.type == "agent.complete":
            self._complete(e, d, st)
        elif e.type in ("queue.abandon", "queue.exit_key", "queue.timeout"):
            self._exit(e, d, st)

    def _complete(self, e: CallEvent, d: Mapping[str, Scalar], st: _CallState) -> None:
        name = _COMPLETE_EVENTS.get(str(d.get("reason", "")), "COMPLETEAGENT")
        original = _int(d.get("original_position")) or st.original_position
        agent = self._call_agent(e, _text(d.get("member_name")) or st.member_name)
        times = (str(_int(d.get("wait_s"))), str(_int(d.get("talk_s"))), str(original))
        data = ("", "", *times) if name == "BLINDTRANSFER" else times
        self._calls.pop(e.call, None)
        self._line(e, e.call, agent, name, data)

    def _exit(self, e: CallEvent, d: Mapping[str, Scalar], st: _CallState) -> None:
        rings = list(st.rings.values())
        st.rings.clear()
        if e.type != "queue.timeout" and rings:
            # wait_for_answer(): one RINGCANCELED per member still ringing, before the exit.
            # In whole microseconds first: the AMI Timestamps are exact to the microsecond,
            # a float difference of two epochs is not (5.1 s could give 5099 ms).
            elapsed_us = round(e.ts * 1_000_000) - round(min(r.ts for r in rings) * 1_000_000)
            ms = str(max(0, elapsed_us // 1000))
            for ring in rings:
                agent = ring.agent if self.agent == "interface" else (ring.name or ring.agent)
                self._line(e, e.call, agent, "RINGCANCELED", (ms,))
        position = str(_int(d.get("position")))
        original = str(_int(d.get("original_position")) or st.original_position)
        if "wait_s" in d:
            wait = str(_int(d.get("wait_s")))
        elif st.join_ts is not None:
            wait = str(max(0, int(e.ts) - int(st.join_ts)))
        else:
            wait = "0"
        if e.type == "queue.abandon":
            self._line(e, e.call, "NONE", "ABANDON", (position, original, wait))
        elif e.type == "queue.exit_key":
            self._line(e, e.call, "NONE", "EXITWITHKEY", (_text(d.get("key")), position, original, wait))
        else:
            name = _TIMEOUT_EVENTS.get(str(d.get("status", "")), "EXITWITHTIMEOUT")
            data = (position, original, wait, "") if name == "WITHDRAW" else (position, original, wait)
            self._line(e, e.call, "NONE", name, data)
        del self._calls[e.call]

    def _member(self, e: CallEvent, d: Mapping[str, Scalar]) -> None:
        name = _text(d.get("member_name")) or e.agent
        by_name = name if self.agent != "interface" else e.agent
        by_interface = name if self.agent == "name" else e.agent
        if e.type == "member.added":
            self._line(e, "MANAGER", by_interface, "ADDMEMBER", ("PAUSED" if d.get("paused") else "",))
        elif e.type == "member.removed":
            self._line(e, "MANAGER", by_interface, "REMOVEMEMBER", ("",))
        else:
            event = "PAUSE" if e.type == "member.paused" else "UNPAUSE"
            self._line(e, "NONE", by_name, event, (_text(d.get("reason")),))


def export_queue_log(
    events: Iterable[CallEvent],
    *,
    since: float | None = None,
    until: float | None = None,
    queues: Collection[str] | None = None,
    callerid: bool = True,
    members: bool = True,
    agent: AgentMode = "asterisk",
) -> list[QueueLogEntry]:
    """The queue_log entries of ``events`` (any order), in time order.

    See :class:`QueueLogExporter` for the options; the whole input is sorted by time first.
    """
    exporter = QueueLogExporter(
        since=since,
        until=until,
        queues=queues,
        callerid=callerid,
        members=members,
        agent=agent,
        reorder_s=math.inf,
    )
    out: list[QueueLogEntry] = []
    for event in events:
        out.extend(exporter.feed(event))
    out.extend(exporter.finish())
    return out
