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

With ``IVR_ACTION=callback`` a flow also sets ``IVR_CALLBACK_ID`` (the recorded request,
empty for an appointment): the dialplan logs it and hangs up, and nothing runs on that
channel afterwards, so the variable is not part of the always-set list.

**Service requests.** A flow that needs the callback service or the appointment store --
"is the queue overloaded?", "record this callback", "which slots are free?" -- cannot await
them: it *yields a request* (:data:`Request`, plain data) and gets the reply
(:data:`Reply`) sent back, exactly like a channel step. Such a flow is a
:data:`ServiceFlow`. Who answers: :func:`drive` (an async driver with a channel and a
performer, for tests), the FastAGI session (``ivr.agi.session``: it hands requests to its
owner and resumes the flow when the answer comes, sending nothing on the channel
meanwhile), :func:`run_sync` (scripted answers), or :func:`answer_inline`, which answers
them at once for a driver that only knows channel steps. Every request has a *fallback reply*
(:func:`fallback_reply`) that means "the service could not answer": nothing recorded,
nothing offered, and the caller goes on to a human.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, Final, Literal, TypeVar

from ivr.appointments.requests import (
    AppointmentReply,
    AppointmentRequest,
    BookingResult,
    BookSlot,
    FindFreeSlots,
    FreeSlots,
)
from ivr.appointments.slots import Slot
from ivr.domain.events import CallEvent, Scalar

