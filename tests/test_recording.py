"""Tests of :mod:`ivr.recording` against every recorded Asterisk 22.10.1 scenario.

The reader is the bridge between the ground-truth transcripts and every conformance test,
so it is checked three independent ways: counts made with plain text scans of the files,
the counts the recording rig itself wrote into README.md, and re-rendering the parsed
records in the rig's format, which must give the file back byte for byte.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from ivr.recording import (
    AgiSession,
    AmiRecord,
    RecordingFormatError,
    ami_bytes,
    iter_ami_bytes,
    parse_ami,
    parse_fastagi,
    read_ami,
    read_fastagi,
)

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
SCENARIOS = sorted(p.name for p in FIXTURES.iterdir() if (p / "ami.txt").is_file())

EXPECTED_SCENARIOS = {
    "abandoned",
    "actions",
    "agi_hangup",
    "answered",
    "answered_caller_hangup",
    "callback_originate_fail",
    "callback_originate_ok",
    "concurrent",
    "exit_with_key",
    "join_empty",
    "member_admin",
    "mixed_a",
    "ring_no_answer",
    "timeout",
    "timeout_overflow",
}


def _readme_table() -> dict[str, tuple[int, int]]:
    """scenario -> (AMI messages, FastAGI sessions) as the rig counted them in README.md."""
    table: dict[str, tuple[int, int]] = {}
    for line in (FIXTURES / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| \[(\w+)\]\([^)]*\) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", line)
        if m:
            table[m[1]] = (int(m[3]), int(m[5]))
    return table


README = _readme_table()


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text, flags=re.MULTILINE))


_TAGS = {
    "banner": "<<< BANNER",
    "send": ">>> SEND",
    "recv": "<<< RECV",
    "eof": "<<< EOF (connection closed by Asterisk)",
}


def _render_ami(records: list[AmiRecord]) -> bytes:
    """Write records the way the rig's Sink.block did (CRLF shown as LF, trailing CR/LF stripped)."""
    out = []
    for r in records:
        text = f"partial={r.raw!r}" if r.direction == "eof" else r.raw.decode().replace("\r\n", "\n")
        text = text.rstrip("\r\n")
        stamp = r.time.isoformat(timespec="milliseconds")
        out.append(f"=== {stamp} {_TAGS[r.direction]} ({r.conn})\n{text}\n\n")
    return "".join(out).encode()


def _render_fastagi(sessions: list[AgiSession]) -> bytes:
    """Write sessions the way the rig's MemSink did, one session after the other."""

    def ts(t: datetime | None) -> str:
        assert t is not None
        return t.isoformat(timespec="milliseconds")

    out = []
    for s in sessions:
        part = [
            f"{ts(s.time)} --- FastAGI session #{s.number} (scenario={s.scenario}) connection from {s.peer}\n"
        ]
        part.append(
            f"=== {ts(s.env_time)} <<< AGI ENVIRONMENT (raw, terminated by empty line)\n"
            f"{s.env_raw.decode()}<empty line>\n\n"
        )
        for ex in s.exchanges:
            part.append(f"{ts(ex.time)} >>> {ex.command}\n")
            part += [f"{ts(t)} <<< {r}\n" for t, r in zip(ex.reply_times, ex.replies, strict=True)]
            assert not ex.eof
        assert s.closed_by == "controller"
        part.append(
            f"{ts(s.end_time)} --- closing FastAGI session #{s.number} from our side (dialplan continues)\n"
        )
        out.append("".join(part) + "\n")
    return "".join(out).encode()


def test_every_scenario_is_present() -> None:
    assert set(SCENARIOS) == EXPECTED_SCENARIOS
    assert set(README) == EXPECTED_SCENARIOS
    assert not (FIXTURES / "config" / "__pycache__").exists()


