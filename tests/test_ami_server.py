"""The simulator's AMI front-end against raw sockets, checked against the real recordings.

The engine here is :class:`~ami_double.EngineDouble`, a small PBX with real (if narrow)
behaviour -- queues with members, channels, Originate with outcomes, UserEvent, Command --
enough to drive the front-end and the client without the full simulator (the ``engine``
and ``server`` fixtures of ``conftest.py``). :class:`RawAMI`, the client that speaks AMI by
hand, serves the client and interop tests too.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from ami_double import SECRET, EngineDouble

from ivr.protocol.ami import Action, AMIParser, Banner, Event, Message, Response, encode_action
from ivr.recording import AmiRecord, read_ami
from ivr.sim.ami_server import ALL_EVENTS, AMIServer, event_category, strings_to_mask
from ivr.sim.api import ActionResult

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"


# -- a raw client: exact bytes in, exact bytes out --------------------------------------------


def parse_one(raw: bytes) -> Message | Banner:
    parser = AMIParser(expect_banner=raw.startswith(b"Asterisk Call Manager/"))
    parser.receive_data(raw)
    messages = parser.events()
    assert len(messages) == 1, raw
    message = messages[0]
    assert isinstance(message, Message | Banner)
    return message


class RawAMI:
    """A socket speaking AMI by hand, keeping each message's exact bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, *, banner: bool = True) -> RawAMI:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        if banner:
            assert await raw.read_banner() == b"Asterisk Call Manager/11.0.0\r\n"
        return raw

    async def read_banner(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 2)

    async def read_raw(self, within: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), within)

    async def read(self, within: float = 2.0) -> Message:
        message = parse_one(await self.read_raw(within))
        assert isinstance(message, Message)
        return message

    async def read_until(self, predicate: Callable[[Message], bool], within: float = 2.0) -> Message:
        async with asyncio.timeout(within):
            while True:
                message = await self.read()
                if predicate(message):
                    return message

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, name: str, action_id: str | None = None, **headers: str) -> None:
        self.writer.write(encode_action(name, action_id, headers))

    async def login(self, secret: str = SECRET, action_id: str = "login-1", **extra: str) -> Response:
        self.send("Login", action_id, Username="ivr", Secret=secret, **extra)
        response = await self.read()
        assert isinstance(response, Response)
        return response

    async def expect_eof(self, within: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.reader.read(), within)

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.reader.readuntil(b"\r\n"), seconds)
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def keys(message: Message | AmiRecord) -> list[str]:
    return (
        [k for k, _v in message.headers()]
        if isinstance(message, AmiRecord)
        else [k for k, _v in message.headers]
    )


def recorded(scenario: str, *, conn: str | None = None, direction: str = "recv") -> list[AmiRecord]:
    records = read_ami(FIXTURES / scenario / "ami.txt")
    return [r for r in records if r.direction == direction and (conn is None or r.conn == conn)]


def recorded_event(scenario: str, name: str) -> AmiRecord:
    return next(r for r in recorded(scenario) if r.get("Event") == name)


def recorded_response(scenario: str, action_id: str) -> AmiRecord:
    return next(r for r in recorded(scenario) if r.get("Response") and r.get("ActionID") == action_id)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
async def session(server: AMIServer) -> AsyncIterator[RawAMI]:
    """A logged-in raw session with the login's FullyBooted and SuccessfulAuth read."""
    raw = await RawAMI.connect(server.port)
    assert (await raw.login()).ok
    await raw.read_until(lambda m: isinstance(m, Event) and m.name == "SuccessfulAuth")
    try:
        yield raw
    finally:
        await raw.close()


# -- login ------------------------------------------------------------------------------------


async def test_banner_comes_first_and_alone(server: AMIServer) -> None:
    raw = await RawAMI.connect(server.port, banner=False)
    assert (
        await raw.read_banner()
        == read_ami(FIXTURES / "actions" / "ami.txt")[0].raw
        == b"Asterisk Call Manager/11.0.0\r\n"
    )
    assert await raw.nothing_within(0.1)
    await raw.close()


