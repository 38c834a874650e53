"""Replay of every AMI and FastAGI transcript recorded from a real Asterisk 22.10.1.

The recordings under ``tests/fixtures/asterisk/`` are the protocol truth. Each transcript
is fed through our codecs and the result compared with facts established *without* them:
counts made by scanning the transcript text line by line, and the header pairs and
sessions read by :mod:`ivr.recording`. What we send must come out of our encoders byte
for byte as it was recorded: every AMI action, every FastAGI command, and, on Asterisk's
side (the simulator's codec), every environment block and reply.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from ivr.protocol.agi import (
    NEED_DATA,
    AGIClientConnection,
    AGIEnvironment,
    AGIServerConnection,
    Command,
    HangupNotice,
    Reply,
    ServerState,
    UnknownCommand,
    encode_environment,
    parse_command,
)
from ivr.protocol.ami import CLOSED, Action, AMIParser, Banner, Event, Response, encode_action
from ivr.protocol.errors import RemoteProtocolError
from ivr.recording import AgiExchange, AgiSession, AmiRecord, read_ami, read_fastagi

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
AMI_SCENARIOS = sorted(p.name for p in FIXTURES.iterdir() if (p / "ami.txt").is_file())
AGI_SCENARIOS = sorted(
    p.name for p in FIXTURES.iterdir() if (p / "fastagi.txt").is_file() and (p / "fastagi.txt").stat().st_size
)
HEADER = re.compile(r"=== \S+ (<<< BANNER|>>> SEND|<<< RECV|<<< EOF.*?) \(([^()\s]+)\)$")


def test_every_scenario_is_here() -> None:
    assert len(AMI_SCENARIOS) == 15
    assert {"agi_hangup", "concurrent", "mixed_a", "member_admin", "actions"} <= set(AMI_SCENARIOS)
    assert len(AGI_SCENARIOS) == 11 and "agi_hangup" in AGI_SCENARIOS


# -- AMI -----------------------------------------------------------------------------------


def text_counts(path: Path) -> tuple[Counter[tuple[str, str]], Counter[str]]:
    """Counts straight from the transcript text, without any codec.

    Returns ``(conn, first line)`` of each received message (``Event: X``,
    ``Response: Y``) and the number of blocks per ``conn/tag``.
    """
    firsts: Counter[tuple[str, str]] = Counter()
    blocks: Counter[str] = Counter()
    lines = path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        m = HEADER.match(line)
        if m is None:
            continue
        tag, conn = m.group(1).split(" (")[0], m.group(2)
        blocks[f"{conn}/{tag}"] += 1
        if tag == "<<< RECV":
            firsts[(conn, lines[i + 1])] += 1
    return firsts, blocks


def replay(records: list[AmiRecord], conn: str) -> list[object]:
    """Feed one connection's received bytes, one recorded message per read."""
    mine = [r for r in records if r.conn == conn and r.direction != "send"]
    parser = AMIParser(expect_banner=any(r.direction == "banner" for r in mine))
    out: list[object] = []
    for record in mine:
        parser.receive_data(record.raw)  # b"" for the EOF record: end of stream
        out += parser.events()
    expected = CLOSED if mine[-1].direction == "eof" else NEED_DATA
    assert parser.next_event() is expected  # nothing left over, no error pending
    return out


@pytest.mark.parametrize("scenario", AMI_SCENARIOS)
def test_ami_received_messages(scenario: str) -> None:
    path = FIXTURES / scenario / "ami.txt"
    records = read_ami(path)
    firsts, blocks = text_counts(path)
    conns = list(dict.fromkeys(r.conn for r in records))
    assert conns and conns[0] == "ami-main"
    total = 0
    for conn in conns:
        messages = replay(records, conn)
        recv = [r for r in records if r.conn == conn and r.direction == "recv"]
        banners = [m for m in messages if isinstance(m, Banner)]
        others = [m for m in messages if not isinstance(m, Banner)]
        assert len(banners) == blocks[f"{conn}/<<< BANNER"] <= 1
        assert all(b.version == "11.0.0" for b in banners)
        # Every message parsed, none lost, none invented, in order, headers as recorded.
        assert len(others) == len(recv) == blocks[f"{conn}/<<< RECV"]
        for message, record in zip(others, recv, strict=True):
            assert isinstance(message, Event | Response)
            assert list(message.headers) == record.headers(), record.line
        # Counts per event name and response status, against the plain text scan.
        parsed = Counter(
            f"Event: {m.name}" if isinstance(m, Event) else f"Response: {m.status}"
            for m in others
            if isinstance(m, Event | Response)
        )
        scanned = Counter({first: n for (c, first), n in firsts.items() if c == conn})
        assert parsed == scanned
        total += len(others)
    assert total == sum(n for key, n in blocks.items() if key.endswith("/<<< RECV"))


