"""The controller's AMI client against the simulator's AMI server (real sockets).

The engine is the double of ``ami_double``; faults come from the server's fault
injection (dropped connections, silence, raw garbage) and, for a list whose count lies,
a tiny scripted PBX written here.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from ami_double import SECRET, EngineDouble

from ivr.ami.client import AMIClient, Backoff, OriginateResult
from ivr.ami.errors import (
    ActionError,
    ActionTimeout,
    ClientClosed,
    ConnectionLost,
    ListCountMismatch,
    LoginError,
    NotConnected,
)
from ivr.ami.queue import DropOldestQueue
from ivr.protocol.ami import AMIParser, Event, encode_event, encode_response
from ivr.protocol.errors import LocalProtocolError
from ivr.sim.ami_server import AMIServer

FAST = Backoff(initial=0.01, factor=2.0, maximum=0.05, jitter=0.5)


ClientFactory = Callable[..., AMIClient]


@pytest.fixture
async def make_client(server: AMIServer) -> AsyncIterator[ClientFactory]:
    clients: list[AMIClient] = []

    def make(**overrides: Any) -> AMIClient:
        options: dict[str, Any] = {
            "action_timeout": 2.0,
            "connect_timeout": 1.0,
            "ping_interval": 30.0,
            "ping_timeout": 1.0,
            "backoff": FAST,
        }
        options.update(overrides)
        port = options.pop("port", server.port)
        secret = options.pop("secret", SECRET)
        client = AMIClient("127.0.0.1", port, "ivr", secret, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close(timeout=0.5)


@pytest.fixture
async def client(make_client: ClientFactory) -> AMIClient:
    c = make_client()
    await c.start()
    return c


async def until(predicate: Callable[[], bool], within: float = 3.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 -- polls counters that signal nothing
            await asyncio.sleep(0.01)


async def next_named(client: AMIClient, name: str, within: float = 2.0) -> Event:
    async with asyncio.timeout(within):
        while True:
            event = await client.next_event()
            if event.name == name:
                return event


# -- login --------------------------------------------------------------------------------------


async def test_login_then_boot_events_arrive(client: AMIClient, server: AMIServer) -> None:
    assert client.connected and server.logged_in == 1
    assert (await client.next_event()).name == "FullyBooted"
    assert (await client.next_event()).name == "SuccessfulAuth"
    stats = client.stats
    assert stats.connected and stats.events_received == 2 and stats.reconnects == 0


async def test_bad_login_is_a_clear_error(make_client: ClientFactory, server: AMIServer) -> None:
    client = make_client(secret="wrong")
    with pytest.raises(LoginError) as caught:
        await client.start()
    assert caught.value.message == "Authentication failed"
    assert client.stats.login_failures == 1 and not client.connected
    with pytest.raises(ClientClosed):
        await client.action("Ping")


async def test_login_with_events_off(make_client: ClientFactory, engine: EngineDouble) -> None:
    client = make_client(events=False)
    await client.start()
    engine.emit("Newchannel", [("Channel", "x")])
    await client.ping()
    assert client.stats.events_received == 0


# -- actions ------------------------------------------------------------------------------------


async def test_actions_and_asterisk_errors(client: AMIClient) -> None:
    response = await client.action("Command", {"Command": "core show version"})
    assert response.output == ["Asterisk 22.10.1 (double)"]
    await client.action("QueueAdd", {"Queue": "support", "Interface": "Local/209@agents"})
    with pytest.raises(ActionError) as caught:
        await client.action("QueueAdd", {"Queue": "support", "Interface": "Local/209@agents"})
    assert caught.value.message == "Unable to add interface: Already there"
    with pytest.raises(ActionError) as unknown:
        await client.action("FooBar")
    assert unknown.value.message.startswith("Invalid/unknown command: FooBar.")
    unchecked = await client.action("FooBar", check=False)
    assert unchecked.status == "Error"
    assert await client.ping() >= 0


async def test_list_actions_collect_their_items(client: AMIClient, engine: EngineDouble) -> None:
    status = await client.queue_status("support")
    assert status.ok and status.expected == 3
    assert [item.name for item in status.items] == ["QueueParams", "QueueMember", "QueueMember"]
    assert status.complete is not None and status.complete.name == "QueueStatusComplete"
    engine.channels.append({"Channel": "Local/live@misc-00000000;1", "Uniqueid": "1.0"})
    channels = await client.core_show_channels()
    assert [c["Channel"] for c in channels.items] == ["Local/live@misc-00000000;1"]
    # List items never leak into the event stream.
    names = []
    while client.stats.queue_depth:
        names.append((await client.next_event()).name)
    assert "QueueMember" not in names and "CoreShowChannel" not in names


async def test_action_timeout_then_late_reply_is_ignored(client: AMIClient, engine: EngineDouble) -> None:
    engine.delays["QueueStatus"] = 0.3
    with pytest.raises(ActionTimeout) as caught:
        await client.list_action("QueueStatus", timeout=0.05)
    assert "QueueStatus" in str(caught.value) and caught.value.action_id
    assert client.stats.actions_timed_out == 1
    del engine.delays["QueueStatus"]
    await asyncio.sleep(0.4)  # the late list arrives now
    assert (await client.queue_status("overflow")).expected == 2
    while client.stats.queue_depth:
        assert (await client.next_event()).name not in ("QueueParams", "QueueMember", "QueueStatusComplete")


async def test_header_injection_is_refused_before_sending(client: AMIClient, engine: EngineDouble) -> None:
    with pytest.raises(LocalProtocolError):
        await client.action("Setvar", {"Variable": "X", "Value": "a\r\nAction: Hangup"})
    with pytest.raises(LocalProtocolError):
        await client.action("Ping", {"ActionID": "mine"})
    with pytest.raises(LocalProtocolError):
        await client.originate("Local/201@agents", context="callback", exten="s", variables={"A": "1\n"})
    with pytest.raises(LocalProtocolError):
        await client.action("Setvar", {"Variable": "X", "Value": "v" * 2000})  # Asterisk truncates at 1024
    await client.ping()
    assert engine.seen == []  # nothing but the Ping reached the PBX (Ping never reaches the engine)
    assert client._originates == {}


# -- Originate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dialend_first", [True, False])
async def test_originate_result_whatever_the_order(
    client: AMIClient, engine: EngineDouble, dialend_first: bool
) -> None:
    engine.dialend_first = dialend_first
    call = await client.originate(
        "Local/201@agents",
        context="callback",
        exten="0612345678",
        caller_id='"Rappel" <0612345678>',
        variables={"IVR_CALLBACK_ID": "cb-42"},
    )
    assert call.ack.message == "Originate successfully queued"
    outcome = await asyncio.wait_for(call.result, 2)
    assert isinstance(outcome, OriginateResult)
    assert outcome.ok and outcome.reason == 4 and outcome.reason_text == "answered"
    assert outcome.uniqueid is not None and outcome.event.action_id == call.action_id
    dial_end = await next_named(client, "DialEnd")
    assert dial_end["DestUniqueid"] == outcome.uniqueid
    assert client._originates == {}


async def test_originate_failure_and_refusal(client: AMIClient, engine: EngineDouble) -> None:
    call = await client.originate("Local/291@agents", application="Wait", data="1")
    outcome = await asyncio.wait_for(call.result, 2)
    assert not outcome.ok and outcome.reason == 0 and outcome.uniqueid is None
    with pytest.raises(ActionError) as caught:
        await client.originate("", context="public", exten="100")
    assert caught.value.message == "Channel not specified"
    assert client._originates == {}
    with pytest.raises(ValueError):
        await client.originate("Local/1@x")


async def test_originate_outcome_deadline(client: AMIClient, engine: EngineDouble) -> None:
    engine.hold_outcomes = True
    call = await client.originate("Local/201@agents", context="c", exten="1", result_timeout=0.1)
    with pytest.raises(ActionTimeout) as caught:
        await call.result
    assert "outcome unknown" in str(caught.value)


# -- events and the bounded queue ---------------------------------------------------------------


async def test_events_flow_in_order(client: AMIClient, engine: EngineDouble) -> None:
    for i in range(5):
        engine.emit("Newexten", [("Channel", f"c{i}")], "dialplan,all")
    got: list[str] = []
    async with asyncio.timeout(2):
        while len(got) < 5:
            event = await client.next_event()
            if event.name == "Newexten":
                got.append(event["Channel"])
    assert got == [f"c{i}" for i in range(5)]


async def test_stalled_consumer_drops_oldest_and_never_blocks_the_reader(
    make_client: ClientFactory, engine: EngineDouble
) -> None:
    client = make_client(queue_size=5)
    await client.start()
    for i in range(50):
        engine.emit("VarSet", [("Value", str(i))], "dialplan,all")
    await until(lambda: client.stats.events_received >= 52)  # + FullyBooted, SuccessfulAuth
    assert await client.ping() >= 0  # responses still flow while the queue is full
    stats = client.stats
    assert stats.queue_depth == 5 and stats.events_dropped == stats.events_received - 5
    await asyncio.sleep(0.05)
    kept = [(await client.next_event())["Value"] for _ in range(5)]
    assert kept == ["45", "46", "47", "48", "49"]  # the newest survive
    assert client.stats.max_lag_s >= 0.05 and client.stats.queue_depth == 0


async def test_drop_oldest_queue_unit() -> None:
    now = [0.0]
    queue: DropOldestQueue[int] = DropOldestQueue(2, clock=lambda: now[0])
    assert queue.put(1) and queue.put(2) and not queue.put(3)
    now[0] = 1.5
    assert await queue.get() == 2 and queue.max_lag_s == 1.5
    queue.close()
    assert await queue.get() == 3
    with pytest.raises(EOFError):
        await queue.get()
    with pytest.raises(ValueError):
        DropOldestQueue(0)


# -- bad input from the PBX ---------------------------------------------------------------------


async def test_garbage_and_oversized_messages_are_skipped(
    make_client: ClientFactory, server: AMIServer, engine: EngineDouble
) -> None:
    client = make_client(max_message_size=4096, max_line_size=4096)
    await client.start()
    server.send_raw(b"this is no header\r\n\r\n")
    server.send_raw(encode_event("VarSet", [("Value", "x" * 10_000)]))
    server.send_raw(b"Garbage: first\r\n\r\n")
    engine.emit("Newchannel", [("Channel", "after-garbage")])
    event = await next_named(client, "Newchannel")
    assert event["Channel"] == "after-garbage"
    assert client.stats.protocol_errors == 3 and client.connected
    assert await client.ping() >= 0


async def test_list_count_mismatch_is_surfaced() -> None:
    async def lying_pbx(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        parser = AMIParser(expect_banner=False)
        while data := await reader.read(4096):
            parser.receive_data(data)
            for msg in parser.events():
                aid = msg.action_id if hasattr(msg, "action_id") else None
                name = getattr(msg, "name", "")
                if name == "Login":
                    writer.write(encode_response("Success", aid, [("Message", "Authentication accepted")]))
                elif name == "QueueStatus":
                    writer.write(
                        encode_response("Success", aid, [("EventList", "start"), ("Message", "Queue status")])
                        + encode_event("QueueParams", [("Queue", "support"), ("ActionID", aid or "")])
                        + encode_event(
                            "QueueStatusComplete",
                            [("ActionID", aid or ""), ("EventList", "Complete"), ("ListItems", "2")],
                        )
                    )
                elif name == "Logoff":
                    writer.write(encode_response("Goodbye", aid, [("Message", "Thanks for all the fish.")]))
                    writer.close()
                    return

    pbx = await asyncio.start_server(lying_pbx, "127.0.0.1", 0)
    port = pbx.sockets[0].getsockname()[1]
    client = AMIClient("127.0.0.1", port, "ivr", SECRET, action_timeout=2, ping_interval=30)
    try:
        await client.start()
        result = await client.list_action("QueueStatus")
        assert result.count_mismatch and not result.ok and len(result.items) == 1 and result.expected == 2
        with pytest.raises(ListCountMismatch) as caught:
            await client.list_action("QueueStatus", strict=True)
        assert (caught.value.received, caught.value.expected) == (1, 2)
    finally:
        await client.close(timeout=0.5)
        pbx.close()
        await pbx.wait_closed()


# -- reconnect and liveness ---------------------------------------------------------------------


async def test_dropped_connection_reconnects_resyncs_and_reports_the_gap(
    make_client: ClientFactory, server: AMIServer, engine: EngineDouble
) -> None:
    resyncs: list[int] = []
    gaps: list[tuple[float, float]] = []

    async def on_connected(c: AMIClient) -> None:
        status = await c.queue_status()  # the controller's resync
        resyncs.append(len(status.items))

    client = make_client(on_connected=on_connected, on_gap=lambda start, end: gaps.append((start, end)))
    await client.start()
    assert resyncs == [5] and gaps == []
    engine.delays["QueueStatus"] = 1.0
    pending = asyncio.create_task(client.list_action("QueueStatus"))
    await asyncio.sleep(0.05)
    server.drop_connections()
    with pytest.raises(ConnectionLost) as caught:
        await pending
    assert "before the reply to QueueStatus" in str(caught.value)
    del engine.delays["QueueStatus"]
    await until(lambda: len(resyncs) == 2)
    await client.wait_connected()
    assert len(gaps) == 1 and gaps[0][0] <= gaps[0][1]
    assert client.stats.reconnects == 1 and client.last_gap == gaps[0]
    assert await client.ping() >= 0


async def test_actions_during_reconnect_fail_fast(make_client: ClientFactory, server: AMIServer) -> None:
    release = asyncio.Event()

    async def slow_sleep(_delay: float) -> None:
        await release.wait()

    client = make_client(sleep=slow_sleep)
    await client.start()
    server.drop_connections()
    await until(lambda: not client.connected)
    with pytest.raises(NotConnected):
        await client.action("Ping")
    release.set()
    await asyncio.wait_for(client.wait_connected(), 2)
    assert await client.ping() >= 0


async def test_originate_outcome_survives_a_reconnect(
    client: AMIClient, server: AMIServer, engine: EngineDouble
) -> None:
    engine.hold_outcomes = True
    call = await client.originate("Local/201@agents", context="callback", exten="0612345678")
    server.drop_connections()
    await until(lambda: client.stats.reconnects == 1 and client.connected)
    engine.release_outcomes()  # Asterisk broadcasts OriginateResponse to every session
    outcome = await asyncio.wait_for(call.result, 2)
    assert outcome.ok and outcome.event.action_id == call.action_id


async def test_silent_pbx_is_detected_by_ping_and_replaced(
    make_client: ClientFactory, server: AMIServer
) -> None:
    connections: list[float] = []
    client = make_client(
        ping_interval=0.1,
        ping_timeout=0.3,
        connect_timeout=0.3,
        on_connected=lambda c: connections.append(asyncio.get_running_loop().time()),
    )
    await client.start()
    server.set_silent(True)
    await until(lambda: client.stats.pings_failed >= 1)
    await until(lambda: not client.connected)
    # Reconnect attempts meet a server that accepts but sends no banner.
    await until(lambda: client.stats.connect_failures >= 1)
    server.set_silent(False)
    await until(lambda: len(connections) >= 2)
    assert client.stats.reconnects >= 1 and client.stats.pings_failed >= 1
    assert await client.ping() >= 0


async def test_backoff_is_capped_exponential_with_jitter(make_client: ClientFactory) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    backoff = Backoff(initial=1.0, factor=2.0, maximum=5.0, jitter=0.5)
    client = make_client(port=port, backoff=backoff, random=lambda: 0.5, sleep=record)
    await client.start(wait=False)
    await until(lambda: len(delays) >= 6)
    assert delays[:6] == [0.75, 1.5, 3.0, 3.75, 3.75, 3.75]
    assert client.stats.connect_failures >= 6 and not client.connected
    assert backoff.delay(3, 0.0) == 5.0 and backoff.delay(0, 1.0) == 0.5
    assert backoff.delay(10_000, 0.0) == 5.0


# -- close --------------------------------------------------------------------------------------


async def test_graceful_close_logs_off(client: AMIClient, server: AMIServer) -> None:
    consumed: list[str] = []

    async def consume() -> None:
        async for event in client.events():
            consumed.append(event.name)

    consumer = asyncio.create_task(consume())
    await until(lambda: len(consumed) == 2)
    await client.close()
    await asyncio.wait_for(consumer, 2)  # the iterator ends on close
    await until(lambda: server.logged_in == 0)
    assert not client.connected
    with pytest.raises(ClientClosed):
        await client.action("Ping")
    with pytest.raises(ClientClosed):
        await client.next_event()
    await client.close()  # idempotent


async def test_hook_failure_does_not_kill_the_connection(make_client: ClientFactory) -> None:
    def broken(_client: AMIClient) -> Awaitable[None] | None:
        raise RuntimeError("resync failed")

    client = make_client(on_connected=broken)
    await client.start()
    assert client.connected and await client.ping() >= 0