# ------------------------------------------------------------------------------------- AMI


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ami_counts_match_text_scans(scenario: str) -> None:
    path = FIXTURES / scenario / "ami.txt"
    text = path.read_text(encoding="utf-8")
    records = read_ami(path)

    assert len(records) == _count(r"^=== ", text) == README[scenario][0]
    by_dir = Counter(r.direction for r in records)
    assert by_dir["send"] == _count(r"^=== \S+ >>> SEND ", text)
    assert by_dir["recv"] == _count(r"^=== \S+ <<< RECV ", text)
    assert by_dir["banner"] == _count(r"^=== \S+ <<< BANNER ", text)
    assert by_dir["eof"] == _count(r"^=== \S+ <<< EOF ", text)
    assert sum(r.raw.startswith(b"Event:") for r in records) == _count(r"^Event:", text)
    # ``Response:`` also appears inside OriginateResponse events: count lines, not blocks.
    for key in (b"Response:", b"Action:", b"ActionID:", b"Output:"):
        lines = sum(
            (b"\r\n" + r.raw).count(b"\r\n" + key) for r in records if r.direction in ("send", "recv")
        )
        assert lines == _count("^" + key.decode(), text), key
    # Trailing spaces are data (``AccountCode: ``): every one of them survives.
    assert sum(r.raw.count(b" \r\n") for r in records) == _count(r" $", text)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ami_raw_bytes_are_wire_messages(scenario: str) -> None:
    records = read_ami(FIXTURES / scenario / "ami.txt")
    for r in records:
        if r.direction in ("send", "recv"):
            assert r.raw.endswith(b"\r\n\r\n"), r.line
            assert b"\r\n\r\n" not in r.raw[:-4], r.line
            assert b"\n" not in r.raw.replace(b"\r\n", b""), r.line
            assert all(b": " in ln or ln.endswith(b":") for ln in r.raw[:-4].split(b"\r\n")), r.line
            assert len(r.headers()) == r.raw.count(b"\r\n") - 1
        elif r.direction == "banner":
            assert r.raw == b"Asterisk Call Manager/11.0.0\r\n"
        else:
            assert r.raw == b""
    assert records[0].direction == "banner"
    assert records[-1].direction == "eof"
    times = [r.time for r in records]
    assert times == sorted(times)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ami_render_gives_the_file_back(scenario: str) -> None:
    path = FIXTURES / scenario / "ami.txt"
    assert _render_ami(read_ami(path)) == path.read_bytes()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ami_streams_per_connection(scenario: str) -> None:
    path = FIXTURES / scenario / "ami.txt"
    records = read_ami(path)
    conns = list(dict.fromkeys(r.conn for r in records))
    assert conns[0] == "ami-main"
    assert ami_bytes(path) == ami_bytes(records, "ami-main")
    for conn in conns:
        mine = [r for r in records if r.conn == conn]
        stream = ami_bytes(records, conn)
        assert stream.startswith(b"Asterisk Call Manager/11.0.0\r\n")
        n_recv = sum(r.direction == "recv" for r in mine)
        assert stream.count(b"\r\n\r\n") == n_recv
        assert stream == b"".join(iter_ami_bytes(records, conn))
        assert len(list(iter_ami_bytes(records, conn))) == n_recv + 1  # banner + messages; EOF was empty
        sent = ami_bytes(records, conn, "send")
        assert sent.count(b"\r\n\r\n") == sum(r.direction == "send" for r in mine)
        assert sent.startswith(b"Action: Login\r\n")


def test_ami_unknown_connection_is_an_error() -> None:
    with pytest.raises(ValueError, match="ami-nope"):
        iter_ami_bytes(FIXTURES / "answered" / "ami.txt", "ami-nope")


def test_ami_actions_scenario_details() -> None:
    records = read_ami(FIXTURES / "actions" / "ami.txt")
    assert [r.conn for r in records if r.direction == "banner"] == ["ami-main", "ami-badlogin"]
    bad = [r for r in records if r.conn == "ami-badlogin"]
    assert [r.direction for r in bad] == ["banner", "send", "recv", "eof"]
    assert bad[2].get("Message") == "Authentication failed"
    (command,) = [r for r in records if r.get("ActionID") == "main-command-14" and r.direction == "recv"]
    assert command.get("message") == "Command output follows"
    outputs = [v for k, v in command.headers() if k == "Output"]
    assert len(outputs) == 1 and outputs[0].startswith("Asterisk 22.10.1 built by")
    unset = [r for r in records if r.direction == "recv" and r.raw.endswith(b"Value: \r\n\r\n")]
    assert unset and all(r.get("Value") == "" for r in unset)


def test_ami_trailing_space_header_kept() -> None:
    records = read_ami(FIXTURES / "answered" / "ami.txt")
    newchannel = next(r for r in records if r.get("Event") == "Newchannel")
    assert b"\r\nAccountCode: \r\n" in newchannel.raw
    assert newchannel.get("AccountCode") == ""


