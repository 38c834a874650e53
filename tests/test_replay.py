"""``ivr replay`` against Asterisk's own account of each recorded scenario (its queue_log).

For every recording, the outcome, wait, talk time and agent the tracker derives from the AMI
events alone must equal what app_queue wrote in the queue_log of the same run:
ENTERQUEUE + CONNECT/COMPLETE* -> answered, ABANDON -> abandoned, EXITWITHTIMEOUT -> timeout,
EXITWITHKEY -> exit_key; a JOINEMPTY caller has no queue_log line but must come out join_empty.
"""

from __future__ import annotations

import argparse
import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from ivr.domain.queue_log import QueueLogEntry, read_queue_log
from ivr.replay import add_parser, format_table, replay, replay_events, run

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
SCENARIOS = sorted(p.name for p in FIXTURES.iterdir() if (p / "ami.txt").is_file())

#: queue_log events that end a queue attempt, and the outcome each means.
_EXITS = {
    "ABANDON": "abandoned",
    "EXITWITHTIMEOUT": "timeout",
    "EXITWITHKEY": "exit_key",
    "EXITEMPTY": "leave_empty",
}
_COMPLETES = ("COMPLETEAGENT", "COMPLETECALLER")


def expected_from_queue_log(entries: list[QueueLogEntry]) -> dict[str, dict[str, Any]]:
    """call id -> outcome, queue, wait_s, talk_s, agent, as app_queue logged them."""
    calls: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.event == "ENTERQUEUE":
            calls[e.callid] = {"queue": e.queue, "outcome": None, "wait_s": None, "talk_s": None, "agent": ""}
        elif e.callid in calls:
            c = calls[e.callid]
            if e.event == "CONNECT":
                c.update(outcome="answered", wait_s=e.int_field("holdtime"), agent=e.agent)
            elif e.event in _COMPLETES:
                c.update(outcome="answered", wait_s=e.int_field("holdtime"), talk_s=e.int_field("talktime"))
            elif e.event in _EXITS:
                c.update(outcome=_EXITS[e.event], wait_s=e.int_field("waittime"))
    return calls


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_outcomes_agree_with_queue_log(scenario: str) -> None:
    expected = expected_from_queue_log(read_queue_log(FIXTURES / scenario / "queue_log"))
    result = replay_events([FIXTURES / scenario])
    assert result.errors == []
    queued = {
        c.call: {
            "queue": c.queue,
            "outcome": c.outcome,
            "wait_s": c.wait_s,
            "talk_s": c.talk_s,
            "agent": c.agent,
        }
        for c in result.calls
        if c.kind == "inbound" and c.queue_outcome not in ("", "join_empty")
    }
    assert queued == expected
    # Whatever did not enter a queue was refused on entry or stayed in the IVR.
    others = [c for c in result.calls if c.kind == "inbound" and c.call not in expected]
    assert all(c.outcome in ("join_empty", "ivr_only") for c in others)
    if scenario == "join_empty":
        assert [(c.outcome, c.queue) for c in others] == [("join_empty", "empty")]


def test_every_queue_log_outcome_is_covered() -> None:
    seen = set()
    for scenario in SCENARIOS:
        expected = expected_from_queue_log(read_queue_log(FIXTURES / scenario / "queue_log"))
        seen |= {c["outcome"] for c in expected.values()}
    assert seen == {"answered", "abandoned", "timeout", "exit_key"}


def test_replay_json_shape() -> None:
    data = replay([FIXTURES / "answered", FIXTURES / "join_empty"])
    assert set(data) == {"calls", "kpi"}
    assert data["kpi"]["overall"]["asked_for_agent"] == 2
    assert data["kpi"]["queues"]["empty"]["join_empty"] == 1
    assert [c["outcome"] for c in data["calls"]] == ["answered", "join_empty"]
    first = data["calls"][0]
    assert list(first)[:7] == ["call", "caller", "queue", "outcome", "wait_s", "talk_s", "agent"]
    assert (first["caller"], first["wait_s"], first["talk_s"]) == ("0611000001", 2, 6)
    json.dumps(data)  # serialisable as is


