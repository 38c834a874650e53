"""The short scripts that run after the IVR: ``after-queue``, ``exit-key`` and ``survey``.

``after-queue`` runs when ``Queue()`` returns; the dialplan passes ``${QUEUESTATUS}`` as
``agi_arg_1`` (``AGI(agi://.../after-queue,${QUEUESTATUS})``). It is the controller's own
record of how the queue stint ended, and the point where a caller who waited in vain will
be offered a callback. ``exit-key`` runs in the queue's ``context=`` when the caller
left it with a key; Asterisk then leaves ``QUEUESTATUS`` unset (``exit_with_key``
recording), so the script reads the queue from ``IVR_QUEUE``. ``survey`` asks for a score
from 1 to 5 after a call with an agent.

What each emits (``source="agi"``):

* after-queue, with ``data.status`` (QUEUESTATUS): ``queue.timeout`` for TIMEOUT;
  ``queue.leave`` with ``data.outcome`` ``leave_empty`` (LEAVEEMPTY, LEAVEUNAVAIL) or
  ``withdrawn`` (WITHDRAW); ``queue.join_empty`` for JOINEMPTY, JOINUNAVAIL, FULL (refused
  at the door -- Asterisk emits no AMI queue event at all for these, see FACTS.md);
  nothing for CONTINUE (the agent side comes from AMI). A caller who was let go or
  refused hears "please call later" (a callback offer will take its place). Then
  ``IVR_ACTION`` is ``survey`` after CONTINUE (survey enabled), ``queue`` after WITHDRAW
  (back in line until the callback offer exists), else ``hangup``.
* exit-key: ``queue.exit_key`` with the key and the wait.
* survey: ``survey.answer`` with ``score`` (1-5), or ``ivr.invalid`` per bad attempt.

The same queue outcomes are visible on AMI; consumers that count them must count one
source (these carry ``source="agi"``).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Final

from ivr.config import Config, Prompts, ServiceConfig
from ivr.domain.ivr_ops import (
    Action,
    CallInfo,
    Clock,
    Decision,
    EventRecorder,
    EventSink,
    Flow,
    GetDigits,
    GetVar,
    Play,
    SetVar,
    Step,
    StepResult,
    prompt_path,
)

__all__ = ["after_queue", "exit_key", "survey"]

#: QUEUESTATUS values (app_queue.c) -> (event type, ``data.outcome``, tell the caller to call again).
_STATUS_EVENTS: Final[Mapping[str, tuple[str, str | None, bool]]] = {
    "TIMEOUT": ("queue.timeout", None, True),
    "LEAVEEMPTY": ("queue.leave", "leave_empty", True),
    "LEAVEUNAVAIL": ("queue.leave", "leave_empty", True),
    "WITHDRAW": ("queue.leave", "withdrawn", False),
    "JOINEMPTY": ("queue.join_empty", None, True),
    "JOINUNAVAIL": ("queue.join_empty", None, True),
    "FULL": ("queue.join_empty", None, True),
}


class _CallerGone(Exception):
    pass


class _Script:
    """Shared plumbing: read the IVR's variables back, play, finish with the contract variables."""

    def __init__(self, config: Config, call: CallInfo, clock: Clock, sink: EventSink) -> None:
        self.config = config
        self.call = call
        self.events = EventRecorder(sink, clock, call)
        self.service: ServiceConfig | None = None
        self.lang = "fr"
        self.queue = ""
        self.priority: int | None = None
        self.case = ""

    def do(self, step: Step) -> Generator[Step, StepResult, StepResult]:
        result = yield step
        if result.hangup:
            raise _CallerGone
        return result

    def var(self, name: str) -> Generator[Step, StepResult, str]:
        """A channel variable ("" when unset). GET VARIABLE works even on a dead channel."""
        result = yield GetVar(name)
        return result.value or ""

    def load_context(self) -> Generator[Step, StepResult, None]:
        """Service, queue, language and case from the IVR's variables (the query string wins)."""
        q = self.call.query
        service = q.get("service") or (yield from self.var("IVR_SERVICE"))
        self.service = self.config.services.get(service)
        self.events.service = service
        self.queue = q.get("queue") or (yield from self.var("IVR_QUEUE"))
        lang = (yield from self.var("IVR_LANG")) or (self.service.language if self.service else "fr")
        self.lang = lang
        prio = yield from self.var("IVR_PRIO")
        self.priority = int(prio) if prio.isdigit() else None
        self.case = yield from self.var("IVR_CASE")

    @property
    def prompts(self) -> Prompts:
        return self.service.prompts if self.service is not None else Prompts()

    def play(self, name: str) -> Generator[Step, StepResult, None]:
        if name:
            yield from self.do(Play(prompt_path(self.lang, name)))

    def finish(
        self, action: Action, reason: str, *, queue: str = "", priority: int | None = None
    ) -> Generator[Step, StepResult, Decision]:
        qcfg = self.config.queues.get(queue)
        decision = Decision(
            action=action,
            service=self.service.name if self.service else self.events.service,
            lang=self.lang,
            queue=queue,
            priority=priority if priority is not None or qcfg is None else qcfg.priority,
            qtimeout=qcfg.timeout_s if qcfg is not None and action == "queue" else None,
            reason=reason,
            case=self.case,
        )
        for name, value in decision.variables().items():
            yield from self.do(SetVar(name, value))
        return decision

    def gone(self, reason: str = "caller_hangup") -> Decision:
        return Decision(
            action="hangup",
            service=self.events.service,
            lang=self.lang,
            queue=self.queue,
            reason=reason,
            case=self.case,
            hung_up=True,
        )