# --------------------------------------------------------------------------------- FastAGI


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fastagi_counts_match_text_scans(scenario: str) -> None:
    path = FIXTURES / scenario / "fastagi.txt"
    text = path.read_text(encoding="utf-8")
    sessions = read_fastagi(path)
    assert (
        len(sessions)
        == _count(r"^\S+ --- FastAGI session #\d+ .*connection from", text)
        == README[scenario][1]
    )
    assert [s.number for s in sessions] == list(range(1, len(sessions) + 1))
    assert sum(len(s.exchanges) for s in sessions) == _count(r"^\S+ >>> ", text)
    assert sum(len(ex.replies) for s in sessions for ex in s.exchanges) == _count(r"^\S+ <<< ", text)
    assert len(sessions) == _count(r"^agi_network: yes$", text)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fastagi_env_and_replies(scenario: str) -> None:
    for s in read_fastagi(FIXTURES / scenario / "fastagi.txt"):
        assert s.scenario == scenario
        assert s.closed_by == "controller" and s.error is None
        assert s.env_raw.endswith(b"\n\n") and b"\r" not in s.env_raw
        assert s.env_raw == "".join(f"{k}: {v}\n" for k, v in s.env.items()).encode() + b"\n"
        assert s.env["agi_network"] == "yes"
        assert s.env["agi_accountcode"] == ""
        assert s.env["agi_request"] == "agi://127.0.0.1:4573/" + s.env["agi_network_script"]
        assert s.wire_bytes() == s.env_raw + s.reply_bytes()
        assert s.command_bytes().count(b"\n") == len(s.exchanges)
        for ex in s.exchanges:
            assert ex.replies, ex.command
            assert len(ex.reply_times) == len(ex.replies)
            assert ex.reply_bytes() == "".join(r + "\n" for r in ex.replies).encode()
            last = ex.response[-1]
            assert re.match(r"\d{3} ", last), last


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fastagi_render_gives_the_file_back(scenario: str) -> None:
    path = FIXTURES / scenario / "fastagi.txt"
    assert _render_fastagi(read_fastagi(path)) == path.read_bytes()


def test_fastagi_hangup_and_multiline_replies() -> None:
    (s,) = read_fastagi(FIXTURES / "agi_hangup" / "fastagi.txt")
    by_cmd = [(ex.command, ex.replies) for ex in s.exchanges]
    assert by_cmd[2] == ("FOOBAR", ["510 Invalid or unknown command"])
    assert by_cmd[3] == (
        "SET VARIABLE",
        [
            "520-Invalid command syntax.  Proper usage follows:",
            "Sets a variable to the current channel.",
            "520 End of proper usage.",
        ],
    )
    hangup = s.exchanges[5]
    assert hangup.command == "GET VARIABLE CALLERID(num)"
    assert hangup.replies == ["HANGUP", "200 result=1 (0699999999)"]
    assert hangup.hangup_notified and hangup.response == ["200 result=1 (0699999999)"]
    assert hangup.reply_bytes() == b"HANGUP\n200 result=1 (0699999999)\n"
    assert sum(ex.hangup_notified for ex in s.exchanges) == 1
    assert s.exchanges[-1].replies == ["511 Command Not Permitted on a dead channel or intercept routine"]


# ------------------------------------------------------------------------------- malformed

_AMI_OK = (
    b"=== 2026-11-27T03:46:55.028 <<< BANNER (ami-main)\nAsterisk Call Manager/11.0.0\n\n"
    b"=== 2026-11-27T03:46:55.029 <<< RECV (ami-main)\nResponse: Success\nMessage: x \n\n"
)


def test_parse_ami_minimal_and_empty_body() -> None:
    recs = parse_ami(_AMI_OK + b"=== 2026-11-27T03:46:56.000 <<< RECV (ami-main)\n\n\n")
    assert [r.raw for r in recs] == [
        b"Asterisk Call Manager/11.0.0\r\n",
        b"Response: Success\r\nMessage: x \r\n\r\n",
        b"\r\n\r\n",
    ]
    assert [r.line for r in recs] == [1, 4, 8]
    assert parse_ami(b"") == []


@pytest.mark.parametrize(
    ("data", "line", "fragment"),
    [
        (b"Response: Success\n\n", 1, "expected a block header"),
        (_AMI_OK + b"Event: Stray\n\n", 8, "empty line inside a message"),
        (_AMI_OK[:-2], 6, "does not end with a newline"),
        (_AMI_OK[:-1], 4, "not terminated by an empty line"),
        (b"=== yesterday <<< RECV (ami-main)\nA: b\n\n", 1, "bad timestamp"),
        (b"=== 2026-11-27T03:46:55.028 <<< RECEIVED (ami-main)\nA: b\n\n", 1, "expected a block header"),
        (b"=== 2026-11-27T03:46:55.028 <<< EOF (x) (ami-main)\npartial=oops\n\n", 2, "not a bytes literal"),
        (b"=== 2026-11-27T03:46:55.028 <<< BANNER (ami-main)\nA\nB\n\n", 3, "more than one line"),
        (b"=== 2026-11-27T03:46:55.028 <<< RECV (ami-main)\n\n=== x\n", 2, "two empty lines"),
    ],
)
def test_parse_ami_rejects_malformed(data: bytes, line: int, fragment: str) -> None:
    with pytest.raises(RecordingFormatError, match=fragment) as info:
        parse_ami(data, "bad/ami.txt")
    assert info.value.line == line
    assert str(info.value).startswith(f"bad/ami.txt:{line}: ")