@pytest.mark.parametrize("scenario", AMI_SCENARIOS)
def test_ami_whole_stream_at_once(scenario: str) -> None:
    records = read_ami(FIXTURES / scenario / "ami.txt")
    main = [r for r in records if r.conn == "ami-main" and r.direction in ("banner", "recv")]
    parser = AMIParser()
    parser.receive_data(b"".join(r.raw for r in main))
    parser.receive_data(b"")
    messages = parser.events()
    assert isinstance(messages[0], Banner)
    assert [list(m.headers) for m in messages[1:] if not isinstance(m, Banner)] == [
        r.headers() for r in main[1:]
    ]
    assert parser.events() == []


@pytest.mark.parametrize("scenario", AMI_SCENARIOS)
def test_ami_actions_re_encoded_byte_for_byte(scenario: str) -> None:
    sent = [r for r in read_ami(FIXTURES / scenario / "ami.txt") if r.direction == "send"]
    assert sent
    for record in sent:
        parser = AMIParser(expect_banner=False)
        parser.receive_data(record.raw)
        (action,) = parser.events()
        assert isinstance(action, Action)
        headers = list(action.headers)
        assert headers[0] == ("Action", action.name)
        if len(headers) > 1 and headers[1][0] == "ActionID":
            action_id, rest = headers[1][1], headers[2:]
        else:
            action_id, rest = None, headers[1:]
        assert encode_action(headers[0][1], action_id, rest) == record.raw, record.line


# -- FastAGI -------------------------------------------------------------------------------


def sessions(scenario: str) -> list[AgiSession]:
    found = read_fastagi(FIXTURES / scenario / "fastagi.txt")
    assert found
    return found


def as_command(exchange: AgiExchange) -> Command:
    """The recorded command line, parsed; an unknown command kept word for word."""
    parsed = parse_command(exchange.command)
    if isinstance(parsed, UnknownCommand):
        assert parsed.words, exchange.command
        return Command(parsed.words[0], parsed.words[1:])
    return parsed


def read_environment(session: AgiSession) -> tuple[AGIServerConnection, AGIEnvironment]:
    conn = AGIServerConnection()
    conn.receive_data(session.env_raw)
    env = conn.next_event()
    assert isinstance(env, AGIEnvironment)
    assert conn.state is ServerState.IDLE
    return conn, env


def raw_env_value(session: AgiSession, key: str) -> str | None:
    """A value straight from the environment bytes, without any codec."""
    m = re.search(rb"^" + re.escape(key.encode()) + rb": (.*)$", session.env_raw, re.M)
    return m.group(1).decode() if m else None


@pytest.mark.parametrize("scenario", AGI_SCENARIOS)
def test_fastagi_environment(scenario: str) -> None:
    for session in sessions(scenario):
        _, env = read_environment(session)
        assert dict(env.variables) == session.env
        script = env.network_script
        assert script == raw_env_value(session, "agi_network_script")
        # The query string stays: it selects the service the caller dialled.
        assert env.get("request").split("/", 3)[3] == script
        if env.script == "ivr":
            assert script == "ivr?service=caf" and env.query == {"service": "caf"}
        numbered = sorted(
            (int(k.removeprefix("agi_arg_")), v) for k, v in session.env.items() if k.startswith("agi_arg_")
        )
        assert env.args == tuple(v for _, v in numbered)
        assert [n for n, _ in numbered] == list(range(1, len(numbered) + 1))
        if env.script in ("after-queue", "exit-key"):
            # The dialplan passes ${QUEUESTATUS}; the script echoed it in a VERBOSE.
            (said,) = (
                m.group(1) for ex in session.exchanges if (m := re.search(r"argument is '(.*)'", ex.command))
            )
            assert env.args[0] == said
        if env.script == "after-queue":
            assert env.args[0] in {"CONTINUE", "TIMEOUT", "JOINEMPTY"}


