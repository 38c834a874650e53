"""Tests of :mod:`ivr.domain.queue_log` against every recorded Asterisk 22.10.1 queue_log.

Statistics are judged against Asterisk's queue_log, and the simulator writes one, so the
parser/formatter pair must round-trip Asterisk's files byte for byte and refuse anything
that would not.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from ivr.domain.queue_log import (
    EVENT_FIELDS,
    QueueLogEntry,
    QueueLogFormatError,
    format_queue_log,
    parse_queue_log,
    parse_queue_log_line,
    read_queue_log,
)

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
SCENARIOS = sorted(p.name for p in FIXTURES.iterdir() if (p / "queue_log").is_file())


def _readme_events() -> dict[str, Counter[str]]:
    """scenario -> event counts as the rig summarised them in README.md (``PAUSEx2`` = 2)."""
    out: dict[str, Counter[str]] = {}
    for line in (FIXTURES / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| \[(\w+)\]\(.*\| (\d+) \| ([A-Z, x0-9]+) \|$", line)
        if m:
            counts: Counter[str] = Counter()
            for item in m[3].split(", "):
                name, _, times = item.partition("x")
                counts[name] += int(times or 1)
            assert sum(counts.values()) == int(m[2])
            out[m[1]] = counts
    return out


README_EVENTS = _readme_events()


def test_every_scenario_has_a_queue_log() -> None:
    assert len(SCENARIOS) == 15
    assert set(README_EVENTS) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_round_trip_byte_for_byte(scenario: str) -> None:
    path = FIXTURES / scenario / "queue_log"
    raw = path.read_bytes()
    entries = read_queue_log(path)
    assert len(entries) == raw.count(b"\n")
    assert format_queue_log(entries).encode() == raw
    for line, entry in zip(raw.decode().splitlines(), entries, strict=True):
        assert entry.format() == line
        assert parse_queue_log_line(line) == entry
        assert parse_queue_log_line(line + "\n") == entry


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_events_and_field_counts(scenario: str) -> None:
    entries = read_queue_log(FIXTURES / scenario / "queue_log")
    assert Counter(e.event for e in entries) == README_EVENTS[scenario]
    first = entries[0]
    assert (first.callid, first.queue, first.agent, first.event, first.data) == (
        "NONE",
        "NONE",
        "NONE",
        "QUEUESTART",
        ("",),
    )
    assert [e.time for e in entries] == sorted(e.time for e in entries)
    for e in entries:
        assert e.event in EVENT_FIELDS, e
        assert len(e.data) == len(EVENT_FIELDS[e.event]), e
        if e.callid not in ("NONE", "MANAGER"):
            assert re.fullmatch(r"\d+\.\d+", e.callid), e


def test_named_fields_of_recorded_events() -> None:
    answered = read_queue_log(FIXTURES / "answered" / "queue_log")
    enter, connect, complete = answered[1:]
    assert enter.named() == {"url": "", "callerid": "0611000001", "position": "1"}
    assert connect.named() == {"holdtime": "2", "bridged_uniqueid": "1795751221.2", "ringtime": "2"}
    assert complete.named() == {"holdtime": "2", "talktime": "6", "origposition": "1"}
    assert complete.int_field("talktime") == 6

    key = read_queue_log(FIXTURES / "exit_with_key" / "queue_log")
    assert key[2].event == "RINGCANCELED" and key[2].int_field("ringtime_ms") == 6452
    assert key[3].named() == {"key": "1", "position": "1", "origposition": "1", "waittime": "7"}

    timeout = read_queue_log(FIXTURES / "timeout" / "queue_log")
    assert timeout[2].named() == {"ringtime_ms": "10000"}
    assert timeout[3].named() == {"position": "1", "origposition": "1", "waittime": "10"}

    admin = read_queue_log(FIXTURES / "member_admin" / "queue_log")
    assert [(e.callid, e.queue, e.agent, e.event, e.data) for e in admin[1:]] == [
        ("MANAGER", "support", "Local/203@agents", "ADDMEMBER", ("",)),
        ("NONE", "support", "Agent 203", "PAUSE", ("lunch",)),
        ("NONE", "support", "Agent 203", "UNPAUSE", ("",)),
        ("NONE", "NONE", "Local/201@agents", "PAUSEALL", ("meeting",)),
        ("NONE", "support", "Local/201@agents", "PAUSE", ("meeting",)),
        ("NONE", "NONE", "Local/201@agents", "UNPAUSEALL", ("",)),
        ("NONE", "support", "Local/201@agents", "UNPAUSE", ("",)),
        ("NONE", "support", "Local/203@agents", "PENALTY", ("3",)),
        ("MANAGER", "support", "Local/203@agents", "REMOVEMEMBER", ("",)),
    ]
    assert admin[0].named() == {"data1": ""}


def test_exitempty_and_unknown_events() -> None:
    e = parse_queue_log_line("1795751332|1795751316.1|support|NONE|EXITEMPTY|2|3|41")
    assert e.named() == {"position": "2", "origposition": "3", "waittime": "41"}
    custom = parse_queue_log_line("5|NONE|q|NONE|MYEVENT|a||c")
    assert custom.data == ("a", "", "c")
    assert custom.named() == {"data1": "a", "data2": "", "data3": "c"}
    named_cid = parse_queue_log_line("5|1.1|q|NONE|ENTERQUEUE||0611|1|Jean")
    assert named_cid.named() == {"url": "", "callerid": "0611", "position": "1", "data4": "Jean"}


def test_entry_built_in_code_formats_like_asterisk() -> None:
    e = QueueLogEntry(1795751214, "NONE", "NONE", "NONE", "QUEUESTART", ("",))
    assert e.format() == "1795751214|NONE|NONE|NONE|QUEUESTART|"
    assert format_queue_log([e, e]) == "1795751214|NONE|NONE|NONE|QUEUESTART|\n" * 2
    assert parse_queue_log(format_queue_log([e])) == [e]
    assert parse_queue_log("") == []


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("1795751214|NONE|NONE|NONE|QUEUESTART", "at least 6"),
        ("", "at least 6"),
        ("garbage", "at least 6"),
        ("17957x1214|NONE|NONE|NONE|QUEUESTART|", "integer epoch"),
        ("01795751214|NONE|NONE|NONE|QUEUESTART|", "integer epoch"),
        ("-1|NONE|NONE|NONE|QUEUESTART|", "integer epoch"),
        ("|NONE|NONE|NONE|QUEUESTART|", "integer epoch"),
        ("1795751214|NONE|NONE|NONE||", "empty event"),
        ("1795751214|NONE|NONE|NONE|QUEUESTART|\r", "line break"),
        ("1795751214|NONE|NONE|NONE|QUEUESTART|\nx", "line break"),
    ],
)
def test_malformed_lines(line: str, fragment: str) -> None:
    with pytest.raises(QueueLogFormatError, match=fragment) as info:
        parse_queue_log_line(line)
    assert info.value.text == line


def test_malformed_file_reports_line_number(tmp_path: Path) -> None:
    path = tmp_path / "queue_log"
    path.write_text("1795751214|NONE|NONE|NONE|QUEUESTART|\n1795751221|x|support|NONE\n", encoding="utf-8")
    with pytest.raises(QueueLogFormatError, match=re.escape(f"{path}:2: expected at least 6")) as info:
        read_queue_log(path)
    assert info.value.line == 2

    path.write_text("1795751214|NONE|NONE|NONE|QUEUESTART|\n1795751221|1.1|support", encoding="utf-8")
    with pytest.raises(QueueLogFormatError, match=":2: last line does not end with a newline"):
        read_queue_log(path)

    path.write_bytes(b"1795751214|NONE|NONE|NONE|QUEUESTART|\r\n")
    with pytest.raises(QueueLogFormatError, match=":1: line break"):
        read_queue_log(path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"time": -1},
        {"callid": "a|b"},
        {"queue": "a\nb"},
        {"event": ""},
        {"data": ()},
        {"data": ("a|b",)},
    ],
)
def test_entry_refuses_what_would_not_round_trip(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "time": 1,
        "callid": "NONE",
        "queue": "q",
        "agent": "NONE",
        "event": "E",
        "data": ("",),
    }
    fields.update(kwargs)
    with pytest.raises(ValueError):
        QueueLogEntry(**fields)  # type: ignore[arg-type]
