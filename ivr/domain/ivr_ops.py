"""What an IVR flow asks of the caller's channel, what it gets back, and what it decides.

A flow is a generator: it yields :data:`Step` values (play a prompt, collect digits, set a
channel variable ...), receives a :class:`StepResult` for each, and returns a
:class:`Decision`. It never touches a socket, a clock or Redis itself -- the clock and the
event sink are injected -- so the same flow runs over FastAGI (``ivr.agi.session``), in a
unit test that answers steps from a script, or in the simulator. This is the h11 idea
applied to call logic: the decisions are data, the I/O is someone else's.

The :class:`Decision` is the contract with the dialplan: :meth:`Decision.variables` gives
the channel variables a flow sets before it ends, always all of them so that no value
from an earlier AGI run of the same channel survives:

=============  ==============================================================================
IVR_ACTION     ``queue`` | ``callback`` | ``hangup`` | ``closed``; after the queue also ``survey``
IVR_QUEUE      queue to join (``Queue(${IVR_QUEUE},...)``), or of the callback; may be empty
IVR_PRIO       queue priority for ``QUEUE_PRIO``; empty when no queue
IVR_QTIMEOUT   ``Queue()`` timeout in seconds (0 = none); empty when no queue
IVR_SERVICE    service name (``caf``)
IVR_REASON     why: the menu option's reason, ``fallback_invalid``, ``closed``, ``holiday`` ...
IVR_CASE       the case number typed by the caller, or empty (skipped / not asked)
IVR_LANG       caller's language (``fr``, ``en``); the dialplan may set ``CHANNEL(language)``
=============  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from ivr.domain.events import CallEvent, Scalar, make_id

__all__ = [
    "ACTIONS",
    "CONTRACT_VARIABLES",
    "HUNG_UP",
    "OK",
    "Answer",
    "CallInfo",
    "Clock",
    "Decision",
    "EventRecorder",
    "EventSink",
    "Flow",
    "GetDigits",
    "GetVar",
    "Hangup",
    "Play",
    "SayDigits",
    "SetVar",
    "Step",
    "StepResult",
    "Verbose",
    "prompt_path",
    "refuse",
    "run_sync",
]

Clock = Callable[[], float]
EventSink = Callable[[CallEvent], None]
Action = Literal["queue", "callback", "hangup", "closed", "survey"]
ACTIONS: Final[tuple[Action, ...]] = ("queue", "callback", "hangup", "closed", "survey")

CONTRACT_VARIABLES: Final = (
    "IVR_ACTION",
    "IVR_QUEUE",
    "IVR_PRIO",
    "IVR_QTIMEOUT",
    "IVR_SERVICE",
    "IVR_REASON",
    "IVR_CASE",
    "IVR_LANG",
)


# -- steps ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer the channel (a no-op returning 0 when the dialplan already did)."""


@dataclass(frozen=True, slots=True)
class Play:
    """Play a prompt to the end (no key interrupts it). ``prompt`` includes the language."""

    prompt: str


@dataclass(frozen=True, slots=True)
class GetDigits:
    """Play ``prompt`` and collect up to ``max_digits`` DTMF digits (``#`` ends input)."""

    prompt: str
    timeout_ms: int
    max_digits: int


@dataclass(frozen=True, slots=True)
class SayDigits:
    digits: str


@dataclass(frozen=True, slots=True)
class SetVar:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class GetVar:
    name: str


@dataclass(frozen=True, slots=True)
class Verbose:
    """A line on the Asterisk console: where an administrator looks first."""

    message: str


@dataclass(frozen=True, slots=True)
class Hangup:
    """Hang the channel up (only for calls we refuse to handle)."""


Step = Answer | Play | GetDigits | SayDigits | SetVar | GetVar | Verbose | Hangup

#: Steps that need a live channel: Asterisk answers them 511 once the caller has gone.
MEDIA_STEPS: Final = (Answer, Play, GetDigits, SayDigits)


