"""Property tests of the protocol codecs: chunking, hostile input, bounded memory.

* However a recorded stream is cut into reads, the codecs give the same messages.
* Arbitrary bytes make the parsers raise :class:`RemoteProtocolError` and nothing else,
  never loop forever, and end with CLOSED at end of stream.
* Whatever arrives, the bytes a parser keeps stay within its documented bound.

Examples are kept moderate so that the whole file runs in seconds.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path
from typing import Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivr.protocol.agi import (
    CLOSED as AGI_CLOSED,
)
from ivr.protocol.agi import (
    NEED_DATA as AGI_NEED_DATA,
)
from ivr.protocol.agi import (
    AGIClientConnection,
    AGIEnvironment,
    AGIServerConnection,
    Command,
    HangupNotice,
    Reply,
    ServerState,
    UnknownCommand,
    answer,
    parse_command,
)
from ivr.protocol.ami import CLOSED, NEED_DATA, AMIParser, encode_event
from ivr.protocol.errors import RemoteProtocolError
from ivr.recording import AgiSession, read_ami, read_fastagi

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
# The two largest recordings (0.4 and 0.8 MB) would make each example slow; the others
# hold every kind of message the large ones do.
AMI_STREAMS = ["abandoned", "actions", "agi_hangup", "callback_originate_fail", "join_empty", "member_admin"]
AGI_STREAMS = ["agi_hangup", "answered", "exit_with_key", "timeout"]

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def ami_stream(scenario: str) -> bytes:
    records = read_ami(FIXTURES / scenario / "ami.txt")
    return b"".join(r.raw for r in records if r.conn == "ami-main" and r.direction in ("banner", "recv"))


def ami_outcome(
    chunks: list[bytes],
    *,
    bulk: bool = True,
    expect_banner: bool = True,
    max_message_size: int = 256 * 1024,
    max_line_size: int = 64 * 1024,
) -> list[object]:
    """Messages (as header tuples) and errors (as a marker) a parser gives for these reads."""
    parser = AMIParser(
        expect_banner=expect_banner, max_message_size=max_message_size, max_line_size=max_line_size
    )
    out: list[object] = []

    def drain() -> None:
        for _ in range(100_000):
            try:
                if bulk:
                    batch = parser.events()
                    if not batch:
                        return
                    out.extend(getattr(m, "headers", None) or getattr(m, "text", None) for m in batch)
                else:
                    msg = parser.next_event()
                    if msg is NEED_DATA or msg is CLOSED:
                        return
                    out.append(getattr(msg, "headers", None) or getattr(msg, "text", None))
            except RemoteProtocolError:
                out.append("error")
        raise AssertionError("parser loops")

    for chunk in chunks:
        parser.receive_data(chunk)
        drain()
        assert len(parser.trailing_data) <= max_message_size + 1
    parser.receive_data(b"")
    drain()
    assert parser.next_event() is CLOSED
    return out


def cut(data: bytes, positions: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in positions})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


@cache
def ami_reference(scenario: str) -> list[object]:
    out = ami_outcome([ami_stream(scenario)])
    assert "error" not in out
    return out


@SETTINGS
@given(st.sampled_from(AMI_STREAMS), st.lists(st.integers(min_value=0), max_size=80))
def test_ami_any_chunking_gives_the_same_messages(scenario: str, positions: list[int]) -> None:
    data = ami_stream(scenario)
    assert ami_outcome(cut(data, positions)) == ami_reference(scenario)


@SETTINGS
@given(st.sampled_from(AMI_STREAMS), st.integers(min_value=1, max_value=9), st.randoms(use_true_random=False))
def test_ami_small_reads_and_mixed_line_ends(scenario: str, step: int, rnd: random.Random) -> None:
    data = ami_stream(scenario)[:6000]
    # Rewrite some messages with bare LF: a peer may mix both.
    parts = data.split(b"\r\n\r\n")
    mixed = b"".join(
        (p.replace(b"\r\n", b"\n") + b"\n\n" if rnd.random() < 0.5 else p + b"\r\n\r\n") for p in parts[:-1]
    )
    expected = ami_outcome([b"".join(p + b"\r\n\r\n" for p in parts[:-1])])
    chunks = [mixed[i : i + step] for i in range(0, len(mixed), step)]
    assert ami_outcome(chunks) == expected
    assert ami_outcome(chunks, bulk=False) == expected


HOSTILE_PIECES = [
    b"Event: X\r\n",
    b"Response: Success\r\n",
    b"Action: Ping\r\n",
    b"Key: value\r\n",
    b"Key:value\n",
    b": no key\r\n",
    b"no colon\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"\n\r\n",
    b": ",
    b"Asterisk Call Manager/11.0.0\r\n",
    b"\xff\xfe",
    "é".encode(),
]


hostile_bytes = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.one_of(st.sampled_from(HOSTILE_PIECES), st.binary(max_size=40)), max_size=120).map(b"".join),
)


@SETTINGS
@given(hostile_bytes, st.lists(st.integers(min_value=0), max_size=30), st.booleans())
def test_ami_arbitrary_bytes_only_raise_remote_protocol_error(
    data: bytes, positions: list[int], banner: bool
) -> None:
    chunks = cut(data, positions)
    bulk = ami_outcome(chunks, expect_banner=banner, max_message_size=300, max_line_size=80)
    # The bulk path and the one-at-a-time path agree, errors included.
    one_by_one = ami_outcome(chunks, bulk=False, expect_banner=banner, max_message_size=300, max_line_size=80)
    assert one_by_one == bulk
    assert ami_outcome(chunks, expect_banner=banner) == ami_outcome([data], expect_banner=banner)


header_key = st.text(
    st.characters(
        min_codepoint=33, max_codepoint=0x2FF, blacklist_characters=":", blacklist_categories=SURROGATES
    ),
    min_size=1,
    max_size=12,
).filter(lambda key: key.strip() == key)
header_value = st.text(
    st.characters(blacklist_characters="\r\n\0", blacklist_categories=SURROGATES), max_size=30
)


@SETTINGS
@given(
    st.lists(st.lists(st.tuples(header_key, header_value), max_size=8), min_size=1, max_size=5),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_ami_encoded_messages_come_back_unchanged(
    messages: list[list[tuple[str, str]]], positions: list[int]
) -> None:
    data = b"".join(encode_event(f"E{i}", headers) for i, headers in enumerate(messages))
    got = ami_outcome(cut(data, positions), expect_banner=False)
    assert got == [(("Event", f"E{i}"), *headers) for i, headers in enumerate(messages)]


def test_ami_megabytes_of_garbage_without_blank_line_stay_bounded() -> None:
    rnd = random.Random(7)
    parser = AMIParser(expect_banner=False, max_message_size=64 * 1024, max_line_size=8 * 1024)
    errors = 0
    for _ in range(128):  # 8 MiB
        chunk = bytearray(rnd.randbytes(64 * 1024).replace(b"\n", b"x"))
        for i in range(0, len(chunk), 100):
            chunk[i] = ord("\n")  # lines, but never an empty one
        parser.receive_data(bytes(chunk))
        while True:
            try:
                if not parser.events():
                    break
            except RemoteProtocolError:
                errors += 1
        assert len(parser.trailing_data) <= 64 * 1024 + 1
    assert errors >= 1
    parser.receive_data(b"\r\n\r\nEvent: Recovered\r\n\r\n")
    assert [getattr(m, "name", None) for m in parser.events()] == ["Recovered"]


# -- FastAGI ---------------------------------------------------------------------------------


@cache
def agi_sessions(scenario: str) -> list[AgiSession]:
    return read_fastagi(FIXTURES / scenario / "fastagi.txt")


def as_command(line: str) -> Command:
    parsed = parse_command(line)
    if isinstance(parsed, UnknownCommand):
        return Command(parsed.words[0], parsed.words[1:])
    return parsed


def agi_outcome(session: AgiSession, chunks: list[bytes]) -> list[object]:
    """Events of the controller's side, sending each recorded command as soon as it may."""
    conn = AGIServerConnection()
    commands = [as_command(ex.command) for ex in session.exchanges]
    out: list[object] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            if conn.state is ServerState.IDLE and commands:
                conn.send(commands.pop(0))
            event = conn.next_event()
            if event is AGI_NEED_DATA:
                break
            if isinstance(event, AGIEnvironment):
                out.append(dict(event.variables))
            elif isinstance(event, Reply):
                out.append((event.code, event.text, event.usage))
            else:
                assert isinstance(event, HangupNotice)
                out.append("HANGUP")
    assert not commands
    return out


