"""The IVR of one service: welcome, opening hours, menus, inputs, and always a way to a human.

Rules the flow keeps, whatever the caller presses:

* **A human is always reachable.** A caller who types nothing, or only wrong keys, is not
  hung up on: after the menu's retries the call goes to the service's fallback queue
  (``IVR_REASON=fallback_no_input`` / ``fallback_invalid``). A caller looping through
  menus is sent there too after :data:`MAX_MENU_VISITS` menus.
* **Inputs never block.** A case number that is typed wrong ``retries + 1`` times, or
  skipped with ``#``, is left empty and the call goes on to the queue.
* **Odd DTMF has one clear path.** For a menu (one key expected): a key with no option
  (another digit, ``*`` when unused, ``A``-``D``) or several keys is *invalid*; nothing
  before the timeout, or ``#`` alone (Asterisk ends input on ``#`` and sends nothing), is
  *no input*. Both count against the same retries. ``-1`` from ``GET DATA`` on a live
  channel (its prompt file missing) counts as a failure too, so a broken prompt still
  leads to a human.
* **After a hangup nothing more is sent.** The flow stops at the first step answered
  "hung up", records ``ivr.end`` and returns; it does not even set variables.
* **Outside opening hours** the closed message plays and ``IVR_ACTION=closed``.
* **No promise nobody keeps.** Without the callback service (``services=False``: no driver
  to record a request) or while callbacks are disabled (``[callbacks] enabled``), a
  callback option queues the caller instead and nothing is offered.

Callbacks (with the service): what a caller hears and does
----------------------------------------------------------

* **Calling again with an open request.** Right after the welcome, a caller whose number
  has a callback waiting (or an appointment booked) hears so and may cancel it with 1;
  anything else keeps it, and the menus follow as usual.
* **When no agent can answer soon** (the service's overflow advice when the caller is about
  to join a queue; also from the queue's exit key and after a queue timeout,
  ``ivr.domain.post_queue``), and when the caller picked a menu's callback option, the
  *callback offer* (:class:`CallbackOffer`) says why, the estimated wait and the place in
  line (where configured), then lists what is possible for this call, each option a short
  prompt of its own so that only the options that exist are heard:

  - 1: be called back on the number the caller calls from, read back digit by digit and
    confirmed (1 confirm, 2 another number); a caller whose number is withheld or cannot
    be called back hears "to be called back, press 1" and types a number instead;
  - 2: be called back on another number, typed, checked (``ivr.callbacks.numbering``),
    read back and confirmed; a missing number, wrong characters, a wrong length, a
    premium-rate or otherwise refused number each get their own prompt and another try --
    nothing is stored until a valid number is confirmed;
  - 3: book an appointment slot (``ivr.appointments.flow``), when the service offers them;
  - 0: keep waiting (or, by default, silence and wrong keys after the retries).

  A recorded callback is confirmed with the estimated wait; the call ends with
  ``IVR_ACTION=callback`` and ``IVR_CALLBACK_ID``. A request the service cannot record is
  told, and the caller waits in the queue.

Service calls (overflow advice, recording, lookups, slots) are *requests* the flow yields
(``ivr.domain.ivr_ops``): the flow stays pure and replayable.

Every step is a :class:`~ivr.domain.events.CallEvent` for the injected sink:
``ivr.start`` (with ``in_hours``: what the caller is about to be told), ``ivr.menu``
(each time a menu is offered), ``ivr.input`` (a choice made, or an input taken or
skipped), ``ivr.invalid`` (each failed attempt), ``agent.requested`` (the call is routed
to a human: queue or callback), ``callback.offered`` (with where, why, the options, the
place and the estimated wait) and ``ivr.end``. Case numbers and phone numbers are personal
data: events say whether one was given, never its value (the agent sees the case in
``IVR_CASE``; the callback store keeps the number).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, TypeVar
from zoneinfo import ZoneInfo

from ivr.appointments.flow import classify_key, offer_appointment
from ivr.appointments.requests import Booking
from ivr.appointments.speech import french_number, say_slot
from ivr.callbacks.numbering import NumberCheck, NumberPolicy, check_number
from ivr.config import (
    CallbackPrompts,
    Config,
    InputSpec,
    Menu,
    MenuOption,
    Prompts,
    QueueConfig,
    ServiceConfig,
)
from ivr.domain.hours import is_holiday, is_open, next_opening
from ivr.domain.ivr_ops import (
    Action,
    Answer,
    CallbackRecorded,
    CallInfo,
    Cancelled,
    CancelOpen,
    CheckOverflow,
    Clock,
    Decision,
    EventRecorder,
    EventSink,
    FindOpen,
    GetDigits,
    GetVar,
    OpenRequests,
    OverflowAdvice,
    Play,
    RecordCallback,
    Reply,
    Request,
    SayDigits,
    ServiceFlow,
    Step,
    StepResult,
    prompt_path,
    set_variables,
)

__all__ = [
    "CALLER_ID_VARIABLE",
    "MAX_MENU_VISITS",
    "CallbackOffer",
    "CallbackPrompts",
    "CallbackSettings",
    "CallerGone",
    "FlowSteps",
    "IvrFlow",
    "OfferOutcome",
    "Sub",
    "announcement",
    "caller_number",
    "classify_input",
    "classify_menu_key",
    "classify_number",
    "max_number_digits",
    "recall",
]

#: Menus offered in one call before the caller is sent to a human anyway.
MAX_MENU_VISITS: Final = 30

_DTMF_DIGITS: Final = frozenset("0123456789")
#: Caller ID variable read for the callback offer and the recall check.
CALLER_ID_VARIABLE: Final = "CALLERID(num)"

_T = TypeVar("_T")
#: A piece of a service flow that returns ``_T``.
Sub = Generator[Step | Request, StepResult | Reply, _T]


class CallerGone(Exception):
    """Raised inside a flow when a step comes back "hung up"."""


_CallerGone = CallerGone


def classify_menu_key(result: StepResult, options: Mapping[str, MenuOption]) -> tuple[str | None, str | None]:
    """``(key, None)`` for a valid choice, else ``(None, problem)``.

    Problems: ``timeout`` (nothing typed), ``empty`` (``#`` alone), ``too_many_digits``,
    ``invalid`` (no option for that key, ``A``-``D`` included), ``error`` (Asterisk failed).
    """
    if result.failed:
        return None, "error"
    digits = result.digits
    if not digits:
        return None, "timeout" if result.timed_out else "empty"
    if len(digits) > 1:
        return None, "too_many_digits"
    if digits not in options:
        return None, "invalid"
    return digits, None


def classify_input(result: StepResult, spec: InputSpec) -> tuple[str | None, str | None]:
    """``(value, None)`` for a valid input, else ``(None, problem)``.

    Problems: ``skipped`` (``#`` alone: the caller does not have it), ``timeout``,
    ``not_digits`` (``*`` or ``A``-``D`` inside), ``too_short``, ``too_long``, ``error``.
    Digits typed before a timeout are judged like any others (too short, usually).
    """
    if result.failed:
        return None, "error"
    digits = result.digits
    if not digits:
        return None, "timeout" if result.timed_out else "skipped"
    if any(c not in _DTMF_DIGITS for c in digits):
        return None, "not_digits"
    if len(digits) < spec.min_digits:
        return None, "too_short"
    if len(digits) > spec.max_digits:
        return None, "too_long"
    return digits, None


# -- callback numbers --------------------------------------------------------------------------

#: A national number: 10 digits. With ``00`` and a country code, E.164 allows 15 more.
_NATIONAL_DIGITS: Final = 10
_INTERNATIONAL_DIGITS: Final = 17


def max_number_digits(policy: NumberPolicy) -> int:
    """The longest number a caller may type under ``policy`` (``0033`` + 9 digits for France)."""
    return _INTERNATIONAL_DIGITS if policy.allow_international else 13


def classify_number(result: StepResult, policy: NumberPolicy) -> tuple[NumberCheck | None, str]:
    """A typed callback number: ``(check, "")`` when it may be called back, else ``(None, problem)``.

    Problems, each with its own prompt (:meth:`CallbackPrompts.for_problem`): ``missing``
    (nothing typed, or ``#`` alone), ``error`` (Asterisk failed), ``invalid`` (``*`` or
    ``A``-``D``, a number no plan assigns), ``too_short`` / ``too_long`` (a national number
    is 10 digits), ``premium`` (surcharged or service numbers), ``refused`` (emergency,
    short and international numbers, kinds the deployment does not call back).
    """
    if result.failed:
        return None, "error"
    digits = result.digits
    if not digits:
        return None, "missing"
    if any(c not in _DTMF_DIGITS for c in digits):
        return None, "invalid"
    if len(digits) > max_number_digits(policy):
        return None, "too_long"
    check = check_number(digits, policy)
    if check.ok:
        return check, ""
    reason = check.reason
    if reason == "invalid_length":
        national = digits.startswith("0") and not digits.startswith("00")
        if national:
            return None, "too_long" if len(digits) > _NATIONAL_DIGITS else "too_short"
        return None, "too_short" if len(digits) < _NATIONAL_DIGITS else "too_long"
    if reason in ("premium_not_allowed", "special_not_allowed"):
        return None, "premium"
    if reason in ("unassigned", "machine_to_machine", "invalid_characters"):
        return None, "invalid"
    return None, "refused"


def caller_number(raw: str | None, policy: NumberPolicy) -> NumberCheck:
    """The caller ID as a callback number (``withheld`` when there is none)."""
    return check_number(raw or "", policy)


@dataclass(frozen=True, slots=True)
class CallbackSettings:
    """How the callback offer behaves (:meth:`from_config`: the ``[callbacks]`` table and the
    queues' ``announce_position`` / ``announce_wait``).

    ``announce_position`` / ``announce_wait``: tell a caller about to wait (or offered a
    callback) its place in line and the estimated wait, for the queues in
    ``announce_queues`` (None: every queue); ``per_queue`` (queue -> (position, wait))
    overrides both for the queues it names. ``retries``: wrong or missing answers to each
    question before the offer gives up (the caller then waits, never hung up on).
    """

    prompts: CallbackPrompts = field(default_factory=CallbackPrompts)
    announce_position: bool = True
    announce_wait: bool = True
    announce_queues: frozenset[str] | None = None
    choice_timeout_s: float = 6.0
    number_timeout_s: float = 10.0
    retries: int = 2
    per_queue: Mapping[str, tuple[bool, bool]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config) -> CallbackSettings:
        """The offer as ``config`` describes it: its prompts, timeouts and retries, and for each
        queue whether the position and the wait are announced."""
        cb = config.callbacks
        return cls(
            prompts=cb.prompts,
            choice_timeout_s=cb.choice_timeout_s,
            number_timeout_s=cb.number_timeout_s,
            retries=cb.offer_retries,
            announce_queues=frozenset(),
            per_queue={name: (q.announces_position, q.announces_wait) for name, q in config.queues.items()},
        )

    def _flags(self, queue: str | None) -> tuple[bool, bool]:
        if queue is not None:
            flags = self.per_queue.get(queue)
            if flags is not None:
                return flags
            if self.announce_queues is not None and queue not in self.announce_queues:
                return False, False
        return self.announce_position, self.announce_wait

    def position_for(self, queue: str | None) -> bool:
        """Whether a caller of ``queue`` hears its place in line (None: any queue)."""
        return self._flags(queue)[0]

    def wait_for(self, queue: str | None) -> bool:
        """Whether a caller of ``queue`` hears the estimated wait (None: any queue)."""
        return self._flags(queue)[1]

    def announces(self, queue: str) -> bool:
        position, wait = self._flags(queue)
        return position or wait


def announcement(
    settings: CallbackSettings, position: int | None, wait_s: float | None, queue: str | None = None
) -> list[str]:
    """Core sounds saying the place in line and the estimated wait ("Il y a 3 appels en attente
    ... le temps d'attente estimé est de 12 minutes"), as ``settings`` has them announced for
    ``queue`` (None: the general setting). Nothing when there is no wait."""
    if wait_s is None or wait_s <= 0:
        return []
    sounds: list[str] = []
    if settings.position_for(queue) and position is not None:
        ahead = position - 1
        if ahead <= 0:
            sounds.append("queue-youarenext")
        else:
            sounds.extend(("queue-thereare", *french_number(ahead), "queue-callswaiting"))
    if settings.wait_for(queue):
        minutes = round(wait_s / 60)
        sounds.append("queue-holdtime")
        if minutes < 1:
            sounds.extend(("queue-less-than", *french_number(1), "queue-minute"))
        else:
            sounds.extend((*french_number(minutes), "queue-minute" if minutes == 1 else "queue-minutes"))
    return sounds


@dataclass(frozen=True, slots=True)
class OfferOutcome:
    """How a callback offer ended.

    ``kind``: ``callback`` (recorded: ``callback_id``), ``appointment`` (booked:
    ``booking``), ``wait`` (the caller keeps waiting: chose 0, or gave no usable answer, or
    the service could not record it) or ``none`` (nothing recorded and waiting is not
    possible here). ``reason`` says why, for ``IVR_REASON`` and the events.
    """

    kind: Literal["callback", "appointment", "wait", "none"]
    reason: str
    callback_id: str = ""
    booking: Booking | None = None


def _checked(step: Step, result: StepResult | Reply) -> StepResult:
    """The channel's answer to ``step``, or :class:`CallerGone` once the caller has left.

    A plain call rather than a sub-generator: a call's few dozen steps each pass through every
    generator of the flow's ``yield from`` chain, so one level less is one frame less per step.
    """
    if not isinstance(result, StepResult):
        raise TypeError(f"step {step!r} answered with {result!r}")
    if result.hangup:
        raise CallerGone
    return result


class FlowSteps:
    """Channel steps and service requests for a flow that owns an :class:`EventRecorder`."""

    lang: str

    def _do(self, step: Step) -> Sub[StepResult]:
        return _checked(step, (yield step))

    def _ask(self, request: Request, kind: type[_T]) -> Sub[_T]:
        reply = yield request
        if not isinstance(reply, kind):
            raise TypeError(f"request {request!r} answered with {reply!r}")
        return reply

    def _path(self, name: str) -> str:
        return prompt_path(self.lang, name)

    def _play(self, name: str) -> Sub[None]:
        if name:
            step = Play(prompt_path(self.lang, name))
            _checked(step, (yield step))

    def _sounds(self, names: list[str]) -> Sub[None]:
        for name in names:
            step = Play(prompt_path(self.lang, name))
            _checked(step, (yield step))  # a missing sound is skipped by Asterisk


#: What each option of the offer is, and the prompt that announces it.
_OPTION_PROMPTS: Final = {
    "this_number": "press_this_number",
    "enter_number": "press_callback",
    "other_number": "press_other_number",
    "appointment": "press_appointment",
    "wait": "press_wait",
}
_CONFIRM_KEYS: Final = {"1": "yes", "2": "other"}
_CANCEL_KEYS: Final = {"1": "cancel", "2": "keep"}


class CallbackOffer(FlowSteps):
    """The callback offer of one call (see the module docstring); :meth:`run` is a sub-flow.

    ``caller`` is the caller ID as checked by the numbering policy; ``case`` goes with the
    request to the agent who calls back. The offer never hangs up and never ends without
    telling the caller what happened.
    """

    def __init__(
        self,
        service: ServiceConfig | None,
        events: EventRecorder,
        *,
        lang: str,
        clock: Clock,
        policy: NumberPolicy,
        settings: CallbackSettings,
        caller: NumberCheck,
        case: str = "",
        generic: Prompts | None = None,
    ) -> None:
        self.service = service
        self.events = events
        self.lang = lang
        self.clock = clock
        self.policy = policy
        self.settings = settings
        self.prompts = settings.prompts
        self.generic = generic or (service.prompts if service is not None else Prompts())
        self.caller = caller
        self.case = case
        self.queue = ""
        self.waited = False

    def run(
        self,
        *,
        where: str,
        queue: str,
        can_wait: bool,
        advice: OverflowAdvice | None = None,
        waited: bool = False,
    ) -> Sub[OfferOutcome]:
        """Offer a callback for ``queue``; ``where``: ``entry``, ``menu``, ``exit_key``, ``timeout`` ...

        ``can_wait``: the caller may go (back) to the queue, option 0 and the default;
        ``waited``: the caller was in the queue, so the request keeps its join time.
        Raises :class:`CallerGone` on a hangup.
        """
        self.queue, self.waited = queue, waited
        options: dict[str, str] = {"1": "this_number" if self.caller.ok else "enter_number"}
        if self.caller.ok:
            options["2"] = "other_number"
        if self.service is not None and self.service.appointments.enabled:
            options["3"] = "appointment"
        if can_wait:
            options["0"] = "wait"
        self.events.emit(
            "callback.offered",
            queue=queue,
            where=where,
            reasons=",".join(advice.reasons) if advice is not None else None,
            position=advice.position if advice is not None else None,
            estimated_wait_s=(
                round(advice.estimated_wait_s, 1)
                if advice is not None and advice.estimated_wait_s is not None
                else None
            ),
            options="".join(options),
            number_known=self.caller.ok,
            lang=self.lang,
        )
        if advice is not None and advice.offer != "none":
            yield from self._play(self.prompts.busy)
        if advice is not None and self.settings.announces(queue):
            yield from self._sounds(
                announcement(self.settings, advice.position, advice.estimated_wait_s, queue)
            )
        failures = 0
        while True:
            key, problem = yield from self._choose(options)
            if key is None:
                failures += 1
                self.events.emit(
                    "ivr.invalid", queue=queue, menu="callback", reason=problem or "invalid", attempt=failures
                )
                no_input = problem in ("timeout", "empty")
                if failures > self.settings.retries:
                    return self._default(can_wait, "no_input" if no_input else "invalid")
                yield from self._play(self.generic.no_input if no_input else self.generic.invalid)
                continue
            choice = options[key]
            self.events.emit("ivr.input", queue=queue, menu="callback", key=key, choice=choice)
            if choice == "wait":
                return OfferOutcome("wait", "declined")
            if choice == "appointment":
                booked = yield from self._appointment()
                if booked is not None:
                    return booked
                del options["3"]  # none suited, or none free: the other options remain
                failures = 0
                continue
            number = yield from self._number(choice)
            if number is None:
                return self._default(can_wait, "no_number")
            return (yield from self._record(number, can_wait))

    # -- the pieces ----------------------------------------------------------------------------

    def _default(self, can_wait: bool, reason: str) -> OfferOutcome:
        return OfferOutcome("wait" if can_wait else "none", reason)

    def _choose(self, options: Mapping[str, str]) -> Sub[tuple[str | None, str | None]]:
        """Say each available option (one prompt each); a key during any of them answers.

        Every prompt but the last is a ``GET DATA`` with a 1 ms wait, so a key pressed while
        an option is read interrupts it, as a single menu prompt would.
        """
        names = [getattr(self.prompts, _OPTION_PROMPTS[choice]) for choice in options.values()]
        timeout = int(self.settings.choice_timeout_s * 1000)
        for i, name in enumerate(names):
            last = i == len(names) - 1
            result = yield from self._do(GetDigits(self._path(name), timeout if last else 1, 1))
            if not last and not result.digits and (result.timed_out or result.failed):
                continue
            return classify_key(result, options)
        return None, "timeout"  # pragma: no cover -- there is always at least one option

    def _confirm(self, number: str) -> Sub[str | None]:
        """Read ``number`` back digit by digit; ``yes``, ``other`` or None (no answer)."""
        failures = 0
        while True:
            yield from self._play(self.prompts.number_is)
            yield from self._do(SayDigits(number))
            result = yield from self._do(
                GetDigits(self._path(self.prompts.confirm), int(self.settings.choice_timeout_s * 1000), 1)
            )
            key, problem = classify_key(result, _CONFIRM_KEYS)
            if key is not None:
                self.events.emit(
                    "ivr.input", queue=self.queue, menu="callback_confirm", key=key, choice=_CONFIRM_KEYS[key]
                )
                return _CONFIRM_KEYS[key]
            failures += 1
            self.events.emit(
                "ivr.invalid", queue=self.queue, menu="callback_confirm", reason=problem, attempt=failures
            )
            no_input = problem in ("timeout", "empty")
            if failures > self.settings.retries:
                return None
            yield from self._play(self.generic.no_input if no_input else self.generic.invalid)

    def _number(self, choice: str) -> Sub[NumberCheck | None]:
        """The number to call back, confirmed; None when the caller gave none."""
        if choice == "this_number":
            answer = yield from self._confirm(self.caller.number)
            if answer == "yes":
                return self.caller
            if answer is None:
                return None
        return (yield from self._enter())

    def _enter(self) -> Sub[NumberCheck | None]:
        """Ask for a number until a valid one is confirmed, ``retries + 1`` rounds at most."""
        rounds = 0
        max_digits = max_number_digits(self.policy) + 1  # one more: a number too long is told so
        while True:
            rounds += 1
            result = yield from self._do(
                GetDigits(
                    self._path(self.prompts.enter_number),
                    int(self.settings.number_timeout_s * 1000),
                    max_digits,
                )
            )
            check, problem = classify_number(result, self.policy)
            if check is not None:
                self.events.emit(
                    "ivr.input",
                    queue=self.queue,
                    menu="callback_number",
                    status="valid",
                    kind=check.kind,
                    length=len(check.number),
                )
                answer = yield from self._confirm(check.number)
                if answer == "yes":
                    return check
                if answer is None or rounds > self.settings.retries:
                    return None
                continue  # "another number": type it again
            self.events.emit(
                "ivr.invalid",
                queue=self.queue,
                menu="callback_number",
                reason=problem,
                length=len(result.digits),
                attempt=rounds,
            )
            if rounds > self.settings.retries:
                self.events.emit(
                    "ivr.input", queue=self.queue, menu="callback_number", status="skipped", reason=problem
                )
                return None
            yield from self._play(self.prompts.for_problem(problem))

    def _record(self, number: NumberCheck, can_wait: bool) -> Sub[OfferOutcome]:
        service = self.service.name if self.service is not None else self.events.service
        reply = yield from self._ask(
            RecordCallback(
                call=self.events.call.uniqueid,
                number=number.number,
                queue=self.queue,
                service=service,
                case=self.case,
                lang=self.lang,
                waited=self.waited,
            ),
            CallbackRecorded,
        )
        if not reply.ok or not reply.callback_id:
            yield from self._play(self.prompts.failed)
            return self._default(can_wait, f"callback_{reply.reason or 'refused'}")
        if reply.status == "in_progress":
            yield from self._play(self.prompts.in_progress)
        else:
            yield from self._play(self.prompts.recorded)
            # The wait only: the place in line was said with the offer.
            yield from self._sounds(announcement(self.settings, None, reply.estimated_wait_s, self.queue))
        return OfferOutcome("callback", f"callback_{reply.status}", callback_id=reply.callback_id)

    def _appointment(self) -> Sub[OfferOutcome | None]:
        assert self.service is not None
        number = self.caller if self.caller.ok else (yield from self._enter())
        if number is None:
            return None
        outcome = yield from offer_appointment(
            self.service, self.events, number=number.number, lang=self.lang, clock=self.clock, case=self.case
        )
        if outcome.hung_up:
            raise CallerGone
        if outcome.booking is None:
            return None
        return OfferOutcome("appointment", "appointment", booking=outcome.booking)


def recall(
    steps: FlowSteps,
    events: EventRecorder,
    settings: CallbackSettings,
    caller: NumberCheck,
    service: str,
    clock: Clock,
) -> Sub[None]:
    """A caller who rang before and left a request: say so, and cancel it with 1."""
    if not caller.ok:
        return
    prompts = settings.prompts
    found = yield from steps._ask(FindOpen(caller.number, service), OpenRequests)
    callback = found.callback_id if found.callback_status == "pending" else ""
    if not callback and not found.booking_id:
        return
    if callback:
        yield from steps._play(prompts.existing)
    if found.booking_id:
        yield from steps._play(prompts.existing_appointment)
        if found.booking_slot is not None:
            for play in say_slot(found.booking_slot, steps.lang, now=clock()):
                yield from steps._do(play)
    result = yield from steps._do(
        GetDigits(steps._path(prompts.cancel_choice), int(settings.choice_timeout_s * 1000), 1)
    )
    key, _ = classify_key(result, _CANCEL_KEYS)
    choice = _CANCEL_KEYS.get(key or "", "keep")
    events.emit(
        "ivr.input",
        menu="recall",
        key=key or "",
        choice=choice,
        callback=bool(callback),
        booking=bool(found.booking_id),
    )
    if choice != "cancel":
        return
    reply = yield from steps._ask(CancelOpen(callback, found.booking_id), Cancelled)
    if "cancelled" in (reply.callback, reply.booking):
        yield from steps._play(prompts.cancelled)
    elif reply.callback == "dialing":
        yield from steps._play(prompts.in_progress)
    else:
        yield from steps._play(prompts.failed)


class IvrFlow(FlowSteps):
    """The IVR of ``service`` for one call; :meth:`run` is the flow generator.

    ``callbacks``: callbacks are enabled (``[callbacks] enabled``); ``services``: the driver
    answers service requests. Only with both does the flow look up the caller's open
    requests and offer callbacks; otherwise it yields channel steps only.
    """

    def __init__(
        self,
        service: ServiceConfig,
        queues: Mapping[str, QueueConfig],
        call: CallInfo,
        *,
        clock: Clock,
        sink: EventSink,
        lang: str | None = None,
        callbacks: bool = True,
        services: bool = False,
        policy: NumberPolicy | None = None,
        settings: CallbackSettings | None = None,
    ) -> None:
        self.service = service
        self.callbacks = callbacks
        self.offers = callbacks and services
        self.queues = queues
        self.call = call
        self.clock = clock
        self.lang = lang if lang in service.languages else service.language
        self.events = EventRecorder(sink, clock, call, service=service.name)
        self.case = ""
        self.menu_visits = 0
        self.policy = policy or NumberPolicy()
        self.settings = settings or CallbackSettings()
        self.caller = caller_number("", self.policy)

    # -- the flow ---------------------------------------------------------------------------

    def run(self) -> ServiceFlow:
        now = self.clock()
        in_hours = is_open(self.service.hours, now)
        self.events.emit("ivr.start", script=self.call.script, lang=self.lang, in_hours=in_hours)
        try:
            step: Step = Answer()
            _checked(step, (yield step))
            if not in_hours:
                return (yield from self._closed(now))
            yield from self._play(self.service.prompts.welcome)
            if self.offers:
                raw = (yield from self._do(GetVar(CALLER_ID_VARIABLE))).value
                self.caller = caller_number(raw, self.policy)
                yield from recall(
                    self, self.events, self.settings, self.caller, self.service.name, self.clock
                )
            return (yield from self._menus())
        except CallerGone:
            self.events.emit("ivr.end", action="hangup", reason="caller_hangup", lang=self.lang)
            return Decision(
                action="hangup",
                service=self.service.name,
                lang=self.lang,
                reason="caller_hangup",
                case=self.case,
                hung_up=True,
            )

    def _closed(self, now: float) -> Sub[Decision]:
        hours = self.service.hours
        day = datetime.fromtimestamp(now, ZoneInfo(hours.timezone)).date()
        holiday = day not in hours.special and (day in hours.closed_dates or is_holiday(hours, day))
        reason = "holiday" if holiday else "closed"
        yield from self._play(self.service.prompts.closed)
        reopen = next_opening(hours, now)
        return (yield from self._finish("closed", reason=reason, next_opening=reopen))

    def _menus(self) -> Sub[Decision]:
        menus = self.service.menus
        menu = menus[self.service.entry_menu]
        history: list[Menu] = []
        failures = 0
        while True:
            self.menu_visits += 1
            if self.menu_visits > MAX_MENU_VISITS:
                return (yield from self._fallback("fallback_loop"))
            self.events.emit("ivr.menu", menu=menu.name, attempt=failures + 1, lang=self.lang)
            step = GetDigits(prompt_path(self.lang, menu.prompt), int(menu.timeout_s * 1000), 1)
            result = _checked(step, (yield step))
            key, problem = classify_menu_key(result, menu.options)
            if key is None:
                failures += 1
                self.events.emit(
                    "ivr.invalid",
                    menu=menu.name,
                    reason=problem or "invalid",
                    keys=result.digits[:16],
                    attempt=failures,
                )
                no_input = problem in ("timeout", "empty")
                if failures > menu.retries:
                    return (
                        yield from self._fallback("fallback_no_input" if no_input else "fallback_invalid")
                    )
                yield from self._play(
                    self.service.prompts.no_input if no_input else self.service.prompts.invalid
                )
                continue
            option = menu.options[key]
            self.events.emit("ivr.input", menu=menu.name, key=key, choice=option.kind, target=option.target)
            kind = option.kind
            if kind == "menu":
                history.append(menu)
                menu, failures = menus[option.target], 0
            elif kind == "action" and option.target == "repeat":
                failures = 0
            elif kind == "action" and option.target == "back":
                menu, failures = (history.pop() if history else menu), 0
            elif kind == "action":  # hangup
                yield from self._play(self.service.prompts.goodbye)
                return (yield from self._finish("hangup", reason=option.reason or "menu_hangup"))
            elif kind == "language":
                self.lang, failures = option.target, 0
            elif kind == "info":
                yield from self._play(option.target)
                if option.then == "hangup":
                    yield from self._play(self.service.prompts.goodbye)
                    return (yield from self._finish("hangup", reason=option.reason or "info"))
                failures = 0
            else:  # queue or callback
                if option.collect is not None:
                    self.case = yield from self._collect(self.service.inputs[option.collect])
                # Without the callback service a "callback" would be a promise nobody keeps.
                action: Action = "callback" if kind == "callback" and self.offers else "queue"
                return (yield from self._to_human(action, option.target, option.reason, option.priority))

    def _collect(self, spec: InputSpec) -> Sub[str]:
        failures = 0
        while True:
            step = GetDigits(prompt_path(self.lang, spec.prompt), int(spec.timeout_s * 1000), spec.max_digits)
            result = _checked(step, (yield step))
            value, problem = classify_input(result, spec)
            if value is not None:
                self.events.emit("ivr.input", input=spec.name, status="valid", length=len(value))
                if spec.readback:
                    yield from self._play(self.service.prompts.you_entered)
                    yield from self._do(SayDigits(value))
                return value
            if problem == "skipped":
                self.events.emit("ivr.input", input=spec.name, status="skipped", reason="caller_skipped")
                return ""
            failures += 1
            self.events.emit(
                "ivr.invalid",
                input=spec.name,
                reason=problem or "invalid",
                length=len(result.digits),
                attempt=failures,
            )
            if failures > spec.retries:
                self.events.emit("ivr.input", input=spec.name, status="skipped", reason="retries_exhausted")
                return ""
            yield from self._play(
                self.service.prompts.no_input if problem == "timeout" else spec.invalid_prompt
            )

    def _fallback(self, reason: str) -> Sub[Decision]:
        return (yield from self._to_human("queue", self.service.fallback_queue, reason, None))

    def offer(self) -> CallbackOffer:
        """The callback offer of this call (same events, language, caller and case)."""
        return CallbackOffer(
            self.service,
            self.events,
            lang=self.lang,
            clock=self.clock,
            policy=self.policy,
            settings=self.settings,
            caller=self.caller,
            case=self.case,
        )

    def _to_human(self, action: Action, queue: str, reason: str, priority: int | None) -> Sub[Decision]:
        qcfg = self.queues[queue]
        prio = qcfg.priority if priority is None else priority
        reason = reason or queue
        self.events.emit(
            "agent.requested",
            queue=queue,
            action=action,
            reason=reason,
            priority=prio,
            case_given=bool(self.case),
        )
        if self.offers and (action == "callback" or qcfg.offer_callback):
            advice: OverflowAdvice | None = None
            if action == "queue":
                advice = yield from self._ask(CheckOverflow(queue, self.call.uniqueid), OverflowAdvice)
            if advice is None or advice.offer != "none":
                where = "menu" if action == "callback" else "entry"
                outcome = yield from self.offer().run(where=where, queue=queue, can_wait=True, advice=advice)
                if outcome.kind in ("callback", "appointment"):
                    return (
                        yield from self._finish(
                            "callback",
                            queue=queue,
                            priority=prio,
                            qtimeout=qcfg.timeout_s,
                            reason="appointment" if outcome.kind == "appointment" else reason,
                            callback_id=outcome.callback_id,
                        )
                    )
                action = "queue"  # chose to wait, or nothing could be recorded
            elif self.settings.announces(queue):
                yield from self._sounds(
                    announcement(self.settings, advice.position, advice.estimated_wait_s, queue)
                )
        if action == "queue":
            yield from self._play(self.service.prompts.transfer)
        return (
            yield from self._finish(
                action, queue=queue, priority=prio, qtimeout=qcfg.timeout_s, reason=reason
            )
        )

    def _finish(
        self,
        action: Action,
        *,
        reason: str,
        queue: str = "",
        priority: int | None = None,
        qtimeout: int | None = None,
        next_opening: float | None = None,
        callback_id: str = "",
    ) -> Sub[Decision]:
        decision = Decision(
            action=action,
            service=self.service.name,
            lang=self.lang,
            queue=queue,
            priority=priority,
            qtimeout=qtimeout,
            reason=reason,
            case=self.case,
            callback_id=callback_id,
        )
        for step in set_variables(decision.variables()):
            _checked(step, (yield step))
        self.events.emit(
            "ivr.end",
            queue=queue,
            action=action,
            reason=reason,
            lang=self.lang,
            next_opening=next_opening,
            callback_id=callback_id or None,
        )
        return decision
