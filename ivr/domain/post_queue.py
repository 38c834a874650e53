"""The short scripts around the queue: ``after-queue``, ``exit-key``, ``survey`` and the callback legs.

``after-queue`` runs when ``Queue()`` returns; the dialplan passes ``${QUEUESTATUS}`` as
``agi_arg_1`` (``AGI(agi://.../after-queue,${QUEUESTATUS})``). It is the controller's own
record of how the queue stint ended, and the point where a caller who waited in vain is
offered a callback. ``exit-key`` runs in the queue's ``context=`` when the caller left it
with a key ("press 1 to be called back"); Asterisk then leaves ``QUEUESTATUS`` unset
(``exit_with_key`` recording), so the script reads the queue from ``IVR_QUEUE``. ``survey``
asks for a score from 1 to 5 after a call with an agent. ``callback-greet`` and
``callback-result`` run on the calls the callback dispatcher places
(``dialplans/dp-callback.conf``).

What each emits (``source="agi"``):

* after-queue, with ``data.status`` (QUEUESTATUS): ``queue.timeout`` for TIMEOUT;
  ``queue.leave`` with ``data.outcome`` ``leave_empty`` (LEAVEEMPTY, LEAVEUNAVAIL) or
  ``withdrawn`` (WITHDRAW); ``queue.join_empty`` for JOINEMPTY, JOINUNAVAIL, FULL (refused
  at the door -- Asterisk emits no AMI queue event at all for these, see FACTS.md);
  nothing for CONTINUE (the agent side comes from AMI). Then ``IVR_ACTION`` is ``survey``
  after CONTINUE (survey enabled).
* exit-key: ``queue.exit_key`` with the key and the wait.
* survey: ``survey.answer`` with ``score`` (1-5), or ``ivr.invalid`` per bad attempt.

**The callback offer after the queue** (with the callback service and a queue that offers
callbacks; :class:`~ivr.domain.ivr_flow.CallbackOffer`): after TIMEOUT and WITHDRAW (the
controller pulled the caller out) and from the exit key, the caller may be called back,
keeping the place its queue join gave it, or go back to the queue (0, or no answer); after
LEAVEEMPTY, JOINEMPTY and the like nobody is there to wait for, so the offer has no 0 and
a caller who takes nothing hears "please call later". Without the service: the call-again
message after those endings, back to the queue after WITHDRAW, and the queue's
``exit_key`` setting after the key.

**callback-greet** (caller-first: the customer answered the callback) tells the customer
who calls and queues them (``IVR_ACTION=queue``) in the request's queue, with its case and
language; ``IVR_PRIO`` is left empty so that the dialplan's ``CALLBACK_QUEUE_PRIO``
applies. **callback-result** hands the customer leg's DIALSTATUS (``agi_arg_2``) for the
request (``agi_arg_1``) and dial (``IVR_CALLBACK_DIAL``) to the callback service, which
emits the ``callback.*`` event; it runs in the ``h`` extension, on a channel already
gone, so it only reads variables and sets none.

The same queue outcomes are visible on AMI; consumers that count them must count one
source (these carry ``source="agi"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ivr.callbacks.numbering import NumberPolicy
from ivr.config import Config, Prompts, ServiceConfig
from ivr.domain.ivr_flow import (
    CALLER_ID_VARIABLE,
    CallbackOffer,
    CallbackSettings,
    CallerGone,
    FlowSteps,
    OfferOutcome,
    Sub,
    caller_number,
)
from ivr.domain.ivr_ops import (
    Action,
    CallbackDetails,
    CallbackReported,
    CallInfo,
    Clock,
    Decision,
    EventRecorder,
    EventSink,
    GetCallback,
    GetDigits,
    GetVar,
    ReportCallback,
    ServiceFlow,
    SetVar,
    Verbose,
    prompt_path,
    set_variables,
)

__all__ = ["after_queue", "callback_greet", "callback_result", "exit_key", "survey"]

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
#: Endings after which the caller may go back to wait (the queue still has agents).
_MAY_WAIT: Final = frozenset({"TIMEOUT", "WITHDRAW"})
#: Variable the dispatcher sets on its Originate: which dial of the request this call is.
DIAL_VARIABLE: Final = "IVR_CALLBACK_DIAL"


class _Script(FlowSteps):
    """Shared plumbing: read the IVR's variables back, play, offer, finish with the contract variables."""

    def __init__(
        self,
        config: Config,
        call: CallInfo,
        clock: Clock,
        sink: EventSink,
        *,
        services: bool = False,
        settings: CallbackSettings | None = None,
    ) -> None:
        self.config = config
        self.call = call
        self.clock = clock
        self.events = EventRecorder(sink, clock, call)
        self.service: ServiceConfig | None = None
        self.lang = "fr"
        self.queue = ""
        self.priority: int | None = None
        self.case = ""
        self.offers = services and config.callbacks.enabled
        self.settings = settings or CallbackSettings.from_config(config)

    def var(self, name: str) -> Sub[str]:
        """A channel variable ("" when unset). GET VARIABLE works even on a dead channel."""
        result = yield GetVar(name)
        value = getattr(result, "value", None)
        return value or ""

    def load_context(self) -> Sub[None]:
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

    def can_offer(self) -> bool:
        qcfg = self.config.queues.get(self.queue)
        return self.offers and self.service is not None and qcfg is not None and qcfg.offer_callback

    def offer(self, where: str, *, can_wait: bool) -> Sub[OfferOutcome]:
        """The callback offer to a caller who has been in ``self.queue``."""
        policy = NumberPolicy.from_config(self.config.callbacks)
        raw = yield from self.var(CALLER_ID_VARIABLE)
        offer = CallbackOffer(
            self.service,
            self.events,
            lang=self.lang,
            clock=self.clock,
            policy=policy,
            settings=self.settings,
            caller=caller_number(raw, policy),
            case=self.case,
        )
        return (yield from offer.run(where=where, queue=self.queue, can_wait=can_wait, waited=True))

    def finish(
        self,
        action: Action,
        reason: str,
        *,
        queue: str = "",
        priority: int | None = None,
        callback_id: str = "",
        queue_priority: bool = True,
    ) -> Sub[Decision]:
        """Set the contract variables; ``queue_priority``: an unset priority takes the queue's."""
        qcfg = self.config.queues.get(queue)
        if priority is None and qcfg is not None and queue_priority:
            priority = qcfg.priority
        decision = Decision(
            action=action,
            service=self.service.name if self.service else self.events.service,
            lang=self.lang,
            queue=queue,
            priority=priority,
            qtimeout=qcfg.timeout_s if qcfg is not None and action == "queue" else None,
            reason=reason,
            case=self.case,
            callback_id=callback_id,
        )
        for step in set_variables(decision.variables()):
            yield from self._do(step)
        return decision

    def after_offer(self, outcome: OfferOutcome, requeue_reason: str) -> Sub[Decision]:
        """Where the call goes once the offer is over."""
        if outcome.kind in ("callback", "appointment"):
            return (
                yield from self.finish(
                    "callback",
                    "appointment" if outcome.kind == "appointment" else outcome.reason,
                    queue=self.queue,
                    priority=self.priority,
                    callback_id=outcome.callback_id,
                )
            )
        if outcome.kind == "wait":
            yield from self._play(self.prompts.exit_key)
            return (yield from self.finish("queue", requeue_reason, queue=self.queue, priority=self.priority))
        yield from self._play(self.prompts.queue_timeout)
        yield from self._play(self.prompts.goodbye)
        return (yield from self.finish("hangup", outcome.reason, queue=self.queue, priority=self.priority))

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