@SETTINGS
@given(st.sampled_from(AGI_STREAMS), st.data())
def test_agi_any_chunking_gives_the_same_events(scenario: str, data: st.DataObject) -> None:
    session = data.draw(st.sampled_from(agi_sessions(scenario)))
    wire = session.wire_bytes()
    positions = data.draw(st.lists(st.integers(min_value=0), max_size=60))
    expected = agi_outcome(session, [wire])
    assert len([e for e in expected if isinstance(e, tuple)]) == len(session.exchanges)
    assert agi_outcome(session, cut(wire, positions)) == expected


agi_hostile = st.one_of(
    st.binary(max_size=2000),
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    b"agi_channel: x\n",
                    b"agi_arg_1: y\n",
                    b"\n",
                    b"\r\n",
                    b"200 result=0\n",
                    b"200 result=1 (v) endpos=3\n",
                    b"200 junk\n",
                    b"100 result=0 Trying...\n",
                    b"HANGUP\n",
                    b"510 Invalid or unknown command\n",
                    b"520-Invalid command syntax.  Proper usage follows:\n",
                    b"520 End of proper usage.\n",
                    b"garbage\n",
                ]
            ),
            st.binary(max_size=30),
        ),
        max_size=80,
    ).map(b"".join),
)


@SETTINGS
@given(agi_hostile, st.lists(st.integers(min_value=0), max_size=30))
def test_agi_server_arbitrary_bytes_only_raise_remote_protocol_error(
    data: bytes, positions: list[int]
) -> None:
    conn = AGIServerConnection(max_line=64, max_env_lines=8, max_usage_lines=4)
    for chunk in [*cut(data, positions), b""]:
        conn.receive_data(chunk)
        for _ in range(10_000):
            if conn.state is ServerState.IDLE:
                conn.send(answer())  # never a LocalProtocolError: we only send when idle
            try:
                event = conn.next_event()
            except RemoteProtocolError:
                continue
            if event is AGI_NEED_DATA or event is AGI_CLOSED:
                break
        else:
            raise AssertionError("connection loops")
        assert len(conn.trailing_data) <= 65
    assert conn.next_event() is AGI_CLOSED


