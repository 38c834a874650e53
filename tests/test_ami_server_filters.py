"""The AMI front-end applying a manager user's ``read`` classes and eventfilters, and its
coalesced output: what reaches a client, in what order, and what never gets formatted."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_ami_server import SECRET, EngineDouble, RawAMI

from ivr.protocol.ami import Event, Response, event_text
from ivr.sim.ami_server import AMIServer, event_category
from ivr.sim.api import Headers
from ivr.sim.conf_loader import product_config
from ivr.sim.config import default_config
from ivr.sim.engine import Simulator
from ivr.sim.manager_conf import get_perm, load_manager_user, parse_eventfilter
from ivr.sim.run import start_sim
from ivr.sim.traffic import TrafficGenerator

MANAGER_CONF = Path(__file__).resolve().parent.parent / "asterisk-conf" / "manager.conf"


@pytest.fixture
def engine() -> EngineDouble:
    return EngineDouble()


@pytest.fixture
async def filtered(engine: EngineDouble) -> AsyncIterator[AMIServer]:
    """A server for the shipped ``ivr`` user (its placeholder secret replaced)."""
    user = load_manager_user(MANAGER_CONF, "ivr")
    srv = AMIServer.for_user(engine, user, secret=SECRET, auth_failure_delay=0.05, shutdown_grace=1.0)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def _login(port: int) -> RawAMI:
    raw = await RawAMI.connect(port)
    assert (await raw.login()).ok
    return raw


async def _events(raw: RawAMI, until: str) -> list[Event]:
    """Events read up to and including the UserEvent ``until`` (a marker sent last)."""
    out: list[Event] = []
    while True:
        message = await raw.read()
        if isinstance(message, Event):
            out.append(message)
            if message.name == "UserEvent" and message.get("UserEvent") == until:
                return out


async def test_shipped_ivr_user_gets_the_filtered_stream(filtered: AMIServer, engine: EngineDouble) -> None:
    raw = await _login(filtered.port)
    engine.emit("Newexten", [("Channel", "c"), ("Application", "Set")], "dialplan,all")
    engine.emit("Newchannel", [("Channel", "c")])
    engine.emit("VarSet", [("Channel", "c"), ("Variable", "DIALSTATUS"), ("Value", "ANSWER")], "dialplan,all")
    engine.emit(
        "VarSet", [("Channel", "c"), ("Variable", "QUEUESTATUS"), ("Value", "TIMEOUT")], "dialplan,all"
    )
    engine.emit("DeviceStateChange", [("Device", "Local/201@agents"), ("State", "INUSE")])
    engine.emit("DTMFBegin", [("Channel", "c"), ("Digit", "1")], "dtmf,all")  # not in read
    engine.emit("UserEvent", [("UserEvent", "end")], "user,all")
    got = await _events(raw, "end")
    assert [(e.name, e.get("Variable")) for e in got] == [
        ("Newchannel", None),
        ("VarSet", "QUEUESTATUS"),
        ("UserEvent", None),
    ]
    # Newexten, DIALSTATUS and DeviceStateChange by the filters; DTMFBegin, FullyBooted and
    # SuccessfulAuth (dtmf, system, security) by the read classes, before any filter
    assert filtered.events_filtered == 3
    await raw.close()


async def test_filters_apply_per_server_and_an_unfiltered_server_sends_everything(
    engine: EngineDouble,
) -> None:
    flt = [parse_eventfilter("eventfilter(action(exclude),name(Newexten))", "")]
    async with (
        AMIServer(engine, secret=SECRET, event_filters=flt) as quiet,
        AMIServer(engine, secret=SECRET) as loud,
    ):
        a, b = await _login(quiet.port), await _login(loud.port)
        for raw in (a, b):
            await raw.read_until(lambda m: m.get("Event") == "SuccessfulAuth")
        engine.emit("Newexten", [("Channel", "c")], "dialplan,all")
        engine.emit("UserEvent", [("UserEvent", "end")], "user,all")
        assert [e.name for e in await _events(a, "end")] == ["UserEvent"]
        assert [e.name for e in await _events(b, "end")] == ["Newexten", "UserEvent"]
        await a.close()
        await b.close()


async def test_read_classes_hold_back_fully_booted_and_event_classes(engine: EngineDouble) -> None:
    async with AMIServer(engine, secret=SECRET, read_perm=get_perm("call,user")) as srv:
        raw = await _login(srv.port)
        engine.emit("Newexten", [("Channel", "c")], "dialplan,all")
        engine.emit("Hangup", [("Channel", "c")])
        engine.emit("UserEvent", [("UserEvent", "end")], "user,all")
        # no FullyBooted (system) or SuccessfulAuth (security) after the login response
        assert [e.name for e in await _events(raw, "end")] == ["Hangup", "UserEvent"]
        await raw.close()


async def test_an_event_every_session_drops_by_name_is_never_formatted(engine: EngineDouble) -> None:
    flt = [parse_eventfilter("eventfilter(action(exclude),name(Newexten))", "")]
    async with AMIServer(engine, secret=SECRET, event_filters=flt) as srv:
        raw = await _login(srv.port)
        await raw.read_until(lambda m: m.get("Event") == "SuccessfulAuth")
        # a value no encoder accepts: formatting it would log an error and drop it
        engine.emit("Newexten", [("Channel", "c\r\nEvent: Injected")], "dialplan,all")
        engine.emit("UserEvent", [("UserEvent", "end")], "user,all")
        assert [e.name for e in await _events(raw, "end")] == ["UserEvent"]
        assert srv.events_filtered == 1
        await raw.close()


async def test_events_are_coalesced_but_responses_are_prompt(engine: EngineDouble) -> None:
    async with AMIServer(engine, secret=SECRET, event_delay=0.3) as srv:
        raw = await _login(srv.port)
        await raw.read_until(lambda m: m.get("Event") == "SuccessfulAuth")
        loop = asyncio.get_running_loop()
        for i in range(50):
            engine.emit("Newchannel", [("Channel", f"c{i}")])
            await asyncio.sleep(0)  # events raised over many loop turns
        started = loop.time()
        raw.send("Ping", "p1")
        before: list[str] = []
        while not isinstance(message := await raw.read(), Response):
            before.append(message.get("Channel") or "")
        # the response did not wait for event_delay, and the events gathered before it
        # went out with it, ahead of it
        assert message.action_id == "p1" and loop.time() - started < 0.2
        assert before == [f"c{i}" for i in range(50)]
        engine.emit("Hangup", [("Channel", "late")])
        started = loop.time()
        late = await raw.read_until(lambda m: m.get("Event") == "Hangup", within=1.0)
        assert late.get("Channel") == "late" and loop.time() - started >= 0.2  # held for event_delay
        await raw.close()


async def test_coalesced_events_keep_their_order_and_arrive_in_few_writes(engine: EngineDouble) -> None:
    async with AMIServer(engine, secret=SECRET) as srv:
        raw = await _login(srv.port)
        await raw.read_until(lambda m: m.get("Event") == "SuccessfulAuth")
        for i in range(300):
            engine.emit("Newchannel", [("Channel", f"c{i}")])
            if i % 3 == 0:
                await asyncio.sleep(0)
        engine.emit("UserEvent", [("UserEvent", "end")], "user,all")
        got = await _events(raw, "end")
        assert [e.get("Channel") for e in got if e.name == "Newchannel"] == [f"c{i}" for i in range(300)]
        assert srv.events_delivered >= 301
        await raw.close()


async def test_close_sends_what_was_gathered_and_abort_does_not(engine: EngineDouble) -> None:
    srv = AMIServer(engine, secret=SECRET, event_delay=10.0)
    await srv.start()
    raw = await _login(srv.port)
    await raw.read_until(lambda m: m.get("Event") == "SuccessfulAuth")
    engine.emit("Newchannel", [("Channel", "pending")])
    await srv.stop()  # Shutdown, then close: the pending event goes out first
    first = await raw.read()
    assert first.get("Event") == "Newchannel" and first.get("Channel") == "pending"
    assert (await raw.read()).get("Event") == "Shutdown"
    assert await raw.expect_eof() == b""
    await raw.close()


def test_server_options_are_checked(engine: EngineDouble) -> None:
    with pytest.raises(ValueError, match="event_delay"):
        AMIServer(engine, secret=SECRET, event_delay=-1)
    with pytest.raises(ValueError, match="flush_bytes"):
        AMIServer(engine, secret=SECRET, flush_bytes=0)
    small = AMIServer(engine, secret=SECRET, max_output_buffer=8000)
    assert small.flush_bytes == 1000  # gathered output flushes long before the limit


async def test_start_sim_applies_the_shipped_filters() -> None:
    user = load_manager_user(MANAGER_CONF, "ivr")
    running = await start_sim(
        default_config(), ami_port=0, secret=SECRET, traffic=False, speed=50, event_filters=user.filters
    )
    try:
        assert running.ami is not None
        raw = await _login(running.ami.port)
        raw.send("Originate", "o-1", Channel="Local/live@misc", Application="Wait", Data="1", Async="true")
        raw.send("UserEvent", "u-1", UserEvent="end")
        got: list[str] = []
        async with asyncio.timeout(5):
            while "Hangup" not in got or "UserEvent" not in got:
                message = await raw.read()
                if isinstance(message, Event):
                    got.append(message.name)
        assert "Newchannel" in got and "OriginateResponse" in got
        assert not {"Newexten", "LocalBridge", "DeviceStateChange"} & set(got)
        await raw.close()
    finally:
        await running.stop()


async def test_a_simulator_never_builds_what_the_filters_drop_and_the_client_gets_the_rest() -> None:
    """The simulator asks the server what its sessions take before building an event: the
    client of the shipped ``ivr`` user receives, byte for byte and in order, the events of
    the whole stream that its read classes and filters let through -- and the server is
    never handed an event its filters would drop."""
    user = load_manager_user(MANAGER_CONF, "ivr")
    cfg = product_config()
    closed = socket.socket()  # bound, not listening: every AGI() fails open at once
    closed.bind(("127.0.0.1", 0))
    cfg.globals["IVR_AGI_PORT"] = str(closed.getsockname()[1])
    cfg.traffic = replace(cfg.traffic, calls=12, arrivals_per_hour=1800.0, patience=(30.0, 120.0))
    sim = Simulator(cfg, seed=11, speed=math.inf, start_epoch=1_800_000_000.0)
    everything: list[tuple[str, Headers]] = []
    await sim.start()
    srv = AMIServer.for_user(sim, user, secret=SECRET, shutdown_grace=1.0)
    await srv.start()
    try:
        raw = await _login(srv.port)  # no FullyBooted or SuccessfulAuth: not in read
        # a listener of the whole stream, registered after the login
        sim.add_listener(lambda name, headers: everything.append((name, list(headers))))
        await TrafficGenerator(sim).run()
        await sim.idle(real_seconds=30)
        sim.user_event("end", [])
        filters = user.event_filters
        expected = [
            event_text(name, headers).encode()
            for name, headers in everything
            if event_category(headers) & user.read == event_category(headers)
            and filters.should_send(name, headers)
        ]
        got: list[bytes] = []
        async with asyncio.timeout(10):
            while len(got) < len(expected):
                got.append(await raw.read_raw())
        assert got == expected
        names = {name for name, _ in everything}
        assert {"Newexten", "VarSet", "LocalBridge", "DeviceStateChange"} <= names
        kept = {b.split(b"\r\n", 1)[0] for b in got}
        assert b"Event: Newexten" not in kept and b"Event: VarSet" in kept  # QUEUESTATUS, IVR_*
        assert len(expected) < len(everything) // 2
        # filtered before they were built: the server's own filtering never ran
        assert srv.events_filtered == 0 and srv.events_delivered == len(expected)
        await raw.close()
    finally:
        await srv.stop()
        await sim.stop()
        closed.close()
