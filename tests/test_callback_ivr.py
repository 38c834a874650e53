"""The callback offer in the IVR flows, driven step by step: every path a caller can take.

The flows are service flows: channel steps and service requests both come out of the
generator. Here a scripted line answers both (DTMF in order, the service's replies from
handlers that record what was asked), so each path is checked to the prompt: what the
caller hears, what is asked of the service, what the dialplan gets. The same flows against
the real callback service and Redis are at the end (``drive`` with the controller's
performer), and over FastAGI with the simulated PBX in ``tests/test_controller_callbacks.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.appointments.requests import Booking, BookingResult, BookSlot, FindFreeSlots, FreeSlots
from ivr.appointments.slots import Slot
from ivr.callbacks.numbering import check_number
from ivr.config import Config, default_config
from ivr.controller import Controller, Endpoints
from ivr.domain.events import CallEvent
from ivr.domain.ivr_flow import CallbackPrompts, classify_number
from ivr.domain.ivr_ops import (
    CONTRACT_VARIABLES,
    HUNG_UP,
    OK,
    REQUEST_TYPES,
    CallbackDetails,
    CallbackRecorded,
    CallbackReported,
    CallInfo,
    Cancelled,
    CancelOpen,
    CheckOverflow,
    Decision,
    FindOpen,
    GetCallback,
    GetDigits,
    GetVar,
    OpenRequests,
    OverflowAdvice,
    Play,
    RecordCallback,
    Reply,
    ReportCallback,
    Request,
    SayDigits,
    ServiceFlow,
    SetVar,
    SetVars,
    Step,
    StepResult,
    Verbose,
    answer_inline,
    drive,
    fallback_reply,
    run_sync,
)
from ivr.domain.scripts import default_flows, service_flows

PARIS = ZoneInfo("Europe/Paris")
THURSDAY_10H = datetime(2026, 11, 26, 10, 0, tzinfo=PARIS).timestamp()
CLI = "0612345678"
P = CallbackPrompts()

TIMEOUT = StepResult(timed_out=True)
POUND = StepResult(digits="")
FAILED = StepResult(failed=True)


def keys(text: str) -> StepResult:
    return StepResult(digits=text)


def fr(name: str) -> str:
    return f"fr/{name}"


@pytest.fixture(scope="module")
def config() -> Config:
    return default_config()


def with_appointments(config: Config) -> Config:
    caf = config.services["caf"]
    appointments = dataclasses.replace(caf.appointments, enabled=True, queue="caf", capacity=2)
    services = {**config.services, "caf": dataclasses.replace(caf, appointments=appointments)}
    return dataclasses.replace(config, services=services)


BUSY = OverflowAdvice("callback", ("estimated_wait",), position=5, estimated_wait_s=900.0)


@dataclass
class Line:
    """The caller's channel and the service, answered from scripts.

    ``inputs`` answer GET DATA steps in order (TIMEOUT once they run out); the service's
    replies come from ``handlers`` (by request type), and every request is kept in ``asked``.
    """

    inputs: list[StepResult]
    variables: dict[str, str] = field(default_factory=lambda: {"CALLERID(num)": CLI})
    overflow: OverflowAdvice = BUSY
    open_requests: OpenRequests = field(default_factory=OpenRequests)
    record: Callable[[RecordCallback], CallbackRecorded] | None = None
    handlers: dict[type, Callable[[Any], Reply]] = field(default_factory=dict)
    asked: list[Request] = field(default_factory=list)
    set_vars: dict[str, str] = field(default_factory=dict)
    hang_up_at: str | None = None

    def reply(self, request: Request) -> Reply:
        self.asked.append(request)
        handler = self.handlers.get(type(request))
        if handler is not None:
            return handler(request)
        if isinstance(request, CheckOverflow):
            return self.overflow
        if isinstance(request, FindOpen):
            return self.open_requests
        if isinstance(request, RecordCallback):
            if self.record is not None:
                return self.record(request)
            return CallbackRecorded(
                True,
                "created",
                callback_id="cb00000000000000000001",
                number=request.number,
                position=6,
                estimated_wait_s=1200.0,
            )
        if isinstance(request, CancelOpen):
            return Cancelled(
                "cancelled" if request.callback_id else "", "cancelled" if request.booking_id else ""
            )
        return fallback_reply(request)

    def __call__(self, out: Step | Request) -> StepResult | Reply:
        if isinstance(out, REQUEST_TYPES):
            return self.reply(out)
        if (
            self.hang_up_at is not None
            and isinstance(out, Play | GetDigits)
            and out.prompt == self.hang_up_at
        ):
            return HUNG_UP
        if isinstance(out, GetDigits):
            return self.inputs.pop(0) if self.inputs else TIMEOUT
        if isinstance(out, SetVar | SetVars):
            pairs = ((out.name, out.value),) if isinstance(out, SetVar) else out.pairs
            self.set_vars.update(pairs)
            self.variables.update(pairs)
            return OK
        if isinstance(out, GetVar):
            return StepResult(value=self.variables.get(out.name))
        return OK


@dataclass
class Run:
    decision: Decision
    steps: list[Step | Request]
    line: Line
    events: list[CallEvent]

    @property
    def prompts(self) -> list[str]:
        return [s.prompt for s in self.steps if isinstance(s, Play | GetDigits)]

    @property
    def said(self) -> list[str]:
        return [s.digits for s in self.steps if isinstance(s, SayDigits)]

    def asked(self, kind: type) -> list[Any]:
        return [r for r in self.line.asked if isinstance(r, kind)]

    def events_of(self, type_: str) -> list[CallEvent]:
        return [e for e in self.events if e.type == type_]


def run_script(
    config: Config,
    script: str,
    line: Line,
    *,
    service: str = "caf",
    args: tuple[str, ...] = (),
    query: dict[str, str] | None = None,
    extension: str = "",
) -> Run:
    events: list[CallEvent] = []
    call = CallInfo(
        uniqueid="1795751216.7",
        script=script,
        args=args,
        query={"service": service, **(query or {})},
        extension=extension,
    )
    flow = service_flows(config)[script](call, lambda: THURSDAY_10H, events.append)
    decision, steps = run_sync(flow, line)
    return Run(decision, steps, line, events)


def ivr(config: Config, inputs: Iterable[StepResult], **kw: Any) -> Run:
    return run_script(config, "ivr", Line(list(inputs), **kw))


OPTIONS_KNOWN = [fr(P.press_this_number), fr(P.press_other_number), fr(P.press_wait)]


# -- overloaded on entry: the offer -------------------------------------------------------------


def test_busy_queue_offers_a_callback_on_the_calling_number(config: Config) -> None:
    run = ivr(config, [keys("3"), keys("12345678"), keys("1"), keys("1")])
    assert run.prompts == [
        fr("decroche/caf-welcome"),
        fr("decroche/caf-menu-main"),
        fr("decroche/caf-case-number"),
        fr("you-entered"),
        fr(P.busy),
        # 4 callers ahead, about 15 minutes (core sounds, French numbers)
        fr("queue-thereare"),
        fr("digits/4"),
        fr("queue-callswaiting"),
        fr("queue-holdtime"),
        fr("digits/15"),
        fr("queue-minutes"),
        fr(P.press_this_number),
        fr(P.number_is),
        fr(P.confirm),
        fr(P.recorded),
        fr("queue-holdtime"),
        fr("digits/20"),
        fr("queue-minutes"),
    ]
    assert run.said == ["12345678", CLI]  # the case number, then the number to call, digit by digit
    assert run.asked(FindOpen) == [FindOpen(CLI, "caf")]
    assert run.asked(CheckOverflow) == [CheckOverflow("caf", "1795751216.7", waited=False)]
    assert run.asked(RecordCallback) == [
        RecordCallback(
            call="1795751216.7",
            number=CLI,
            queue="caf",
            service="caf",
            case="12345678",
            lang="fr",
            waited=False,
        )
    ]
    assert run.line.set_vars["IVR_ACTION"] == "callback"
    assert run.line.set_vars["IVR_CALLBACK_ID"] == "cb00000000000000000001"
    assert run.line.set_vars["IVR_QUEUE"] == "caf" and run.line.set_vars["IVR_CASE"] == "12345678"
    assert tuple(run.line.set_vars)[: len(CONTRACT_VARIABLES)] == CONTRACT_VARIABLES
    assert run.decision.action == "callback" and run.decision.callback_id == "cb00000000000000000001"
    offered = run.events_of("callback.offered")
    assert len(offered) == 1
    assert offered[0].data == {
        "where": "entry",
        "reasons": "estimated_wait",
        "position": 5,
        "estimated_wait_s": 900.0,
        "options": "120",
        "number_known": True,
        "lang": "fr",
    }
    assert [e.data["action"] for e in run.events_of("agent.requested")] == ["queue"]
    assert run.events_of("ivr.end")[0].data["action"] == "callback"
    # personal data: no event carries the number
    assert not any(CLI in str(e.data) for e in run.events)


def test_the_options_are_one_prompt_each_and_a_key_interrupts_any(config: Config) -> None:
    # the caller listens to the first option, presses 2 during the second
    run = ivr(config, [keys("3"), POUND, TIMEOUT, keys("2"), keys("0698765432"), keys("1")])
    option_steps = [s for s in run.steps if isinstance(s, GetDigits) and s.prompt in OPTIONS_KNOWN]
    assert [(s.prompt, s.timeout_ms) for s in option_steps] == [(OPTIONS_KNOWN[0], 1), (OPTIONS_KNOWN[1], 1)]
    assert run.asked(RecordCallback)[0].number == "0698765432"
    assert run.decision.action == "callback"


def test_callback_on_another_number_is_typed_read_back_and_confirmed(config: Config) -> None:
    run = ivr(config, [keys("3"), POUND, keys("2"), keys("0998765432"), keys("1")])
    enter = next(s for s in run.steps if isinstance(s, GetDigits) and s.prompt == fr(P.enter_number))
    assert (enter.timeout_ms, enter.max_digits) == (10000, 14)  # one more than 0033 + 9: too long is told
    assert run.said == ["0998765432"]
    assert run.asked(RecordCallback)[0].number == "0998765432"
    assert run.line.set_vars["IVR_CASE"] == ""
    valid = [e for e in run.events_of("ivr.input") if e.data.get("menu") == "callback_number"]
    assert valid[0].data == {
        "menu": "callback_number",
        "status": "valid",
        "kind": "nongeographic",
        "length": 10,
    }


def test_confirming_2_lets_the_caller_type_another_number(config: Config) -> None:
    run = ivr(config, [keys("3"), POUND, keys("1"), keys("2"), keys("0145678901"), keys("1")])
    assert run.said == [CLI, "0145678901"]
    assert [r.number for r in run.asked(RecordCallback)] == ["0145678901"]


@pytest.mark.parametrize(
    ("typed", "problem", "prompt"),
    [
        (TIMEOUT, "missing", P.number_missing),
        (POUND, "missing", P.number_missing),
        (keys("06*2345678"), "invalid", P.number_invalid),
        (keys("0012"), "too_short", P.number_length),
        (keys("06123"), "too_short", P.number_length),
        (keys("061234567891"), "too_long", P.number_length),
        (keys("0899123456"), "premium", P.number_premium),
        (keys("0812345678"), "premium", P.number_premium),
        (keys("0800123456"), "premium", P.number_premium),
        (keys("118712"), "refused", P.number_refused),  # a short code first
        (keys("112"), "refused", P.number_refused),
        (keys("3949"), "refused", P.number_refused),
        (keys("0044207946000"), "refused", P.number_refused),
        (keys("0700123456"), "invalid", P.number_invalid),
    ],
)
def test_each_bad_number_gets_its_prompt_a_retry_and_nothing_is_stored(
    config: Config, typed: StepResult, problem: str, prompt: str
) -> None:
    run = ivr(config, [keys("3"), POUND, keys("2"), typed, keys("0612121212"), keys("1")])
    index = run.prompts.index(fr(P.enter_number))
    assert run.prompts[index : index + 3] == [fr(P.enter_number), fr(prompt), fr(P.enter_number)]
    invalid = [e for e in run.events_of("ivr.invalid") if e.data.get("menu") == "callback_number"]
    assert [e.data["reason"] for e in invalid] == [problem]
    assert [r.number for r in run.asked(RecordCallback)] == ["0612121212"]  # only the valid one
    assert run.said == ["0612121212"]  # a refused number is never read back


def test_no_valid_number_after_the_retries_stores_nothing_and_queues(config: Config) -> None:
    run = ivr(config, [keys("3"), POUND, keys("2"), keys("0899000000"), keys("12"), keys("0612345678901")])
    assert run.asked(RecordCallback) == []
    assert run.decision.action == "queue" and run.line.set_vars["IVR_ACTION"] == "queue"
    assert "IVR_CALLBACK_ID" not in run.line.set_vars
    assert run.prompts[-1] == fr("pls-hold-while-try")
    skipped = [e for e in run.events_of("ivr.input") if e.data.get("status") == "skipped"]
    assert skipped[-1].data["reason"] == "too_long"


def test_classify_number_classes() -> None:
    policy = dataclasses.replace(default_config().callbacks)
    from ivr.callbacks.numbering import NumberPolicy

    p = NumberPolicy.from_config(policy)
    assert classify_number(keys("0612345678"), p)[0] == check_number("0612345678")
    assert classify_number(keys("0033612345678"), p)[0] is not None  # +33 typed as 0033
    assert classify_number(FAILED, p) == (None, "error")
    assert classify_number(keys("A612345678"), p) == (None, "invalid")
    assert classify_number(keys("0" * 15), p) == (None, "too_long")
    allow_world = NumberPolicy(allow_international=True)
    assert classify_number(keys("0044207946000"), allow_world)[0] is not None


def test_keep_waiting_goes_to_the_queue_with_nothing_recorded(config: Config) -> None:
    run = ivr(config, [keys("3"), POUND, keys("0")])
    assert run.asked(RecordCallback) == []
    assert run.decision.action == "queue" and run.decision.reason == "conseiller"
    assert run.prompts[-1] == fr("pls-hold-while-try")
    choice = [e for e in run.events_of("ivr.input") if e.data.get("menu") == "callback"]
    assert choice[0].data["choice"] == "wait"


def test_silence_in_the_offer_means_waiting(config: Config) -> None:
    run = ivr(config, [keys("3"), POUND])  # nothing more: every question times out
    assert run.decision.action == "queue"
    offers = [p for p in run.prompts if p == fr(P.press_wait)]
    assert len(offers) == 3  # asked, and asked again twice (retries)
    assert run.asked(RecordCallback) == []


def test_no_overload_no_offer_but_the_wait_is_announced(config: Config) -> None:
    quiet = OverflowAdvice("none", (), position=2, estimated_wait_s=240.0)
    run = ivr(config, [keys("3"), POUND], overflow=quiet)
    assert run.events_of("callback.offered") == []
    assert run.prompts[-7:] == [
        fr("queue-thereare"),
        fr("digits/1"),
        fr("queue-callswaiting"),
        fr("queue-holdtime"),
        fr("digits/4"),
        fr("queue-minutes"),
        fr("pls-hold-while-try"),
    ]
    assert run.decision.action == "queue"


def test_no_wait_nothing_to_announce(config: Config) -> None:
    free = OverflowAdvice("none", (), position=1, estimated_wait_s=0.0)
    run = ivr(config, [keys("3"), POUND], overflow=free)
    assert not any(p.startswith("fr/queue-") for p in run.prompts)


def test_withheld_number_must_be_typed(config: Config) -> None:
    run = ivr(
        config,
        [keys("3"), POUND, keys("1"), keys("0612000000"), keys("1")],
        variables={"CALLERID(num)": "anonymous"},
    )
    assert run.asked(FindOpen) == []  # no number, nothing to look up
    options = [s.prompt for s in run.steps if isinstance(s, GetDigits) and "press" in s.prompt]
    assert options[0] == fr(P.press_callback)
    assert fr(P.press_other_number) not in options  # 1 already means "type a number"
    assert run.events_of("callback.offered")[0].data["options"] == "10"
    assert run.asked(RecordCallback)[0].number == "0612000000"


def test_a_caller_id_that_cannot_be_called_back_is_not_offered(config: Config) -> None:
    run = ivr(
        config,
        [keys("3"), POUND, keys("1"), keys("0612000000"), keys("1")],
        variables={"CALLERID(num)": "0899123456"},
    )
    assert run.events_of("callback.offered")[0].data["number_known"] is False
    assert run.asked(RecordCallback)[0].number == "0612000000"


def test_the_menu_callback_option_goes_straight_to_the_offer(config: Config) -> None:
    run = ivr(config, [keys("4"), keys("12345678"), keys("1"), keys("1")])
    assert run.asked(CheckOverflow) == []  # the caller asked for it: no overload needed
    assert fr(P.busy) not in run.prompts
    assert run.events_of("callback.offered")[0].data["where"] == "menu"
    assert [e.data["action"] for e in run.events_of("agent.requested")] == ["callback"]
    assert run.line.set_vars["IVR_REASON"] == "rappel"
    assert run.decision.action == "callback"


def test_a_request_the_service_cannot_record_is_told_and_the_caller_waits(config: Config) -> None:
    line = Line([keys("3"), POUND, keys("1"), keys("1")], record=lambda r: fallback_reply(r, "error"))  # type: ignore[arg-type,return-value]
    run = run_script(config, "ivr", line)
    assert fr(P.failed) in run.prompts and fr(P.recorded) not in run.prompts
    assert run.decision.action == "queue"
    assert run.events_of("ivr.end")[0].data["reason"] == "conseiller"


def test_a_request_being_dialled_is_told_so(config: Config) -> None:
    line = Line(
        [keys("3"), POUND, keys("1"), keys("1")],
        record=lambda r: CallbackRecorded(True, "in_progress", callback_id="cb1", number=r.number),
    )
    run = run_script(config, "ivr", line)
    assert fr(P.in_progress) in run.prompts
    assert run.decision.action == "callback" and run.decision.callback_id == "cb1"


def test_hangup_during_the_offer_records_nothing(config: Config) -> None:
    run = ivr(config, [keys("3"), POUND, keys("1")], hang_up_at=fr(P.confirm))
    assert run.decision.hung_up and run.decision.action == "hangup"
    assert run.asked(RecordCallback) == []
    assert run.line.set_vars == {}


def test_without_callbacks_enabled_nothing_is_asked(config: Config) -> None:
    off = dataclasses.replace(config, callbacks=dataclasses.replace(config.callbacks, enabled=False))
    run = ivr(off, [keys("4"), POUND])
    assert run.line.asked == []
    assert run.decision.action == "queue"


# -- appointments -------------------------------------------------------------------------------


def test_an_appointment_slot_from_the_offer(config: Config) -> None:
    cfg = with_appointments(config)
    slot = Slot(int(THURSDAY_10H) + 7200, int(THURSDAY_10H) + 9000, datetime(2026, 11, 26).date())

    def book(r: BookSlot) -> BookingResult:
        booking = Booking("ap01", "caf", r.slot, r.number, "h" * 16, r.call, r.queue, case=r.case)
        return BookingResult("booked", booking)

    line = Line(
        [keys("3"), POUND, TIMEOUT, TIMEOUT, keys("3"), keys("1"), keys("1")],
        handlers={FindFreeSlots: lambda r: FreeSlots((slot,)), BookSlot: book},
    )
    run = run_script(cfg, "ivr", line)
    options = [s.prompt for s in run.steps if isinstance(s, GetDigits) and "press" in s.prompt]
    assert options == [fr(P.press_this_number), fr(P.press_other_number), fr(P.press_appointment)]
    assert run.events_of("callback.offered")[0].data["options"] == "1230"
    booked = run.asked(BookSlot)
    assert len(booked) == 1 and booked[0].number == CLI and booked[0].slot == slot
    assert run.decision.action == "callback" and run.decision.reason == "appointment"
    assert run.line.set_vars["IVR_CALLBACK_ID"] == ""
    assert run.asked(RecordCallback) == []
    assert len(run.events_of("appointment.booked")) == 1


def test_no_free_slot_brings_the_other_options_back(config: Config) -> None:
    cfg = with_appointments(config)
    line = Line(
        [keys("3"), POUND, TIMEOUT, TIMEOUT, keys("3"), keys("1"), keys("1")],
        handlers={FindFreeSlots: lambda r: FreeSlots(())},
    )
    run = run_script(cfg, "ivr", line)
    offers = [s.prompt for s in run.steps if isinstance(s, GetDigits) and s.prompt == fr(P.press_appointment)]
    assert len(offers) == 1  # not offered again
    assert run.asked(RecordCallback)[0].number == CLI
    assert run.decision.action == "callback"


# -- calling again with an open request ---------------------------------------------------------


def test_calling_again_can_cancel_the_open_request(config: Config) -> None:
    pending = OpenRequests(callback_id="cb42", callback_status="pending")
    run = ivr(config, [keys("1"), keys("3"), POUND, keys("0")], open_requests=pending)
    assert run.prompts[:4] == [
        fr("decroche/caf-welcome"),
        fr(P.existing),
        fr(P.cancel_choice),
        fr(P.cancelled),
    ]
    assert run.asked(CancelOpen) == [CancelOpen("cb42", "")]
    recall = [e for e in run.events_of("ivr.input") if e.data.get("menu") == "recall"]
    assert recall[0].data == {
        "menu": "recall",
        "key": "1",
        "choice": "cancel",
        "callback": True,
        "booking": False,
    }
    assert run.prompts[4] == fr("decroche/caf-menu-main")  # then the menus, as for anyone


def test_keeping_the_open_request_cancels_nothing(config: Config) -> None:
    pending = OpenRequests(callback_id="cb42", callback_status="pending")
    run = ivr(config, [TIMEOUT, keys("3"), POUND, keys("0")], open_requests=pending)
    assert run.asked(CancelOpen) == []
    assert fr(P.cancelled) not in run.prompts


def test_a_request_being_dialled_is_not_offered_for_cancellation(config: Config) -> None:
    dialing = OpenRequests(callback_id="cb42", callback_status="dialing")
    run = ivr(config, [keys("3"), POUND, keys("0")], open_requests=dialing)
    assert fr(P.existing) not in run.prompts and run.asked(CancelOpen) == []


def test_an_open_booking_is_said_and_can_be_cancelled(config: Config) -> None:
    slot = Slot(int(THURSDAY_10H) + 86400, int(THURSDAY_10H) + 88200, datetime(2026, 11, 27).date())
    booked = OpenRequests(booking_id="ap7", booking_slot=slot)
    run = ivr(config, [keys("1"), keys("3"), POUND, keys("0")], open_requests=booked)
    assert run.prompts[1] == fr(P.existing_appointment)
    assert fr("digits/tomorrow") in run.prompts
    assert run.asked(CancelOpen) == [CancelOpen("", "ap7")]


# -- after the queue ----------------------------------------------------------------------------

QUEUED = {"IVR_SERVICE": "caf", "IVR_QUEUE": "caf", "IVR_LANG": "fr", "IVR_PRIO": "0", "IVR_CASE": "12345678"}


def test_exit_key_offers_a_callback_that_keeps_the_place(config: Config) -> None:
    line = Line([keys("1"), keys("1")], variables={**QUEUED, "CALLERID(num)": CLI, "QUEUEWAIT": "300"})
    run = run_script(config, "exit-key", line, query={"queue": "caf"}, extension="1")
    assert run.events_of("queue.exit_key")[0].data == {"key": "1", "wait_s": 300}
    assert run.events_of("callback.offered")[0].data["where"] == "exit_key"
    assert run.asked(RecordCallback) == [
        RecordCallback("1795751216.7", CLI, "caf", "caf", case="12345678", lang="fr", waited=True)
    ]
    assert run.line.set_vars["IVR_ACTION"] == "callback"
    assert run.line.set_vars["IVR_CALLBACK_ID"] == "cb00000000000000000001"


def test_exit_key_then_back_to_the_queue(config: Config) -> None:
    line = Line([keys("0")], variables={**QUEUED, "CALLERID(num)": CLI})
    run = run_script(config, "exit-key", line, query={"queue": "caf"}, extension="1")
    assert run.line.set_vars["IVR_ACTION"] == "queue"
    assert run.line.set_vars["IVR_REASON"] == "exit_key_requeue"
    assert run.asked(RecordCallback) == []


def test_after_a_queue_timeout_the_offer_replaces_call_again(config: Config) -> None:
    line = Line([keys("2"), keys("0145454545"), keys("1")], variables={**QUEUED, "CALLERID(num)": CLI})
    run = run_script(config, "after-queue", line, args=("TIMEOUT",), query={"queue": "caf"})
    assert fr("please-try-call-later") not in run.prompts
    assert run.events_of("queue.timeout")
    assert run.asked(RecordCallback)[0].waited is True
    assert run.decision.action == "callback"


def test_after_a_timeout_silence_puts_the_caller_back_in_line(config: Config) -> None:
    line = Line([], variables={**QUEUED, "CALLERID(num)": CLI})
    run = run_script(config, "after-queue", line, args=("TIMEOUT",), query={"queue": "caf"})
    assert run.line.set_vars["IVR_ACTION"] == "queue"
    assert run.line.set_vars["IVR_REASON"] == "timeout_requeue"


def test_nobody_to_wait_for_no_option_0_and_a_goodbye(config: Config) -> None:
    line = Line([], variables={**QUEUED, "CALLERID(num)": CLI})
    run = run_script(config, "after-queue", line, args=("LEAVEEMPTY",), query={"queue": "caf"})
    assert run.events_of("callback.offered")[0].data["options"] == "12"
    assert fr(P.press_wait) not in run.prompts
    assert run.prompts[-2:] == [fr("please-try-call-later"), fr("goodbye")]
    assert run.line.set_vars["IVR_ACTION"] == "hangup"


def test_after_a_call_with_an_agent_no_offer(config: Config) -> None:
    line = Line([], variables={**QUEUED})
    run = run_script(config, "after-queue", line, args=("CONTINUE",), query={"queue": "caf"})
    assert run.line.asked == [] and run.line.set_vars["IVR_ACTION"] == "survey"


# -- the callback legs ----------------------------------------------------------------------------


def test_callback_greet_queues_the_customer_with_the_request(config: Config) -> None:
    details = CallbackDetails(True, "dialing", "caf", "caf", case="12345678", language="fr")
    line = Line([], handlers={GetCallback: lambda r: details})
    run = run_script(config, "callback-greet", line, args=("cb42",), query={"queue": "caf"})
    assert run.asked(GetCallback) == [GetCallback("cb42")]
    assert run.prompts == [fr(P.greet)]
    assert run.line.set_vars["IVR_ACTION"] == "queue"
    assert run.line.set_vars["IVR_PRIO"] == ""  # the dialplan's CALLBACK_QUEUE_PRIO applies
    assert run.line.set_vars["IVR_CASE"] == "12345678"


def test_callback_greet_for_an_unknown_request_still_queues(config: Config) -> None:
    run = run_script(config, "callback-greet", Line([]), args=("cbunknown",), query={"queue": "cpam"})
    assert any(isinstance(s, Verbose) for s in run.steps)
    assert (run.line.set_vars["IVR_ACTION"], run.line.set_vars["IVR_QUEUE"]) == ("queue", "cpam")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (CallbackReported(True, "completed"), "callback_answer"),
        (CallbackReported(False, "completed", "not_dialing"), "callback_answer_unchanged"),
        (CallbackReported(False, "", "missing"), "callback_answer_unchanged"),
        (CallbackReported(False, "", "unavailable"), "callback_answer_unrecorded"),
    ],
)
def test_callback_result_reports_the_dial_status(
    config: Config, reply: CallbackReported, reason: str
) -> None:
    """IVR_REASON tells the dialplan whether to drop its AstDB copy (only ..._unrecorded keeps it)."""
    line = Line(
        [],
        variables={"IVR_CALLBACK_DIAL": "2"},
        handlers={ReportCallback: lambda r: reply},
    )
    run = run_script(config, "callback-result", line, args=("cb42", "answer"))
    assert run.asked(ReportCallback) == [ReportCallback("cb42", "ANSWER", 2)]
    assert run.line.set_vars == {"IVR_REASON": reason}  # the only variable set on the dead channel
    assert run.decision.reason == reason


@pytest.mark.parametrize("args", [(), ("cb42",), ("", "ANSWER")])
def test_callback_result_without_id_or_status_reports_nothing(config: Config, args: tuple[str, ...]) -> None:
    run = run_script(config, "callback-result", Line([]), args=args)
    assert run.line.asked == []
    assert isinstance(run.steps[0], Verbose)
    assert run.decision.reason == "callback_result_invalid"


def test_plain_flows_answer_requests_with_the_fallback(config: Config) -> None:
    """default_flows (no service): greet queues, result reports nothing, the IVR offers nothing."""
    events: list[CallEvent] = []
    call = CallInfo("1.1", "callback-greet", args=("cb1",), query={"service": "caf", "queue": "caf"})
    decision, steps = run_sync(
        default_flows(config)["callback-greet"](call, lambda: THURSDAY_10H, events.append), Line([])
    )
    assert decision.action == "queue" and decision.reason == "callback_unknown"
    # Answered inside the flow, at once: the channel sees no request and no wait.
    assert not any(isinstance(s, REQUEST_TYPES) for s in steps)
    assert [s for s in steps if isinstance(s, GetVar)] == []


# -- any keys, any service answer: a human or a recorded callback --------------------------------

_ANSWERS = st.one_of(
    st.sampled_from([TIMEOUT, POUND, FAILED]),
    st.text(alphabet="0123456789*#", min_size=1, max_size=14).map(keys),
)
_ADVICE = st.sampled_from([BUSY, OverflowAdvice("none"), OverflowAdvice("callback", ("no_agent",), 1, 0.0)])


@settings(max_examples=150, deadline=None)
@given(
    answers=st.lists(_ANSWERS, max_size=40),
    advice=_ADVICE,
    cli=st.sampled_from([CLI, "anonymous", "0899000000"]),
)
def test_any_keys_end_with_a_human_or_a_recorded_callback(
    answers: list[StepResult], advice: OverflowAdvice, cli: str
) -> None:
    config = default_config()
    run = ivr(config, answers, overflow=advice, variables={"CALLERID(num)": cli})
    assert not run.decision.hung_up
    for request in run.asked(RecordCallback):
        assert check_number(request.number).ok  # nothing invalid is ever stored
    assert len(run.asked(RecordCallback)) <= 1
    if run.decision.action == "callback":
        assert run.asked(RecordCallback) and run.line.set_vars["IVR_CALLBACK_ID"]
    else:
        assert run.decision.action in ("queue", "hangup")
        assert "IVR_CALLBACK_ID" not in run.line.set_vars
    assert set(CONTRACT_VARIABLES) <= set(run.line.set_vars)


# -- the adapter for a driver that only knows channel steps ---------------------------------------


def test_answer_inline_answers_at_once_and_passes_the_channel_steps_through(config: Config) -> None:
    inputs = [keys("3"), POUND, keys("1"), keys("1")]
    reference = run_script(config, "ivr", Line(list(inputs)))
    line = Line(list(inputs))
    call = CallInfo("1795751216.7", "ivr", query={"service": "caf"})
    flow = answer_inline(service_flows(config)["ivr"](call, lambda: THURSDAY_10H, [].append), line.reply)
    decision, steps = run_sync(flow, line)  # the driver sees channel steps only
    assert steps == [s for s in reference.steps if not isinstance(s, REQUEST_TYPES)]
    assert line.asked == reference.line.asked and len(line.asked) == 3  # FindOpen, overflow, record
    assert decision == reference.decision and decision.action == "callback"


# -- against the real service and Redis -----------------------------------------------------------


class RecordingController(Controller):
    """The controller, with every event it emits kept for the test."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.now = THURSDAY_10H
        super().__init__(*args, clock=lambda: self.now, **kw)
        self.emitted: list[CallEvent] = []

    def emit(self, event: CallEvent) -> None:
        self.emitted.append(event)
        super().emit(event)