def test_read_ami_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "ami.txt"
    bad.write_bytes(b"garbage\n")
    with pytest.raises(RecordingFormatError, match=re.escape(f"{bad}:1: ")):
        read_ami(bad)


_AGI_SESSION_LINE = (
    b"2026-11-27T03:46:56.533 --- FastAGI session #1 (scenario=t) connection from ('127.0.0.1', 1)\n"
)
_AGI_ENV_BLOCK = (
    b"=== 2026-11-27T03:46:56.533 <<< AGI ENVIRONMENT (raw, terminated by empty line)\n"
    b"agi_network: yes\nagi_accountcode: \n\n<empty line>\n\n"
)
_AGI_HEAD = _AGI_SESSION_LINE + _AGI_ENV_BLOCK
_AGI_CMD = b"2026-11-27T03:46:56.533 >>> ANSWER\n2026-11-27T03:46:56.534 <<< 200 result=0\n"
_AGI_CLOSE = b"2026-11-27T03:46:56.534 --- closing FastAGI session #1 from our side (dialplan continues)\n\n"


def test_parse_fastagi_variants() -> None:
    (ok,) = parse_fastagi(_AGI_HEAD + _AGI_CMD + _AGI_CLOSE)
    assert ok.env == {"agi_network": "yes", "agi_accountcode": ""}
    assert ok.env_raw == b"agi_network: yes\nagi_accountcode: \n\n"
    assert ok.wire_bytes() == ok.env_raw + b"200 result=0\n"
    assert ok.command_bytes() == b"ANSWER\n"

    ended = parse_fastagi(
        _AGI_HEAD
        + b"2026-11-27T03:46:57.000 >>> WAIT FOR DIGIT 1000\n"
        + b"2026-11-27T03:46:57.100 <<< EOF (Asterisk closed the AGI socket)\n"
        + b"2026-11-27T03:46:57.100 --- FastAGI session #1 ended by Asterisk\n\n"
    )[0]
    assert ended.closed_by == "asterisk"
    assert ended.exchanges[0].eof and ended.exchanges[0].replies == []

    crashed = parse_fastagi(
        _AGI_HEAD
        + b"2026-11-27T03:46:57.000 !!! harness exception:\nTraceback (most recent call last):\n"
        + b"  File x\nKeyError: 1\n\n\n"
        + b"2026-11-27T03:46:58.000 --- FastAGI session #2 (scenario=t) connection from ('127.0.0.1', 2)\n"
        + b"2026-11-27T03:46:58.001 !!! EOF while reading AGI environment\n\n"
    )
    assert [s.closed_by for s in crashed] == ["error", "error"]
    assert crashed[0].error == "harness exception:\nTraceback (most recent call last):\n  File x\nKeyError: 1"
    assert crashed[1].env_raw == b"" and crashed[1].env_time is None
    assert parse_fastagi(b"") == []


@pytest.mark.parametrize(
    ("data", "line", "fragment"),
    [
        (_AGI_HEAD + _AGI_CMD, 9, "no end line"),
        (_AGI_HEAD + _AGI_CMD + _AGI_CLOSE.replace(b"#1", b"#2"), 10, "names session #2"),
        (
            _AGI_HEAD + b"2026-11-27T03:46:56.534 <<< 200 result=0\n" + _AGI_CLOSE,
            8,
            "reply before any command",
        ),
        (_AGI_SESSION_LINE + _AGI_CMD + _AGI_CLOSE, 2, "before the session's AGI ENVIRONMENT"),
        (_AGI_HEAD.replace(b"\n<empty line>", b""), 5, "then '<empty line>'"),
        (_AGI_HEAD.replace(b"agi_network: yes", b"agi_network=yes") + _AGI_CLOSE, 3, "not 'agi_x: value'"),
        (_AGI_HEAD + _AGI_CMD + b"\n" + _AGI_CLOSE, 10, "empty line inside FastAGI session #1"),
        (_AGI_HEAD + b"ANSWER\n" + _AGI_CLOSE, 8, "expected '<time>"),
        (_AGI_CMD, 1, "outside an open session"),
        (_AGI_HEAD + _AGI_CMD + b"2026-11-27T03:46:56.534 --- bye\n", 10, "unknown session line"),
        (_AGI_HEAD + _AGI_CMD + _AGI_CLOSE + _AGI_ENV_BLOCK, 12, "outside the start of a session"),
    ],
)
def test_parse_fastagi_rejects_malformed(data: bytes, line: int, fragment: str) -> None:
    with pytest.raises(RecordingFormatError, match=re.escape(fragment)) as info:
        parse_fastagi(data, "bad/fastagi.txt")
    assert info.value.line == line
    assert str(info.value).startswith(f"bad/fastagi.txt:{line}: ")
