"""Live state of the PBX (queues, members, calls) rebuilt from AMI events alone.

The tracker is pure: it is driven only by :class:`ivr.protocol.ami.Event` objects and takes
the time from each event's ``Timestamp`` (``timestampevents = yes`` in manager.conf), never
from a wall clock, so a replay of a recorded AMI stream rebuilds exactly the same state and
emits exactly the same :class:`~ivr.domain.events.CallEvent` objects, ids included.

Feeding it::

    tracker = StateTracker()
    for event in events:                       # ivr.protocol.ami.Event
        for call_event in tracker.feed(event): # normalised CallEvent objects
            ...

``resync()`` corrects the state from ``QueueStatus``/``CoreShowChannels`` lists after a
reconnect and ``gap()`` records the hole; ``tick(now)`` lets time pass without events;
``flush()`` settles what is still undecided at the end of a recording.

Call identity (DESIGN.md): a call is the Uniqueid of the caller's channel. A channel whose
Uniqueid equals its Linkedid starts a call; if it is the ``;1`` half of a Local channel the
caller is its ``;2`` sibling (the half that runs the dialplan and that app_queue sees).
Every other channel with that Linkedid (member legs, the caller's ``;1``) belongs to the same
call. A call becomes ``inbound`` (and emits ``call.start``) at its first IVR or queue activity
(AGI, Queue(), QueueCallerJoin, QUEUESTATUS); a call whose channels carry ``IVR_CALLBACK_ID``
from the Originate (before the dialplan answered them) is a ``callback`` leg; anything else
(internal calls, test channels) stays ``other`` and emits nothing.

The traps of Asterisk 22 (tests/fixtures/asterisk/FACTS.md) and the rules used here:

* **Timeout vs abandon.** app_queue calls ``record_abandoned()`` -- hence publishes
  ``QueueCallerAbandon`` -- for a hangup *and* for a Queue() timeout, LEAVEEMPTY and
  WITHDRAW (apps/app_queue.c, queue_exec). Rule: a ``QueueCallerAbandon`` is held pending
  until the caller channel shows that Queue() returned. After ``leave_queue()`` app_queue
  sets ``QUEUESTATUS`` on the same thread, so the next ``VarSet QUEUESTATUS`` decides
  (TIMEOUT -> timeout, LEAVEEMPTY -> leave_empty, WITHDRAW -> withdrawn); a hangup leaves
  QUEUESTATUS unset, so when the next caller event is anything else (hangup request,
  Hangup, Newexten, AGIExecStart), the call is *abandoned* if its hangup had been requested
  before the QueueCallerAbandon (``HangupRequest``/``SoftHangupRequest`` on the caller, or
  the Local ``;1`` phone hung up -- both published before app_queue can notice the hangup)
  and *timeout* otherwise. The recordings agree: ``abandoned`` has HangupRequest before the
  abandon and no QUEUESTATUS, ``timeout`` has no hangup request and QUEUESTATUS=TIMEOUT.
* **Leave before connect.** ``QueueCallerLeave`` precedes ``AgentConnect`` (try_calling()
  calls leave_queue() before publishing the connect), so a leave is never an abandon by
  itself: a bare leave waits for AgentConnect.
* **Exit with key** emits only ``QueueCallerLeave``, after valid_exit() moved the caller to
  the queue's exit context: Context/Exten of the leave differ from those at the join
  (``queue-exit``/``1``), which identifies it at once; the key is the leave's Exten.
* **JOINEMPTY** emits no queue event: the outcome comes from ``VarSet QUEUESTATUS=JOINEMPTY``
  (also JOINUNAVAIL, FULL), the queue from the Queue() ``AppData`` of the preceding Newexten.
* **Ring times**: AgentRingNoAnswer ``RingTime`` is ms, AgentConnect's is s (``ring_ms`` /
  ``ring_s`` in the emitted data).
* **Field names**: QueueStatus items ``Name``/``Location``/``Holdtime``/``Calls`` vs events
  ``MemberName``/``Interface``/``HoldTime``/``Callers`` (see ivr.domain.normalise).
* **InCall**: QueueMemberStatus events always say ``InCall: 0``; a member's ``in_call`` comes
  from AgentConnect/AgentComplete (and the member leg's Hangup), or from QueueStatus items.
* **Two DialEnd** (NOANSWER then CANCEL) for one unanswered ring: ringing state is cleared
  idempotently, only ``AgentRingNoAnswer`` emits ``agent.noanswer``.
* **Interleaving**: AgentComplete is published on the queue topic from a stasis callback and
  may come after the caller's Hangup, so a connected call whose caller hung up waits up to
  ``end_grace_s`` (Asterisk time) for it before ``call.end``; everything else used to decide
  an outcome is ordered on the caller's own channel topic.

Idempotency ids (``make_id``): for an event that maps one AMI event, (AMI ``Timestamp``, AMI
event name, caller Uniqueid[, discriminator]); the queue-exit decision of an abandon uses the
QueueCallerAbandon's parts whatever it is classified as, so two observers can never store
both an abandon and a timeout for one exit; ``call.start``/``call.end`` happen once per call
and use (call id, type), so a call ended by a resync after a gap and by a live Hangup get
the same id.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from ivr.domain.calls import (
    ABANDONED,
    ANSWERED,
    CALLBACK,
    EXIT_KEY,
    INBOUND,
    JOIN_EMPTY,
    LEAVE_EMPTY,
    OTHER,
    TIMEOUT,
    UNKNOWN,
    WITHDRAWN,
    Call,
    CallRecord,
    PendingExit,
)
from ivr.domain.events import CallEvent, Scalar, make_id
from ivr.domain.normalise import (
    CHANNEL_STATE_UP,
    DEVICE_STATES,
    MemberFields,
    agi_script,
    agi_set_variables,
    callerid,
    local_half,
    member_fields,
    parse_duration,
    queue_app_target,
    ring_ms,
    to_int,
)
from ivr.protocol.ami import Event

__all__ = ["Channel", "Member", "QueueState", "StateTracker", "Waiter"]

Fields = Mapping[str, str]
_Handler = Callable[[Fields, float, str], None]

#: QUEUESTATUS values of a caller refused on entry (apps/app_queue.c, queue_results).
_REFUSED: Final = frozenset({"JOINEMPTY", "JOINUNAVAIL", "FULL"})
#: QUEUESTATUS values after a QueueCallerAbandon that was not a hangup.
_GAVE_UP: Final = {"TIMEOUT": TIMEOUT, "LEAVEEMPTY": LEAVE_EMPTY, "WITHDRAW": WITHDRAWN}
#: CallEvent type of each queue exit.
_EXIT_TYPES: Final = {
    ABANDONED: "queue.abandon",
    TIMEOUT: "queue.timeout",
    LEAVE_EMPTY: "queue.timeout",
    WITHDRAWN: "queue.timeout",
    EXIT_KEY: "queue.exit_key",
}
#: Dialplan applications whose execution marks a channel as an IVR caller.
_AGI_APPS: Final = frozenset({"AGI", "EAGI", "DeadAGI"})
_EMPTY: Final[tuple[CallEvent, ...]] = ()


@dataclass(slots=True)
class Channel:
    """A live channel; ``call`` is the call it belongs to (caller channel, its peer or a leg)."""

    uniqueid: str
    name: str
    linkedid: str
    state: str = ""
    call: Call | None = None
    local_base: str = ""
    caller_peer: bool = False  #: the ``;1`` half of a Local caller: the caller's "phone"


@dataclass(slots=True)
class Waiter:
    """A caller waiting in a queue."""

    call: str
    channel: str
    caller: str
    position: int
    join_ts: float


@dataclass(slots=True)
class Member:
    """A queue member (one per queue and interface)."""

    queue: str
    interface: str
    name: str = ""
    state_interface: str = ""
    membership: str = ""
    penalty: int = 0
    calls_taken: int = 0
    last_call: int = 0
    status: int = 0
    paused: bool = False
    paused_reason: str = ""
    in_call: bool = False
    ringing: bool = False
    wrapuptime: int = 0

    @property
    def status_name(self) -> str:
        """The device state as a word (``not_inuse``, ``inuse``, ``ringing`` ...)."""
        return DEVICE_STATES.get(self.status, "unknown")

    @property
    def available(self) -> bool:
        """Logged in, not paused, not talking through a queue, device not busy/unavailable."""
        return not self.paused and not self.in_call and self.status in (0, 1)


@dataclass(slots=True)
class QueueState:
    """One queue: waiting callers in position order, members, counters since tracking began."""

    name: str
    waiting: dict[str, Waiter] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    joined: int = 0
    answered: int = 0
    completed: int = 0
    abandoned: int = 0
    timeouts: int = 0
    exit_keys: int = 0
    join_empty: int = 0
    other_exits: int = 0

    @property
    def count(self) -> int:
        """Callers waiting now."""
        return len(self.waiting)

    def callers(self) -> list[Waiter]:
        """Waiting callers, head of the line first."""
        return sorted(self.waiting.values(), key=lambda w: w.position)

    def longest_wait(self, now: float) -> float:
        """Seconds the head-of-line caller has waited (0 when nobody waits)."""
        return max((now - w.join_ts for w in self.waiting.values()), default=0.0)

    def add(self, waiter: Waiter) -> None:
        """Insert a caller at its announced position; app_queue shifts those at or behind it."""
        for other in self.waiting.values():
            if other.position >= waiter.position:
                other.position += 1
        self.waiting[waiter.call] = waiter

    def remove(self, call_id: str) -> Waiter | None:
        """Remove a caller; app_queue renumbers those behind it (leave_queue), silently."""
        waiter = self.waiting.pop(call_id, None)
        if waiter is not None:
            for other in self.waiting.values():
                if other.position > waiter.position:
                    other.position -= 1
        return waiter

    def count_exit(self, outcome: str) -> None:
        if outcome == ABANDONED:
            self.abandoned += 1
        elif outcome == TIMEOUT:
            self.timeouts += 1
        elif outcome == EXIT_KEY:
            self.exit_keys += 1
        elif outcome == JOIN_EMPTY:
            self.join_empty += 1
        else:
            self.other_exits += 1


class StateTracker:
    """Queues, members and calls, driven by AMI events; emits normalised call events.

    ``hash_number`` (e.g. ivr.storage.privacy's keyed hash) adds ``data.caller`` (the hash) to
    ``call.end`` and ``data.caller_hash`` to ``queue.join``; raw numbers never go into events.
    ``end_grace_s`` is how long (Asterisk time) a connected call whose caller hung up waits
    for its AgentComplete. ``keep_ended`` bounds :attr:`ended` (None = keep all, for replays).
    """

    def __init__(
        self,
        *,
        hash_number: Callable[[str], str] | None = None,
        end_grace_s: float = 5.0,
        keep_ended: int | None = 1000,
    ) -> None:
        self.queues: dict[str, QueueState] = {}
        self.calls: dict[str, Call] = {}
        self.channels: dict[str, Channel] = {}
        self.ended: deque[CallRecord] = deque(maxlen=keep_ended)
        self.gaps: list[tuple[float, float]] = []
        self._hash_number = hash_number
        self._grace = end_grace_s
        self._now = 0.0
        self._roots: dict[str, str] = {}  # Local base -> Uniqueid of a ;1 that starts a call
        self._by_linkedid: dict[str, Call] = {}
        self._ringing: dict[str, tuple[str, str]] = {}  # member leg Uniqueid -> (queue, interface)
        self._agent_legs: dict[str, tuple[str, str]] = {}  # member leg Uniqueid -> (interface, call)
        self._busy: dict[str, str] = {}  # interface -> call id ("" = in a call we do not know)
        self._awaiting_complete: dict[str, Call] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._out: list[CallEvent] = []
        self._handlers: dict[str, _Handler] = {
            "Newchannel": self._on_newchannel,
            "NewCallerid": self._on_newcallerid,
            "Newexten": self._on_newexten,
            "VarSet": self._on_varset,
            "AGIExecStart": self._on_agi_exec,
            "HangupRequest": self._on_hangup_request,
            "SoftHangupRequest": self._on_hangup_request,
            "Hangup": self._on_hangup,
            "QueueCallerJoin": self._on_join,
            "QueueCallerAbandon": self._on_abandon,
            "QueueCallerLeave": self._on_leave,
            "AgentCalled": self._on_agent_called,
            "AgentRingNoAnswer": self._on_ring_no_answer,
            "AgentConnect": self._on_agent_connect,
            "AgentComplete": self._on_agent_complete,
            "AgentDump": self._on_agent_dump,
            "DialEnd": self._on_dial_end,
            "QueueMemberStatus": self._on_member_status,
            "QueueMemberPenalty": self._on_member_status,
            "QueueMemberRinginuse": self._on_member_status,
            "QueueMemberAdded": self._on_member_added,
            "QueueMemberRemoved": self._on_member_removed,
            "QueueMemberPause": self._on_member_pause,
        }

    # ------------------------------------------------------------------------ public API
    @property
    def now(self) -> float:
        """Asterisk time of the latest event seen (epoch seconds)."""
        return self._now

    def feed(self, event: Event) -> Sequence[CallEvent]:
        """Apply one AMI event; return the call events it produced (usually none).

        Events the tracker does not use cost one dict lookup. Events without a
        ``Timestamp`` (FullyBooted, action list items) are ignored: list items are applied
        with :meth:`resync`.
        """
        handler = self._handlers.get(event.name)
        if handler is None:
            return _EMPTY
        f = event.fields
        raw = f.get("Timestamp")
        if raw is None:
            return _EMPTY
        try:
            ts = float(raw)
        except ValueError:
            return _EMPTY
        if ts > self._now:
            self._now = ts
            if self._deadlines and self._deadlines[0][0] <= ts:
                self._sweep(ts)
        handler(f, ts, raw)
        return self._drain()

    def feed_all(self, events: Iterable[Event]) -> list[CallEvent]:
        """:meth:`feed` every event; all the call events, in order."""
        out: list[CallEvent] = []
        for event in events:
            out.extend(self.feed(event))
        return out

    def tick(self, now: float) -> Sequence[CallEvent]:
        """Let Asterisk time pass without events (ends calls whose AgentComplete never came)."""
        if now > self._now:
            self._now = now
            self._sweep(now)
        return self._drain()

    def flush(self) -> Sequence[CallEvent]:
        """Settle everything still undecided, as at the end of a recording.

        Ends the calls that hung up while waiting for their AgentComplete and classifies
        queue exits whose deciding event never came. Live calls stay live.
        """
        for call in list(self._awaiting_complete.values()):
            self._finish(call)
        for call in list(self.calls.values()):
            if call.pending is not None and call.pending.left:
                self._settle(call)
        return self._drain()

    def gap(self, start: float, end: float) -> CallEvent:
        """Record that events between ``start`` and ``end`` (Asterisk time) were missed.

        Calls alive now are flagged (``gap`` in their ``call.end``) since some of their
        events may be missing; the returned ``controller.gap`` event tells the KPIs.
        """
        self.gaps.append((start, end))
        for call in self.calls.values():
            call.gap = True
        return CallEvent(
            type="controller.gap",
            call="",
            ts=start,
            id=make_id("controller.gap", repr(start), repr(end)),
            source="controller",
            data={"start": start, "end": end, "duration_s": round(max(0.0, end - start), 3)},
        )

    def resync(
        self,
        queue_status_items: Iterable[Event],
        core_show_channels_items: Iterable[Event],
        *,
        now: float | None = None,
    ) -> Sequence[CallEvent]:
        """Rebuild queues, members and channels from list actions after a reconnect.

        ``queue_status_items``: the QueueParams/QueueMember/QueueEntry items of a
        ``QueueStatus`` (only the queues it lists are corrected); ``core_show_channels_items``:
        the CoreShowChannel items of ``CoreShowChannels`` (the full channel list). ``now`` is
        the Asterisk time of the lists (default: the latest event's). Channels that vanished
        end their calls (``call.end`` flagged ``gap``); a caller whose queue exit fell in the
        gap gets the outcome ``unknown``; channels and waiting callers we did not know are
        adopted. Missed queue joins are not replayed as events (their ids would not match
        the live ones another observer may have stored): the call's ``call.end`` still says
        it asked for an agent.
        """
        if now is None:
            now = self._now
        elif now > self._now:
            self._now = now
        listed: dict[str, Fields] = {}
        for item in core_show_channels_items:
            if item.name == "CoreShowChannel":
                uid = item.fields.get("Uniqueid")
                if uid:
                    listed[uid] = item.fields
        for uid in [u for u in self.channels if u not in listed]:
            self._vanish(uid, now)
        self._adopt_channels(listed, now)
        self._resync_queues(queue_status_items, now)
        self._sweep(now)
        return self._drain()

    def member(self, queue: str, interface: str) -> Member | None:
        """A member's state, or None."""
        q = self.queues.get(queue)
        return None if q is None else q.members.get(interface)

    # ------------------------------------------------------------------------ internals
    def _drain(self) -> Sequence[CallEvent]:
        out = self._out
        if not out:
            return _EMPTY
        self._out = []
        return out

    def _queue(self, name: str) -> QueueState:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = QueueState(name)
        return q

    def _emit(
        self,
        type_: str,
        call: Call,
        ts: float,
        id_: str,
        *,
        queue: str | None = None,
        agent: str = "",
        data: dict[str, Scalar] | None = None,
    ) -> None:
        payload: dict[str, Scalar] = {} if data is None else data
        if call.kind == CALLBACK and call.callback_id:
            payload["callback_id"] = call.callback_id
        self._out.append(
            CallEvent(
                type=type_,
                call=call.id,
                ts=ts,
                id=id_,
                service=call.service,
                queue=call.queue if queue is None else queue,
                agent=agent,
                data=payload,
            )
        )

    def _new_call(self, ch: Channel, start: float, f: Fields) -> Call:
        call = Call(
            id=ch.uniqueid,
            linkedid=ch.linkedid,
            channel=ch.name,
            start=start,
            caller=callerid(f.get("CallerIDNum")),
        )
        self.calls[call.id] = call
        ch.call = call
        self._by_linkedid.setdefault(call.linkedid, call)
        return call

    def _activate(self, call: Call) -> None:
        """First IVR/queue activity: the call is a real one; announce it."""
        if call.kind == OTHER:
            call.kind = INBOUND
        if not call.started:
            call.started = True
            self._emit(
                "call.start",
                call,
                call.start,
                make_id(call.id, "call.start"),
                queue="",
                data={"channel": call.channel, "kind": call.kind},
            )

    def _adopt(self, f: Fields, ts: float) -> Call:
        """A queue caller that is not a known call (seen after a reconnect, or not the natural caller)."""
        uid = f.get("Uniqueid") or ""
        name = f.get("Channel") or ""
        linked = f.get("Linkedid") or uid
        ch = self.channels.get(uid)
        if ch is None:
            ch = self.channels[uid] = Channel(uid, name, linked, f.get("ChannelState") or "")
        group = self._by_linkedid.get(linked)
        call = self._new_call(ch, ts, f)
        if group is not None and group is not call and group.kind == CALLBACK:
            call.kind = CALLBACK
            call.callback_id = group.callback_id
            call.service = group.service
        return call

    # -- channels and dialplan -------------------------------------------------------
    def _on_newchannel(self, f: Fields, ts: float, raw: str) -> None:
        uid = f.get("Uniqueid")
        if not uid:
            return
        name = f.get("Channel") or ""
        linked = f.get("Linkedid") or uid
        ch = Channel(uid, name, linked, f.get("ChannelState") or "")
        self.channels[uid] = ch
        base, half = local_half(name)
        if half:
            ch.local_base = base
        if uid == linked:
            if half == 1:
                self._roots[base] = uid  # the call is its ;2 sibling, created next
            else:
                self._new_call(ch, ts, f)
            return
        if half == 2 and self._roots.get(base) == linked:
            del self._roots[base]
            call = self._new_call(ch, ts, f)
            root = self.channels.get(linked)
            if root is not None:
                root.call = call
                root.caller_peer = True
            return
        ch.call = self._by_linkedid.get(linked)

    def _on_newcallerid(self, f: Fields, ts: float, raw: str) -> None:
        call = self.calls.get(f.get("Uniqueid") or "")
        if call is not None:
            number = callerid(f.get("CallerIDNum"))
            if number:
                call.caller = number

    def _on_newexten(self, f: Fields, ts: float, raw: str) -> None:
        call = self.calls.get(f.get("Uniqueid") or "")
        if call is None:
            return
        if call.pending is not None:
            self._settle(call)  # the caller runs dialplan again: Queue() has returned
        app = f.get("Application")
        if app == "Queue":
            queue, timeout = queue_app_target(f.get("AppData"))
            if queue:
                call.requested_queue = queue
            call.queue_timeout = timeout
            call.asked_for_agent = True
            self._activate(call)
        elif app in _AGI_APPS:
            script = agi_script(f.get("AppData"))
            call.ivr_path.append(f"agi:{script}")
            self._activate(call)

    def _on_agi_exec(self, f: Fields, ts: float, raw: str) -> None:
        call = self.calls.get(f.get("Uniqueid") or "")
        if call is None:
            return
        # Not for a bare leave: Queue()'s own AGI argument runs between leave and connect.
        if call.pending is not None and call.pending.abandon:
            self._settle(call)
        self._activate(call)
        for name, value in agi_set_variables(f.get("Command")):
            if name.startswith("IVR_"):
                self._ivr_var(call, name, value, up=True)

    def _on_varset(self, f: Fields, ts: float, raw: str) -> None:
        var = f.get("Variable")
        if not var:
            return
        if var[0] == "_":
            var = var.lstrip("_")
        if var == "QUEUESTATUS":
            self._on_queue_status(f, ts, raw)
            return
        if not var.startswith("IVR_"):
            return
        uid = f.get("Uniqueid") or ""
        value = f.get("Value") or ""
        up = f.get("ChannelState") == CHANNEL_STATE_UP
        call = self.calls.get(uid)
        if call is not None:
            self._ivr_var(call, var, value, up=up)
            return
        if var == "IVR_CALLBACK_ID" and value and not up:
            # Originate variables land on both halves; the ;1 is not the call's key.
            ch = self.channels.get(uid)
            if ch is not None and ch.call is not None:
                self._ivr_var(ch.call, var, value, up=False)

    def _ivr_var(self, call: Call, var: str, value: str, *, up: bool) -> None:
        if call.ivr_vars.get(var) == value:
            return  # seen twice: AGIExecStart SET VARIABLE, then its VarSet
        call.ivr_vars[var] = value
        if value:
            call.ivr_path.append(f"{var}={value}")
        if var == "IVR_SERVICE":
            call.service = value
        elif var == "IVR_ACTION":
            if value:
                call.ivr_action = value
            if value == "queue":
                call.asked_for_agent = True
            elif value == "callback":
                call.callback_requested = True
        elif var == "IVR_QUEUE":
            if value:
                call.requested_queue = value
        elif var == "IVR_CALLBACK_ID" and value:
            call.callback_id = value
            if not call.started and not up:
                # Set by the Originate before any dialplan ran: our own callback leg.
                call.kind = CALLBACK
                self._activate(call)
            else:
                call.callback_requested = True

    def _on_queue_status(self, f: Fields, ts: float, raw: str) -> None:
        call = self.calls.get(f.get("Uniqueid") or "")
        if call is None:
            return
        value = f.get("Value") or ""
        if value:
            call.queue_status = value
        self._activate(call)
        if call.pending is not None:
            self._settle(call, status=value)
            return
        if value in _REFUSED and not call.in_queue:
            queue = call.requested_queue
            call.asked_for_agent = True
            call.queue = queue
            call.attempts += 1
            call.queue_outcome = JOIN_EMPTY
            call.wait_s = None
            if queue:
                self._queue(queue).count_exit(JOIN_EMPTY)
            self._emit(
                "queue.join_empty",
                call,
                ts,
                make_id(raw, "VarSet", call.id, "QUEUESTATUS"),
                queue=queue,
                data={"status": value},
            )

    def _on_hangup_request(self, f: Fields, ts: float, raw: str) -> None:
        call = self.calls.get(f.get("Uniqueid") or "")
        if call is None:
            return
        if call.pending is not None and call.pending.abandon:
            self._settle(call)
        call.hangup_requested = True

    def _on_hangup(self, f: Fields, ts: float, raw: str) -> None:
        uid = f.get("Uniqueid") or ""
        ch = self.channels.pop(uid, None)
        self._leg_gone(uid)
        call = self.calls.get(uid)
        if call is None:
            if ch is not None:
                if ch.local_base and self._roots.get(ch.local_base) == uid:
                    del self._roots[ch.local_base]
                if ch.caller_peer and ch.call is not None:
                    ch.call.hangup_requested = True  # the caller's phone hung up
            return
        call.cause = f.get("Cause") or ""
        self._end(call, ts)

    def _leg_gone(self, uid: str) -> None:
        ring = self._ringing.pop(uid, None)
        if ring is not None:
            self._set_ringing(*ring, False)
        leg = self._agent_legs.pop(uid, None)
        if leg is not None and self._busy.get(leg[0]) == leg[1]:
            self._set_busy(leg[0], None)

    def _end(self, call: Call, ts: float) -> None:
        self._settle(call, final=True)
        call.end_ts = ts
        if call.in_queue:  # its exit was never seen
            self._queue(call.queue).remove(call.id)
            call.in_queue = False
            call.queue_outcome = UNKNOWN
        if call.answered and not call.completed:
            self._awaiting_complete[call.id] = call
            heapq.heappush(self._deadlines, (ts + self._grace, call.id))
            return
        self._finish(call)

    def _finish(self, call: Call) -> None:
        self._awaiting_complete.pop(call.id, None)
        self.calls.pop(call.id, None)
        if self._by_linkedid.get(call.linkedid) is call:
            del self._by_linkedid[call.linkedid]
        if call.end_ts is None:
            call.end_ts = self._now
        if call.answered and call.talk_s is None and call.connect_ts is not None:
            call.talk_s = max(0, int(call.end_ts) - int(call.connect_ts))
        if not call.started:
            return
        summary = call.summary()
        self.ended.append(summary)
        data: dict[str, Scalar] = {
            "outcome": summary.outcome,
            "kind": call.kind,
            "asked_for_agent": summary.asked_for_agent,
            "attempts": call.attempts,
        }
        if summary.duration_s is not None:
            data["duration_s"] = summary.duration_s
        if call.wait_s is not None:
            data["wait_s"] = call.wait_s
        if call.talk_s is not None:
            data["talk_s"] = call.talk_s
        if call.queue_outcome:
            data["queue_outcome"] = call.queue_outcome
        if call.ivr_action:
            data["ivr_action"] = call.ivr_action
        if call.cause:
            data["cause"] = call.cause
        if call.gap:
            data["gap"] = True
        if self._hash_number is not None and call.caller:
            data["caller_hash"] = self._hash_number(call.caller)
        self._emit(
            "call.end",
            call,
            call.end_ts,
            make_id(call.id, "call.end"),
            queue=summary.queue,
            agent=call.agent,
            data=data,
        )

    def _sweep(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, cid = heapq.heappop(self._deadlines)
            call = self._awaiting_complete.get(cid)
            if call is not None:
                self._finish(call)

    # -- queue callers -----------------------------------------------------------------
    def _on_join(self, f: Fields, ts: float, raw: str) -> None:
        uid = f.get("Uniqueid")
        if not uid:
            return
        call = self.calls.get(uid)
        if call is None:
            call = self._adopt(f, ts)
        if call.pending is not None:
            self._settle(call, final=True)
        queue = f.get("Queue") or ""
        position = to_int(f.get("Position"))
        number = callerid(f.get("CallerIDNum"))
        if number:
            call.caller = number
        self._activate(call)
        call.asked_for_agent = True
        call.queue = queue
        call.attempts += 1
        call.in_queue = True
        call.join_ts = ts
        call.join_position = position
        call.join_context = f.get("Context") or ""
        call.join_exten = f.get("Exten") or ""
        call.leave_ts = None
        call.queue_outcome = ANSWERED if call.answered else ""
        call.exit_key = ""
        q = self._queue(queue)
        q.add(Waiter(call.id, call.channel, call.caller, position, ts))
        q.joined += 1
        data: dict[str, Scalar] = {"position": position, "count": to_int(f.get("Count"))}
        if self._hash_number is not None and call.caller:
            # Named ``*_hash`` so the stream writer's scrubber leaves it alone (and readers
            # can tell it is no number); the queue_log export puts it in ENTERQUEUE.
            data["caller_hash"] = self._hash_number(call.caller)
        self._emit("queue.join", call, ts, make_id(raw, "QueueCallerJoin", uid), data=data)

    def _on_abandon(self, f: Fields, ts: float, raw: str) -> None:
        call = self.calls.get(f.get("Uniqueid") or "")
        if call is None:
            return
        if call.pending is not None:
            self._settle(call, final=True)
        hold = f.get("HoldTime") or f.get("Holdtime")
        call.pending = PendingExit(
            abandon=True,
            raw_ts=raw,
            ts=ts,
            event="QueueCallerAbandon",
            position=to_int(f.get("Position")),
            original_position=to_int(f.get("OriginalPosition")),
            wait_s=to_int(hold) if hold else self._wait(call, ts),
            hangup_before=call.hangup_requested,
        )

    def _on_leave(self, f: Fields, ts: float, raw: str) -> None:
        uid = f.get("Uniqueid") or ""
        queue = f.get("Queue") or ""
        call = self.calls.get(uid)
        if call is None:
            if queue in self.queues:
                self.queues[queue].remove(uid)
            return
        self._queue(queue or call.queue).remove(uid)
        call.in_queue = False
        call.leave_ts = ts
        position = to_int(f.get("Position"))
        self._emit(
            "queue.leave",
            call,
            ts,
            make_id(raw, "QueueCallerLeave", uid),
            data={"position": position, "count": to_int(f.get("Count"))},
        )
        pending = call.pending
        if pending is not None and pending.abandon:
            pending.left = True
            return
        context = f.get("Context") or ""
        exten = f.get("Exten") or ""
        wait = self._wait(call, ts)
        exit_id = make_id(raw, "QueueCallerLeave", uid, "exit")
        if call.join_ts is not None and (context, exten) != (call.join_context, call.join_exten):
            # valid_exit() sent the caller to the queue's exit context before the leave.
            call.exit_key = exten
            self._queue_exit(call, EXIT_KEY, ts, exit_id, wait, position, call.join_position, key=exten)
            return
        call.pending = PendingExit(
            abandon=False,
            raw_ts=raw,
            ts=ts,
            event="QueueCallerLeave",
            position=position,
            original_position=call.join_position,
            wait_s=wait,
            hangup_before=call.hangup_requested,
            left=True,
        )

    @staticmethod
    def _wait(call: Call, ts: float) -> int | None:
        """Queue wait the way app_queue counts it: difference of whole epoch seconds."""
        return None if call.join_ts is None else max(0, int(ts) - int(call.join_ts))

    def _settle(self, call: Call, *, status: str | None = None, final: bool = False) -> None:
        """Classify a pending queue exit (the rule is in the module docstring)."""
        p = call.pending
        if p is None or not (p.left or final):
            return
        call.pending = None
        if p.abandon:
            outcome = _GAVE_UP.get(status or "") or (ABANDONED if p.hangup_before else TIMEOUT)
            exit_id = make_id(p.raw_ts, p.event, call.id)
        else:
            # Left without AgentConnect and without the exit-context jump.
            outcome = ABANDONED if (p.hangup_before or call.hangup_requested) else EXIT_KEY
            exit_id = make_id(p.raw_ts, p.event, call.id, "exit")
        self._queue_exit(
            call, outcome, p.ts, exit_id, p.wait_s, p.position, p.original_position, status=status or ""
        )

    def _queue_exit(
        self,
        call: Call,
        outcome: str,
        ts: float,
        id_: str,
        wait_s: int | None,
        position: int,
        original_position: int,
        *,
        key: str = "",
        status: str = "",
    ) -> None:
        call.queue_outcome = outcome
        call.wait_s = wait_s
        if call.queue:
            self._queue(call.queue).count_exit(outcome)
        data: dict[str, Scalar] = {"position": position, "original_position": original_position}
        if wait_s is not None:
            data["wait_s"] = wait_s
        if key:
            data["key"] = key
        if outcome in (TIMEOUT, LEAVE_EMPTY, WITHDRAWN):
            data["status"] = status or "TIMEOUT"
        self._emit(_EXIT_TYPES[outcome], call, ts, id_, data=data)

    # -- agents ------------------------------------------------------------------------
    def _member(self, queue: str, interface: str, name: str = "") -> Member:
        q = self._queue(queue)
        m = q.members.get(interface)
        if m is None:
            m = q.members[interface] = Member(queue, interface, name or interface)
            m.in_call = interface in self._busy
        elif name:
            m.name = name
        return m

    def _set_ringing(self, queue: str, interface: str, ringing: bool) -> None:
        q = self.queues.get(queue)
        m = None if q is None else q.members.get(interface)
        if m is not None:
            m.ringing = ringing

    def _set_busy(self, interface: str, call_id: str | None) -> None:
        """Mark an agent in a queue call (or free) in every queue it belongs to."""
        if call_id is None:
            self._busy.pop(interface, None)
        else:
            self._busy[interface] = call_id
        for q in self.queues.values():
            m = q.members.get(interface)
            if m is not None:
                m.in_call = call_id is not None

    def _on_agent_called(self, f: Fields, ts: float, raw: str) -> None:
        uid = f.get("Uniqueid") or ""
        queue = f.get("Queue") or ""
        interface = f.get("Interface") or ""
        name = f.get("MemberName") or interface
        dest = f.get("DestUniqueid") or ""
        self._member(queue, interface, name).ringing = True
        if dest:
            self._ringing[dest] = (queue, interface)
        call = self.calls.get(uid)
        if call is not None:
            self._emit(
                "agent.ring",
                call,
                ts,
                make_id(raw, "AgentCalled", uid, dest or interface),
                queue=queue,
                agent=interface,
                data={"member_name": name},
            )

    def _on_ring_no_answer(self, f: Fields, ts: float, raw: str) -> None:
        uid = f.get("Uniqueid") or ""
        queue = f.get("Queue") or ""
        interface = f.get("Interface") or ""
        dest = f.get("DestUniqueid") or ""
        self._ringing.pop(dest, None)
        self._set_ringing(queue, interface, False)
        call = self.calls.get(uid)
        if call is not None:
            self._emit(
                "agent.noanswer",
                call,
                ts,
                make_id(raw, "AgentRingNoAnswer", uid, dest or interface),
                queue=queue,
                agent=interface,
                data={"ring_ms": ring_ms(f, "AgentRingNoAnswer"), "member_name": f.get("MemberName") or ""},
            )

    def _on_dial_end(self, f: Fields, ts: float, raw: str) -> None:
        # Two DialEnd (NOANSWER then CANCEL) for one unanswered ring: the pop is idempotent.
        ring = self._ringing.pop(f.get("DestUniqueid") or "", None)
        if ring is not None:
            self._set_ringing(*ring, False)

    def _on_agent_dump(self, f: Fields, ts: float, raw: str) -> None:
        ring = self._ringing.pop(f.get("DestUniqueid") or "", None)
        if ring is not None:
            self._set_ringing(*ring, False)

    def _on_agent_connect(self, f: Fields, ts: float, raw: str) -> None:
        uid = f.get("Uniqueid") or ""
        queue = f.get("Queue") or ""
        interface = f.get("Interface") or ""
        name = f.get("MemberName") or interface
        dest = f.get("DestUniqueid") or ""
        self._ringing.pop(dest, None)
        self._member(queue, interface, name).ringing = False
        self._set_busy(interface, uid)
        if dest:
            self._agent_legs[dest] = (interface, uid)
        call = self.calls.get(uid)
        if call is None:
            return
        if call.pending is not None:
            if call.pending.abandon:
                self._settle(call, final=True)
            else:
                call.pending = None  # the leave was the connect
        if call.in_queue:  # its leave was never seen
            self._queue(queue).remove(uid)
            call.in_queue = False
        self._activate(call)  # a queue call even if its join fell in a gap
        call.asked_for_agent = True
        wait = to_int(f.get("HoldTime"))
        call.answered = True
        call.queue = queue or call.queue
        call.agent = interface
        call.agent_name = name
        call.member_uniqueid = dest
        call.connect_ts = ts
        call.wait_s = wait
        call.queue_outcome = ANSWERED
        self._queue(call.queue).answered += 1
        data: dict[str, Scalar] = {"wait_s": wait, "ring_s": to_int(f.get("RingTime")), "member_name": name}
        # For the queue_log export: CONNECT's bridged channel, COMPLETE*'s origposition.
        if dest:
            data["member_uniqueid"] = dest
        if call.join_position:
            data["original_position"] = call.join_position
        self._emit("agent.connect", call, ts, make_id(raw, "AgentConnect", uid), agent=interface, data=data)

    def _on_agent_complete(self, f: Fields, ts: float, raw: str) -> None:
        uid = f.get("Uniqueid") or ""
        queue = f.get("Queue") or ""
        interface = f.get("Interface") or ""
        if self._busy.get(interface) in (uid, ""):
            self._set_busy(interface, None)
        hold = to_int(f.get("HoldTime"))
        talk = to_int(f.get("TalkTime"))
        reason = f.get("Reason") or ""
        data: dict[str, Scalar] = {
            "wait_s": hold,
            "talk_s": talk,
            "reason": reason,
            "member_name": f.get("MemberName") or interface,
        }
        event_id = make_id(raw, "AgentComplete", uid)
        self._queue(queue).completed += 1
        call = self.calls.get(uid)
        if call is None:  # ended already (AgentComplete later than the grace period)
            self._out.append(
                CallEvent(
                    type="agent.complete",
                    call=uid,
                    ts=ts,
                    id=event_id,
                    queue=queue,
                    agent=interface,
                    data=data,
                )
            )
            return
        if not call.answered:  # its AgentConnect fell in a gap
            self._activate(call)
            call.asked_for_agent = True
            call.answered = True
            call.agent = interface
            call.wait_s = hold
            call.queue_outcome = ANSWERED
            call.queue = queue or call.queue
        if call.join_position:
            data["original_position"] = call.join_position
        call.completed = True
        call.talk_s = talk
        call.complete_reason = reason
        self._emit("agent.complete", call, ts, event_id, queue=queue, agent=interface, data=data)
        if call.id in self._awaiting_complete:
            self._finish(call)

    # -- members ------------------------------------------------------------------------
    def _apply_member(self, mf: MemberFields) -> Member:
        m = self._member(mf.queue, mf.interface, mf.name)
        m.state_interface = mf.state_interface
        m.membership = mf.membership
        m.penalty = mf.penalty
        m.calls_taken = mf.calls_taken
        m.last_call = mf.last_call
        m.status = mf.status
        m.paused = mf.paused
        m.paused_reason = mf.paused_reason
        m.wrapuptime = mf.wrapuptime
        if mf.in_call is not None:
            m.in_call = mf.in_call
        return m

    def _member_event(self, type_: str, ts: float, raw: str, name: str, mf: MemberFields) -> None:
        data: dict[str, Scalar] = {
            "member_name": mf.name,
            "membership": mf.membership,
            "penalty": mf.penalty,
            "paused": mf.paused,
        }
        if mf.paused_reason:
            data["reason"] = mf.paused_reason
        self._out.append(
            CallEvent(
                type=type_,
                call="",
                ts=ts,
                id=make_id(raw, name, mf.queue, mf.interface),
                queue=mf.queue,
                agent=mf.interface,
                data=data,
            )
        )

    def _on_member_status(self, f: Fields, ts: float, raw: str) -> None:
        self._apply_member(member_fields(f, from_list_item=False))

    def _on_member_added(self, f: Fields, ts: float, raw: str) -> None:
        mf = member_fields(f, from_list_item=False)
        self._apply_member(mf)
        self._member_event("member.added", ts, raw, "QueueMemberAdded", mf)

    def _on_member_removed(self, f: Fields, ts: float, raw: str) -> None:
        mf = member_fields(f, from_list_item=False)
        q = self.queues.get(mf.queue)
        if q is not None:
            q.members.pop(mf.interface, None)
        self._member_event("member.removed", ts, raw, "QueueMemberRemoved", mf)

    def _on_member_pause(self, f: Fields, ts: float, raw: str) -> None:
        mf = member_fields(f, from_list_item=False)
        self._apply_member(mf)
        self._member_event(
            "member.paused" if mf.paused else "member.unpaused", ts, raw, "QueueMemberPause", mf
        )

    # -- resync -------------------------------------------------------------------------
    def _vanish(self, uid: str, now: float) -> None:
        """A channel we knew is gone from CoreShowChannels: it hung up during the gap."""
        ch = self.channels.pop(uid, None)
        self._leg_gone(uid)
        if ch is not None and ch.local_base and self._roots.get(ch.local_base) == uid:
            del self._roots[ch.local_base]
        call = self.calls.get(uid)
        if call is None:
            return
        call.gap = True
        if call.pending is not None:
            self._settle(call, final=True)
        call.end_ts = now
        if call.in_queue:
            self._queue(call.queue).remove(uid)
            call.in_queue = False
            call.queue_outcome = UNKNOWN
        self._finish(call)

    def _adopt_channels(self, listed: Mapping[str, Fields], now: float) -> None:
        """Add the channels we did not know: callers first, then the legs that belong to them."""
        fresh: list[tuple[Channel, Fields]] = []
        roots: dict[str, str] = {}
        for uid, f in listed.items():
            ch = self.channels.get(uid)
            if ch is not None:
                ch.state = f.get("ChannelState") or ch.state
                continue
            name = f.get("Channel") or ""
            linked = f.get("Linkedid") or uid
            ch = self.channels[uid] = Channel(uid, name, linked, f.get("ChannelState") or "")
            fresh.append((ch, f))
            base, half = local_half(name)
            if half:
                ch.local_base = base
                if half == 1 and uid == linked:
                    roots[base] = uid
        legs: list[Channel] = []
        for ch, f in fresh:
            half = local_half(ch.name)[1]
            natural = (ch.uniqueid == ch.linkedid and half != 1) or (
                half == 2 and roots.get(ch.local_base) == ch.linkedid
            )
            if not natural or ch.uniqueid in self.calls:
                legs.append(ch)
                continue
            call = self._new_call(ch, now - parse_duration(f.get("Duration")), f)
            call.gap = True
            app = f.get("Application")
            if app == "Queue":
                queue, timeout = queue_app_target(f.get("ApplicationData"))
                call.requested_queue = queue
                call.queue_timeout = timeout
                call.asked_for_agent = True
                self._activate(call)
            elif app in _AGI_APPS:
                self._activate(call)
        for ch in legs:
            ch.call = self.calls.get(ch.uniqueid) or self._by_linkedid.get(ch.linkedid)
            if ch.uniqueid == ch.linkedid and local_half(ch.name)[1] == 1 and ch.call is not None:
                ch.caller_peer = ch.call.linkedid == ch.uniqueid and ch.call.id != ch.uniqueid

    def _resync_queues(self, items: Iterable[Event], now: float) -> None:
        params: dict[str, dict[str, str]] = {}
        members: dict[str, list[MemberFields]] = {}
        entries: dict[str, list[Fields]] = {}
        for item in items:
            f = item.fields
            queue = f.get("Queue") or ""
            if item.name == "QueueParams":
                params[queue] = {k: v for k, v in f.items() if k not in ("Event", "ActionID")}
            elif item.name == "QueueMember":
                members.setdefault(queue, []).append(member_fields(f, from_list_item=True))
            elif item.name == "QueueEntry":
                entries.setdefault(queue, []).append(f)
        for name, p in params.items():
            q = self._queue(name)
            q.params = p
            seen: set[str] = set()
            for mf in members.get(name, []):
                seen.add(mf.interface)
                self._apply_member(mf)
                if mf.in_call and mf.interface not in self._busy:
                    self._set_busy(mf.interface, "")
                elif not mf.in_call and mf.interface in self._busy:
                    self._set_busy(mf.interface, None)
            for interface in [i for i in q.members if i not in seen]:
                del q.members[interface]
            waiting: dict[str, Waiter] = {}
            for ef in entries.get(name, []):
                uid = ef.get("Uniqueid") or ""
                position = to_int(ef.get("Position"))
                call = self.calls.get(uid)
                if call is None:
                    call = self._adopt(ef, now - to_int(ef.get("Wait")))
                if not call.in_queue or call.queue != name:
                    call.gap = True
                    self._activate(call)
                    call.asked_for_agent = True
                    call.queue = name
                    call.attempts += 1
                    call.in_queue = True
                    call.join_ts = now - to_int(ef.get("Wait"))
                    call.join_position = position
                    call.queue_outcome = ANSWERED if call.answered else ""
                number = callerid(ef.get("CallerIDNum"))
                if number:
                    call.caller = number
                join_ts = call.join_ts if call.join_ts is not None else now
                waiting[uid] = Waiter(uid, call.channel, call.caller, position, join_ts)
            for uid in q.waiting:
                if uid in waiting:
                    continue
                call = self.calls.get(uid)
                if call is not None and call.in_queue and call.queue == name:
                    call.in_queue = False
                    call.gap = True
                    if call.pending is None and not call.answered:
                        call.queue_outcome = UNKNOWN
            q.waiting = waiting