def after_queue(
    config: Config,
    call: CallInfo,
    *,
    clock: Clock,
    sink: EventSink,
    services: bool = False,
    settings: CallbackSettings | None = None,
) -> ServiceFlow:
    """Record how the queue stint ended; offer a callback, or tell a caller who was let go to call again."""
    s = _Script(config, call, clock, sink, services=services, settings=settings)
    try:
        status = (call.args[0] if call.args else "") or (yield from s.var("QUEUESTATUS"))
        status = status.strip().upper()
        yield from s.load_context()
        wait = _seconds((yield from s.var("QUEUEWAIT")))
        known = _STATUS_EVENTS.get(status)
        reason = status.lower() if status else "unknown_status"
        if known is not None:
            event, outcome, call_again = known
            s.events.emit(event, queue=s.queue, status=status, outcome=outcome, wait_s=wait)
            if s.can_offer():
                offered = yield from s.offer(reason, can_wait=status in _MAY_WAIT)
                return (yield from s.after_offer(offered, f"{reason}_requeue"))
            if call_again:
                yield from s._play(s.prompts.queue_timeout)
                yield from s._play(s.prompts.goodbye)
        if status == "CONTINUE" and config.survey.enabled:
            return (yield from s.finish("survey", reason, queue=s.queue, priority=s.priority))
        if status == "WITHDRAW":  # pulled out by the controller: back in line
            return (yield from s.finish("queue", reason, queue=s.queue, priority=s.priority))
        return (yield from s.finish("hangup", reason, queue=s.queue, priority=s.priority))
    except CallerGone:
        return s.gone()


def exit_key(
    config: Config,
    call: CallInfo,
    *,
    clock: Clock,
    sink: EventSink,
    services: bool = False,
    settings: CallbackSettings | None = None,
) -> ServiceFlow:
    """The caller left the queue with a key: the callback offer, back to the queue, or a goodbye.

    The key is the extension the queue jumped to in its ``context=`` (``agi_extension``).
    Without the offer, what happens next is the queue's ``exit_key`` setting; a queue we do
    not know sends the caller to the service's fallback queue, and without a service the
    call ends.
    """
    s = _Script(config, call, clock, sink, services=services, settings=settings)
    try:
        yield from s.load_context()
        wait = _seconds((yield from s.var("QUEUEWAIT")))
        key = call.query.get("key") or call.extension
        s.events.emit("queue.exit_key", queue=s.queue, key=key, wait_s=wait)
        qcfg = config.queues.get(s.queue)
        if s.can_offer():
            assert qcfg is not None
            offered = yield from s.offer("exit_key", can_wait=qcfg.exit_key == "requeue")
            return (yield from s.after_offer(offered, "exit_key_requeue"))
        if qcfg is not None and qcfg.exit_key == "requeue":
            yield from s._play(s.prompts.exit_key)
            return (yield from s.finish("queue", "exit_key_requeue", queue=s.queue, priority=s.priority))
        if qcfg is None and s.service is not None:
            yield from s._play(s.prompts.exit_key)
            return (yield from s.finish("queue", "exit_key_fallback", queue=s.service.fallback_queue))
        yield from s._play(s.prompts.goodbye)
        return (yield from s.finish("hangup", "exit_key", queue=s.queue, priority=s.priority))
    except CallerGone:
        return s.gone()