def test_directory_and_ami_txt_path_are_equivalent() -> None:
    assert replay([FIXTURES / "mixed_a"]) == replay([FIXTURES / "mixed_a" / "ami.txt"])


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ivr")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["replay", *argv])


def test_cli_json_and_table() -> None:
    args = _args(str(FIXTURES / "timeout"), str(FIXTURES / "exit_with_key"), "--json")
    assert args.func is run
    out = StringIO()
    assert run(args, out) == 0
    data = json.loads(out.getvalue())
    assert [c["outcome"] for c in data["calls"]] == ["timeout", "exit_key"]

    out = StringIO()
    assert run(_args(str(FIXTURES / "abandoned")), out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["call", "caller", "queue", "outcome", "wait_s", "talk_s", "agent", "kind"]
    assert lines[1].split() == [
        "1795751256.1",
        "0611000001",
        "support",
        "abandoned",
        "9",
        "-",
        "-",
        "inbound",
    ]
    assert "1 call(s)" in lines
    kpi_rows = lines[lines.index("1 call(s)") + 1 :]
    assert kpi_rows[0].split()[:3] == ["asked_for_agent", "handled_by_agent", "pickup_rate"]
    assert kpi_rows[1].split()[:4] == ["overall", "1", "0", "0.0"]


def test_format_table_of_nothing() -> None:
    assert format_table([]).splitlines()[-1] == "0 call(s)"


def test_cli_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args(str(tmp_path / "nope"))) == 2
    err = capsys.readouterr().err
    assert "ivr replay: error:" in err and "nope" in err
    assert run(_args(str(tmp_path))) == 2  # a directory without ami.txt
    assert "ami.txt" in capsys.readouterr().err


def test_cli_truncated_transcript_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (FIXTURES / "answered" / "ami.txt").read_bytes()
    broken = tmp_path / "ami.txt"
    broken.write_bytes(data[: len(data) // 2].rstrip(b"\n"))
    assert run(_args(str(broken))) == 2
    assert "truncated" in capsys.readouterr().err


def test_malformed_message_is_reported_and_skipped(tmp_path: Path) -> None:
    src = FIXTURES / "answered" / "ami.txt"
    text = src.read_text()
    marker = "=== 2026-11-27T03:46:56.030 >>> SEND (ami-main)"
    assert marker in text
    bad = "=== 2026-11-27T03:46:56.029 <<< RECV (ami-main)\nEvent: Broken\nthis line has no colon\n\n"
    target = tmp_path / "answered"
    target.mkdir()
    (target / "ami.txt").write_text(text.replace(marker, bad + marker, 1))
    result = replay_events([target])
    assert len(result.errors) == 1 and "without 'Key: value' form" in result.errors[0]
    assert [(c.outcome, c.wait_s, c.talk_s) for c in result.calls] == [("answered", 2, 6)]


def test_replay_kpi_counts_the_refusals_queue_log_cannot_see() -> None:
    """join_empty leaves no queue_log line, yet the caller asked for an agent."""
    from ivr.replay import replay

    fixtures = Path(__file__).parent / "fixtures" / "asterisk"
    data = replay([fixtures / "mixed_a", fixtures / "join_empty"])
    overall = data["kpi"]["overall"]
    answered = sum(1 for c in data["calls"] if c["outcome"] == "answered")
    assert overall["handled_by_agent"] == answered
    assert overall["asked_for_agent"] == len(data["calls"])
    assert data["kpi"]["queues"]["empty"]["join_empty"] == 1
    entered = data["kpi"]["queues"]["support"]["entered"]
    assert entered == len(data["calls"]) - 1
    # queue_log alone would give answered / entered, higher than the real pickup rate.
    assert overall["pickup_rate"] < answered / entered
