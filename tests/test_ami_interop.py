"""A client nobody here wrote -- panoramisk 1.4's Manager -- against our AMI server.

If our server only pleased our own client, both could share a misreading of Asterisk.
panoramisk has driven real Asterisk servers for years: it must log in, receive events, run
QueueStatus to its completion and an Async Originate to its OriginateResponse here too.

The engine is a fixture: the double of ``ami_double`` always, and the simulator's
own engine as well once ``ivr.sim.engine`` builds (see :func:`_simulator_builds`). The
assertions rely only on Asterisk's framing, not on what a given engine simulates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from ami_double import SECRET, UNKNOWN, EngineDouble
from panoramisk import Manager
from test_ami_server import RawAMI

from ivr.protocol.ami import Action, AMIParser
from ivr.sim.ami_server import AMIServer
from ivr.sim.api import Engine


def _simulator_builds() -> bool:
    """True once ``ivr.sim.engine.Simulator`` builds, starts and answers a QueueStatus.

    Only a module still missing excuses it (the simulator is assembled piece by piece);
    any other failure is a bug and surfaces here.
    """

    async def probe() -> None:
        from ivr.sim.engine import Simulator

        parser = AMIParser(expect_banner=False)
        parser.receive_data(b"Action: QueueStatus\r\nActionID: probe\r\n\r\n")
        (action,) = parser.events()
        assert isinstance(action, Action)
        sim = Simulator(seed=1)
        await sim.start()
        try:
            await sim.handle_action(action)
        finally:
            await sim.stop()

    try:
        asyncio.run(probe())
    except ImportError:
        return False
    return True


ENGINES = ["double", *(["simulator"] if _simulator_builds() else [])]


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    if request.param == "double":
        yield EngineDouble()
        return
    from ivr.sim.engine import Simulator

    sim = Simulator(seed=1, speed=50)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
async def manager(server: AMIServer) -> AsyncIterator[tuple[Manager, list[Any]]]:
    logged_in = asyncio.Event()
    events: list[Any] = []
    mgr = Manager(
        host="127.0.0.1",
        port=server.port,
        username="ivr",
        secret=SECRET,
        ping_delay=3600,
        reconnect_timeout=3600,
        loop=asyncio.get_running_loop(),
        on_login=lambda _m: logged_in.set(),
    )
    mgr.register_event("*", lambda _m, event: events.append(event))
    await mgr.connect()
    await asyncio.wait_for(logged_in.wait(), 2)
    try:
        yield mgr, events
    finally:
        mgr.close()


async def wait_for_event(events: list[Any], name: str, within: float = 2.0) -> Any:
    async with asyncio.timeout(within):
        while True:
            for event in events:
                if event.event == name:
                    return event
            await asyncio.sleep(0.01)


async def test_panoramisk_logs_in_and_receives_events(
    manager: tuple[Manager, list[Any]], server: AMIServer
) -> None:
    mgr, events = manager
    assert mgr.authenticated and mgr.protocol.version == "11.0.0"
    booted = await wait_for_event(events, "FullyBooted")
    assert booted.status == "Fully Booted"
    other = await RawAMI.connect(server.port)  # another login raises a security event
    assert (await other.login()).ok
    auth = await wait_for_event(events, "SuccessfulAuth")
    assert auth.accountid == "ivr" and auth.privilege == "security,all"
    await other.close()


async def test_panoramisk_runs_queue_status_to_completion(manager: tuple[Manager, list[Any]]) -> None:
    mgr, _events = manager
    replies = await asyncio.wait_for(mgr.send_action({"Action": "QueueStatus"}), 2)
    assert isinstance(replies, list)
    first, *items, last = replies
    assert first.response == "Success" and first.eventlist == "start"
    assert last.event == "QueueStatusComplete" and last.eventlist == "Complete"
    assert int(last.listitems) == len(items) > 0
    assert {item.event for item in items} <= {"QueueParams", "QueueMember", "QueueEntry"}
    assert all(item.actionid == first.actionid for item in (*items, last))


async def test_panoramisk_async_originate_gets_its_originate_response(
    manager: tuple[Manager, list[Any]],
) -> None:
    mgr, _events = manager
    action = {
        "Action": "Originate",
        "Channel": "Local/201@agents",
        "Context": "callback",
        "Exten": "0612345678",
        "Priority": "1",
        "Timeout": "5000",
        "Async": "true",
    }
    replies = await asyncio.wait_for(mgr.send_action(action), 10)
    assert isinstance(replies, list)
    ack, outcome = replies[0], replies[-1]
    assert ack.response == "Success" and ack.message == "Originate successfully queued"
    assert outcome.event == "OriginateResponse" and outcome.response in ("Success", "Failure")
    assert outcome.actionid == ack.actionid and outcome.reason.isdigit()


async def test_panoramisk_sees_errors_as_asterisk_reports_them(manager: tuple[Manager, list[Any]]) -> None:
    mgr, _events = manager
    reply = await asyncio.wait_for(mgr.send_action({"Action": "FooBar"}), 2)
    assert not reply.success
    assert reply.message == UNKNOWN.format("FooBar")
    pong = await asyncio.wait_for(mgr.send_action({"Action": "Ping"}), 2)
    assert pong.success and pong.ping == "Pong"
