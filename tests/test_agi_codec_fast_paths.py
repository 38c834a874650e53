"""The FastAGI codec's fast paths give exactly what its general paths give.

The FastAGI server reads an environment block per call and a reply per command, and the
simulator parses every command line; :mod:`ivr.protocol.agi` takes shortcuts for the
common shapes (a whole environment block in one segment, a ``200 result=`` reply, command
lines without backslashes, arguments that need no quotes). Each shortcut must decline
what it does not vouch for and agree with the general path on what it takes; these tests
compare the two on generated input, bad input included.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.protocol import agi
from ivr.protocol.agi import (
    NEED_DATA,
    AGIServerConnection,
    Command,
    parse_command,
    split_args,
)
from ivr.protocol.errors import LocalProtocolError, RemoteProtocolError

Outcome = tuple[str, object]


def read_environment(data: bytes, *, byte_by_byte: bool, **limits: int) -> Outcome:
    """What the codec makes of ``data`` fed at once (fast path) or a byte at a time (general path)."""
    conn = AGIServerConnection(**limits)
    chunks = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    chunks.append(b"")  # end of stream
    try:
        for i, chunk in enumerate(chunks):
            conn.receive_data(chunk)
            event = conn.next_event()
            if event is not NEED_DATA:
                assert isinstance(event, agi.AGIEnvironment)
                for rest in chunks[i + 1 : -1]:
                    conn.receive_data(rest)
                return "env", (dict(event.variables), conn.trailing_data)
    except RemoteProtocolError as exc:
        return "error", str(exc)
    raise AssertionError("end of stream without an outcome")


env_values = st.lists(st.sampled_from(["a", "b", " ", ":", "é", "\t", "\u00a0", ": "]), max_size=8).map(
    "".join
)
good_lines = st.tuples(st.sampled_from(["agi_request", "agi_arg_1", "agi_x", "agi_"]), env_values).map(
    lambda kv: f"{kv[0]}: {kv[1]}\n".encode()
)
#: What the fast path must leave to the line-by-line reader (which reports or accepts it).
flaws = st.sampled_from(
    [
        b"agi_x:y: v\n",  # first ": " after a colon: partition decides the key
        b"agi_x:v\n",  # no space after the colon
        b"agix: v\n",
        b"AGI_X: v\n",
        b": v\n",
        b"agi_a b: v\n",
        b"agi_x\n",  # no colon at all
        b"agi_cr: v\r\n",  # CRLF
        b"agi_x: \xff\xfe\n",  # not UTF-8
        b"agi_x: \xc3",  # cut inside a character, then the end of the line below
        b"agi_x: " + b"v" * 40 + b"\n",  # over a small max_line
    ]
)


@st.composite
def environment_blocks(draw: st.DrawFn) -> bytes:
    """Mostly well-formed blocks (the fast path takes them), some with one flaw somewhere."""
    lines = draw(st.lists(good_lines, max_size=10))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(flaws))
    end = draw(st.sampled_from([b"\n", b"\n", b"\r\n"]))
    return b"".join(lines) + end + draw(st.sampled_from([b"", b"200 result=1\n", b"HANGUP\n"]))


class TestEnvironmentBlock:
    @settings(max_examples=200, deadline=None)
    @given(environment_blocks())
    def test_whole_block_reads_as_line_by_line(self, data: bytes) -> None:
        assert read_environment(data, byte_by_byte=False) == read_environment(data, byte_by_byte=True)

    @settings(max_examples=100, deadline=None)
    @given(environment_blocks())
    def test_limits_hold_on_the_fast_path(self, data: bytes) -> None:
        limits = {"max_line": 24, "max_env_lines": 3}
        fast = read_environment(data, byte_by_byte=False, **limits)
        assert fast == read_environment(data, byte_by_byte=True, **limits)

    def test_recorded_block_in_one_segment(self) -> None:
        data = b"agi_network: yes\nagi_request: agi://h/ivr?service=caf\nagi_x: a: b\n\n200 result=1\n"
        variables = {"agi_network": "yes", "agi_request": "agi://h/ivr?service=caf", "agi_x": "a: b"}
        rest = b"200 result=1\n"  # left for the reply reader
        assert read_environment(data, byte_by_byte=False) == ("env", (variables, rest))

    def test_duplicate_keys_keep_the_last_value(self) -> None:
        data = b"agi_x: 1\nagi_x: 2\n\n"
        assert read_environment(data, byte_by_byte=False) == ("env", ({"agi_x": "2"}, b""))


class TestSplitArgs:
    @settings(max_examples=500, deadline=None)
    @given(st.text(alphabet='ab "\t\ré', max_size=40))
    def test_fast_path_matches_the_state_machine(self, line: str) -> None:
        assert split_args(line) == agi._parse_args(line)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.sampled_from(["a", "b c", '"', '""', "d"]), min_size=120, max_size=135))
    def test_near_the_word_limit(self, words: list[str]) -> None:
        line = " ".join(words)
        assert split_args(line) == agi._parse_args(line)

    def test_parse_command_picks_the_longest_name(self) -> None:
        assert parse_command('get full variable "${X}" chan') == Command(
            "GET FULL VARIABLE", ("${X}", "chan")
        )
        assert parse_command("GET VARIABLE X") == Command("GET VARIABLE", ("X",))
        assert parse_command("speech activate grammar g") == Command("SPEECH ACTIVATE GRAMMAR", ("g",))
        # "ſ".upper() == "S", but strcasecmp folds ASCII only: no SET VARIABLE here
        assert isinstance(parse_command("\u017fET VARIABLE X 1"), agi.UnknownCommand)


class TestCommandEncoding:
    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.text(alphabet='ab "\\\t\r\n\0é', max_size=6), max_size=5))
    def test_encoding_quotes_each_argument_as_needed(self, args: list[str]) -> None:
        command = Command("EXEC", tuple(args))
        try:
            encoded = command.encode()
        except LocalProtocolError:
            assert any(c in arg for arg in args for c in "\r\n\0")
            return
        assert encoded == ("EXEC " + " ".join(map(agi._quote, args))).rstrip(" ").encode() + b"\n"
        assert parse_command(encoded.decode()) == command