def _seconds(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def after_queue(config: Config, call: CallInfo, *, clock: Clock, sink: EventSink) -> Flow:
    """Record how the queue stint ended; tell a caller who was let go to call again."""
    s = _Script(config, call, clock, sink)
    try:
        status = (call.args[0] if call.args else "") or (yield from s.var("QUEUESTATUS"))
        status = status.strip().upper()
        yield from s.load_context()
        wait = _seconds((yield from s.var("QUEUEWAIT")))
        known = _STATUS_EVENTS.get(status)
        if known is not None:
            event, outcome, call_again = known
            s.events.emit(event, queue=s.queue, status=status, outcome=outcome, wait_s=wait)
            if call_again:
                yield from s.play(s.prompts.queue_timeout)
                yield from s.play(s.prompts.goodbye)
        reason = status.lower() if status else "unknown_status"
        if status == "CONTINUE" and config.survey.enabled:
            return (yield from s.finish("survey", reason, queue=s.queue, priority=s.priority))
        if status == "WITHDRAW":  # pulled out by the controller; until it offers a callback: back in line
            return (yield from s.finish("queue", reason, queue=s.queue, priority=s.priority))
        return (yield from s.finish("hangup", reason, queue=s.queue, priority=s.priority))
    except _CallerGone:
        return s.gone()


def exit_key(config: Config, call: CallInfo, *, clock: Clock, sink: EventSink) -> Flow:
    """The caller left the queue with a key: back to the queue, or a polite goodbye.

    The key is the extension the queue jumped to in its ``context=`` (``agi_extension``).
    What happens next is the queue's ``exit_key`` setting; a queue we do not know sends
    the caller to the service's fallback queue, and without a service the call ends.
    """
    s = _Script(config, call, clock, sink)
    try:
        yield from s.load_context()
        wait = _seconds((yield from s.var("QUEUEWAIT")))
        key = call.query.get("key") or call.extension
        s.events.emit("queue.exit_key", queue=s.queue, key=key, wait_s=wait)
        qcfg = config.queues.get(s.queue)
        if qcfg is not None and qcfg.exit_key == "requeue":
            yield from s.play(s.prompts.exit_key)
            return (yield from s.finish("queue", "exit_key_requeue", queue=s.queue, priority=s.priority))
        if qcfg is None and s.service is not None:
            yield from s.play(s.prompts.exit_key)
            return (yield from s.finish("queue", "exit_key_fallback", queue=s.service.fallback_queue))
        yield from s.play(s.prompts.goodbye)
        return (yield from s.finish("hangup", "exit_key", queue=s.queue, priority=s.priority))
    except _CallerGone:
        return s.gone()


def survey(config: Config, call: CallInfo, *, clock: Clock, sink: EventSink) -> Flow:
    """Ask for a satisfaction score from 1 to 5 (one key); record it as ``survey.answer``."""
    s = _Script(config, call, clock, sink)
    cfg = config.survey
    try:
        yield from s.load_context()
        agent = yield from s.var("MEMBERNAME")
        failures = 0
        while True:
            result = yield from s.do(GetDigits(prompt_path(s.lang, cfg.prompt), int(cfg.timeout_s * 1000), 1))
            digits = result.digits
            if not result.failed and len(digits) == 1 and digits in "12345":
                s.events.emit("survey.answer", queue=s.queue, agent=agent, score=int(digits))
                yield from s.play(cfg.thanks)
                return (yield from s.finish("hangup", "survey_answered", queue=s.queue, priority=s.priority))
            failures += 1
            if result.failed:
                problem = "error"
            elif not digits:
                problem = "timeout" if result.timed_out else "empty"
            else:
                problem = "invalid"
            s.events.emit("ivr.invalid", queue=s.queue, survey=True, reason=problem, attempt=failures)
            if failures > cfg.retries:
                yield from s.play(s.prompts.goodbye)
                return (yield from s.finish("hangup", "survey_no_answer", queue=s.queue, priority=s.priority))
            yield from s.play(cfg.invalid)
    except _CallerGone:
        return s.gone()