async def test_login_answers_like_asterisk(server: AMIServer, engine: EngineDouble) -> None:
    raw = await RawAMI.connect(server.port)
    raw.send("Login", "login-1", Username="ivr", Secret=SECRET)
    assert await raw.read_raw() == recorded_response("actions", "login-1").raw
    booted = await raw.read()
    assert isinstance(booted, Event) and booted.name == "FullyBooted"
    want = recorded_event("actions", "FullyBooted")
    assert keys(booted) == keys(want)
    assert booted["Privilege"] == "system,all" and booted["Status"] == "Fully Booted"
    assert "Timestamp" not in booted
    auth = await raw.read()
    assert isinstance(auth, Event) and auth.name == "SuccessfulAuth"
    assert keys(auth) == keys(recorded_event("actions", "SuccessfulAuth"))
    assert auth["AccountID"] == "ivr" and auth["Severity"] == "Informational" and auth["UsingPassword"] == "0"
    assert auth["RemoteAddress"].startswith("IPV4/TCP/127.0.0.1/")
    assert auth["LocalAddress"] == f"IPV4/TCP/127.0.0.1/{server.port}"
    assert server.logged_in == 1
    await raw.close()


async def test_header_keys_and_user_name_are_case_insensitive(server: AMIServer) -> None:
    raw = await RawAMI.connect(server.port)
    raw.send_raw(b"action: login\r\nactionid: x1\r\nUSERNAME: IVR\r\nsecret: secret\r\n\r\n")
    response = await raw.read()
    assert isinstance(response, Response) and response.ok and response.action_id == "x1"
    await raw.close()


async def test_wrong_secret_fails_late_closes_and_warns_other_sessions(
    server: AMIServer, session: RawAMI
) -> None:
    bad = await RawAMI.connect(server.port)
    started = time.monotonic()
    bad.send("Login", "badlogin-1", Username="ivr", Secret="wrong-secret")
    warning = await session.read()
    assert isinstance(warning, Event) and warning.name == "InvalidPassword"
    assert keys(warning) == keys(recorded_event("actions", "InvalidPassword"))
    assert warning["EventVersion"] == "2" and warning["SessionTV"] == "1970-01-01T00:00:00.000+0000"
    assert await bad.read_raw() == recorded_response("actions", "badlogin-1").raw
    assert time.monotonic() - started >= server.auth_failure_delay
    assert await bad.expect_eof() == b""
    assert server.logged_in == 1
    await bad.close()


async def test_unknown_user_is_refused_with_invalid_account_id(server: AMIServer, session: RawAMI) -> None:
    bad = await RawAMI.connect(server.port)
    bad.send("Login", "l2", Username="mallory", Secret=SECRET)
    warning = await session.read()
    assert isinstance(warning, Event) and warning.name == "InvalidAccountID"
    assert warning["AccountID"] == "mallory"
    response = await bad.read()
    assert isinstance(response, Response) and response.message == "Authentication failed"
    assert await bad.expect_eof() == b""
    await bad.close()


async def test_actions_before_login_are_refused_and_reported(server: AMIServer, session: RawAMI) -> None:
    # main/manager.c process_message: "Permission denied" plus a RequestNotAllowed event.
    anon = await RawAMI.connect(server.port)
    anon.send("Ping", "p1")
    response = await anon.read()
    assert isinstance(response, Response)
    assert (response.status, response.message, response.action_id) == ("Error", "Permission denied", "p1")
    warning = await session.read()
    assert isinstance(warning, Event) and warning.name == "RequestNotAllowed"
    assert warning["RequestType"] == "Action: Ping"
    anon.send("QueueStatus", "q1")
    response = await anon.read()
    assert isinstance(response, Response) and response.message == "Permission denied"
    anon.send("Logoff", "bye")
    response = await anon.read()
    assert isinstance(response, Response) and response.status == "Goodbye"
    assert await anon.expect_eof() == b""
    await anon.close()


async def test_md5_challenge_login(server: AMIServer) -> None:
    raw = await RawAMI.connect(server.port)
    raw.send("Challenge", "c1", AuthType="md5")
    challenge = await raw.read()
    assert isinstance(challenge, Response) and challenge.ok
    key = hashlib.md5((challenge["Challenge"] + SECRET).encode(), usedforsecurity=False).hexdigest()
    raw.send("Login", "l1", Username="ivr", AuthType="MD5", Key=key)
    response = await raw.read()
    assert isinstance(response, Response) and response.message == "Authentication accepted"
    await raw.close()


