"""Simulator details checked against Asterisk 22's source where the recordings do not go:
invalid extensions (``__ast_pbx_run``), the channel language, function writes."""

from __future__ import annotations

import asyncio

from test_sim_engine import AGI_SPEED, AgiPeer, action, agi_config, agi_server, caller, h, running

from ivr.sim.config import default_config


def _plan(**contexts: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    return {"misc": {"wait": ["Answer()", "Wait(30)"]}, **contexts}


async def _originate_into(exten: str, plan: dict[str, dict[str, list[str]]]) -> list[tuple[str, str]]:
    """Originate Local/wait@misc (answers at once) into ``target,exten``; the ;1's steps."""
    cfg = default_config()
    cfg.dialplan.update(plan)
    async with running(cfg) as (sim, rec):
        ack = await sim.handle_action(
            action(
                "Originate",
                ("Channel", "Local/wait@misc"),
                ("Context", "target"),
                ("Exten", exten),
                ("Async", "true"),
                action_id="o-1",
            )
        )
        assert ack.status == "Success"
        await sim.run_for(5)
    one = "Local/wait@misc-00000000;1"
    return [
        (h(e[2], "Exten") or "", h(e[2], "AppData") or "")
        for e in rec.events
        if h(e[2], "Channel") == one and e[1] == "Newexten"
    ] + [
        ("VarSet", f"{h(e[2], 'Variable')}={h(e[2], 'Value')}")
        for e in rec.named("VarSet")
        if h(e[2], "Channel") == one
    ]


async def test_originate_into_a_missing_extension_goes_to_i() -> None:
    steps = await _originate_into("404", _plan(target={"i": ["NoOp(invalid ${INVALID_EXTEN})", "Hangup()"]}))
    assert ("i", "invalid 404") in steps and ("VarSet", "INVALID_EXTEN=404") in steps


async def test_without_i_a_missing_extension_goes_to_e_then_hangs_up() -> None:
    steps = await _originate_into("404", _plan(target={"e": ["NoOp(${EXCEPTION(REASON)})", "Hangup()"]}))
    assert ("e", "INVALID") in steps
    # neither: the channel hangs up, nothing run
    assert await _originate_into("404", _plan(target={"1": ["NoOp(x)"]})) == [("wait", "(Outgoing Line)")]


async def test_an_existing_extension_runs_and_falls_through_without_i() -> None:
    plan = _plan(target={"1": ["NoOp(one)"], "i": ["NoOp(never)"]})
    steps = await _originate_into("1", plan)
    assert ("1", "one") in steps and not any(a == "never" for _, a in steps)
    # an empty Exten starts at 's'
    assert ("s", "start") in await _originate_into("", _plan(target={"s": ["NoOp(start)"]}))


async def test_language_follows_channel_language() -> None:
    cfg = default_config()
    cfg.dialplan["misc"] = {"fr": ["Set(CHANNEL(language)=fr)", "NoOp(${CHANNEL(language)})", "Wait(2)"]}
    async with running(cfg) as (sim, rec):
        await sim.handle_action(
            action("Originate", ("Channel", "Local/fr@misc"), ("Application", "Wait"), ("Data", "3"))
        )
        await sim.run_for(5)
    two = "Local/fr@misc-00000000;2"
    seen = [(h(e[2], "AppData"), h(e[2], "Language")) for e in rec.events if h(e[2], "Channel") == two]
    assert seen[0][1] == "en"  # Newchannel: the default language
    assert ("${CHANNEL(language)}" not in (a for a, _ in seen)) and ("fr", "fr") in seen
    assert seen[-1][1] == "fr"  # ... and its Hangup
    assert not any(h(e[2], "Variable") == "CHANNEL(language)" for e in rec.named("VarSet"))


async def test_agi_language_is_the_channels() -> None:
    async def script(agi: AgiPeer) -> None:
        await agi.cmd("SET VARIABLE CHANNEL(language) de")  # a function write: no VarSet

    async with agi_server(script) as (address, peers):
        cfg = agi_config(address)
        cfg.dialplan["public"]["100"] = [
            "Answer()",
            "Set(CHANNEL(language)=fr)",
            f"AGI(agi://{address}/ivr)",
            f"AGI(agi://{address}/again)",
            "Hangup()",
        ]
        async with running(cfg, speed=AGI_SPEED) as (sim, rec):
            caller(sim, 1, script="dtmf", WAIT1="1", DIGITS="", STAY="3")
            await sim.run_for(4)
    assert [dict(p.env)["agi_language"] for p in peers] == ["fr", "de"]
    assert not any(h(e[2], "Variable") == "CHANNEL(language)" for e in rec.named("VarSet"))


async def test_a_function_write_of_the_language_shows_in_the_next_snapshot() -> None:
    async with running(default_config()) as (sim, _):
        one, _two = sim.new_local_pair("100", "public")
        assert h(one.snapshot(), "Language") == "en" and one.builtin("CHANNEL(language)") == "en"
        one.vars["CHANNEL(language)"] = "fr"  # what Set(CHANNEL(language)=fr) does: no touch()
        assert h(one.snapshot(), "Language") == "fr" and one.language == "fr"


async def _agistatus(address: str, connect_timeout: float = 2.0) -> list[str | None]:
    cfg = agi_config(address)
    cfg.agi_connect_timeout = connect_timeout
    async with running(cfg, speed=AGI_SPEED) as (sim, rec):
        caller(sim, 1, script="dtmf", WAIT1="1", DIGITS="", STAY="2")
        await sim.run_for(4)
    return [h(e[2], "Value") for e in rec.named("VarSet") if h(e[2], "Variable") == "AGISTATUS"]


async def test_agi_connects_by_address_or_by_name_and_fails_cleanly() -> None:
    async def script(agi: AgiPeer) -> None:
        return None

    async with agi_server(script) as (address, peers):
        port = address.rsplit(":", 1)[1]
        assert await _agistatus(f"localhost:{port}") == ["SUCCESS"]  # a name: resolved
        assert await _agistatus(address) == ["SUCCESS"]  # an address: connected by hand
    assert len(peers) == 2
    # nothing listens there any more: refused at once, by address and by name
    assert await _agistatus(address) == ["FAILURE"]
    assert await _agistatus(f"localhost:{port}") == ["FAILURE"]


async def test_agi_connect_gives_up_after_its_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    # TEST-NET-1 (RFC 5737): never answers; unreachable networks fail sooner, also a FAILURE
    assert await _agistatus("192.0.2.1:4573", connect_timeout=0.2) == ["FAILURE"]
    assert loop.time() - started < 3.0