@pytest.fixture
async def controller(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Any
) -> AsyncIterator[RecordingController]:
    ctl = RecordingController(
        default_config(),
        Endpoints(redis_url=redis_url, spool_path=str(tmp_path / "spool.jsonl")),
        web=False,
    )
    ctl.build_callbacks(redis_client)
    yield ctl


async def _drive(ctl: Controller, script: str, line: Line, **call: Any) -> tuple[Decision, list[CallEvent]]:
    events: list[CallEvent] = []
    info = CallInfo(
        uniqueid=call.pop("uniqueid", "1795751216.7"), script=script, query={"service": "caf"}, **call
    )
    flow: ServiceFlow = service_flows(ctl.config)[script](info, lambda: THURSDAY_10H, events.append)

    async def step(s: Step) -> StepResult:
        result = line(s)
        assert isinstance(result, StepResult)
        return result

    decision = await drive(flow, step, ctl.perform)
    return decision, events


async def test_a_menu_callback_is_stored_then_cancelled_on_the_next_call(
    controller: RecordingController,
) -> None:
    store = controller.callback_store
    assert store is not None
    decision, _ = await _drive(controller, "ivr", Line([keys("4"), keys("12345678"), keys("1"), keys("1")]))
    assert decision.action == "callback"
    stored = await store.get(decision.callback_id)
    assert stored is not None and stored.status == "pending"
    assert (stored.number, stored.queue, stored.case, stored.call) == (CLI, "caf", "12345678", "1795751216.7")
    assert stored.join_ts == THURSDAY_10H  # chosen before queueing: its place is now
    emitted = controller.emitted
    assert [e.type for e in emitted] == ["callback.requested"]

    again, _ = await _drive(
        controller, "ivr", Line([keys("1"), keys("3"), POUND, keys("0")]), uniqueid="1795751300.9"
    )
    cancelled = await store.get(decision.callback_id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert [e.type for e in emitted][-1] == "callback.cancelled"
    assert emitted[-1].data["by"] == "caller"
    assert again.action == "queue"  # overflow unknown without live state: the caller waits
    assert await store.open_requests() == []


async def test_bad_numbers_store_nothing_in_redis(controller: RecordingController) -> None:
    line = Line([keys("4"), POUND, keys("2"), keys("0899123456"), keys("112"), keys("0612")])
    decision, _ = await _drive(controller, "ivr", line)
    assert decision.action == "queue"
    assert controller.callback_store is not None
    assert await controller.callback_store.open_requests() == []
    assert controller.emitted == []


async def test_a_second_request_of_the_same_number_keeps_the_first_place(
    controller: RecordingController,
) -> None:
    first, _ = await _drive(controller, "ivr", Line([keys("4"), POUND, keys("1"), keys("1")]))
    controller.now = THURSDAY_10H + 600
    again = Line([TIMEOUT, keys("4"), POUND, keys("1"), keys("1")])
    second, _ = await _drive(controller, "ivr", again, uniqueid="2.2")
    assert second.callback_id == first.callback_id
    assert controller.callback_store is not None
    (only,) = await controller.callback_store.open_requests()
    assert only.join_ts == THURSDAY_10H
    assert [e.type for e in controller.emitted] == ["callback.requested", "callback.updated"]
    assert controller.emitted[1].data["repeat_call"] == "2.2"


async def test_callback_result_and_greet_through_the_service(controller: RecordingController) -> None:
    first, _ = await _drive(controller, "ivr", Line([keys("4"), keys("12345678"), keys("1"), keys("1")]))
    greet_line = Line([])
    decision, _ = await _drive(controller, "callback-greet", greet_line, args=(first.callback_id,))
    assert greet_line.set_vars["IVR_CASE"] == "12345678" and decision.reason == "callback_greeted"
    result_line = Line([], variables={"IVR_CALLBACK_DIAL": "1"})
    reported, _ = await _drive(controller, "callback-result", result_line, args=(first.callback_id, "ANSWER"))
    # ANSWER is authoritative: the customer was reached, the request is never dialled again
    assert reported.reason == "callback_answer"
    assert controller.callback_store is not None
    stored = await controller.callback_store.get(first.callback_id)
    assert stored is not None and stored.status == "completed"
    emitted = controller.emitted
    assert emitted[-1].type == "callback.connected" and emitted[-1].data["source"] == "agi"
    again, _ = await _drive(controller, "callback-result", Line([]), args=(first.callback_id, "NOANSWER"))
    assert again.reason == "callback_noanswer_unchanged"


async def test_the_performer_answers_the_fallback_when_redis_is_away(
    private_redis_server: Any, tmp_path: Any
) -> None:
    client = redis.asyncio.Redis.from_url(private_redis_server.url, socket_timeout=1.0)
    ctl = Controller(default_config(), clock=lambda: THURSDAY_10H, web=False)
    ctl.build_callbacks(client)
    private_redis_server.kill()
    try:
        reply = await asyncio.wait_for(ctl.perform(RecordCallback("1.1", CLI, "caf", "caf")), 10)
        assert reply == CallbackRecorded(False, "refused", "error")
        assert await ctl.perform(FindOpen(CLI, "caf")) == OpenRequests()
    finally:
        await client.aclose()
