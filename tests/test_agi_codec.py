"""Unit tests of the sans-I/O FastAGI codec (:mod:`ivr.protocol.agi`).

``split_args`` must read a command line exactly as Asterisk does, so it is checked
against a line-by-line transliteration of ``parse_args()`` from ``res/res_agi.c``
(Asterisk 22, pointers and all), on chosen cases and on generated lines. The rest covers
each class of bad input on both sides of the connection; the recorded sessions are
replayed in ``test_protocol_conformance.py``.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.protocol import agi
from ivr.protocol.agi import (
    AGI_BUF_LEN,
    AGI_MAX_ARGS,
    CLOSED,
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
    encode_reply,
    parse_command,
    parse_reply_line,
    split_args,
)
from ivr.protocol.errors import LocalProtocolError, RemoteProtocolError

SURROGATES: tuple[Literal["Cs"]] = ("Cs",)

ENV = {
    "agi_network": "yes",
    "agi_network_script": "ivr?service=caf",
    "agi_request": "agi://127.0.0.1:4573/ivr?service=caf",
    "agi_channel": "Local/100@public-00000000;2",
    "agi_uniqueid": "1795751435.1",
    "agi_callerid": "0699999999",
    "agi_accountcode": "",
}


def c_parse_args(line: str) -> list[str]:
    """``parse_args()`` of res/res_agi.c, statement by statement, on a char array.

    ``s`` reads, ``cur`` writes into the same buffer, ``argv`` holds word starts, words end
    at the NULs written over separators: the C code's in-place rewriting is kept so that a
    mistake in the simpler Python version cannot be copied here.
    """
    max_args = 128  # MAX_ARGS
    buf = [*line, "\0"]  # a C string
    argv: list[int] = []
    quoted = escaped = 0
    whitespace = 1
    cur = 0
    s = 0
    while buf[s] != "\0":
        c = buf[s]
        normal = False
        if c == '"':
            if escaped:
                normal = True
            else:
                quoted = not quoted
                if quoted and whitespace:
                    argv.append(cur)
                    whitespace = 0
                escaped = 0
        elif c in " \t":
            if not quoted and not escaped:
                whitespace = 1
                buf[cur] = "\0"
                cur += 1
            else:
                normal = True
        elif c == "\\":
            if escaped:
                normal = True
            else:
                escaped = 1
        else:
            normal = True
        if normal:
            if whitespace:
                if len(argv) >= max_args - 1:  # "Too many arguments, truncating"
                    s += 1
                    continue
                argv.append(cur)
                whitespace = 0
            buf[cur] = buf[s]
            cur += 1
            escaped = 0
        s += 1
    buf[cur] = "\0"
    words = []
    for start in argv:
        end = buf.index("\0", start)
        words.append("".join(buf[start:end]))
    return words


class TestSplitArgs:
    @pytest.mark.parametrize(
        ("line", "words"),
        [
            ('STREAM FILE fr/queue-thankyou ""', ["STREAM", "FILE", "fr/queue-thankyou", ""]),
            ('VERBOSE "after hangup" 1', ["VERBOSE", "after hangup", "1"]),
            ("GET   DATA\tbeep 1000", ["GET", "DATA", "beep", "1000"]),
            (r'SET VARIABLE X "a \"quoted\" word"', ["SET", "VARIABLE", "X", 'a "quoted" word']),
            (r"SET VARIABLE X a\ b\\c", ["SET", "VARIABLE", "X", "a b\\c"]),
            ('EXEC ab"cd ef"gh', ["EXEC", "abcd efgh"]),
            ('"" "" x', ["", "", "x"]),
            ("trailing\\", ["trailing"]),
            ('open "quote never closed', ["open", "quote never closed"]),
            ("", []),
            ("   ", []),
            ("cut\0 after NUL", ["cut"]),
        ],
    )
    def test_cases(self, line: str, words: list[str]) -> None:
        assert split_args(line) == words
        assert c_parse_args(line) == words

    def test_words_after_the_127th_are_dropped_as_asterisk_does(self) -> None:
        line = " ".join(f"w{i}" for i in range(140))
        assert split_args(line) == c_parse_args(line) == [f"w{i}" for i in range(127)]
        # The escape flag survives the dropped characters, in C and here.
        tail = " ".join(["x"] * 127) + ' \\a "b c"'
        assert split_args(tail) == c_parse_args(tail)

    @settings(max_examples=400, deadline=None)
    @given(st.text(alphabet='ab "\\\t\0é', max_size=40))
    def test_matches_the_c_code_on_generated_lines(self, line: str) -> None:
        assert split_args(line) == c_parse_args(line)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.sampled_from(["a", "b c", '"', "\\"]), min_size=120, max_size=135))
    def test_matches_the_c_code_near_the_word_limit(self, words: list[str]) -> None:
        line = " ".join(words)
        assert split_args(line) == c_parse_args(line)


class TestCommandEncoding:
    @pytest.mark.parametrize(
        "args",
        [
            ("plain",),
            ("with space",),
            ("",),
            ('say "hi"',),
            ("back\\slash",),
            ("tab\there",),
            ("trailing\\",),
            ('\\"',),
            ("é à ç",),
            ("", "", "x y", '"'),
        ],
    )
    def test_round_trip_through_parse_args(self, args: tuple[str, ...]) -> None:
        command = Command("SET VARIABLE", ("NAME", *args))
        line = command.encode()
        assert line.endswith(b"\n") and b"\n" not in line[:-1]
        assert parse_command(line.decode()) == command
        assert c_parse_args(line.decode()[:-1])[2:] == ["NAME", *args]

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.text(
                st.characters(blacklist_characters="\r\n\0", blacklist_categories=SURROGATES), max_size=12
            ),
            max_size=6,
        )
    )
    def test_any_arguments_round_trip(self, args: list[str]) -> None:
        command = Command("EXEC", tuple(args))
        assert parse_command(command.encode().decode()) == command

    def test_text_that_is_not_unicode_is_refused(self) -> None:
        with pytest.raises(LocalProtocolError):
            Command("EXEC", ("\ud800",)).encode()

    @pytest.mark.parametrize("bad", ["a\rb", "a\nb", "\r\n", "a\0b"])
    def test_line_breaks_and_nul_are_refused(self, bad: str) -> None:
        with pytest.raises(LocalProtocolError):
            Command("VERBOSE", (bad, "1")).encode()
        with pytest.raises(LocalProtocolError):
            Command(f"VERBOSE{bad}").encode()

    @pytest.mark.parametrize("name", ["", "  ", 'SAY "X"', "A\\B"])
    def test_bad_command_names(self, name: str) -> None:
        with pytest.raises(LocalProtocolError):
            Command(name).encode()

    def test_word_limit(self) -> None:
        assert AGI_MAX_ARGS == 128
        Command("EXEC", ("x",) * 126).encode()  # 127 words in all
        with pytest.raises(LocalProtocolError, match="127"):
            Command("EXEC", ("x",) * 127).encode()

    def test_line_limit_is_asterisk_22s_buffer(self) -> None:
        assert AGI_BUF_LEN == 8192
        ok = Command("VERBOSE", ("v" * (AGI_BUF_LEN - 1 - len("VERBOSE ") - 1),)).encode()
        assert len(ok) == AGI_BUF_LEN - 1
        with pytest.raises(LocalProtocolError):
            Command("VERBOSE", ("v" * (AGI_BUF_LEN - len("VERBOSE ") - 1),)).encode()

    def test_builders(self) -> None:
        assert agi.stream_file("fr/x").encode() == b'STREAM FILE fr/x ""\n'
        assert agi.stream_file("fr/x", "#*1", 800).encode() == b"STREAM FILE fr/x #*1 800\n"
        assert agi.get_data("beep", 1000, 1).encode() == b"GET DATA beep 1000 1\n"
        assert agi.say_digits("0123").args == ("0123", "")
        assert agi.set_variable("IVR_CHOICE", "a b").encode() == b'SET VARIABLE IVR_CHOICE "a b"\n'
        assert agi.verbose("after hangup").encode() == b'VERBOSE "after hangup" 1\n'
        assert agi.exec_("Playback", "a,b").encode() == b"EXEC Playback a,b\n"
        assert agi.get_full_variable("${CALLERID(num)}").encode() == b"GET FULL VARIABLE ${CALLERID(num)}\n"
        assert agi.hangup().encode() == b"HANGUP\n"
        assert agi.wait_for_digit(1500).encode() == b"WAIT FOR DIGIT 1500\n"

    @pytest.mark.parametrize(
        "build",
        [
            lambda: agi.stream_file("x", "12a"),
            lambda: agi.get_data("x", None, 3),
            lambda: agi.say_digits("12a"),
            lambda: agi.say_digits("１２"),  # full-width digits: str.isdigit() says yes
            lambda: agi.set_variable("A B", "1"),
            lambda: agi.set_variable("A=B", "1"),
            lambda: agi.set_variable("", "1"),
        ],
    )
    def test_builders_refuse_bad_input(self, build: object) -> None:
        with pytest.raises(LocalProtocolError):
            build()  # type: ignore[operator]


class TestParseCommand:
    def test_known_commands_case_insensitively(self) -> None:
        assert parse_command("get full variable X") == Command("GET FULL VARIABLE", ("X",))
        assert parse_command("Stream File beep 1") == Command("STREAM FILE", ("beep", "1"))
        assert parse_command("GOSUB ctx s 1") == Command("GOSUB", ("ctx", "s", "1"))
        assert parse_command("SET VARIABLE") == Command("SET VARIABLE")

    def test_unknown_commands(self) -> None:
        assert parse_command("FOOBAR x") == UnknownCommand("FOOBAR x", ("FOOBAR", "x"))
        assert parse_command("GET") == UnknownCommand("GET", ("GET",))
        assert parse_command("") == UnknownCommand("", ())
        # A CR stays in the last word, as in run_agi: Asterisk answers 510 to "ANSWER\r".
        assert isinstance(parse_command("ANSWER\r\n"), UnknownCommand)
        assert parse_command("ANSWER\n") == Command("ANSWER")


def server_after_env(**kwargs: int) -> AGIServerConnection:
    conn = AGIServerConnection(**kwargs)
    conn.receive_data(encode_environment(ENV))
    env = conn.next_event()
    assert isinstance(env, AGIEnvironment)
    assert conn.state is ServerState.IDLE
    return conn


def answer(conn: AGIServerConnection, command: Command, data: bytes) -> list[object]:
    """Send ``command``, feed ``data``, collect events up to the reply."""
    conn.send(command)
    if data:
        conn.receive_data(data)
    out: list[object] = []
    for _ in range(100):
        event = conn.next_event()
        out.append(event)
        if isinstance(event, Reply) or event is NEED_DATA or event is CLOSED:
            return out
    raise AssertionError("no reply")


class TestEnvironment:
    def test_environment_fields(self) -> None:
        conn = AGIServerConnection()
        env_vars = {**ENV, "agi_arg_2": "b", "agi_arg_10": "j", "agi_arg_1": "CONTINUE", "agi_arg_x": "?"}
        conn.receive_data(encode_environment(env_vars))
        env = conn.next_event()
        assert isinstance(env, AGIEnvironment)
        assert env.network_script == "ivr?service=caf"
        assert env.script == "ivr" and env.query == {"service": "caf"}
        assert env.args == ("CONTINUE", "b", "j")
        assert env.uniqueid == "1795751435.1" and env.get("agi_callerid") == "0699999999"
        assert env.get("accountcode") == "" and env.get("missing", "-") == "-"
        assert conn.environment is env

    def test_environment_split_anywhere(self) -> None:
        data = encode_environment(ENV)
        for cut in range(1, len(data)):
            conn = AGIServerConnection()
            conn.receive_data(data[:cut])
            assert conn.next_event() is NEED_DATA
            conn.receive_data(data[cut:])
            env = conn.next_event()
            assert isinstance(env, AGIEnvironment) and dict(env.variables) == ENV

    def test_crlf_environment(self) -> None:
        conn = AGIServerConnection()
        conn.receive_data(encode_environment(ENV).replace(b"\n", b"\r\n"))
        env = conn.next_event()
        assert isinstance(env, AGIEnvironment) and dict(env.variables) == ENV

    def test_early_end_of_stream(self) -> None:
        conn = AGIServerConnection()
        conn.receive_data(encode_environment(ENV)[:-1])
        assert conn.next_event() is NEED_DATA
        conn.receive_data(b"")
        with pytest.raises(RemoteProtocolError, match="environment"):
            conn.next_event()
        assert conn.next_event() is CLOSED

    def test_bounded_number_of_lines(self) -> None:
        conn = AGIServerConnection(max_env_lines=5)
        conn.receive_data(b"".join(b"agi_x%d: 1\n" % i for i in range(50)))
        seen = 0
        for _ in range(100):
            try:
                if conn.next_event() is NEED_DATA:
                    break
            except RemoteProtocolError:
                seen += 1
        assert seen == 45
        assert conn.state is ServerState.ENVIRONMENT

    def test_bounded_line_length(self) -> None:
        conn = AGIServerConnection(max_line=100)
        conn.receive_data(b"agi_long: " + b"x" * 1000)
        with pytest.raises(RemoteProtocolError, match="exceeds"):
            conn.next_event()
        conn.receive_data(b"x" * 5000)
        assert conn.next_event() is NEED_DATA
        assert conn._lines.pending <= 101
        conn.receive_data(b"\n" + encode_environment(ENV))
        assert isinstance(conn.next_event(), AGIEnvironment)

    @pytest.mark.parametrize("line", [b"not an env line\n", b"other_key: 1\n", b"agi_x\n"])
    def test_malformed_lines(self, line: bytes) -> None:
        conn = AGIServerConnection()
        conn.receive_data(line + encode_environment(ENV))
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert isinstance(conn.next_event(), AGIEnvironment)

    def test_environment_encoder_refuses_bad_input(self) -> None:
        with pytest.raises(LocalProtocolError):
            encode_environment({"channel": "x"})
        with pytest.raises(LocalProtocolError):
            encode_environment({"agi_channel": "x\nagi_arg_1: injected"})
        with pytest.raises(LocalProtocolError):
            encode_environment({"agi_a b": "x"})


class TestReplies:
    def test_replies_in_order(self) -> None:
        conn = server_after_env()
        (reply,) = answer(conn, agi.answer(), b"200 result=0\n")
        assert isinstance(reply, Reply) and reply.ok and reply.result_int == 0
        (reply,) = answer(conn, agi.stream_file("x"), b"200 result=0 endpos=14560\n")
        assert isinstance(reply, Reply) and reply.endpos == 14560 and reply.data is None
        (reply,) = answer(conn, agi.get_variable("X"), b"200 result=1 (a (b) c)\n")
        assert isinstance(reply, Reply) and reply.data == "a (b) c"
        (reply,) = answer(conn, agi.get_data("x", 1000, 4), b"200 result= (timeout)\n")
        assert isinstance(reply, Reply) and reply.result == "" and reply.timed_out
        (reply,) = answer(conn, Command("FOOBAR"), b"510 Invalid or unknown command\n")
        assert isinstance(reply, Reply) and reply.code == 510 and not reply.ok
        assert conn.state is ServerState.IDLE and conn.pending is None

    def test_inline_hangup_is_a_notice_not_a_reply(self) -> None:
        conn = server_after_env()
        events = answer(conn, agi.get_variable("CALLERID(num)"), b"HANGUP\n200 result=1 (0699999999)\n")
        assert [type(e) for e in events] == [HangupNotice, Reply]
        reply = events[1]
        assert isinstance(reply, Reply) and reply.data == "0699999999"
        assert conn.hung_up
        (reply,) = answer(conn, agi.stream_file("beep"), agi.TEXT_511.encode() + b"\n")
        assert isinstance(reply, Reply) and reply.dead_channel

    def test_hangup_between_commands(self) -> None:
        conn = server_after_env()
        conn.receive_data(b"HANGUP\n")
        assert isinstance(conn.next_event(), HangupNotice)
        assert conn.state is ServerState.IDLE
        (reply,) = answer(conn, agi.verbose("x"), b"200 result=1\n")
        assert isinstance(reply, Reply)

    def test_520_usage_is_one_reply(self) -> None:
        conn = server_after_env()
        usage = b"Usage: SET VARIABLE <variablename> <value>\n Sets a variable to the current channel.\n"
        data = b"520-Invalid command syntax.  Proper usage follows:\n" + usage + b"520 End of proper usage.\n"
        for cut in range(1, len(data)):
            conn = server_after_env()
            conn.send(Command("SET VARIABLE"))
            conn.receive_data(data[:cut])
            events = []
            while (event := conn.next_event()) is not NEED_DATA:
                events.append(event)
            conn.receive_data(data[cut:])
            while (event := conn.next_event()) is not NEED_DATA:
                events.append(event)
            assert len(events) == 1, cut
            reply = events[0]
            assert isinstance(reply, Reply) and reply.code == 520
            assert reply.usage == (
                "Usage: SET VARIABLE <variablename> <value>",
                " Sets a variable to the current channel.",
            )
            assert conn.state is ServerState.IDLE
            conn.receive_data(b"200 result=1\n")
            with pytest.raises(RemoteProtocolError, match="unsolicited"):  # answers nothing
                conn.next_event()

    def test_520_without_usage_is_one_line(self) -> None:
        conn = server_after_env()
        (reply,) = answer(conn, Command("SET VARIABLE"), agi.TEXT_520_NO_USAGE.encode() + b"\n")
        assert isinstance(reply, Reply) and reply.code == 520 and reply.usage == ()

    def test_bounded_usage(self) -> None:
        conn = server_after_env(max_usage_lines=3)
        conn.send(Command("SET VARIABLE"))
        conn.receive_data(
            b"520-Invalid command syntax.  Proper usage follows:\n" + b"u\n" * 6 + b"520 End.\n"
        )
        raised = 0
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError:
                raised += 1
                continue
            if isinstance(event, Reply):
                break
        assert raised == 3 and event.usage == ("u", "u", "u")

    def test_provisional_100_is_not_the_reply(self) -> None:
        conn = server_after_env()
        events = answer(
            conn,
            Command("GOSUB", ("sub", "s", "1")),
            b"100 result=0 Trying...\n200 result=0 Gosub complete\n",
        )
        assert len(events) == 1
        reply = events[0]
        assert isinstance(reply, Reply) and reply.code == 200 and reply.result == "0"
        assert reply.text == "200 result=0 Gosub complete"

    @pytest.mark.parametrize(
        ("line", "result", "data", "endpos"),
        [
            ("200 result=1 (digit) digit=5 endpos=1200", "1", "digit", 1200),
            ("200 result=1 (speech) endpos=0 results=1 score0=900", "1", "speech", 0),
            ("200 result=-1 endpos=480", "-1", None, 480),
            ("200 result=0", "0", None, None),
            ("200 result=53 (timeout) endpos=8000", "53", "timeout", 8000),
        ],
    )
    def test_reply_line_formats_of_res_agi(
        self, line: str, result: str, data: str | None, endpos: int | None
    ) -> None:
        reply = parse_reply_line(line)
        assert (reply.code, reply.result, reply.data, reply.endpos, reply.text) == (
            200,
            result,
            data,
            endpos,
            line,
        )

    def test_unsolicited_line_when_no_command_is_pending(self) -> None:
        conn = server_after_env()
        conn.receive_data(b"200 result=0\n")
        with pytest.raises(RemoteProtocolError, match="unsolicited"):
            conn.next_event()
        assert conn.state is ServerState.IDLE
        (reply,) = answer(conn, agi.answer(), b"200 result=1\n")
        assert isinstance(reply, Reply) and reply.result == "1"

    def test_garbage_while_waiting_does_not_take_the_reply_s_place(self) -> None:
        conn = server_after_env()
        conn.send(agi.answer())
        conn.receive_data(b"garbage line\n200 result=0\n")
        with pytest.raises(RemoteProtocolError, match="not a reply"):
            conn.next_event()
        reply = conn.next_event()
        assert isinstance(reply, Reply) and reply.result == "0"

    def test_malformed_reply_still_answers_its_command(self) -> None:
        conn = server_after_env()
        conn.send(agi.answer())
        conn.receive_data(b"200 what\n200 result=1\n")
        with pytest.raises(RemoteProtocolError, match="result="):
            conn.next_event()
        assert conn.state is ServerState.IDLE  # consumed: the next reply is the next command's
        (reply,) = answer(conn, agi.verbose("x"), b"")
        assert isinstance(reply, Reply) and reply.result == "1"

    def test_crlf_replies(self) -> None:
        conn = server_after_env()
        (reply,) = answer(conn, agi.get_variable("X"), b"200 result=1 (v)\r\n")
        assert isinstance(reply, Reply) and reply.data == "v"

    def test_overlong_reply_line(self) -> None:
        conn = server_after_env(max_line=64)
        conn.send(agi.get_variable("X"))
        conn.receive_data(b"200 result=1 (" + b"v" * 200 + b")\n")
        with pytest.raises(RemoteProtocolError, match="exceeds"):
            conn.next_event()
        assert conn.next_event() is NEED_DATA

    def test_sending_while_a_command_is_outstanding(self) -> None:
        conn = AGIServerConnection()
        with pytest.raises(LocalProtocolError, match="environment"):
            conn.send(agi.answer())
        conn = server_after_env()
        conn.send(agi.answer())
        with pytest.raises(LocalProtocolError, match="awaiting_reply"):
            conn.send(agi.answer())
        conn.receive_data(b"520-Invalid command syntax.  Proper usage follows:\n")
        assert conn.next_event() is NEED_DATA
        with pytest.raises(LocalProtocolError, match="usage"):
            conn.send(agi.answer())

    def test_end_of_stream(self) -> None:
        conn = server_after_env()
        conn.send(agi.answer())
        conn.receive_data(b"")
        assert conn.next_event() is CLOSED
        with pytest.raises(LocalProtocolError):
            conn.send(agi.answer())
        conn = server_after_env()
        conn.send(Command("SET VARIABLE"))
        conn.receive_data(b"520-Invalid command syntax.  Proper usage follows:\nusage\n")
        conn.receive_data(b"")
        with pytest.raises(RemoteProtocolError, match="520"):
            conn.next_event()
        assert conn.next_event() is CLOSED


class TestClientSide:
    def test_session(self) -> None:
        client = AGIClientConnection()
        assert client.start(ENV) == encode_environment(ENV)
        with pytest.raises(LocalProtocolError):
            client.start(ENV)
        assert client.next_event() is NEED_DATA
        client.receive_data(b'STREAM FILE fr/x ""\nGET VARIABLE X\n')
        assert client.next_event() == Command("STREAM FILE", ("fr/x", ""))
        assert client.next_event() is NEED_DATA  # one command at a time
        assert client.reply(200, 0, endpos=12) == b"200 result=0 endpos=12\n"
        assert client.next_event() == Command("GET VARIABLE", ("X",))
        assert client.reply(200, 1, "v", hangup_first=True) == b"HANGUP\n200 result=1 (v)\n"
        with pytest.raises(LocalProtocolError):
            client.reply(200, 0)
        assert client.hangup_notice() == b"HANGUP\n"
        client.receive_data(b"")
        assert client.next_event() is CLOSED

    def test_cr_stays_in_the_command_as_asterisk_reads_it(self) -> None:
        client = AGIClientConnection()
        client.receive_data(b"ANSWER\r\n")
        command = client.next_event()
        assert command == UnknownCommand("ANSWER\r", ("ANSWER\r",))
        assert client.reply(510) == b"510 Invalid or unknown command\n"

    def test_hangup_notice_while_a_command_waits(self) -> None:
        client = AGIClientConnection()
        client.receive_data(b"ANSWER\n")
        assert client.next_event() == Command("ANSWER")
        with pytest.raises(LocalProtocolError):
            client.hangup_notice()

    def test_line_limit_mirrors_asterisk(self) -> None:
        client = AGIClientConnection()
        line = b"VERBOSE " + b"v" * (AGI_BUF_LEN - 2 - 8)
        client.receive_data(line + b"\n")
        assert client.next_event() == Command("VERBOSE", ("v" * (AGI_BUF_LEN - 10),))
        client.reply(200, 1)
        client.receive_data(line + b"vv\nANSWER\n")
        with pytest.raises(RemoteProtocolError):
            client.next_event()
        assert client.next_event() == Command("ANSWER")

    def test_encode_reply_refuses_broken_framing(self) -> None:
        bad: list[dict[str, Any]] = [
            {"result": 1, "data": "a\nb"},
            {"result": 1, "data": "a\r"},
            {"result": "1 2"},
            {"result": "1\n"},
        ]
        for kwargs in bad:
            with pytest.raises(LocalProtocolError):
                encode_reply(200, **kwargs)
        with pytest.raises(LocalProtocolError):
            encode_reply(520, usage=["ok", "520 End of proper usage."])
        with pytest.raises(LocalProtocolError):
            encode_reply(520, usage=["two\nlines"])
        with pytest.raises(LocalProtocolError):
            encode_reply(404)
        assert encode_reply(520) == agi.TEXT_520_NO_USAGE.encode() + b"\n"

    def test_failed_reply_keeps_the_command_waiting(self) -> None:
        client = AGIClientConnection()
        client.receive_data(b"GET VARIABLE X\n")
        client.next_event()
        with pytest.raises(LocalProtocolError):
            client.reply(200, 1, "bad\nvalue")
        assert client.reply(200, 1, "good") == b"200 result=1 (good)\n"
