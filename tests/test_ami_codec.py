"""Unit tests of the sans-I/O AMI codec (:mod:`ivr.protocol.ami`, :mod:`ivr.protocol.ami_list`).

One test class per kind of input: well-formed streams in every framing Asterisk or a
peer may use, each class of bad input (it must give a clear error and lose nothing
else), the size bounds, the encoders' refusals, and the list collector on the list
replies recorded from the real Asterisk 22.10.1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.protocol.ami import (
    ASTERISK_MAX_ACTION_HEADERS,
    ASTERISK_MAX_ACTION_LINE,
    CLOSED,
    NEED_DATA,
    Action,
    AMIMessage,
    AMIParser,
    Banner,
    Event,
    Response,
    encode_action,
    encode_banner,
    encode_event,
    encode_message,
    encode_response,
)
from ivr.protocol.ami_list import ListCollector, ListResult
from ivr.protocol.errors import LocalProtocolError, RemoteProtocolError
from ivr.recording import AmiRecord, read_ami

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
PING = b"Response: Success\r\nActionID: p-1\r\nPing: Pong\r\nTimestamp: 1795751481.128590\r\n\r\n"
JOIN = (
    b"Event: QueueCallerJoin\r\nPrivilege: agent,all\r\nTimestamp: 1795751440.250421\r\n"
    b"Channel: Local/100@public-00000000;2\r\nQueue: support\r\nPosition: 1\r\nCount: 1\r\n\r\n"
)
HANGUP = (
    b"Event: Hangup\r\nChannel: Local/100@public-00000000;2\r\nCause: 16\r\n"
    b"Cause-txt: Normal Clearing\r\n\r\n"
)


def drain(parser: AMIParser) -> list[AMIMessage | RemoteProtocolError]:
    """Every message and error the parser has now, in order (errors in their place)."""
    out: list[AMIMessage | RemoteProtocolError] = []
    for _ in range(10_000):
        try:
            batch = parser.events()
        except RemoteProtocolError as exc:
            out.append(exc)
            continue
        if not batch:
            return out
        out.extend(batch)
    raise AssertionError("parser did not settle")


def parse(data: bytes, *, banner: bool = False, eof: bool = True, **limits: int) -> list[object]:
    parser = AMIParser(expect_banner=banner, **limits)
    parser.receive_data(data)
    if eof:
        parser.receive_data(b"")
    return list(drain(parser))


def only_messages(items: list[object]) -> list[AMIMessage]:
    return [m for m in items if isinstance(m, Banner | Event | Response | Action)]


def errors(items: list[object]) -> list[RemoteProtocolError]:
    return [m for m in items if isinstance(m, RemoteProtocolError)]


class TestFraming:
    def test_banner_then_messages_with_crlf(self) -> None:
        items = parse(BANNER + PING + JOIN, banner=True)
        assert [type(m) for m in items] == [Banner, Response, Event]
        banner, ping, join = items
        assert isinstance(banner, Banner) and banner.version == "11.0.0"
        assert isinstance(ping, Response) and ping.ok and ping.action_id == "p-1"
        assert isinstance(join, Event) and join.name == "QueueCallerJoin"
        assert join.timestamp == pytest.approx(1795751440.250421)
        assert join["Position"] == "1" and join.get("count") == "1"

    def test_bare_lf_gives_the_same_messages(self) -> None:
        crlf = parse(BANNER + PING + JOIN, banner=True)
        lf = parse((BANNER + PING + JOIN).replace(b"\r\n", b"\n"), banner=True)
        assert lf == crlf

    def test_mixed_line_ends_in_one_stream(self) -> None:
        mixed = PING.replace(b"\r\n", b"\n") + JOIN + HANGUP.replace(b"\r\n", b"\n", 2)
        assert parse(mixed) == parse(PING + JOIN + HANGUP)

    def test_bare_lf_inside_a_crlf_message_ends_the_line(self) -> None:
        (event,) = parse(b"Event: A\r\nX: 1\nY: 2\r\n\r\n")
        assert isinstance(event, Event) and dict(event.fields) == {"Event": "A", "X": "1", "Y": "2"}

    def test_crlf_split_anywhere_across_two_reads(self) -> None:
        data = PING + JOIN
        whole = parse(data, eof=False)
        for cut in range(1, len(data)):
            parser = AMIParser(expect_banner=False)
            parser.receive_data(data[:cut])
            first = drain(parser)
            parser.receive_data(data[cut:])
            assert first + drain(parser) == whole, cut

    def test_byte_by_byte(self) -> None:
        data = BANNER + PING + JOIN + HANGUP
        parser = AMIParser()
        got: list[object] = []
        for i in range(len(data)):
            parser.receive_data(data[i : i + 1])
            got += drain(parser)
        assert got == parse(data, banner=True, eof=False)

    def test_banner_has_no_blank_line_and_may_share_a_read_with_a_message(self) -> None:
        parser = AMIParser()
        parser.receive_data(BANNER[:10])
        assert parser.next_event() is NEED_DATA
        parser.receive_data(BANNER[10:] + PING[:5])
        assert isinstance(parser.next_event(), Banner)
        assert parser.next_event() is NEED_DATA
        parser.receive_data(PING[5:])
        assert isinstance(parser.next_event(), Response)
        assert parser.next_event() is NEED_DATA

    def test_wrong_banner_is_an_error_and_messages_follow(self) -> None:
        items = parse(b"SSH-2.0-OpenSSH_9.2\r\n" + PING, banner=True)
        assert len(errors(items)) == 1 and "banner" in str(items[0])
        assert [type(m) for m in only_messages(items)] == [Response]

    def test_banner_cut_by_end_of_stream(self) -> None:
        assert parse(b"Asterisk Call Manager/11.0.0", banner=True) == [Banner("Asterisk Call Manager/11.0.0")]

    def test_endless_banner_line_is_bounded(self) -> None:
        parser = AMIParser(max_line_size=64, max_message_size=128)
        parser.receive_data(b"x" * 100)
        with pytest.raises(RemoteProtocolError, match="banner"):
            parser.events()
        assert len(parser.trailing_data) <= 129
        parser.receive_data(b"\r\n\r\n" + PING)
        assert [type(m) for m in drain(parser)] == [Response]

    def test_stray_blank_lines_between_messages_are_ignored(self) -> None:
        data = b"\r\n" + PING + b"\r\n\r\n" + JOIN + b"\n\n" + HANGUP
        assert parse(data) == parse(PING + JOIN + HANGUP)

    def test_lone_cr_is_data(self) -> None:
        (event,) = parse(b"Event: A\r\nX: a\rb\r\n\r\n")
        assert isinstance(event, Event) and event["X"] == "a\rb"

    def test_next_event_and_iteration(self) -> None:
        parser = AMIParser(expect_banner=False)
        assert parser.next_event() is NEED_DATA
        parser.receive_data(PING + JOIN)
        assert [type(m) for m in parser] == [Response, Event]
        assert parser.next_event() is NEED_DATA
        parser.receive_data(b"")
        assert parser.next_event() is CLOSED
        assert parser.events() == []

    def test_receive_after_end_of_stream_is_a_bug(self) -> None:
        parser = AMIParser(expect_banner=False)
        parser.receive_data(b"")
        with pytest.raises(RuntimeError):
            parser.receive_data(PING)

    def test_limits_must_be_consistent(self) -> None:
        with pytest.raises(ValueError):
            AMIParser(max_line_size=100, max_message_size=50)


class TestHeaders:
    def test_repeated_keys_keep_order_and_last_value_wins_in_fields(self) -> None:
        data = b"Response: Success\r\nActionID: c\r\nOutput: one\r\nOutput: two\r\nOutput: \r\n\r\n"
        (resp,) = parse(data)
        assert isinstance(resp, Response)
        assert resp.output == ["one", "two", ""]
        assert resp.headers == (
            ("Response", "Success"),
            ("ActionID", "c"),
            ("Output", "one"),
            ("Output", "two"),
            ("Output", ""),
        )
        assert resp.fields["Output"] == ""

    def test_values_keep_colons_spaces_and_trailing_blanks(self) -> None:
        data = (
            b"Event: X\r\nMessage: Queue status: will follow\r\nAccountCode: \r\nData:  two spaces \r\n\r\n"
        )
        (event,) = parse(data)
        assert isinstance(event, Event)
        assert event["Message"] == "Queue status: will follow"
        assert event["AccountCode"] == ""
        assert event["Data"] == " two spaces "

    def test_key_colon_value_without_space(self) -> None:
        (event,) = parse(b"Event:Compact\r\nKey:value: more\r\nEmpty:\r\n\r\n")
        assert isinstance(event, Event) and event.name == "Compact"
        # A line with ": " splits there; only a line without one splits at its first colon.
        assert dict(event.fields) == {"Event": "Compact", "Key:value": "more", "Empty": ""}

    def test_case_insensitive_lookup_and_message_kind(self) -> None:
        (event, action) = parse(b"EVENT: Foo\r\nACTIONID: 7\r\n\r\naction: Ping\r\n\r\n")
        assert isinstance(event, Event) and event.name == "Foo" and event.action_id == "7"
        assert "actionid" in event and "nope" not in event
        assert isinstance(action, Action) and action.name == "Ping"
        with pytest.raises(KeyError):
            event["nope"]

    def test_non_ascii_values(self) -> None:
        (event,) = parse("Event: Newchannel\r\nCallerIDName: Hélène Dupré\r\n\r\n".encode())
        assert isinstance(event, Event) and event["CallerIDName"] == "Hélène Dupré"

    def test_invalid_utf8_is_replaced_not_fatal(self) -> None:
        (event,) = parse(b"Event: X\r\nName: a\xffb\r\n\r\n")
        assert isinstance(event, Event) and event["Name"] == "a\ufffdb"

    def test_messages_are_immutable(self) -> None:
        (event,) = parse(JOIN)
        assert isinstance(event, Event)
        with pytest.raises(AttributeError):
            event.name = "Other"  # type: ignore[misc]


class TestBadInput:
    """Each bad message raises RemoteProtocolError once; every other message survives."""

    @pytest.mark.parametrize(
        "bad",
        [
            b"Event: X\r\nthis line has no colon\r\n\r\n",
            b"Event: X\r\n: empty key\r\n\r\n",
            b"Garbage: first key is not Event/Response/Action\r\nA: b\r\n\r\n",
            b"\x00\x01\x02 binary junk\r\n\r\n",
            b"Event: X\r\nok: 1\r\nGET / HTTP/1.1\r\n\r\n",
        ],
    )
    def test_garbage_message_is_dropped_alone(self, bad: bytes) -> None:
        items = parse(PING + bad + JOIN)
        assert [type(m) for m in items] == [Response, RemoteProtocolError, Event]

    def test_garbage_line_with_a_colon_value_elsewhere_is_still_caught(self) -> None:
        # One line too few ": " and one too many: the counts balance, the message is still bad.
        items = parse(b"Event: X\r\nno separator here\r\nMessage: a: b\r\n\r\n" + JOIN)
        assert [type(m) for m in items] == [RemoteProtocolError, Event]

    def test_events_returns_what_precedes_an_error_then_raises_then_resumes(self) -> None:
        parser = AMIParser(expect_banner=False)
        parser.receive_data(PING + b"Bogus\r\n\r\n" + JOIN + HANGUP)
        first = parser.events()
        assert [type(m) for m in first] == [Response]
        with pytest.raises(RemoteProtocolError, match="Bogus"):
            parser.events()
        assert [m.name for m in parser.events() if isinstance(m, Event)] == ["QueueCallerJoin", "Hangup"]
        assert parser.events() == []

    def test_next_event_raises_in_place(self) -> None:
        parser = AMIParser(expect_banner=False)
        parser.receive_data(b"Bogus\r\n\r\n" + JOIN)
        with pytest.raises(RemoteProtocolError):
            parser.next_event()
        assert isinstance(parser.next_event(), Event)

    def test_end_of_stream_inside_a_message(self) -> None:
        parser = AMIParser(expect_banner=False)
        parser.receive_data(PING + JOIN[:40])
        assert [type(m) for m in parser.events()] == [Response]
        parser.receive_data(b"")
        with pytest.raises(RemoteProtocolError, match="closed inside a message"):
            parser.events()
        assert parser.next_event() is CLOSED

    def test_end_of_stream_after_a_single_line_end(self) -> None:
        items = parse(JOIN[:-2])  # the closing blank line never came
        assert len(items) == 1 and isinstance(items[0], RemoteProtocolError)

    def test_end_of_stream_after_blank_lines_only(self) -> None:
        assert parse(PING + b"\r\n\r\n") == parse(PING)


class TestSizeBounds:
    def test_message_over_the_limit_in_one_read(self) -> None:
        big = b"Event: Big\r\n" + b"".join(b"K%d: %s\r\n" % (i, b"v" * 50) for i in range(40)) + b"\r\n"
        items = parse(PING + big + JOIN, max_message_size=1024, max_line_size=256)
        assert [type(m) for m in items] == [Response, RemoteProtocolError, Event]
        assert "1024" in str(items[1])

    def test_message_over_the_limit_arriving_in_pieces(self) -> None:
        big = b"Event: Big\r\n" + b"".join(b"K%d: %s\r\n" % (i, b"v" * 50) for i in range(40)) + b"\r\n"
        parser = AMIParser(expect_banner=False, max_message_size=1024, max_line_size=256)
        got: list[object] = []
        data = PING + big + JOIN
        for i in range(0, len(data), 100):
            parser.receive_data(data[i : i + 100])
            got += drain(parser)
            assert len(parser.trailing_data) <= 1025
        assert [type(m) for m in got] == [Response, RemoteProtocolError, Event]

    @pytest.mark.parametrize(("size", "kept"), [(1024, True), (1025, False)])
    @pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
    def test_limit_is_exact_however_the_message_is_cut(self, size: int, kept: bool, eol: bytes) -> None:
        # The size counts the header lines with their line ends, not the closing blank line.
        head = b"Event: Edge" + eol + b"Pad: "
        msg = head + b"p" * (size - len(head) - len(eol)) + eol
        assert len(msg) == size
        expected = [Event, Event] if kept else [RemoteProtocolError, Event]
        for step in (1, 7, 1000, 2000):
            parser = AMIParser(expect_banner=False, max_message_size=1024, max_line_size=1024)
            got: list[object] = []
            data = msg + eol + JOIN
            for i in range(0, len(data), step):
                parser.receive_data(data[i : i + step])
                got += drain(parser)
                assert len(parser.trailing_data) <= 1025
            assert [type(m) for m in got] == expected, step

    def test_line_over_the_limit(self) -> None:
        long_line = b"Event: Long\r\nData: " + b"x" * 300 + b"\r\n\r\n"
        items = parse(PING + long_line + JOIN, max_message_size=4096, max_line_size=256)
        assert [type(m) for m in items] == [Response, RemoteProtocolError, Event]
        assert "line" in str(items[1])

    def test_sizes_count_bytes_not_characters(self) -> None:
        msg = ("Event: X\r\nName: " + "é" * 100 + "\r\n\r\n").encode()  # 200 bytes of value
        items = parse(msg + JOIN, max_message_size=4096, max_line_size=150)
        assert [type(m) for m in items] == [RemoteProtocolError, Event]

    def test_garbage_without_blank_line_keeps_the_buffer_bounded(self) -> None:
        parser = AMIParser(expect_banner=False, max_message_size=4096, max_line_size=1024)
        for _ in range(200):
            parser.receive_data(b"no blank line here\r\n" * 50)
            drain(parser)
            assert len(parser.trailing_data) <= 4097
        parser.receive_data(b"\r\n\r\n" + JOIN)
        assert [type(m) for m in drain(parser)] == [Event]


class TestEncoding:
    def test_action_round_trip(self) -> None:
        headers: dict[str, str | bool | list[str]] = {
            "Channel": "Local/291@agents",
            "Variable": ["A=1", "B=2"],
            "Async": True,
        }
        data = encode_action("Originate", "o-1", headers)
        assert data == (
            b"Action: Originate\r\nActionID: o-1\r\nChannel: Local/291@agents\r\n"
            b"Variable: A=1\r\nVariable: B=2\r\nAsync: true\r\n\r\n"
        )
        (action,) = parse(data)
        assert isinstance(action, Action) and action.name == "Originate"
        assert action.getall("Variable") == ["A=1", "B=2"]

    def test_event_and_response_round_trip(self) -> None:
        pairs: list[tuple[str, str | int | float]] = [("Queue", "support"), ("Count", 3), ("Holdtime", 1.5)]
        (event,) = parse(encode_event("QueueParams", pairs))
        assert isinstance(event, Event) and event.headers[1:] == (
            ("Queue", "support"),
            ("Count", "3"),
            ("Holdtime", "1.5"),
        )
        (resp,) = parse(encode_response("Error", "x-1", {"Message": "No such channel"}))
        assert isinstance(resp, Response) and not resp.ok and resp.message == "No such channel"
        assert resp.headers[:2] == (("Response", "Error"), ("ActionID", "x-1"))

    def test_banner(self) -> None:
        assert encode_banner() == BANNER
        with pytest.raises(LocalProtocolError):
            encode_banner("11.0.0\r\nEvent: Fake")

    @pytest.mark.parametrize("value", ["a\r\nEvent: Injected", "a\nb", "a\rb", "a\x00b", "\r\n\r\n"])
    def test_header_injection_in_a_value_is_refused(self, value: str) -> None:
        with pytest.raises(LocalProtocolError):
            encode_action("Getvar", "g-1", {"Variable": value})
        with pytest.raises(LocalProtocolError):
            encode_action("Getvar", value)
        with pytest.raises(LocalProtocolError):
            encode_action(value)
        with pytest.raises(LocalProtocolError):
            encode_event("X", [("Value", value)])

    @pytest.mark.parametrize(
        "key", ["", "Bad:Key", "Bad\r\nKey", "Bad\nKey", " Padded", "Padded ", "N\x00UL"]
    )
    def test_invalid_key_is_refused(self, key: str) -> None:
        with pytest.raises(LocalProtocolError):
            encode_action("Ping", "p", {key: "v"})

    def test_unsupported_value_types_are_refused(self) -> None:
        with pytest.raises(LocalProtocolError):
            encode_action("Ping", "p", {"Data": None})  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError):
            encode_action("Ping", "p", {"Data": b"raw"})

    def test_empty_message_is_refused(self) -> None:
        with pytest.raises(LocalProtocolError):
            encode_message([])

    def test_action_line_limit_is_asterisks_1024_bytes(self) -> None:
        # "Data: " + value + CRLF: 8 bytes of framing.
        assert ASTERISK_MAX_ACTION_LINE == 1024
        ok = encode_action("UserEvent", "u", {"Data": "v" * (1024 - 8)})
        assert max(len(line) + 2 for line in ok.split(b"\r\n")) == 1024
        with pytest.raises(LocalProtocolError, match="1024"):
            encode_action("UserEvent", "u", {"Data": "v" * (1024 - 7)})
        with pytest.raises(LocalProtocolError):  # counted in bytes: é is two
            encode_action("UserEvent", "u", {"Data": "é" * 510})
        # Events and responses are what Asterisk writes: no such limit.
        assert len(encode_event("UserEvent", {"Data": "v" * 5000})) > 5000

    def test_action_header_count_limit(self) -> None:
        assert ASTERISK_MAX_ACTION_HEADERS == 128
        encode_action("Originate", "o", [("Variable", f"V{i}=1") for i in range(126)])
        with pytest.raises(LocalProtocolError, match="128"):
            encode_action("Originate", "o", [("Variable", f"V{i}=1") for i in range(127)])


# -- list actions, on the recorded replies ---------------------------------------------------

LIST_ACTIONS = {"QueueStatus", "QueueSummary", "CoreShowChannels", "Status"}


def recorded_lists(scenario: str) -> list[tuple[str, str, list[Response | Event]]]:
    """(action name, ActionID, every received message with that ActionID) for each list action."""
    records = read_ami(FIXTURES / scenario / "ami.txt")
    sent = [r for r in records if r.direction == "send" and r.get("Action") in LIST_ACTIONS]
    lists = []
    for action in sent:
        aid = action.get("ActionID")
        assert aid is not None
        received = [r for r in records if r.direction == "recv" and r.conn == action.conn]
        messages = _parse_records(received)
        mine = [m for m in messages if isinstance(m, Response | Event) and m.action_id == aid]
        lists.append((str(action.get("Action")), aid, mine))
    return lists


def _parse_records(records: list[AmiRecord]) -> list[AMIMessage]:
    parser = AMIParser(expect_banner=False)
    parser.receive_data(b"".join(r.raw for r in records))
    return parser.events()


@pytest.mark.parametrize("scenario", ["member_admin", "concurrent", "actions"])
def test_list_collector_on_recorded_lists(scenario: str) -> None:
    lists = recorded_lists(scenario)
    assert lists
    if scenario != "actions":  # "actions" lists channels and queue summaries
        assert any(name == "QueueStatus" for name, _, _ in lists)
    for name, aid, messages in lists:
        collector = ListCollector(aid)
        results = [r for r in (collector.feed(m) for m in messages) if r is not None]
        assert len(results) == 1, (name, aid)
        result = results[0]
        assert result.ok and not result.count_mismatch
        assert result.complete is not None and result.complete.name == f"{name}Complete"
        assert result.expected == len(result.items) == int(result.complete["ListItems"])
        assert all(item.action_id == aid for item in result.items)
        assert messages[-1] is result.complete  # nothing of this list after its Complete
        if name == "QueueStatus":
            assert {i.name for i in result.items} <= {"QueueParams", "QueueMember", "QueueEntry"}
            assert any(i.name == "QueueMember" for i in result.items)


def test_list_collector_reports_a_forced_count_mismatch() -> None:
    _, aid, messages = next(x for x in recorded_lists("member_admin") if x[0] == "QueueStatus")
    items = [m for m in messages if isinstance(m, Event) and m.get("EventList") is None]
    assert len(items) >= 2
    collector = ListCollector(aid)
    result: ListResult | None = None
    for message in messages:
        if message is items[0]:
            continue  # lost on the way
        result = collector.feed(message) or result
    assert result is not None
    assert result.count_mismatch and not result.ok
    assert result.expected == len(items) == len(result.items) + 1


def test_list_collector_error_and_protocol_violations() -> None:
    def resp(text: str) -> Response:
        (msg,) = parse(text.encode())
        assert isinstance(msg, Response)
        return msg

    def event(text: str) -> Event:
        (msg,) = parse(text.encode())
        assert isinstance(msg, Event)
        return msg

    error = ListCollector("q-1").feed(
        resp("Response: Error\r\nActionID: q-1\r\nMessage: Permission denied\r\n\r\n")
    )
    assert error is not None and not error.ok and error.items == ()

    collector = ListCollector("q-2")
    with pytest.raises(RemoteProtocolError, match="before the response"):
        collector.feed(event("Event: QueueMember\r\nActionID: q-2\r\n\r\n"))
    with pytest.raises(ValueError):
        collector.feed(event("Event: QueueMember\r\nActionID: other\r\n\r\n"))
    start = resp("Response: Success\r\nActionID: q-2\r\nEventList: start\r\n\r\n")
    assert collector.feed(start) is None
    with pytest.raises(RemoteProtocolError, match="second response"):
        collector.feed(start)
    with pytest.raises(RemoteProtocolError, match="ListItems"):
        collector.feed(
            event(
                "Event: QueueStatusComplete\r\nActionID: q-2\r\nEventList: Complete\r\nListItems: x\r\n\r\n"
            )
        )


def test_action_header_may_stand_anywhere_in_an_action() -> None:
    """Asterisk reads Action wherever it is; panoramisk sends headers sorted by name."""
    from ivr.protocol.ami import Action, AMIParser

    parser = AMIParser(expect_banner=False)
    parser.receive_data(b"Account: x\r\nAction: Originate\r\nActionID: 7\r\nChannel: Local/1@a\r\n\r\n")
    msg = parser.next_event()
    assert isinstance(msg, Action)
    assert (msg.name, msg.action_id, msg["Channel"]) == ("Originate", "7", "Local/1@a")
    parser.receive_data(b"Account: x\r\nChannel: y\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        parser.next_event()
