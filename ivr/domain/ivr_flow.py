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
* **No promise nobody keeps.** While callbacks are disabled (``[callbacks] enabled``), a
  callback option queues the caller instead.

Every step is a :class:`~ivr.domain.events.CallEvent` for the injected sink:
``ivr.start`` (with ``in_hours``: what the caller is about to be told), ``ivr.menu``
(each time a menu is offered), ``ivr.input`` (a choice made, or an input taken or
skipped), ``ivr.invalid`` (each failed attempt), ``agent.requested`` (the call is routed
to a human: queue or callback) and ``ivr.end``. Case numbers are personal data: events
say whether one was given, never its value (the agent sees it in ``IVR_CASE``).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from ivr.config import InputSpec, Menu, MenuOption, QueueConfig, ServiceConfig
from ivr.domain.hours import is_holiday, is_open, next_opening
from ivr.domain.ivr_ops import (
    Action,
    Answer,
    CallInfo,
    Clock,
    Decision,
    EventRecorder,
    EventSink,
    Flow,
    GetDigits,
    Play,
    SayDigits,
    SetVar,
    Step,
    StepResult,
    prompt_path,
)

__all__ = ["MAX_MENU_VISITS", "IvrFlow", "classify_input", "classify_menu_key"]

#: Menus offered in one call before the caller is sent to a human anyway.
MAX_MENU_VISITS: Final = 30

_DTMF_DIGITS: Final = frozenset("0123456789")


class _CallerGone(Exception):
    """Raised inside the flow when a step comes back "hung up"."""


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


class IvrFlow:
    """The IVR of ``service`` for one call; :meth:`run` is the flow generator."""

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
    ) -> None:
        self.service = service
        self.callbacks = callbacks
        self.queues = queues
        self.call = call
        self.clock = clock
        self.lang = lang if lang in service.languages else service.language
        self.events = EventRecorder(sink, clock, call, service=service.name)
        self.case = ""
        self.menu_visits = 0

    # -- small steps ------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return prompt_path(self.lang, name)

    def _do(self, step: Step) -> Generator[Step, StepResult, StepResult]:
        result = yield step
        if result.hangup:
            raise _CallerGone
        return result

    def _play(self, name: str) -> Generator[Step, StepResult, None]:
        if name:
            yield from self._do(Play(self._path(name)))

    # -- the flow ---------------------------------------------------------------------------

    def run(self) -> Flow:
        now = self.clock()
        in_hours = is_open(self.service.hours, now)
        self.events.emit("ivr.start", script=self.call.script, lang=self.lang, in_hours=in_hours)
        try:
            yield from self._do(Answer())
            if not in_hours:
                return (yield from self._closed(now))
            yield from self._play(self.service.prompts.welcome)
            return (yield from self._menus())
        except _CallerGone:
            self.events.emit("ivr.end", action="hangup", reason="caller_hangup", lang=self.lang)
            return Decision(
                action="hangup",
                service=self.service.name,
                lang=self.lang,
                reason="caller_hangup",
                case=self.case,
                hung_up=True,
            )

    def _closed(self, now: float) -> Generator[Step, StepResult, Decision]:
        hours = self.service.hours
        day = datetime.fromtimestamp(now, ZoneInfo(hours.timezone)).date()
        holiday = day not in hours.special and (day in hours.closed_dates or is_holiday(hours, day))
        reason = "holiday" if holiday else "closed"
        yield from self._play(self.service.prompts.closed)
        reopen = next_opening(hours, now)
        return (yield from self._finish("closed", reason=reason, next_opening=reopen))

    def _menus(self) -> Generator[Step, StepResult, Decision]:
        menus = self.service.menus
        menu = menus[self.service.entry_menu]
        history: list[Menu] = []
        failures = 0
        while True:
            self.menu_visits += 1
            if self.menu_visits > MAX_MENU_VISITS:
                return (yield from self._fallback("fallback_loop"))
            self.events.emit("ivr.menu", menu=menu.name, attempt=failures + 1, lang=self.lang)
            result = yield from self._do(GetDigits(self._path(menu.prompt), int(menu.timeout_s * 1000), 1))
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
                if failures > menu.retries:
                    no_input = problem in ("timeout", "empty")
                    return (
                        yield from self._fallback("fallback_no_input" if no_input else "fallback_invalid")
                    )
                no_input = problem in ("timeout", "empty")
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
                # Without the callback dispatcher a "callback" would be a promise nobody keeps.
                action: Action = "callback" if kind == "callback" and self.callbacks else "queue"
                return (yield from self._to_human(action, option.target, option.reason, option.priority))

    def _collect(self, spec: InputSpec) -> Generator[Step, StepResult, str]:
        failures = 0
        while True:
            result = yield from self._do(
                GetDigits(self._path(spec.prompt), int(spec.timeout_s * 1000), spec.max_digits)
            )
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

    def _fallback(self, reason: str) -> Generator[Step, StepResult, Decision]:
        return (yield from self._to_human("queue", self.service.fallback_queue, reason, None))

    def _to_human(
        self, action: Action, queue: str, reason: str, priority: int | None
    ) -> Generator[Step, StepResult, Decision]:
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
    ) -> Generator[Step, StepResult, Decision]:
        decision = Decision(
            action=action,
            service=self.service.name,
            lang=self.lang,
            queue=queue,
            priority=priority,
            qtimeout=qtimeout,
            reason=reason,
            case=self.case,
        )
        for name, value in decision.variables().items():
            yield from self._do(SetVar(name, value))
        self.events.emit(
            "ivr.end",
            queue=queue,
            action=action,
            reason=reason,
            lang=self.lang,
            next_opening=next_opening,
        )
        return decision
