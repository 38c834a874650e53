"""What the live state knows about one call, and the summary it leaves when the call ends.

A *call* is identified by the Uniqueid of the caller's channel: the channel that runs the
dialplan (IVR, ``Queue()``) for the caller. For a Local-channel caller (the test rig's
``Local/100@public``) that is the ``;2`` half, which is also the ``callid`` of queue_log.

Outcomes (one per call, decided when it ends; see :func:`Call.outcome`):

``answered``
    connected to an agent (``AgentConnect``) in any queue attempt.
``callback_requested``
    not answered, and the IVR or the exit-key AGI asked for a callback (``IVR_ACTION=callback``
    or ``IVR_CALLBACK_ID`` set on the answered call). The callback's own fate is told by the
    dispatcher's ``callback.*`` events.
``abandoned`` / ``timeout`` / ``exit_key`` / ``join_empty`` / ``leave_empty`` / ``withdrawn``
    the outcome of the last queue attempt: caller hung up while waiting; Queue() timeout;
    caller pressed an exit key; refused on entry (``QUEUESTATUS`` JOINEMPTY, JOINUNAVAIL or
    FULL); thrown out when the queue emptied (LEAVEEMPTY); withdrawn by a
    ``QueueWithdrawCaller`` action (WITHDRAW).
``abandoned_before_queue``
    asked for an agent (``IVR_ACTION=queue`` or the dialplan reached ``Queue()``) but hung up
    before being queued. Counts in "asked for an agent".
``ivr_only``
    never asked for an agent: resolved (or given up) in the IVR.
``unknown``
    the call's queue attempt ended while the event stream was interrupted (a gap): we know
    it asked for an agent but not how the wait ended.
``callback_leg``
    an outgoing callback leg (originated with ``IVR_CALLBACK_ID``) that never queued; callback
    legs are ``kind == "callback"`` and never count as inbound calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

ANSWERED: Final = "answered"
ABANDONED: Final = "abandoned"
TIMEOUT: Final = "timeout"
EXIT_KEY: Final = "exit_key"
JOIN_EMPTY: Final = "join_empty"
LEAVE_EMPTY: Final = "leave_empty"
WITHDRAWN: Final = "withdrawn"
CALLBACK_REQUESTED: Final = "callback_requested"
ABANDONED_BEFORE_QUEUE: Final = "abandoned_before_queue"
IVR_ONLY: Final = "ivr_only"
UNKNOWN: Final = "unknown"
CALLBACK_LEG: Final = "callback_leg"

#: Every outcome a call can end with.
OUTCOMES: Final = frozenset(
    {
        ANSWERED,
        ABANDONED,
        TIMEOUT,
        EXIT_KEY,
        JOIN_EMPTY,
        LEAVE_EMPTY,
        WITHDRAWN,
        CALLBACK_REQUESTED,
        ABANDONED_BEFORE_QUEUE,
        IVR_ONLY,
        UNKNOWN,
        CALLBACK_LEG,
    }
)

#: Outcomes of calls where the caller asked for a human (the pickup-rate denominator).
ASKED_FOR_AGENT: Final = OUTCOMES - {IVR_ONLY, CALLBACK_LEG}

#: Call kinds. ``other`` calls (internal calls, test channels: no IVR or queue activity) are
#: tracked but produce no call events.
INBOUND: Final = "inbound"
CALLBACK: Final = "callback"
OTHER: Final = "other"


@dataclass(slots=True)
class PendingExit:
    """A queue exit seen but not yet classified (see ``StateTracker`` for the rule).

    ``abandon`` is True when a ``QueueCallerAbandon`` was seen (caller hung up, or Queue()
    gave up: timeout, leaveempty, withdraw), False for a bare ``QueueCallerLeave`` that is
    expected to be followed by ``AgentConnect``. ``hangup_before`` records whether the
    caller's hangup had been requested before the event: the abandon/timeout tie-breaker.
    """

    abandon: bool
    raw_ts: str
    ts: float
    event: str
    position: int
    original_position: int
    wait_s: int | None
    hangup_before: bool
    left: bool = False


@dataclass(slots=True)
class Call:
    """Mutable live state of one call (the tracker owns and mutates it)."""

    id: str
    linkedid: str
    channel: str
    start: float
    kind: str = OTHER
    caller: str = ""
    service: str = ""
    callback_id: str = ""
    ivr_vars: dict[str, str] = field(default_factory=dict)
    ivr_path: list[str] = field(default_factory=list)
    ivr_action: str = ""
    asked_for_agent: bool = False
    callback_requested: bool = False
    requested_queue: str = ""
    queue_timeout: int | None = None
    # current / last queue attempt
    queue: str = ""
    attempts: int = 0
    in_queue: bool = False
    join_ts: float | None = None
    join_position: int = 0
    join_context: str = ""
    join_exten: str = ""
    leave_ts: float | None = None
    queue_outcome: str = ""
    queue_status: str = ""
    exit_key: str = ""
    pending: PendingExit | None = None
    wait_s: int | None = None
    # agent
    answered: bool = False
    agent: str = ""
    agent_name: str = ""
    member_uniqueid: str = ""
    connect_ts: float | None = None
    completed: bool = False
    complete_reason: str = ""
    talk_s: int | None = None
    # end
    hangup_requested: bool = False
    end_ts: float | None = None
    cause: str = ""
    gap: bool = False
    started: bool = False  #: call.start emitted

    def outcome(self) -> str:
        """The call's outcome so far (final once the call has ended); see the module doc."""
        if self.answered:
            return ANSWERED
        if self.kind != CALLBACK and self.callback_requested:
            return CALLBACK_REQUESTED
        if self.queue_outcome:
            return self.queue_outcome
        if self.kind == CALLBACK:
            return CALLBACK_LEG
        if self.asked_for_agent:
            return ABANDONED_BEFORE_QUEUE
        return IVR_ONLY

    @property
    def phase(self) -> str:
        """Where the call stands now: ``ivr``, ``queued``, ``talking`` or ``ended``."""
        if self.end_ts is not None:
            return "ended"
        if self.in_queue:
            return "queued"
        if self.answered and not self.completed:
            return "talking"
        return "ivr"

    def summary(self) -> CallRecord:
        """The frozen record of an ended call."""
        duration = None if self.end_ts is None else max(0, int(self.end_ts) - int(self.start))
        return CallRecord(
            call=self.id,
            caller=self.caller,
            queue=self.queue or self.requested_queue,
            outcome=self.outcome(),
            wait_s=self.wait_s,
            talk_s=self.talk_s,
            agent=self.agent,
            service=self.service,
            kind=self.kind,
            start=self.start,
            end=self.end_ts,
            duration_s=duration,
            asked_for_agent=self.outcome() in ASKED_FOR_AGENT and self.kind == INBOUND,
            queue_outcome=self.queue_outcome,
            attempts=self.attempts,
            ivr_path=tuple(self.ivr_path),
            callback_id=self.callback_id,
            gap=self.gap,
        )


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One ended call, as ``ivr replay`` and the dashboard's recent-calls list show it.

    ``wait_s``/``talk_s`` are Asterisk's whole-second figures (the same as queue_log's hold
    and talk times), ``None`` when the call never queued / never talked. ``caller`` is the
    raw number: it stays in memory and in replay output, never in the event stream.
    """

    call: str
    caller: str
    queue: str
    outcome: str
    wait_s: int | None
    talk_s: int | None
    agent: str
    service: str = ""
    kind: str = INBOUND
    start: float = 0.0
    end: float | None = None
    duration_s: int | None = None
    asked_for_agent: bool = False
    queue_outcome: str = ""
    attempts: int = 0
    ivr_path: tuple[str, ...] = ()
    callback_id: str = ""
    gap: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The replay/report JSON object: DESIGN.md's keys first, then the extra ones."""
        return {
            "call": self.call,
            "caller": self.caller,
            "queue": self.queue,
            "outcome": self.outcome,
            "wait_s": self.wait_s,
            "talk_s": self.talk_s,
            "agent": self.agent,
            "service": self.service,
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "asked_for_agent": self.asked_for_agent,
            "attempts": self.attempts,
            "ivr_path": list(self.ivr_path),
        }