@dataclass(frozen=True, slots=True)
class StepResult:
    """The channel's answer to one step.

    ``hangup``: the caller is gone (inline ``HANGUP``, a 511, or -1 after the hangup was
    seen); the flow stops at once. ``failed``: Asterisk could not do it but the channel
    lives (a prompt file missing: ``STREAM FILE`` gives ``result=-1``). ``digits`` and
    ``timed_out`` answer :class:`GetDigits`; ``value`` answers :class:`GetVar` (None = unset).
    """

    hangup: bool = False
    failed: bool = False
    digits: str = ""
    timed_out: bool = False
    value: str | None = None


OK: Final = StepResult()
HUNG_UP: Final = StepResult(hangup=True)


# -- the decision -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """Where the call goes when the flow ends; ``hung_up`` when the caller left first."""

    action: Action
    service: str
    lang: str
    queue: str = ""
    priority: int | None = None
    qtimeout: int | None = None
    reason: str = ""
    case: str = ""
    hung_up: bool = False

    def variables(self) -> dict[str, str]:
        """The channel variables of the dialplan contract, in a fixed order."""
        return {
            "IVR_ACTION": self.action,
            "IVR_QUEUE": self.queue,
            "IVR_PRIO": "" if self.priority is None else str(self.priority),
            "IVR_QTIMEOUT": "" if self.qtimeout is None else str(self.qtimeout),
            "IVR_SERVICE": self.service,
            "IVR_REASON": self.reason,
            "IVR_CASE": self.case,
            "IVR_LANG": self.lang,
        }


Flow = Generator[Step, StepResult, Decision]


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What the flow knows of the call from the AGI environment."""

    uniqueid: str
    script: str = "ivr"
    channel: str = ""
    args: tuple[str, ...] = ()
    query: Mapping[str, str] = field(default_factory=dict)
    extension: str = ""


class EventRecorder:
    """Turns a flow's steps into :class:`CallEvent` values for the injected sink.

    Ids are derived from the call, the script, the time the script started and the
    step's rank, so that two runs of the IVR on one call never share an id while a
    re-sent event (spool replay) keeps its own.
    """

    def __init__(self, sink: EventSink, clock: Clock, call: CallInfo, *, service: str = "") -> None:
        self._sink = sink
        self._clock = clock
        self.call = call
        self.service = service
        self._started = clock()
        self._seq = 0
        self.emitted: list[CallEvent] = []

    def emit(self, type_: str, *, queue: str = "", agent: str = "", **data: Scalar | None) -> CallEvent:
        self._seq += 1
        event = CallEvent(
            type=type_,
            call=self.call.uniqueid,
            ts=self._clock(),
            id=make_id("agi", self.call.uniqueid, self.call.script, repr(self._started), self._seq),
            service=self.service,
            queue=queue,
            agent=agent,
            source="agi",
            data={k: v for k, v in data.items() if v is not None},
        )
        self.emitted.append(event)
        self._sink(event)
        return event


def prompt_path(lang: str, name: str) -> str:
    """``("fr", "queue-thankyou")`` -> ``"fr/queue-thankyou"``: Asterisk's sounds/<lang>/ layout."""
    return f"{lang}/{name}"


def refuse(reason: str, message: str) -> Flow:
    """End a session we cannot serve (unknown script or service): say why, hang up politely.

    The console line tells the administrator which dialplan line is wrong; the variables
    let the dialplan's ``h`` extension or CDR see it too.
    """
    yield Verbose(message)
    yield SetVar("IVR_ACTION", "hangup")
    yield SetVar("IVR_REASON", reason)
    yield Hangup()
    return Decision(action="hangup", service="", lang="", reason=reason)


def run_sync(flow: Flow, respond: Callable[[Step], StepResult]) -> tuple[Decision, list[Step]]:
    """Drive a flow to its end with a synchronous responder; returns the decision and the steps."""
    steps: list[Step] = []
    try:
        step = next(flow)
        while True:
            steps.append(step)
            step = flow.send(respond(step))
    except StopIteration as stop:
        decision: Decision = stop.value
        return decision, steps