async def test_login_with_events_off_gets_no_events(server: AMIServer, engine: EngineDouble) -> None:
    raw = await RawAMI.connect(server.port)
    assert (await raw.login(Events="off")).ok
    engine.emit("Newchannel", [("Channel", "Local/x")])
    assert await raw.nothing_within(0.1)  # neither FullyBooted nor the call event
    raw.send("Ping", "p")
    pong = await raw.read()
    assert isinstance(pong, Response) and pong["Ping"] == "Pong"
    await raw.close()


# -- generic actions ---------------------------------------------------------------------------


async def test_ping_carries_a_timestamp(session: RawAMI, engine: EngineDouble) -> None:
    engine._clock = lambda: 1795751481.12859
    session.send("Ping", "main-ping-1")
    pong = await session.read()
    assert keys(pong) == keys(recorded_response("actions", "main-ping-1"))
    assert pong["Timestamp"] == "1795751481.128590"


async def test_logoff_says_goodbye_then_closes(session: RawAMI) -> None:
    session.send("Logoff", "logoff-99")
    assert await session.read_raw() == recorded_response("actions", "logoff-99").raw
    assert await session.expect_eof() == b""


async def test_unknown_action_and_engine_errors(session: RawAMI) -> None:
    session.send("FooBar", "main-foobar-12")
    assert await session.read_raw() == recorded_response("actions", "main-foobar-12").raw
    bad_format = await session.read()
    assert isinstance(bad_format, Event) and bad_format.name == "RequestBadFormat"
    assert keys(bad_format) == keys(recorded_event("actions", "RequestBadFormat"))
    assert bad_format["RequestType"] == "Action: FooBar"
    session.send("Originate", "main-originate-13", Exten="100", Context="public", Priority="1", Async="true")
    assert await session.read_raw() == recorded_response("actions", "main-originate-13").raw


async def test_command_output_lines(session: RawAMI) -> None:
    session.send("Command", "main-command-14", Command="core show version")
    response = await session.read()
    assert keys(response) == keys(recorded_response("actions", "main-command-14"))
    assert isinstance(response, Response) and response.output == ["Asterisk 22.10.1 (double)"]


async def test_events_raised_during_an_action_follow_its_response(session: RawAMI) -> None:
    session.send("UserEvent", "main-userevent-11", UserEvent="IvrTest", Header1="one", Header2="deux")
    response = await session.read()
    assert isinstance(response, Response) and response.message == "Event Sent"
    event = await session.read()
    assert isinstance(event, Event) and event.name == "UserEvent"
    assert keys(event) == keys(recorded_event("actions", "UserEvent"))


async def test_pipelined_actions_answer_in_order(session: RawAMI) -> None:
    session.send_raw(b"".join(encode_action("Ping", f"p{i}") for i in range(300)))
    ids = [(await session.read()).action_id for _ in range(300)]
    assert ids == [f"p{i}" for i in range(300)]


# -- lists -------------------------------------------------------------------------------------


async def test_queue_status_list_is_framed_as_asterisk_does(session: RawAMI) -> None:
    session.send("QueueStatus", "main-queuestatus-1", Queue="support")
    response = await session.read()
    assert keys(response) == keys(recorded_response("member_admin", "main-queuestatus-1"))
    assert response["EventList"] == "start" and response["Message"] == "Queue status will follow"
    items = [await session.read() for _ in range(3)]
    assert [m["Event"] for m in items] == ["QueueParams", "QueueMember", "QueueMember"]
    assert keys(items[0]) == keys(recorded_event("member_admin", "QueueParams"))
    assert keys(items[1]) == keys(recorded_event("member_admin", "QueueMember"))
    complete = await session.read()
    assert keys(complete) == keys(recorded_event("member_admin", "QueueStatusComplete"))
    assert (complete["ActionID"], complete["EventList"], complete["ListItems"]) == (
        "main-queuestatus-1",
        "Complete",
        "3",
    )


