"""The IVR flows, driven step by step without sockets: menus, inputs, odd DTMF, hours, hangups."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.config import Config, default_config
from ivr.domain.events import CallEvent
from ivr.domain.ivr_flow import MAX_MENU_VISITS, IvrFlow
from ivr.domain.ivr_ops import (
    CONTRACT_VARIABLES,
    HUNG_UP,
    MSET_MAX_CHARS,
    MSET_MAX_PAIRS,
    OK,
    Answer,
    CallInfo,
    Decision,
    GetDigits,
    GetVar,
    Hangup,
    Play,
    SayDigits,
    SetVar,
    SetVars,
    Step,
    StepResult,
    Verbose,
    refuse,
    run_sync,
    set_variables,
)
from ivr.domain.scripts import default_flows
from ivr.protocol.agi import mset_pairs

PARIS = ZoneInfo("Europe/Paris")
THURSDAY_10H = datetime(2026, 11, 26, 10, 0, tzinfo=PARIS).timestamp()
SATURDAY_10H = datetime(2026, 11, 28, 10, 0, tzinfo=PARIS).timestamp()
THURSDAY_20H = datetime(2026, 11, 26, 20, 0, tzinfo=PARIS).timestamp()
ARMISTICE_10H = datetime(2026, 11, 11, 10, 0, tzinfo=PARIS).timestamp()  # a Wednesday, public holiday

TIMEOUT = StepResult(timed_out=True)
POUND = StepResult(digits="")  # '#' alone: Asterisk ends input and returns nothing, no timeout
FAILED = StepResult(failed=True)


def keys(text: str) -> StepResult:
    return StepResult(digits=text)


@pytest.fixture(scope="module")
def config() -> Config:
    return default_config()


@dataclass
class Caller:
    """Answers steps like a live channel; ``inputs`` answer the GET DATA steps in order."""

    inputs: list[StepResult]
    variables: dict[str, str] = field(default_factory=dict)
    fail_prompts: set[str] = field(default_factory=set)
    set_order: list[str] = field(default_factory=list)

    def __call__(self, step: Step) -> StepResult:
        if isinstance(step, GetDigits):
            if not self.inputs:
                return TIMEOUT
            return self.inputs.pop(0)
        if isinstance(step, SetVar | SetVars):
            pairs = ((step.name, step.value),) if isinstance(step, SetVar) else step.pairs
            self.variables.update(pairs)
            self.set_order += [name for name, _ in pairs]
            return OK
        if isinstance(step, GetVar):
            return StepResult(value=self.variables.get(step.name))
        if isinstance(step, Play) and step.prompt in self.fail_prompts:
            return FAILED
        return OK


def run_ivr(
    config: Config,
    inputs: Iterable[StepResult],
    *,
    service: str = "caf",
    now: float = THURSDAY_10H,
    query: dict[str, str] | None = None,
) -> tuple[Decision, list[Step], Caller, list[CallEvent]]:
    events: list[CallEvent] = []
    caller = Caller(list(inputs))
    call = CallInfo(uniqueid="1795751216.1", script="ivr", query={"service": service, **(query or {})})
    flow = default_flows(config)["ivr"](call, lambda: now, events.append)
    decision, steps = run_sync(flow, caller)
    return decision, steps, caller, events


def prompts(steps: list[Step]) -> list[str]:
    return [s.prompt for s in steps if isinstance(s, Play | GetDigits)]


def types(events: list[CallEvent]) -> list[str]:
    return [e.type for e in events]


# -- the happy paths ---------------------------------------------------------------------------


def test_caf_housing_with_case_number_goes_to_its_queue(config: Config) -> None:
    decision, steps, caller, events = run_ivr(config, [keys("1"), keys("12345678")])
    assert isinstance(steps[0], Answer)
    assert prompts(steps) == [
        "fr/decroche/caf-welcome",
        "fr/decroche/caf-menu-main",
        "fr/decroche/caf-case-number",
        "fr/you-entered",
        "fr/pls-hold-while-try",
    ]
    assert SayDigits("12345678") in steps
    get_menu = next(s for s in steps if isinstance(s, GetDigits))
    assert (get_menu.timeout_ms, get_menu.max_digits) == (5000, 1)
    get_case = [s for s in steps if isinstance(s, GetDigits)][1]
    assert (get_case.timeout_ms, get_case.max_digits) == (10000, 8)
    assert caller.variables == {
        "IVR_ACTION": "queue",
        "IVR_QUEUE": "caf",
        "IVR_PRIO": "0",
        "IVR_QTIMEOUT": "900",
        "IVR_SERVICE": "caf",
        "IVR_REASON": "aides-logement",
        "IVR_CASE": "12345678",
        "IVR_LANG": "fr",
    }
    assert tuple(caller.set_order) == CONTRACT_VARIABLES
    assert decision == Decision(
        action="queue",
        service="caf",
        lang="fr",
        queue="caf",
        priority=0,
        qtimeout=900,
        reason="aides-logement",
        case="12345678",
    )
    assert types(events) == ["ivr.start", "ivr.menu", "ivr.input", "ivr.input", "agent.requested", "ivr.end"]
    assert events[0].data == {"script": "ivr", "lang": "fr", "in_hours": True}
    requested = events[4]
    assert (requested.queue, requested.service, requested.source) == ("caf", "caf", "agi")
    assert requested.data["case_given"] is True
    # the case number itself never reaches the event log
    assert all("12345678" not in repr(e.data) for e in events)
    assert len({e.id for e in events}) == len(events)
    assert all(e.call == "1795751216.1" and e.ts == THURSDAY_10H for e in events)


def test_submenu_back_repeat_and_prime_activite(config: Config) -> None:
    decision, steps, _, events = run_ivr(
        config, [keys("2"), keys("*"), keys("0"), keys("2"), keys("2"), POUND]
    )
    assert [p for p in prompts(steps) if "menu" in p] == [
        "fr/decroche/caf-menu-main",
        "fr/decroche/caf-menu-rsa",
        "fr/decroche/caf-menu-main",
        "fr/decroche/caf-menu-main",
        "fr/decroche/caf-menu-rsa",
    ]
    assert (decision.action, decision.queue, decision.reason, decision.case) == (
        "queue",
        "caf",
        "prime-activite",
        "",
    )
    skipped = [e for e in events if e.type == "ivr.input" and e.data.get("input") == "case_number"]
    assert skipped[-1].data == {"input": "case_number", "status": "skipped", "reason": "caller_skipped"}


def test_language_switch_replays_the_menu_in_english(config: Config) -> None:
    decision, steps, caller, _ = run_ivr(config, [keys("9"), keys("3"), POUND])
    assert prompts(steps)[:3] == [
        "fr/decroche/caf-welcome",
        "fr/decroche/caf-menu-main",
        "en/decroche/caf-menu-main",
    ]
    assert all(p.startswith("en/") for p in prompts(steps)[2:])
    assert caller.variables["IVR_LANG"] == "en"
    assert (decision.queue, decision.reason) == ("caf", "conseiller")


def test_language_from_the_query_string(config: Config) -> None:
    _, steps, caller, _ = run_ivr(config, [keys("3"), POUND], query={"lang": "en"})
    assert prompts(steps)[0] == "en/decroche/caf-welcome"
    assert caller.variables["IVR_LANG"] == "en"
    # a language the service does not offer is ignored
    _, steps, caller, _ = run_ivr(config, [keys("3"), POUND], query={"lang": "de"})
    assert prompts(steps)[0] == "fr/decroche/caf-welcome"


def test_info_then_back_to_the_menu(config: Config) -> None:
    decision, steps, _, _ = run_ivr(config, [keys("2"), keys("3"), keys("1"), keys("87654321")])
    assert "fr/decroche/caf-info-simulateur" in prompts(steps)
    index = prompts(steps).index("fr/decroche/caf-info-simulateur")
    assert prompts(steps)[index + 1] == "fr/decroche/caf-menu-rsa"
    assert (decision.queue, decision.reason, decision.case) == ("caf", "rsa", "87654321")


def test_info_then_hangup_resolves_in_the_ivr(config: Config) -> None:
    decision, steps, caller, events = run_ivr(config, [keys("3")], service="cpam")
    assert prompts(steps)[-2:] == ["fr/decroche/cpam-info-ameli", "fr/goodbye"]
    assert caller.variables["IVR_ACTION"] == "hangup"
    assert caller.variables["IVR_QUEUE"] == "" and caller.variables["IVR_PRIO"] == ""
    assert decision.reason == "info"
    assert "agent.requested" not in types(events)


def test_callback_option_queues_while_callbacks_are_disabled(config: Config) -> None:
    disabled = dataclasses.replace(config, callbacks=dataclasses.replace(config.callbacks, enabled=False))
    _, _, caller, events = run_ivr(disabled, [keys("2"), keys("4"), keys("11112222")])
    assert (caller.variables["IVR_ACTION"], caller.variables["IVR_QUEUE"]) == ("queue", "caf")
    assert caller.variables["IVR_REASON"] == "rsa-rappel"
    assert [e.data["action"] for e in events if e.type == "agent.requested"] == ["queue"]


def test_callback_option_without_the_callback_service_queues(config: Config) -> None:
    """Plain flows have nobody to record a request: no promise, the caller waits for an agent.

    (The offer itself, with the service, is tested in tests/test_callback_ivr.py.)
    """
    assert config.callbacks.enabled is True
    decision, _, caller, events = run_ivr(config, [keys("2"), keys("4"), keys("11112222")])
    assert caller.variables["IVR_ACTION"] == "queue"
    assert caller.variables["IVR_QUEUE"] == "caf"
    assert caller.variables["IVR_CASE"] == "11112222"
    assert "IVR_CALLBACK_ID" not in caller.variables
    assert [e.data["action"] for e in events if e.type == "agent.requested"] == ["queue"]
    assert "callback.offered" not in types(events)
    assert decision.action == "queue"


# -- wrong keys, silence and odd DTMF -----------------------------------------------------------


def test_invalid_keys_then_fallback_to_a_human(config: Config) -> None:
    decision, steps, caller, events = run_ivr(config, [keys("7"), keys("5"), keys("8")])
    assert prompts(steps) == [
        "fr/decroche/caf-welcome",
        "fr/decroche/caf-menu-main",
        "fr/pm-invalid-option",
        "fr/decroche/caf-menu-main",
        "fr/pm-invalid-option",
        "fr/decroche/caf-menu-main",
        "fr/pls-hold-while-try",
    ]
    assert caller.variables["IVR_ACTION"] == "queue"
    assert caller.variables["IVR_QUEUE"] == "caf"
    assert caller.variables["IVR_REASON"] == "fallback_invalid"
    invalid = [e for e in events if e.type == "ivr.invalid"]
    assert [(e.data["reason"], e.data["keys"], e.data["attempt"]) for e in invalid] == [
        ("invalid", "7", 1),
        ("invalid", "5", 2),
        ("invalid", "8", 3),
    ]
    assert decision.queue == "caf"


def test_timeouts_are_retried_then_fallback(config: Config) -> None:
    decision, steps, caller, events = run_ivr(config, [TIMEOUT, TIMEOUT, TIMEOUT])
    assert prompts(steps).count("fr/please-try-again") == 2
    assert prompts(steps).count("fr/decroche/caf-menu-main") == 3
    assert caller.variables["IVR_REASON"] == "fallback_no_input"
    assert [e.data["reason"] for e in events if e.type == "ivr.invalid"] == ["timeout"] * 3
    assert decision.queue == "caf"


def test_timeout_then_valid_choice(config: Config) -> None:
    decision, _, _, events = run_ivr(config, [TIMEOUT, keys("3"), POUND])
    assert (decision.queue, decision.reason) == ("caf", "conseiller")
    assert types(events).count("ivr.invalid") == 1


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (keys("*"), "invalid"),  # '*' has no option in the main menu
        (keys("A"), "invalid"),  # DTMF A-D exist on some phones
        (keys("D"), "invalid"),
        (keys("12"), "too_many_digits"),
        (POUND, "empty"),
        (TIMEOUT, "timeout"),
        (FAILED, "error"),  # GET DATA -1 on a live channel (prompt missing)
    ],
)
def test_odd_dtmf_in_a_menu_counts_as_a_failed_attempt(
    config: Config, answer: StepResult, problem: str
) -> None:
    decision, _, _, events = run_ivr(config, [answer, keys("3"), POUND])
    invalid = [e for e in events if e.type == "ivr.invalid"]
    assert [e.data["reason"] for e in invalid] == [problem]
    assert (decision.action, decision.queue) == ("queue", "caf")


def test_star_is_an_option_where_configured(config: Config) -> None:
    _, steps, _, events = run_ivr(config, [keys("2"), keys("*"), keys("3"), POUND])
    assert "ivr.invalid" not in types(events)
    assert [p for p in prompts(steps) if "menu" in p][-1] == "fr/decroche/caf-menu-main"


def test_failures_reset_when_the_caller_moves_on(config: Config) -> None:
    # two failures in the main menu, then the submenu gets its own full set of retries
    decision, _, _, events = run_ivr(
        config, [keys("7"), keys("7"), keys("2"), keys("9"), keys("9"), keys("1"), POUND]
    )
    assert [e.data["attempt"] for e in events if e.type == "ivr.invalid"] == [1, 2, 1, 2]
    assert (decision.queue, decision.reason) == ("caf", "rsa")


def test_endless_repeat_is_sent_to_a_human(config: Config) -> None:
    decision, steps, _, _ = run_ivr(config, [keys("0")] * 200)
    assert sum(isinstance(s, GetDigits) for s in steps) == MAX_MENU_VISITS
    assert (decision.queue, decision.reason) == ("caf", "fallback_loop")


# -- case number ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (keys("1234567"), "too_short"),
        (StepResult(digits="1234", timed_out=True), "too_short"),  # typed some, then silence
        (keys("123456789"), "too_long"),
        (keys("1234*678"), "not_digits"),
        (keys("1234A678"), "not_digits"),
        (TIMEOUT, "timeout"),
        (FAILED, "error"),
    ],
)
def test_case_number_retried_then_valid(config: Config, answer: StepResult, problem: str) -> None:
    decision, steps, caller, events = run_ivr(config, [keys("1"), answer, keys("20260001")])
    assert caller.variables["IVR_CASE"] == "20260001"
    invalid = [e for e in events if e.type == "ivr.invalid"]
    assert [(e.data["input"], e.data["reason"]) for e in invalid] == [("case_number", problem)]
    retry_prompt = "fr/please-try-again" if problem == "timeout" else "fr/decroche/caf-case-number-invalid"
    assert prompts(steps).count(retry_prompt) == 1
    assert decision.queue == "caf"


def test_case_number_skipped_after_retries_still_reaches_the_queue(config: Config) -> None:
    decision, steps, caller, events = run_ivr(config, [keys("1"), keys("1"), keys("22"), keys("333")])
    assert caller.variables["IVR_CASE"] == ""
    assert caller.variables["IVR_ACTION"] == "queue"
    assert prompts(steps).count("fr/decroche/caf-case-number") == 3
    assert not any(isinstance(s, SayDigits) for s in steps)
    inputs = [e.data for e in events if e.type == "ivr.input" and "input" in e.data]
    assert inputs == [{"input": "case_number", "status": "skipped", "reason": "retries_exhausted"}]
    assert decision.queue == "caf"


def test_case_number_skipped_with_pound(config: Config) -> None:
    _, steps, caller, _ = run_ivr(config, [keys("1"), POUND])
    assert prompts(steps).count("fr/decroche/caf-case-number") == 1
    assert caller.variables["IVR_CASE"] == ""


# -- hours -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "reason"),
    [(SATURDAY_10H, "closed"), (THURSDAY_20H, "closed"), (ARMISTICE_10H, "holiday")],
)
def test_closed_outside_opening_hours(config: Config, now: float, reason: str) -> None:
    decision, steps, caller, events = run_ivr(config, [keys("1")], now=now)
    assert prompts(steps) == ["fr/decroche/caf-closed"]
    assert not any(isinstance(s, GetDigits) for s in steps)
    assert caller.variables["IVR_ACTION"] == "closed"
    assert caller.variables["IVR_REASON"] == reason
    assert decision.action == "closed"
    assert types(events) == ["ivr.start", "ivr.end"]
    assert events[0].data["in_hours"] is False
    reopen = events[-1].data["next_opening"]
    assert isinstance(reopen, float) and reopen > now
    assert datetime.fromtimestamp(reopen, PARIS).strftime("%H:%M") == "08:30"


def test_open_at_the_first_minute_closed_at_the_last(config: Config) -> None:
    opening = datetime(2026, 11, 26, 8, 30, tzinfo=PARIS).timestamp()
    closing = datetime(2026, 11, 26, 16, 30, tzinfo=PARIS).timestamp()
    assert run_ivr(config, [keys("3"), POUND], now=opening)[0].action == "queue"
    assert run_ivr(config, [keys("3"), POUND], now=closing)[0].action == "closed"


# -- hangups -------------------------------------------------------------------------------------


def test_hangup_mid_menu_stops_everything(config: Config) -> None:
    decision, steps, caller, events = run_ivr(config, [keys("2"), HUNG_UP, keys("1")])
    assert isinstance(steps[-1], GetDigits)  # nothing after the step that saw the hangup
    assert caller.variables == {}
    assert decision.hung_up and decision.action == "hangup" and decision.reason == "caller_hangup"
    assert types(events)[-1] == "ivr.end"
    assert events[-1].data["reason"] == "caller_hangup"
    assert "agent.requested" not in types(events)


def test_hangup_during_the_welcome(config: Config) -> None:
    events: list[CallEvent] = []
    call = CallInfo(uniqueid="u1", query={"service": "caf"})
    flow = default_flows(config)["ivr"](call, lambda: THURSDAY_10H, events.append)
    decision, steps = run_sync(flow, lambda step: HUNG_UP if isinstance(step, Play) else OK)
    assert [type(s).__name__ for s in steps] == ["Answer", "Play"]
    assert decision.hung_up


def test_unknown_service_is_refused_politely(config: Config) -> None:
    call = CallInfo(uniqueid="u1", query={"service": "cafx"})
    decision, steps = run_sync(
        default_flows(config)["ivr"](call, lambda: THURSDAY_10H, lambda e: None), Caller([])
    )
    assert isinstance(steps[0], Verbose) and "cafx" in steps[0].message
    assert SetVars((("IVR_ACTION", "hangup"), ("IVR_REASON", "unknown_service"))) in steps
    assert isinstance(steps[-1], Hangup)
    assert decision.reason == "unknown_service"


def test_service_from_the_first_argument(config: Config) -> None:
    call = CallInfo(uniqueid="u1", args=("cpam",))
    decision, _ = run_sync(
        default_flows(config)["ivr"](call, lambda: THURSDAY_10H, lambda e: None), Caller([keys("2")])
    )
    assert (decision.service, decision.queue) == ("cpam", "cpam")


# -- the guarantee, for any keys ---------------------------------------------------------------

_ANSWERS = st.one_of(
    st.sampled_from([TIMEOUT, POUND, FAILED]),
    st.text(alphabet="0123456789*ABCD", min_size=1, max_size=9).map(keys),
)


@settings(max_examples=150, deadline=None)
@given(service=st.sampled_from(["caf", "france-travail", "cpam"]), answers=st.lists(_ANSWERS, max_size=60))
def test_any_keys_end_with_a_human_or_a_chosen_goodbye(service: str, answers: list[StepResult]) -> None:
    config = default_config()
    decision, steps, caller, events = run_ivr(config, answers, service=service)
    assert not decision.hung_up
    assert set(caller.variables) == set(CONTRACT_VARIABLES)
    assert sum(isinstance(s, GetDigits) for s in steps) <= MAX_MENU_VISITS * 4
    if decision.action in ("queue", "callback"):
        assert config.queues[decision.queue].service == service
        assert types(events).count("agent.requested") == 1
    else:  # only an explicit "info then hang up" option ends without a human
        assert decision.action == "hangup" and decision.reason == "info"
    assert types(events)[0] == "ivr.start" and types(events)[-1] == "ivr.end"


def test_ivr_flow_class_directly(config: Config) -> None:
    """The flow object can be used without the routing table (the simulator does)."""
    events: list[CallEvent] = []
    flow = IvrFlow(
        config.services["france-travail"],
        config.queues,
        CallInfo(uniqueid="x"),
        clock=lambda: THURSDAY_10H,
        sink=events.append,
    )
    decision, _ = run_sync(flow.run(), Caller([keys("1")]))
    assert (decision.service, decision.queue, decision.qtimeout) == (
        "france-travail",
        "france-travail",
        900,
    )


# -- after-queue, exit-key, survey --------------------------------------------------------------


def run_script(
    config: Config, script: str, variables: dict[str, str], inputs: Iterable[StepResult] = (), **call: object
) -> tuple[Decision, list[Step], Caller, list[CallEvent]]:
    events: list[CallEvent] = []
    caller = Caller(list(inputs), variables=dict(variables))
    info = CallInfo(uniqueid="1795751216.1", script=script, **call)  # type: ignore[arg-type]
    decision, steps = run_sync(
        default_flows(config)[script](info, lambda: THURSDAY_10H, events.append), caller
    )
    return decision, steps, caller, events


IVR_VARS = {
    "IVR_SERVICE": "caf",
    "IVR_QUEUE": "caf",
    "IVR_LANG": "fr",
    "IVR_PRIO": "0",
    "IVR_CASE": "12345678",
    "QUEUEWAIT": "10",
}


def test_after_queue_timeout_is_recorded_and_the_caller_told(config: Config) -> None:
    decision, steps, caller, events = run_script(config, "after-queue", IVR_VARS, args=("TIMEOUT",))
    assert [(e.type, e.queue, dict(e.data)) for e in events] == [
        ("queue.timeout", "caf", {"status": "TIMEOUT", "wait_s": 10})
    ]
    assert events[0].service == "caf" and events[0].source == "agi"
    assert prompts(steps) == ["fr/please-try-call-later", "fr/goodbye"]
    assert caller.variables["IVR_ACTION"] == "hangup"
    assert caller.variables["IVR_REASON"] == "timeout"
    assert caller.variables["IVR_CASE"] == "12345678"
    assert decision.queue == "caf"


@pytest.mark.parametrize(
    ("status", "event", "outcome", "told"),
    [
        ("JOINEMPTY", "queue.join_empty", None, True),
        ("JOINUNAVAIL", "queue.join_empty", None, True),
        ("FULL", "queue.join_empty", None, True),
        ("LEAVEEMPTY", "queue.leave", "leave_empty", True),
        ("LEAVEUNAVAIL", "queue.leave", "leave_empty", True),
        ("WITHDRAW", "queue.leave", "withdrawn", False),
        ("timeout", "queue.timeout", None, True),  # case does not matter
    ],
)
def test_after_queue_statuses(
    config: Config, status: str, event: str, outcome: str | None, told: bool
) -> None:
    _, steps, caller, events = run_script(config, "after-queue", IVR_VARS, args=(status,))
    assert [(e.type, e.data["status"], e.data.get("outcome")) for e in events] == [
        (event, status.upper(), outcome)
    ]
    assert ("fr/please-try-call-later" in prompts(steps)) is told
    assert caller.variables["IVR_REASON"] == status.lower()


def test_after_queue_unknown_status(config: Config) -> None:
    _, steps, caller, events = run_script(config, "after-queue", IVR_VARS, args=("",))
    assert events == [] and prompts(steps) == []
    assert caller.variables["IVR_REASON"] == "unknown_status"


def test_after_queue_continue_leads_to_the_survey(config: Config) -> None:
    _, steps, caller, events = run_script(config, "after-queue", {**IVR_VARS, "QUEUESTATUS": "CONTINUE"})
    assert events == []
    assert prompts(steps) == []
    assert (caller.variables["IVR_ACTION"], caller.variables["IVR_REASON"]) == ("survey", "continue")
    no_survey = dataclasses.replace(config, survey=dataclasses.replace(config.survey, enabled=False))
    _, _, caller, _ = run_script(no_survey, "after-queue", IVR_VARS, args=("CONTINUE",))
    assert caller.variables["IVR_ACTION"] == "hangup"


def test_after_queue_withdrawn_caller_goes_back_in_line(config: Config) -> None:
    _, steps, caller, _ = run_script(config, "after-queue", IVR_VARS, args=("WITHDRAW",))
    assert prompts(steps) == []
    assert (caller.variables["IVR_ACTION"], caller.variables["IVR_QUEUE"]) == ("queue", "caf")


def test_after_queue_status_read_from_the_channel_when_no_argument(config: Config) -> None:
    _, steps, _, events = run_script(config, "after-queue", {**IVR_VARS, "QUEUESTATUS": "TIMEOUT"})
    assert GetVar("QUEUESTATUS") in steps
    assert [e.type for e in events] == ["queue.timeout"]


def test_exit_key_requeues_by_default(config: Config) -> None:
    decision, steps, caller, events = run_script(config, "exit-key", IVR_VARS, extension="1")
    assert [(e.type, dict(e.data)) for e in events] == [("queue.exit_key", {"key": "1", "wait_s": 10})]
    assert prompts(steps) == ["fr/one-moment-please"]
    assert caller.variables["IVR_ACTION"] == "queue"
    assert caller.variables["IVR_QUEUE"] == "caf"
    assert caller.variables["IVR_QTIMEOUT"] == "900"
    assert decision.reason == "exit_key_requeue"


def test_exit_key_hangs_up_when_the_queue_says_so() -> None:
    from ivr.config import default_config_path, parse_config

    text = default_config_path().read_text().replace("[queues.caf]\n", '[queues.caf]\nexit_key = "hangup"\n')
    config = parse_config(text)
    _, steps, caller, _ = run_script(config, "exit-key", IVR_VARS, extension="1")
    assert prompts(steps) == ["fr/goodbye"]
    assert caller.variables["IVR_ACTION"] == "hangup"


def test_exit_key_from_an_unknown_queue_goes_to_the_fallback(config: Config) -> None:
    _, _, caller, _ = run_script(config, "exit-key", {**IVR_VARS, "IVR_QUEUE": "support"}, extension="1")
    assert (caller.variables["IVR_ACTION"], caller.variables["IVR_QUEUE"]) == ("queue", "caf")


@pytest.mark.parametrize(
    ("inputs", "score", "invalid"),
    [
        ([keys("5")], 5, []),
        ([keys("9"), keys("1")], 1, ["invalid"]),
        ([keys("0"), keys("3")], 3, ["invalid"]),
        ([TIMEOUT, keys("4")], 4, ["timeout"]),
        ([keys("*"), keys("#")], None, ["invalid", "invalid"]),
        ([keys("45"), POUND], None, ["invalid", "empty"]),
    ],
)
def test_survey(config: Config, inputs: list[StepResult], score: int | None, invalid: list[str]) -> None:
    variables = {**IVR_VARS, "MEMBERNAME": "Agent 201"}
    decision, steps, caller, events = run_script(config, "survey", variables, inputs)
    answers = [e for e in events if e.type == "survey.answer"]
    assert [e.data["reason"] for e in events if e.type == "ivr.invalid"] == invalid
    if score is None:
        assert answers == []
        assert caller.variables["IVR_REASON"] == "survey_no_answer"
    else:
        assert [(a.data["score"], a.agent, a.queue) for a in answers] == [(score, "Agent 201", "caf")]
        assert prompts(steps)[-1] == "fr/auth-thankyou"
        assert caller.variables["IVR_REASON"] == "survey_answered"
    assert decision.action == "hangup"


def test_post_queue_scripts_stop_at_a_hangup(config: Config) -> None:
    _, steps, caller, events = run_script(config, "survey", IVR_VARS, [HUNG_UP])
    assert isinstance(steps[-1], GetDigits)
    assert "IVR_ACTION" not in caller.variables
    assert events == []


# -- setting the variables: one MSet for a run of plain pairs -----------------------------------


def pairs_of(steps: Iterable[Step]) -> list[tuple[str, str]]:
    """What the steps set, in order, whichever kind each is."""
    out: list[tuple[str, str]] = []
    for step in steps:
        assert isinstance(step, SetVar | SetVars), step
        out += [(step.name, step.value)] if isinstance(step, SetVar) else list(step.pairs)
    return out


def test_set_variables_sends_a_whole_decision_in_one_mset() -> None:
    decision = Decision(action="queue", service="caf", lang="fr", queue="caf", priority=0, qtimeout=900)
    assert set_variables(decision.variables()) == (
        SetVars(
            (
                ("IVR_ACTION", "queue"),
                ("IVR_QUEUE", "caf"),
                ("IVR_PRIO", "0"),
                ("IVR_QTIMEOUT", "900"),
                ("IVR_SERVICE", "caf"),
                ("IVR_REASON", ""),
                ("IVR_CASE", ""),
                ("IVR_LANG", "fr"),
            )
        ),
    )


def test_set_variables_sets_an_unsafe_pair_alone_and_keeps_the_order() -> None:
    steps = set_variables(
        {
            "A": "1",
            "B": "x,y",
            "C": "",
            "D": "+33 1",
            "E": "queue-2.fr/x@y:z",
            "CHANNEL(language)": "fr",
            "F": "é",
            "G": "1",
            "H": "2",
        }
    )
    assert steps == (
        SetVar("A", "1"),  # a run of one stays a SET VARIABLE
        SetVar("B", "x,y"),
        SetVar("C", ""),
        SetVar("D", "+33 1"),
        SetVar("E", "queue-2.fr/x@y:z"),
        SetVar("CHANNEL(language)", "fr"),
        SetVar("F", "é"),
        SetVars((("G", "1"), ("H", "2"))),
    )


@pytest.mark.parametrize(
    "value",
    ["a,b", 'a"b', "a\\b", "a(b", "a)b", "a[b", "a]b", "{b}", "${X}", "a b", "a\tb", "a|b", "a=b", "é", ";"],
)
def test_set_variables_never_groups_what_mset_would_parse(value: str) -> None:
    steps = set_variables({"IVR_ACTION": "hangup", "IVR_REASON": value, "IVR_LANG": "fr"})
    assert steps == (SetVar("IVR_ACTION", "hangup"), SetVar("IVR_REASON", value), SetVar("IVR_LANG", "fr"))


@pytest.mark.parametrize("name", ["1A", "A B", "A=B", "GLOBAL(X)", "A-B", "", "É"])
def test_set_variables_never_groups_an_unusual_name(name: str) -> None:
    steps = set_variables({"IVR_ACTION": "hangup", name: "1", "IVR_LANG": "fr"})
    assert steps == (SetVar("IVR_ACTION", "hangup"), SetVar(name, "1"), SetVar("IVR_LANG", "fr"))


def test_set_variables_caps_a_group_in_pairs_and_characters() -> None:
    many = {f"V{i}": str(i) for i in range(MSET_MAX_PAIRS + 5)}
    steps = set_variables(many)
    assert [len(s.pairs) if isinstance(s, SetVars) else 1 for s in steps] == [MSET_MAX_PAIRS, 5]
    assert [type(s) for s in set_variables(dict(list(many.items())[: MSET_MAX_PAIRS + 1]))] == [
        SetVars,
        SetVar,
    ]
    long = {f"L{i}": "x" * 300 for i in range(8)}  # "Ln=" + 300: 303 characters a pair
    steps = set_variables(long)
    assert [len(s.pairs) for s in steps if isinstance(s, SetVars)] == [3, 3, 2]
    assert all(
        len(",".join(f"{n}={v}" for n, v in s.pairs)) <= MSET_MAX_CHARS
        for s in steps
        if isinstance(s, SetVars)
    )
    assert pairs_of(steps) == list(long.items())


def test_the_callback_id_is_still_set_last() -> None:
    decision = Decision(
        action="callback", service="caf", lang="fr", queue="caf", reason="x y", callback_id="cb-1"
    )
    steps = set_variables(decision.variables())
    assert [type(s) for s in steps] == [SetVars, SetVar, SetVars]
    assert pairs_of(steps) == list(decision.variables().items())
    assert steps[-1] == SetVars((("IVR_CASE", ""), ("IVR_LANG", "fr"), ("IVR_CALLBACK_ID", "cb-1")))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(st.sampled_from("AZ_az09(=) é"), min_size=1, max_size=6),
        st.one_of(
            st.text(st.sampled_from("az09-_.:@+/"), max_size=12),  # plain values: grouped
            st.text(st.sampled_from('az0 ,"\\()[]{}$=é|\t'), max_size=12),  # MSet would parse them
            st.text(st.characters(codec="utf-8", exclude_characters="\x00\r\n"), max_size=40),
        ),
        max_size=30,
    )
)
def test_set_variables_mset_lines_parse_back_to_what_was_set(variables: dict[str, str]) -> None:
    """Whatever the mapping: every pair set once, in order; every MSet line, parsed as
    ``pbx_builtin_setvar_multiple`` does (the simulator's copy of it), gives its pairs back."""
    steps = set_variables(variables)
    assert pairs_of(steps) == list(variables.items())
    for step in steps:
        if isinstance(step, SetVars):
            assert 2 <= len(step.pairs) <= MSET_MAX_PAIRS
            assert mset_pairs(",".join(f"{n}={v}" for n, v in step.pairs)) == list(step.pairs)


def test_refuse_sets_its_two_variables_in_one_mset() -> None:
    _, steps = run_sync(refuse("unknown_script", "no such script"), lambda step: OK)
    assert steps == [
        Verbose("no such script"),
        SetVars((("IVR_ACTION", "hangup"), ("IVR_REASON", "unknown_script"))),
        Hangup(),
    ]


def test_a_hangup_answering_the_mset_ends_the_flow(config: Config) -> None:
    """The decision's MSet goes through the same hang-up check as every step."""
    events: list[CallEvent] = []
    call = CallInfo(uniqueid="u1", script="ivr", query={"service": "caf"})
    flow = default_flows(config)["ivr"](call, lambda: THURSDAY_10H, events.append)
    caller = Caller([keys("3"), POUND])
    decision, steps = run_sync(flow, lambda step: HUNG_UP if isinstance(step, SetVars) else caller(step))
    assert isinstance(steps[-1], SetVars) and decision.hung_up
    assert (events[-1].type, events[-1].data["reason"]) == ("ivr.end", "caller_hangup")


def test_post_queue_scripts_set_their_decision_in_one_mset(config: Config) -> None:
    _, steps, caller, _ = run_script(config, "after-queue", IVR_VARS, args=("TIMEOUT",))
    sets = [s for s in steps if isinstance(s, SetVar | SetVars)]
    assert len(sets) == 1 and isinstance(sets[0], SetVars)
    assert [name for name, _ in sets[0].pairs] == list(CONTRACT_VARIABLES)
    assert caller.variables["IVR_ACTION"] == "hangup"