@SETTINGS
@given(agi_hostile, st.lists(st.integers(min_value=0), max_size=30))
def test_agi_client_arbitrary_bytes_only_raise_remote_protocol_error(
    data: bytes, positions: list[int]
) -> None:
    client = AGIClientConnection(max_line=64)
    for chunk in [*cut(data, positions), b""]:
        client.receive_data(chunk)
        for _ in range(10_000):
            try:
                event = client.next_event()
            except RemoteProtocolError:
                continue
            if event is AGI_NEED_DATA or event is AGI_CLOSED:
                break
            assert isinstance(event, Command | UnknownCommand)
            client.reply(510 if isinstance(event, UnknownCommand) else 200, 0)
        else:
            raise AssertionError("connection loops")
        assert len(client.trailing_data) <= 64
    assert client.next_event() is AGI_CLOSED


def test_agi_megabytes_without_line_end_stay_bounded() -> None:
    rnd = random.Random(3)
    conn = AGIServerConnection(max_line=4096)
    errors = 0
    for _ in range(64):  # 4 MiB
        conn.receive_data(rnd.randbytes(64 * 1024).replace(b"\n", b"x"))
        while True:
            try:
                if conn.next_event() is AGI_NEED_DATA:
                    break
            except RemoteProtocolError:
                errors += 1
        assert len(conn.trailing_data) <= 4097
    assert errors >= 1
    conn.receive_data(b"\nagi_channel: x\n\n")
    env = conn.next_event()
    assert isinstance(env, AGIEnvironment) and env.channel == "x"