async def test_core_show_channel_items_carry_the_action_id_second(
    session: RawAMI, engine: EngineDouble
) -> None:
    engine.channels.append({"Channel": "Local/live@misc-00000000;2", "Uniqueid": "1795751483.1"})
    session.send("CoreShowChannels", "c1")
    response = await session.read()
    assert response["Message"] == "Channels will follow"
    item = await session.read()
    assert keys(item)[:2] == ["Event", "ActionID"] == keys(recorded_event("actions", "CoreShowChannel"))[:2]
    complete = await session.read()
    assert complete["Event"] == "CoreShowChannelsComplete" and complete["ListItems"] == "1"


async def test_list_without_action_id_has_none_anywhere(session: RawAMI) -> None:
    session.send("QueueStatus", None, Queue="overflow")
    messages = [await session.read() for _ in range(4)]
    assert [m.get("Event") or m.get("Response") for m in messages] == [
        "Success",
        "QueueParams",
        "QueueMember",
        "QueueStatusComplete",
    ]
    assert all("ActionID" not in m for m in messages)


# -- events ------------------------------------------------------------------------------------


async def test_engine_events_reach_every_logged_in_session(server: AMIServer, engine: EngineDouble) -> None:
    first, second, anon = [await RawAMI.connect(server.port) for _ in range(3)]
    for raw in (first, second):
        assert (await raw.login()).ok
        await raw.read_until(lambda m: m.get("Event") == "SuccessfulAuth")
    await first.read_until(lambda m: m.get("Event") == "SuccessfulAuth")  # the second login's
    engine.emit("Newchannel", [("Channel", "Local/100@public-00000001;2")])
    for raw in (first, second):
        event = await raw.read()
        assert isinstance(event, Event) and event.name == "Newchannel"
        assert keys(event)[:3] == ["Event", "Privilege", "Timestamp"]
    assert await anon.nothing_within(0.1)
    for raw in (first, second, anon):
        await raw.close()


async def test_events_action_switches_events_off_and_on(session: RawAMI, engine: EngineDouble) -> None:
    session.send("Events", "e1", EventMask="off")
    assert (await session.read())["Events"] == "Off"
    engine.emit("Newchannel", [("Channel", "a")])
    session.send("Events", "e2", EventMask="system,agent")
    assert (await session.read())["Events"] == "On"
    engine.emit("Newchannel", [("Channel", "b")])  # call: filtered
    engine.emit("QueueMemberPause", [("Queue", "support")], "agent,all")
    event = await session.read()
    assert event.get("Event") == "QueueMemberPause"
    session.send("Events", "e3", EventMask="on")
    assert (await session.read())["Events"] == "On"
    engine.emit("Newchannel", [("Channel", "c")])
    event = await session.read()
    assert event.get("Channel") == "c"
    session.send("Events", "e4")
    response = await session.read()
    assert isinstance(response, Response) and response.message == "Invalid event mask"


def test_event_masks_follow_manager_c() -> None:
    assert strings_to_mask(None) == strings_to_mask("") == -1
    assert strings_to_mask("off") == strings_to_mask("no") == 0
    assert strings_to_mask("on") == strings_to_mask("yes") == ALL_EVENTS
    assert strings_to_mask("call,agent") == (1 << 1) | (1 << 5)
    assert strings_to_mask("18") == 18
    assert strings_to_mask("bogus") == 0
    assert event_category([("Privilege", "call,all")]) == 1 << 1
    assert event_category([("Channel", "x")]) == 0


# -- bad input, flow control, fault injection --------------------------------------------------


async def test_malformed_and_oversized_input_get_an_error_and_the_session_goes_on(
    engine: EngineDouble,
) -> None:
    async with AMIServer(engine, secret=SECRET, max_message_size=4096) as srv:
        raw = await RawAMI.connect(srv.port)
        assert (await raw.login()).ok
        await raw.read_until(lambda m: m.get("Event") == "SuccessfulAuth")
        for junk in (
            b"this is not a header\r\n\r\n",
            b"Event: Hello\r\nActionID: z\r\n\r\n",
            b"Action: Ping\r\nX: " + b"y" * 10_000 + b"\r\n\r\n",
        ):
            raw.send_raw(junk)
            error = await raw.read_until(lambda m: isinstance(m, Response))
            assert isinstance(error, Response) and error.message == "Missing action in request"
        raw.send("Ping", "after")
        pong = await raw.read_until(lambda m: isinstance(m, Response))
        assert pong.action_id == "after" and pong["Ping"] == "Pong"
        await raw.close()