__all__ = [
    "ACTIONS",
    "CONTRACT_VARIABLES",
    "HUNG_UP",
    "MSET_MAX_CHARS",
    "MSET_MAX_PAIRS",
    "OK",
    "REQUEST_TYPES",
    "Answer",
    "CallInfo",
    "CallbackDetails",
    "CallbackRecorded",
    "CallbackReported",
    "CancelOpen",
    "Cancelled",
    "CheckOverflow",
    "Clock",
    "Decision",
    "EventRecorder",
    "EventSink",
    "FindOpen",
    "Flow",
    "GetCallback",
    "GetDigits",
    "GetVar",
    "Hangup",
    "OpenRequests",
    "OverflowAdvice",
    "Play",
    "RecordCallback",
    "Reply",
    "ReportCallback",
    "Request",
    "SayDigits",
    "ServiceFlow",
    "SetVar",
    "SetVars",
    "Step",
    "StepResult",
    "Verbose",
    "answer_inline",
    "drive",
    "fallback_reply",
    "prompt_path",
    "refuse",
    "run_sync",
    "set_variables",
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
class SetVars:
    """Set several channel variables in one exchange (``EXEC MSet``), in order.

    A flow ends by setting the whole dialplan contract; one command instead of one per
    variable spares as many round trips to Asterisk on every call.
    """

    pairs: tuple[tuple[str, str], ...]


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


Step = Answer | Play | GetDigits | SayDigits | SetVar | SetVars | GetVar | Verbose | Hangup

#: Steps that need a live channel: Asterisk answers them 511 once the caller has gone.
MEDIA_STEPS: Final = (Answer, Play, GetDigits, SayDigits)

#: At most this many variables, and this many characters of ``name=value,...``, in one
#: :class:`SetVars`: MSet parses up to 99 pairs (``pbx_builtin_setvar_multiple``,
#: main/pbx_variables.c) and res_agi.c reads a command line into AGI_BUF_LEN (8192) bytes;
#: both caps stay far below, so a long decision never meets either limit.
MSET_MAX_PAIRS: Final = 20
MSET_MAX_CHARS: Final = 1024

#: A name MSet gives back as written: no ``=`` (the pair's separator), no space, no
#: ``(``/``[`` (a function such as ``CHANNEL(language)``), no leading digit.
_MSET_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: A value MSet gives back as written, empty included: ASCII, and none of the characters
#: that the parsers on the way give a meaning to -- res_agi.c ``parse_args`` (space, tab,
#: double quote, backslash), ``__ast_app_separate_args`` in main/app.c (the comma; quotes
#: and backslashes removed; ``()`` and ``[]`` hiding commas), the pair's ``=``, and the
#: ``$`` of ``${...}``, substituted when the channel sets ``AGIEXECFULL`` (``handle_exec``).
_MSET_VALUE: Final = re.compile(r"[A-Za-z0-9_.:@+/-]*")


def set_variables(variables: Mapping[str, str]) -> tuple[Step, ...]:
    """The steps that set ``variables``, in their order: runs of pairs in one :class:`SetVars`.

    Setting a flow's decision one ``SET VARIABLE`` at a time costs a round trip to Asterisk
    per variable on every call; one ``EXEC MSet`` sets them all. But MSet parses its
    argument (commas between pairs, quotes and backslashes removed, brackets grouping), so
    only a name and value that are certain to come back exactly as sent join a group
    (:data:`_MSET_NAME`, :data:`_MSET_VALUE`); any other pair is a :class:`SetVar` of its
    own, whose value ``SET VARIABLE`` takes verbatim. The order is kept across both (MSet
    sets its pairs left to right), so a variable the contract sets last -- ``IVR_CALLBACK_ID``
    -- is still set after all the others. A group of one stays a :class:`SetVar`, and a
    group closes at :data:`MSET_MAX_PAIRS` pairs or :data:`MSET_MAX_CHARS` characters.
    """
    steps: list[Step] = []
    run: list[tuple[str, str]] = []
    size = 0
    for name, value in variables.items():
        if not (_MSET_NAME.fullmatch(name) and _MSET_VALUE.fullmatch(value)):
            _close_run(run, steps)
            steps.append(SetVar(name, value))
            continue
        width = len(name) + 1 + len(value)
        if run and (len(run) >= MSET_MAX_PAIRS or size + 1 + width > MSET_MAX_CHARS):
            _close_run(run, steps)
        size = size + 1 + width if run else width
        run.append((name, value))
    _close_run(run, steps)
    return tuple(steps)


def _close_run(run: list[tuple[str, str]], steps: list[Step]) -> None:
    """Append the pairs of ``run`` to ``steps`` as one step, and empty it."""
    if len(run) == 1:
        steps.append(SetVar(*run[0]))
    elif run:
        steps.append(SetVars(tuple(run)))
    run.clear()


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
    callback_id: str = ""

    def variables(self) -> dict[str, str]:
        """The channel variables of the dialplan contract, in a fixed order.

        ``IVR_CALLBACK_ID`` comes last, and only with ``IVR_ACTION=callback`` (see the
        module docstring).
        """
        out = {
            "IVR_ACTION": self.action,
            "IVR_QUEUE": self.queue,
            "IVR_PRIO": "" if self.priority is None else str(self.priority),
            "IVR_QTIMEOUT": "" if self.qtimeout is None else str(self.qtimeout),
            "IVR_SERVICE": self.service,
            "IVR_REASON": self.reason,
            "IVR_CASE": self.case,
            "IVR_LANG": self.lang,
        }
        if self.action == "callback":
            out["IVR_CALLBACK_ID"] = self.callback_id
        return out


Flow = Generator[Step, StepResult, Decision]


# -- service requests and their replies -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckOverflow:
    """Should a caller of ``queue`` be offered a callback (or an appointment) instead of waiting?

    ``waited``: the caller ``call`` has been in the queue, so its join time (the driver
    knows it from the live state) is its place; otherwise it is about to join.
    """

    queue: str
    call: str
    waited: bool = False


@dataclass(frozen=True, slots=True)
class OverflowAdvice:
    """``offer``: ``none`` (wait), ``callback`` or ``appointment``; with the reasons and, when the
    live state is known, the caller's place in the merged line and the estimated wait."""

    offer: Literal["none", "callback", "appointment"]
    reasons: tuple[str, ...] = ()
    position: int | None = None
    estimated_wait_s: float | None = None


@dataclass(frozen=True, slots=True)
class FindOpen:
    """The open callback request of ``number`` and its open booking at ``service``, if any."""

    number: str
    service: str


@dataclass(frozen=True, slots=True)
class OpenRequests:
    """Answer to :class:`FindOpen`: ids are empty when there is none.

    ``callback_status`` is ``pending`` (it may be cancelled) or ``dialing`` (being placed).
    """

    callback_id: str = ""
    callback_status: str = ""
    booking_id: str = ""
    booking_slot: Slot | None = None


@dataclass(frozen=True, slots=True)
class CancelOpen:
    """Cancel the caller's own callback request and/or booking (they rang again to do so)."""

    callback_id: str = ""
    booking_id: str = ""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Answer to :class:`CancelOpen`: for each, ``cancelled`` or why not (``missing``,
    ``dialing``, ``closed``, ``unavailable``); empty when not asked."""

    callback: str = ""
    booking: str = ""


@dataclass(frozen=True, slots=True)
class RecordCallback:
    """Record a callback of ``number`` for ``queue`` (see ``CallbackService.request``).

    ``waited``: the caller ``call`` has been in the queue; the request keeps that join time.
    """

    call: str
    number: str
    queue: str
    service: str
    case: str = ""
    lang: str = ""
    waited: bool = False


@dataclass(frozen=True, slots=True)
class CallbackRecorded:
    """Answer to :class:`RecordCallback` (``status`` as ``RequestOutcome.status``)."""

    ok: bool
    status: str
    reason: str = ""
    callback_id: str = ""
    number: str = ""
    position: int | None = None
    estimated_wait_s: float | None = None


@dataclass(frozen=True, slots=True)
class GetCallback:
    """A callback request by id (the ``callback-greet`` script)."""

    callback_id: str


@dataclass(frozen=True, slots=True)
class CallbackDetails:
    """Answer to :class:`GetCallback`; ``found`` False when unknown (or the service is away)."""

    found: bool
    status: str = ""
    service: str = ""
    queue: str = ""
    case: str = ""
    language: str = ""


@dataclass(frozen=True, slots=True)
class ReportCallback:
    """The ``callback-result`` script's report: the customer leg's DIALSTATUS for a dial."""

    callback_id: str
    status: str
    dial: int | None = None


@dataclass(frozen=True, slots=True)
class CallbackReported:
    """Answer to :class:`ReportCallback`: whether the outcome changed the request."""

    changed: bool
    status: str = ""
    reason: str = ""


Request = (
    CheckOverflow | FindOpen | CancelOpen | RecordCallback | GetCallback | ReportCallback | AppointmentRequest
)
Reply = (
    OverflowAdvice
    | OpenRequests
    | Cancelled
    | CallbackRecorded
    | CallbackDetails
    | CallbackReported
    | AppointmentReply
)
#: The request types, for ``isinstance`` (a step is any other yielded value).
REQUEST_TYPES: Final = (
    CheckOverflow,
    FindOpen,
    CancelOpen,
    RecordCallback,
    GetCallback,
    ReportCallback,
    FindFreeSlots,
    BookSlot,
)

#: A flow that also yields service requests (see the module docstring).
ServiceFlow = Generator[Step | Request, StepResult | Reply, Decision]


def fallback_reply(request: Request, reason: str = "unavailable") -> Reply:
    """What a request gets when the service cannot answer: the answer that promises nothing.

    No overflow advice (the caller waits), no open request, nothing cancelled or recorded,
    no free slot, no booking -- so the flow carries on towards a human, and never tells a
    caller that something was done when it was not.
    """
    if isinstance(request, CheckOverflow):
        return OverflowAdvice("none", ())
    if isinstance(request, FindOpen):
        return OpenRequests()
    if isinstance(request, CancelOpen):
        return Cancelled(
            "unavailable" if request.callback_id else "", "unavailable" if request.booking_id else ""
        )
    if isinstance(request, RecordCallback):
        return CallbackRecorded(False, "refused", reason)
    if isinstance(request, GetCallback):
        return CallbackDetails(False)
    if isinstance(request, ReportCallback):
        return CallbackReported(False, "", reason)
    if isinstance(request, FindFreeSlots):
        return FreeSlots(())
    return BookingResult("refused", reason=reason)


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
        # make_id's parts but the rank, hashed once: a call emits several events, and each id
        # is then this hash state carried on with the rank (blake2b hashes a stream: the same
        # digest as make_id("agi", uniqueid, script, repr(started), rank)).
        prefix = "\x1f".join(("agi", call.uniqueid, call.script, repr(self._started), ""))
        self._id_state = blake2b(prefix.encode("utf-8"), digest_size=12)
        self.emitted: list[CallEvent] = []

    def emit(self, type_: str, *, queue: str = "", agent: str = "", **data: Scalar | None) -> CallEvent:
        self._seq += 1
        ident = self._id_state.copy()
        ident.update(str(self._seq).encode())
        event = CallEvent(
            type=type_,
            call=self.call.uniqueid,
            ts=self._clock(),
            id=ident.hexdigest(),
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
    # Not ``yield from``: a tuple's iterator has no send() for the results the driver sends.
    for step in set_variables({"IVR_ACTION": "hangup", "IVR_REASON": reason}):  # noqa: UP028
        yield step
    yield Hangup()
    return Decision(action="hangup", service="", lang="", reason=reason)


_Y = TypeVar("_Y")
_S = TypeVar("_S")


def run_sync(flow: Generator[_Y, _S, Decision], respond: Callable[[_Y], _S]) -> tuple[Decision, list[_Y]]:
    """Drive a flow to its end with a synchronous responder; returns the decision and the steps.

    For a :data:`ServiceFlow` the responder answers the requests too.
    """
    steps: list[_Y] = []
    try:
        step = next(flow)
        while True:
            steps.append(step)
            step = flow.send(respond(step))
    except StopIteration as stop:
        decision: Decision = stop.value
        return decision, steps


_R = TypeVar("_R")


async def drive(
    flow: Generator[Any, Any, _R],
    perform_step: Callable[[Step], Awaitable[StepResult]],
    perform_request: Callable[[Any], Awaitable[Any]],
) -> _R:
    """Run a service flow (or any flow of steps and requests) to its end: steps on the
    channel, requests (:data:`REQUEST_TYPES`) by the performer; what the flow returns.

    The flow is closed if either raises.
    """
    try:
        out = next(flow)
        while True:
            answer: Any
            if isinstance(out, REQUEST_TYPES):
                answer = await perform_request(out)
            else:
                answer = await perform_step(out)
            out = flow.send(answer)
    except StopIteration as stop:
        result: _R = stop.value
        return result
    finally:
        flow.close()


def answer_inline(flow: ServiceFlow, answer: Callable[[Request], Reply]) -> Flow:
    """A plain :data:`Flow` that answers ``flow``'s requests itself, at once, with ``answer``.

    For a driver that knows channel steps only and has no service behind it (``answer``
    is then :func:`fallback_reply`): nothing waits, so the channel sees the flow's own
    steps and nothing else.
    """
    try:
        out = next(flow)
        while True:
            if isinstance(out, REQUEST_TYPES):
                reply: StepResult | Reply = answer(out)
            else:
                reply = yield out
            out = flow.send(reply)
    except StopIteration as stop:
        decision: Decision = stop.value
        return decision
    finally:
        flow.close()