def survey(config: Config, call: CallInfo, *, clock: Clock, sink: EventSink) -> ServiceFlow:
    """Ask for a satisfaction score from 1 to 5 (one key); record it as ``survey.answer``."""
    s = _Script(config, call, clock, sink)
    cfg = config.survey
    try:
        yield from s.load_context()
        agent = yield from s.var("MEMBERNAME")
        failures = 0
        while True:
            question = GetDigits(prompt_path(s.lang, cfg.prompt), int(cfg.timeout_s * 1000), 1)
            result = yield from s._do(question)
            digits = result.digits
            if not result.failed and len(digits) == 1 and digits in "12345":
                s.events.emit("survey.answer", queue=s.queue, agent=agent, score=int(digits))
                yield from s._play(cfg.thanks)
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
                yield from s._play(s.prompts.goodbye)
                return (yield from s.finish("hangup", "survey_no_answer", queue=s.queue, priority=s.priority))
            yield from s._play(cfg.invalid)
    except CallerGone:
        return s.gone()


def callback_greet(
    config: Config,
    call: CallInfo,
    *,
    clock: Clock,
    sink: EventSink,
    settings: CallbackSettings | None = None,
) -> ServiceFlow:
    """Caller-first callback, the customer answered: who is calling, then the request's queue.

    The request id is ``agi_arg_1``. An unknown request (or the service away) still queues
    the customer -- in the queue of the query string, else the service's fallback queue: a
    person we called is never left without someone to talk to.
    """
    s = _Script(config, call, clock, sink, settings=settings)
    try:
        callback_id = (call.args[0] if call.args else "").strip()
        q = call.query
        details = CallbackDetails(False)
        if callback_id:
            details = yield from s._ask(GetCallback(callback_id), CallbackDetails)
        service = details.service or q.get("service") or (yield from s.var("IVR_SERVICE"))
        s.service = config.services.get(service)
        s.events.service = service
        s.queue = details.queue or q.get("queue") or (s.service.fallback_queue if s.service else "")
        s.case = details.case
        s.lang = details.language or (s.service.language if s.service else "fr")
        if not details.found:
            yield from s._do(Verbose(f"decroche: callback {callback_id!r} unknown, queueing in {s.queue!r}"))
        yield from s._play(s.settings.prompts.greet)
        return (
            yield from s.finish(
                "queue",
                "callback_greeted" if details.found else "callback_unknown",
                queue=s.queue,
                queue_priority=False,
            )
        )
    except CallerGone:
        return s.gone()


def callback_result(config: Config, call: CallInfo, *, clock: Clock, sink: EventSink) -> ServiceFlow:
    """Report a callback's customer DIALSTATUS to the service (``agi_arg_1`` id, ``agi_arg_2`` status).

    Runs in ``h``: nothing is played; ``IVR_REASON`` (set on the dead channel: ``SET VARIABLE``
    works in dead AGI, res/res_agi.c) says whether the outcome is recorded
    (``callback_<status>``, or ``..._unchanged`` when it was settled before) or not
    (``..._unrecorded``, the service is unavailable): only in the last case does the dialplan
    keep its AstDB copy of the outcome for the dispatcher. A report without an id or a status
    is told on the console and dropped (the dispatcher's own AMI view still settles the dial).
    """
    s = _Script(config, call, clock, sink)
    s.events.service = call.query.get("service", "")
    callback_id = (call.args[0] if call.args else "").strip()
    status = (call.args[1] if len(call.args) > 1 else "").strip().upper()
    if not callback_id or not status:
        yield Verbose(f"decroche: callback-result without id or status (args {list(call.args)!r})")
        return Decision(action="hangup", service=s.events.service, lang="", reason="callback_result_invalid")
    dial = _seconds((yield from s.var(DIAL_VARIABLE)))
    reply = yield from s._ask(ReportCallback(callback_id, status, dial), CallbackReported)
    if reply.changed:
        reason = f"callback_{status.lower()}"
    elif reply.status or reply.reason == "missing":
        reason = f"callback_{status.lower()}_unchanged"  # settled before (AMI), or no such request
    else:
        # The service could not record it: the dialplan keeps the copy in AstDB (dp-callback.conf).
        reason = f"callback_{status.lower()}_unrecorded"
    yield from s._do(SetVar("IVR_REASON", reason))
    return Decision(
        action="hangup",
        service=s.events.service,
        lang="",
        reason=reason,
        callback_id=callback_id,
    )