@pytest.mark.parametrize("scenario", AGI_SCENARIOS)
def test_fastagi_commands_re_encoded_byte_for_byte(scenario: str) -> None:
    for session in sessions(scenario):
        for exchange in session.exchanges:
            assert as_command(exchange).encode() == exchange.command_bytes(), exchange.command


def check_reply(exchange: AgiExchange, events: Sequence[object]) -> Reply:
    notices = [e for e in events if isinstance(e, HangupNotice)]
    replies = [e for e in events if isinstance(e, Reply)]
    assert len(notices) == exchange.replies.count("HANGUP")
    assert len(replies) == 1, exchange.command
    reply = replies[0]
    response = exchange.response
    if response[0].startswith("520-"):
        assert reply.code == 520
        assert reply.usage == tuple(response[1:-1])
        assert response[-1] == "520 End of proper usage."
    else:
        assert len(response) == 1
        assert reply.text == response[0]
        assert reply.code == int(response[0][:3])
    return reply


@pytest.mark.parametrize("pipelined", [False, True], ids=["stepwise", "all-bytes-first"])
@pytest.mark.parametrize("scenario", AGI_SCENARIOS)
def test_fastagi_replies_in_order(scenario: str, pipelined: bool) -> None:
    for session in sessions(scenario):
        conn, _ = read_environment(session)
        if pipelined:  # every reply already buffered: none may be taken for another
            conn.receive_data(session.reply_bytes())
        for exchange in session.exchanges:
            conn.send(as_command(exchange))
            if not pipelined:
                conn.receive_data(exchange.reply_bytes())
            events: list[object] = []
            while not any(isinstance(e, Reply) for e in events):
                event = conn.next_event()
                assert event is not NEED_DATA, exchange.command
                events.append(event)
            check_reply(exchange, events)
        assert conn.state is ServerState.IDLE
        assert conn.next_event() is NEED_DATA
        assert conn.hung_up == any(e.hangup_notified for e in session.exchanges)


def test_agi_hangup_scenario_keeps_replies_aligned() -> None:
    (session,) = sessions("agi_hangup")
    conn, _ = read_environment(session)
    replies: list[tuple[str, object]] = []
    for exchange in session.exchanges:
        conn.send(as_command(exchange))
        conn.receive_data(exchange.reply_bytes())
        while (event := conn.next_event()) is not NEED_DATA:
            replies.append((exchange.command, event))
    commands = [c for c, _ in replies]
    i = commands.index("GET VARIABLE CALLERID(num)")
    # The unsolicited HANGUP comes first, then the variable's value: not shifted.
    assert isinstance(replies[i][1], HangupNotice)
    value = replies[i + 1][1]
    assert isinstance(value, Reply) and value.code == 200 and value.data == "0699999999"
    dead = [r for c, r in replies[i + 2 :] if isinstance(r, Reply)]
    assert [r.code for r in dead] == [511, 200, 511, 511, 200, 510, 520, 511]
    usage = [r for r in dead if r.code == 520]
    assert usage[0].usage == ("Sets a variable to the current channel.",)
    assert conn.hung_up


@pytest.mark.parametrize("scenario", AGI_SCENARIOS)
def test_fastagi_asterisk_side_reproduces_the_bytes(scenario: str) -> None:
    """The simulator's codec writes what Asterisk wrote, and reads what we wrote."""
    for session in sessions(scenario):
        client = AGIClientConnection()
        assert client.start(list(session.env.items())) == session.env_raw
        assert encode_environment(session.env) == session.env_raw
        client.receive_data(session.command_bytes())
        server, _ = read_environment(session)
        for exchange in session.exchanges:
            command = client.next_event()
            assert command == parse_command(exchange.command)
            server.send(as_command(exchange))
            server.receive_data(exchange.reply_bytes())
            events = []
            while (event := server.next_event()) is not NEED_DATA:
                events.append(event)
            reply = check_reply(exchange, events)
            wire = client.reply(
                reply.code,
                reply.result,
                reply.data,
                reply.endpos,
                reply.usage,
                hangup_first=exchange.hangup_notified,
            )
            assert wire == exchange.reply_bytes(), exchange.command
        assert client.next_event() is NEED_DATA


def test_fastagi_stream_errors_are_not_silent() -> None:
    """A recorded session cut inside its environment block is an error, not an empty env."""
    session = sessions("agi_hangup")[0]
    conn = AGIServerConnection()
    conn.receive_data(session.env_raw[: len(session.env_raw) // 2])
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