async def test_a_client_that_stops_reading_is_dropped_not_buffered(engine: EngineDouble) -> None:
    limit = 64 * 1024
    async with AMIServer(engine, secret=SECRET, max_output_buffer=limit) as srv:
        # A StreamReader we never read from: it stops reading its socket at 2 KiB.
        _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, limit=1024)
        writer.write(encode_action("Login", "l", {"Username": "ivr", "Secret": SECRET}))
        healthy = await RawAMI.connect(srv.port)
        assert (await healthy.login()).ok
        await asyncio.sleep(0.05)
        assert srv.logged_in == 2
        # The healthy client keeps reading throughout, so only the stalled one falls behind.
        pong = asyncio.create_task(healthy.read_until(lambda m: m.action_id == "still-here", within=30))
        payload = [("Data", "x" * 900)]
        for _ in range(20_000):  # ~19 MB offered; the slow session must be cut long before
            engine.emit("VarSet", payload)
            if srv.slow_clients_dropped:
                break
            await asyncio.sleep(0)
            for session in srv.sessions:
                assert session.transport is not None
                assert session.transport.get_write_buffer_size() <= limit + 1024
        assert srv.slow_clients_dropped == 1
        assert srv.logged_in == 1 and len(srv.sessions) == 1  # the stalled socket itself is gone
        healthy.send("Ping", "still-here")
        assert (await pong)["Ping"] == "Pong"
        await healthy.close()
        writer.transport.abort()


async def test_drop_connections_cuts_everyone_but_keeps_listening(server: AMIServer, session: RawAMI) -> None:
    assert server.drop_connections() == 1
    assert await session.expect_eof() == b""
    again = await RawAMI.connect(server.port)
    assert (await again.login()).ok
    await again.close()


async def test_silent_server_answers_nothing_and_closes_nothing(server: AMIServer, session: RawAMI) -> None:
    server.set_silent(True)
    session.send("Ping", "lost")
    assert await session.nothing_within(0.2)
    late = await RawAMI.connect(server.port, banner=False)
    assert await late.nothing_within(0.1)  # not even a banner
    assert server.logged_in == 1
    server.set_silent(False)
    assert await late.read_banner() == b"Asterisk Call Manager/11.0.0\r\n"
    session.send("Ping", "heard")
    pong = await session.read()
    assert pong.action_id == "heard"
    await late.close()


async def test_raw_bytes_injection_reaches_the_socket(server: AMIServer, session: RawAMI) -> None:
    server.send_raw(b"Garbage\r\n\r\n")
    assert await session.read_raw() == b"Garbage\r\n\r\n"


async def test_stop_says_shutdown_and_closes_gracefully(engine: EngineDouble) -> None:
    srv = AMIServer(engine, secret=SECRET)
    await srv.start()
    port = srv.port
    raw = await RawAMI.connect(port)
    assert (await raw.login()).ok
    await raw.read_until(lambda m: m.get("Event") == "SuccessfulAuth")
    await srv.stop()
    shutdown = await raw.read()
    assert shutdown.get("Event") == "Shutdown" and shutdown["Shutdown"] == "Cleanly"
    assert await raw.expect_eof() == b""
    assert engine.listeners == [] and not srv.sessions
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await raw.close()


async def test_engine_exception_becomes_an_error_response(session: RawAMI, engine: EngineDouble) -> None:
    def broken(action: Action) -> ActionResult:
        raise RuntimeError("boom")

    engine._do_brokenaction = broken  # type: ignore[attr-defined]
    session.send("BrokenAction", "b1")
    response = await session.read()
    assert isinstance(response, Response) and response.status == "Error"
    assert response.message == "Internal error: RuntimeError"
    session.send("Ping", "p")
    assert (await session.read()).action_id == "p"


def test_secret_is_required(engine: EngineDouble) -> None:
    with pytest.raises(ValueError):
        AMIServer(engine, secret="")
