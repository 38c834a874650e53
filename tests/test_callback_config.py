"""The callback offer as configured: prompts, timeouts, retries, per-queue announcements and
the queues' wrap-up time come from the configuration file, and bad values are refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from typing import Any

import pytest
import redis.asyncio
from test_config import MINIMAL, with_

from ivr.callbacks.dispatcher import DispatchSettings
from ivr.callbacks.numbering import NumberPolicy
from ivr.callbacks.service import CallbackService
from ivr.callbacks.store import CallbackStore
from ivr.config import CALLBACK_QUESTIONS, CallbackPrompts, ConfigError, default_config, parse_config
from ivr.controller import Controller
from ivr.domain.events import CallEvent
from ivr.domain.ivr_flow import CallbackOffer, CallbackSettings, OfferOutcome, announcement, caller_number
from ivr.domain.ivr_ops import (
    CallbackRecorded,
    CallInfo,
    EventRecorder,
    GetDigits,
    OverflowAdvice,
    Play,
    RecordCallback,
    StepResult,
)
from ivr.domain.state import Member, QueueState
from ivr.sim.conf_loader import product_config
from ivr.storage.privacy import NumberHasher

T0 = 1_800_000_000.0
CLI = "0612345678"
BUSY = OverflowAdvice("callback", ("estimated_wait",), position=5, estimated_wait_s=900.0)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.toml")
    return info.value.problems


# -- the keys and their checks ------------------------------------------------------------------


def test_the_shipped_values_are_the_offer_s_defaults_and_queues_conf_s_wrapup() -> None:
    config = default_config()
    cb = config.callbacks
    assert cb.prompts == CallbackPrompts()
    assert (cb.choice_timeout_s, cb.number_timeout_s, cb.offer_retries) == (6.0, 10.0, 2)
    shipped = product_config().queues  # asterisk-conf/queues.conf as the simulator reads it
    for name, queue in config.queues.items():
        assert queue.wrapup_s == shipped[name].wrapuptime, name
        assert (queue.announces_position, queue.announces_wait) == (queue.offer_callback,) * 2
    settings = CallbackSettings.from_config(config)
    assert settings.announces("caf") and not settings.announces("callback")


def test_keys_set_the_offer() -> None:
    text = MINIMAL.replace(
        '[queues.accueil]\nservice = "mairie"\n',
        '[queues.accueil]\nservice = "mairie"\n'
        "offer_callback = true\nannounce_position = false\nwrapup_s = 30\n",
    ) + (
        "\n[callbacks]\nchoice_timeout_s = 4\nnumber_timeout_s = 15\noffer_retries = 0\n"
        '[callbacks.prompts]\nbusy = ""\npress_wait = "decroche/mairie-attendre"\n'
    )
    config = parse_config(text, source="t.toml")
    accueil = config.queues["accueil"]
    assert (accueil.announces_position, accueil.announces_wait, accueil.wrapup_s) == (False, True, 30.0)
    assert config.queues["etat-civil"].announces_wait is False  # offers nothing: says nothing
    settings = CallbackSettings.from_config(config)
    assert (settings.choice_timeout_s, settings.number_timeout_s, settings.retries) == (4.0, 15.0, 0)
    assert settings.prompts.busy == "" and settings.prompts.press_wait == "decroche/mairie-attendre"
    assert settings.prompts.confirm == CallbackPrompts().confirm  # omitted: the default
    sounds = announcement(settings, 4, 600.0, "accueil")
    assert "queue-thereare" not in sounds and sounds[0] == "queue-holdtime"  # the wait, not the place
    assert announcement(settings, 4, 600.0, "etat-civil") == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "[callbacks]\nchoice_timeout_s = 0",
            "t.toml: callbacks.choice_timeout_s: 0.0 is below the minimum 1",
        ),
        (
            "[callbacks]\nnumber_timeout_s = 500",
            "t.toml: callbacks.number_timeout_s: 500.0 is above the maximum 120",
        ),
        ("[callbacks]\noffer_retries = -1", "t.toml: callbacks.offer_retries: -1 is below the minimum 0"),
        (
            '[callbacks]\noffer_retries = "2"',
            "t.toml: callbacks.offer_retries: expected an integer, got string '2'",
        ),
        ('[callbacks.prompts]\nconfirm = ""', "t.toml: callbacks.prompts.confirm: must not be empty"),
        (
            '[callbacks.prompts]\nbusy = "fr/decroche/callback-busy"',
            "t.toml: callbacks.prompts.busy: 'fr/decroche/callback-busy': write prompts without the language",
        ),
        (
            '[callbacks.prompts]\nrecorded = "callback-recorded"',
            "t.toml: callbacks.prompts.recorded: unknown prompt 'callback-recorded'",
        ),
        (
            '[callbacks.prompts]\nbussy = "decroche/x"',
            "t.toml: callbacks.prompts.bussy: unknown key; did you mean 'busy'?",
        ),
        (
            '[queues.x]\nservice = "mairie"\nwrapup_s = -5',
            "t.toml: queues.x.wrapup_s: -5.0 is below the minimum 0",
        ),
        ('[queues.x]\nservice = "mairie"\nwrapup_s = "10"', "t.toml: queues.x.wrapup_s: expected a number"),
        (
            '[queues.x]\nservice = "mairie"\nannounce_wait = "yes"',
            "t.toml: queues.x.announce_wait: expected true or false, got string 'yes'",
        ),
        (
            '[queues.x]\nservice = "mairie"\nannounce_position = true',
            "t.toml: queues.x.announce_position: needs offer_callback = true",
        ),
        ('[callbacks]\nroute = "agent"', "t.toml: callbacks.route: 'agent' is not one of"),
        ("[callbacks]\nlease_s = 1", "t.toml: callbacks.lease_s: 1.0 is below the minimum 3"),
        (
            "[callbacks]\ncheck_interval_s = 0",
            "t.toml: callbacks.check_interval_s: 0.0 is below the minimum 1",
        ),
        ('[callbacks]\noutcome_grace_s = "30"', "t.toml: callbacks.outcome_grace_s: expected a number"),
        (
            "[callbacks]\nagent_retry_delay_s = -1",
            "t.toml: callbacks.agent_retry_delay_s: -1.0 is below the minimum 0",
        ),
    ],
)
def test_bad_values_are_refused_clearly(extra: str, expected: str) -> None:
    found = problems(with_(extra))
    assert any(p.startswith(expected) for p in found), found


def test_every_question_prompt_is_required_the_rest_may_be_silent() -> None:
    for name in CallbackPrompts.__dataclass_fields__:
        found = [p for p in problems_or_none(f'[callbacks.prompts]\n{name} = ""')]
        assert bool(found) == (name in CALLBACK_QUESTIONS), (name, found)


def problems_or_none(extra: str) -> list[str]:
    try:
        parse_config(with_(extra), source="t.toml")
    except ConfigError as exc:
        return exc.problems
    return []


# -- what the caller hears -----------------------------------------------------------------------


def offer_run(
    settings: CallbackSettings, keys: list[str], queue: str = "caf"
) -> tuple[OfferOutcome, list[Any]]:
    """The offer of a busy ``queue`` to a caller with a usable number, keying ``keys`` in turn."""
    config = default_config()
    events: list[CallEvent] = []
    call = CallInfo("1700000000.1")
    policy = NumberPolicy.from_config(config.callbacks)
    offer = CallbackOffer(
        config.services["caf"],
        EventRecorder(events.append, lambda: T0, call, service="caf"),
        lang="fr",
        clock=lambda: T0,
        policy=policy,
        settings=settings,
        caller=caller_number(CLI, policy),
    )
    pending = list(keys)

    def answer(out: Any) -> Any:
        if isinstance(out, RecordCallback):
            return CallbackRecorded(
                True, "created", callback_id="cb1", number=out.number, position=6, estimated_wait_s=1200.0
            )
        if isinstance(out, GetDigits):
            return StepResult(digits=pending.pop(0)) if pending else StepResult(timed_out=True)
        return StepResult()

    return drive(offer.run(where="entry", queue=queue, can_wait=True, advice=BUSY), answer)


def drive(
    flow: Generator[Any, Any, OfferOutcome], answer: Callable[[Any], Any]
) -> tuple[OfferOutcome, list[Any]]:
    steps: list[Any] = []
    out = next(flow)
    try:
        while True:
            steps.append(out)
            out = flow.send(answer(out))
    except StopIteration as stop:
        return stop.value, steps


def test_configured_prompts_timeouts_and_announcements_are_what_the_caller_hears() -> None:
    base = default_config()
    prompts = dataclasses.replace(
        CallbackPrompts(), busy="decroche/mairie-occupe", recorded="decroche/mairie-note"
    )
    callbacks = dataclasses.replace(base.callbacks, prompts=prompts, choice_timeout_s=3.0)
    queues = {**base.queues, "caf": dataclasses.replace(base.queues["caf"], announce_position=False)}
    config = dataclasses.replace(base, callbacks=callbacks, queues=queues)
    outcome, steps = offer_run(CallbackSettings.from_config(config), ["1", "1"])
    assert outcome.kind == "callback" and outcome.callback_id == "cb1"
    played = [s.prompt for s in steps if isinstance(s, Play | GetDigits)]
    assert played[0] == "fr/decroche/mairie-occupe"
    assert "fr/queue-thereare" not in played and "fr/queue-holdtime" in played  # wait only
    assert "fr/decroche/mairie-note" in played
    confirm = next(s for s in steps if isinstance(s, GetDigits) and s.prompt.endswith("callback-confirm"))
    assert confirm.timeout_ms == 3000
    # and with the shipped settings, the place in line is said too
    _, shipped = offer_run(CallbackSettings.from_config(base), ["1", "1"])
    assert "fr/queue-thereare" in [s.prompt for s in shipped if isinstance(s, Play)]


def test_retries_are_the_configured_ones() -> None:
    base = default_config()
    strict = dataclasses.replace(base, callbacks=dataclasses.replace(base.callbacks, offer_retries=0))
    outcome, _ = offer_run(CallbackSettings.from_config(strict), ["7"])
    assert (outcome.kind, outcome.reason) == ("wait", "invalid")  # one wrong key, no second chance
    lenient = dataclasses.replace(base, callbacks=dataclasses.replace(base.callbacks, offer_retries=3))
    outcome, _ = offer_run(CallbackSettings.from_config(lenient), ["7", "7", "7", "1", "1"])
    assert outcome.kind == "callback"


# -- the wrap-up time ---------------------------------------------------------------------------


def test_the_configured_wrapup_keeps_an_agent_out_of_the_free_ones() -> None:
    base = default_config()
    controller = Controller(base, web=False)
    member = Member("caf", "Local/201@agents", status=1, last_call=int(T0) - 20)
    controller.tracker.queues["caf"] = QueueState("caf", members={member.interface: member})
    controller.tracker.tick(T0)  # the tracker's clock (Asterisk time)
    assert controller.tracker.now == T0
    snap = controller.live_queue("caf")
    assert snap is not None and snap.available == 1  # 20 s after the call, past the 10 s wrap-up
    queues = {**base.queues, "caf": dataclasses.replace(base.queues["caf"], wrapup_s=60)}
    slow = Controller(dataclasses.replace(base, queues=queues), web=False)
    slow.tracker.queues["caf"] = QueueState("caf", members={member.interface: member})
    slow.tracker.tick(T0)
    snap = slow.live_queue("caf")
    assert snap is not None and snap.available == 0 and snap.free_members == ()


def test_handle_times_include_the_configured_wrapup() -> None:
    base = default_config()
    service = CallbackService(
        CallbackStore(redis.asyncio.Redis()),  # never reached: handle times are in memory
        hasher=NumberHasher("s" * 32),
        emit=lambda e: None,
        clock=lambda: T0,
        callbacks=base.callbacks,
        queues=base.queues,
    )
    for i, talk in enumerate((200, 400)):
        service.observe(
            CallEvent(
                type="agent.complete", call="x", ts=T0 - i, id=f"c{i}", queue="caf", data={"talk_s": talk}
            )
        )
    assert service.mean_handle_s("caf", T0) == 300 + base.queues["caf"].wrapup_s


def test_the_dispatcher_timings_come_from_the_configuration() -> None:
    """``ivr run`` has no other way to set them: what the file says is what the dispatcher uses."""
    shipped = DispatchSettings.from_config(default_config().callbacks)
    assert (shipped.route, shipped.lease_s, shipped.check_interval_s) == ("queue", 15.0, 20.0)
    assert (shipped.outcome_grace_s, shipped.agent_retry_delay_s) == (30.0, 20.0)
    text = with_(
        '[callbacks]\nroute = "member"\nlease_s = 45\ncheck_interval_s = 5\n'
        "outcome_grace_s = 90\nagent_retry_delay_s = 0\nretry_delay_s = 120\n"
    )
    settings = DispatchSettings.from_config(parse_config(text, source="t.toml").callbacks)
    assert (settings.route, settings.lease_s, settings.check_interval_s) == ("member", 45.0, 5.0)
    assert settings.outcome_grace_s == 90.0
    assert (settings.agent_retry_delay_s, settings.retry_delay_s) == (0.0, 120.0)
