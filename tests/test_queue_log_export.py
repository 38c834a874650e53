"""``ivr export-queue-log``: queue_log lines rebuilt from call events, checked against Asterisk.

The reference is the queue_log Asterisk 22.10.1 itself wrote during each recorded scenario
(tests/fixtures/asterisk/*/queue_log): replaying the scenario's AMI transcript through the
state tracker and exporting its call events must give the same lines, event for event, in
the same order, with the same callid, queue, agent and data fields. What is compared:

* every line except ``QUEUESTART`` (an Asterisk start: no call event stands for it) and
  ``PAUSEALL`` / ``UNPAUSEALL`` / ``PENALTY`` (member administration that no call event
  carries; the per-queue PAUSE/UNPAUSE lines of a PAUSEALL *are* compared);
* ENTERQUEUE's callerid: the number never enters our events, so it is compared as
  documented in ivr.domain.queue_log_export -- empty without a privacy key, the keyed hash
  of the number Asterisk logged with one.

The simulator's own queue_log is checked the same way on a seeded generated run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from ivr import export_cmd
from ivr.domain.events import CallEvent, make_id
from ivr.domain.queue_log import (
    EVENT_FIELDS,
    QueueLogEntry,
    format_queue_log,
    parse_queue_log,
    parse_queue_log_line,
    read_queue_log,
)
from ivr.domain.queue_log_export import QueueLogExporter, export_queue_log
from ivr.domain.state import StateTracker
from ivr.replay import replay_events, transcript_events
from ivr.storage.privacy import NumberHasher
from ivr.storage.writer import EventLogWriter

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
SCENARIOS = sorted(p.parent.name for p in FIXTURES.glob("*/queue_log"))
#: Lines no call event stands for (see the module docstring).
NOT_EXPORTED = frozenset({"QUEUESTART", "PAUSEALL", "UNPAUSEALL", "PENALTY"})
HASHER = NumberHasher("queue-log-export-test-key-0123456789")


def reference(scenario: str) -> list[QueueLogEntry]:
    return [e for e in read_queue_log(FIXTURES / scenario / "queue_log") if e.event not in NOT_EXPORTED]


def with_callerid(entries: Sequence[QueueLogEntry], hash_number: bool) -> list[QueueLogEntry]:
    """The reference with ENTERQUEUE's callerid as the export writes it."""
    out = []
    for e in entries:
        if e.event == "ENTERQUEUE":
            number = e.data[1]
            e = QueueLogEntry(
                e.time,
                e.callid,
                e.queue,
                e.agent,
                e.event,
                (e.data[0], HASHER(number) if hash_number else "", *e.data[2:]),
            )
        out.append(e)
    return out


def hashed_events(scenario: str) -> list[CallEvent]:
    """The scenario replayed by a tracker that has the controller's privacy hash."""
    tracker = StateTracker(hash_number=HASHER, keep_ended=None)
    events = tracker.feed_all(transcript_events(FIXTURES / scenario))
    return events + list(tracker.flush())


# -- against Asterisk's own queue_log ------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_export_reproduces_asterisk_queue_log(scenario: str) -> None:
    result = replay_events([FIXTURES / scenario])
    assert result.errors == []
    got = export_queue_log(result.events)
    assert [e.format() for e in got] == [e.format() for e in with_callerid(reference(scenario), False)]


@pytest.mark.parametrize("scenario", ["answered", "concurrent", "mixed_a", "timeout_overflow"])
def test_enterqueue_callerid_is_the_keyed_hash_of_the_number(scenario: str) -> None:
    events = hashed_events(scenario)
    # the raw number is nowhere in the events
    numbers = {e.data[1] for e in reference(scenario) if e.event == "ENTERQUEUE"}
    assert numbers and not any(n in str(dict(e.data)) for e in events for n in numbers)
    expected = with_callerid(reference(scenario), True)
    assert export_queue_log(events) == expected
    blank = export_queue_log(events, callerid=False)
    assert blank == with_callerid(reference(scenario), False)


def test_the_recordings_cover_every_call_line_type() -> None:
    """The comparisons above are only worth what the recordings contain."""
    seen = {e.event for s in SCENARIOS for e in reference(s)}
    assert {
        "ENTERQUEUE",
        "CONNECT",
        "COMPLETEAGENT",
        "COMPLETECALLER",
        "ABANDON",
        "EXITWITHTIMEOUT",
        "EXITWITHKEY",
        "RINGNOANSWER",
        "RINGCANCELED",
        "PAUSE",
        "UNPAUSE",
        "ADDMEMBER",
        "REMOVEMEMBER",
    } <= seen


def test_lines_have_asterisk_field_counts_and_parse_back() -> None:
    entries = export_queue_log(replay_events([FIXTURES / s for s in SCENARIOS]).events)
    assert len(entries) > 60
    for e in entries:
        assert len(e.data) == len(EVENT_FIELDS[e.event]), e
    text = format_queue_log(entries)
    assert parse_queue_log(text) == entries
    times = [e.time for e in entries]
    assert times == sorted(times)


def test_order_does_not_depend_on_arrival_order() -> None:
    """Events stored out of order (two controllers, a drained spool) give the same file."""
    events = replay_events([FIXTURES / "mixed_a"]).events
    expected = export_queue_log(events)
    rng = random.Random(7)
    for _ in range(3):
        shuffled = list(events)
        rng.shuffle(shuffled)
        assert export_queue_log(shuffled) == expected
    # a duplicate (the same event seen by two observers) is written once
    assert export_queue_log(events + events[::3]) == expected


def test_incremental_exporter_releases_lines_in_order_within_its_window() -> None:
    events = replay_events([FIXTURES / "mixed_a"]).events
    expected = export_queue_log(events)
    exporter = QueueLogExporter(reorder_s=5.0)
    early: list[QueueLogEntry] = []
    for event in events:
        early.extend(exporter.feed(event))
    rest = exporter.finish()
    assert early and rest  # settled lines come out before the end
    assert early + rest == expected
    assert early[-1].time <= events[-1].ts - 5.0


def test_agent_modes_and_member_lines() -> None:
    events = replay_events([FIXTURES / "member_admin"]).events
    asterisk = [(e.callid, e.agent, e.event, e.data) for e in export_queue_log(events)]
    assert asterisk == [
        ("MANAGER", "Local/203@agents", "ADDMEMBER", ("",)),
        ("NONE", "Agent 203", "PAUSE", ("lunch",)),
        ("NONE", "Agent 203", "UNPAUSE", ("",)),
        ("NONE", "Local/201@agents", "PAUSE", ("meeting",)),
        ("NONE", "Local/201@agents", "UNPAUSE", ("",)),
        ("MANAGER", "Local/203@agents", "REMOVEMEMBER", ("",)),
    ]
    by_interface = {e.agent for e in export_queue_log(events, agent="interface")}
    assert by_interface == {"Local/203@agents", "Local/201@agents"}
    by_name = [e.agent for e in export_queue_log(events, agent="name") if e.event.endswith("MEMBER")]
    assert by_name == ["Agent 203", "Agent 203"]
    assert export_queue_log(events, members=False) == []
    with pytest.raises(ValueError, match="agent must be one of"):
        QueueLogExporter(agent="nickname")  # type: ignore[arg-type]


def test_range_and_queue_filters() -> None:
    events = replay_events([FIXTURES / "mixed_a", FIXTURES / "timeout_overflow"]).events
    full = export_queue_log(events)
    since, until = 1795751552.0, 1795751590.0
    window = export_queue_log(events, since=since, until=until)
    assert window == [e for e in full if since <= e.time < until]
    # a ring started before the range and cancelled in it keeps its full ring time
    assert any(e.event == "RINGCANCELED" and e.data == ("10196",) for e in window)
    overflow = export_queue_log(events, queues=["overflow"])
    assert overflow and overflow == [e for e in full if e.queue == "overflow"]
    with pytest.raises(ValueError, match="empty range"):
        QueueLogExporter(since=10.0, until=5.0)


# -- mappings the recordings do not show ----------------------------------------------------------

T0 = 1_800_000_000.0


def ev(type_: str, ts: float, call: str = "c1", *, agent: str = "", **data: str | int) -> CallEvent:
    return CallEvent(
        type=type_, call=call, ts=ts, id=make_id(type_, call, ts, agent), queue="q", agent=agent, data=data
    )


def lines(events: Sequence[CallEvent], **kwargs: object) -> list[str]:
    return [e.format() for e in export_queue_log(events, **kwargs)]  # type: ignore[arg-type]


def test_timeout_statuses_map_to_their_lines() -> None:
    def exit_line(status: str) -> str:
        join = ev("queue.join", T0, position=2, count=2)
        out = ev("queue.timeout", T0 + 30.5, position=1, original_position=2, wait_s=30, status=status)
        return lines([join, out])[1]

    assert exit_line("TIMEOUT") == f"{int(T0) + 30}|c1|q|NONE|EXITWITHTIMEOUT|1|2|30"
    assert exit_line("LEAVEEMPTY") == f"{int(T0) + 30}|c1|q|NONE|EXITEMPTY|1|2|30"
    assert exit_line("WITHDRAW") == f"{int(T0) + 30}|c1|q|NONE|WITHDRAW|1|2|30|"


def test_ringall_cancel_and_late_complete() -> None:
    a, b = "Local/201@agents", "Local/202@agents"
    events = [
        ev("queue.join", T0, position=1, count=1),
        ev("agent.ring", T0 + 1.25, agent=a, member_name="Anne"),
        ev("agent.ring", T0 + 1.5, agent=b, member_name=b),
        ev("queue.abandon", T0 + 4.0, position=1, original_position=1, wait_s=4),
        # a second call: answered, AgentComplete later than the tracker's grace period
        ev("queue.join", T0 + 10, "c2", position=3, count=3),
        ev("agent.ring", T0 + 11, "c2", agent=a, member_name="Anne"),
        ev("agent.connect", T0 + 12, "c2", agent=a, member_name="Anne", wait_s=2, ring_s=1),
        ev("call.end", T0 + 20, "c2", queue_outcome="answered"),
        ev("agent.complete", T0 + 40, "c2", agent=a, wait_s=2, talk_s=28, reason="transfer"),
    ]
    assert lines(events) == [
        f"{int(T0)}|c1|q|NONE|ENTERQUEUE|||1",
        f"{int(T0) + 4}|c1|q|Anne|RINGCANCELED|2750",
        f"{int(T0) + 4}|c1|q|{b}|RINGCANCELED|2750",
        f"{int(T0) + 4}|c1|q|NONE|ABANDON|1|1|4",
        f"{int(T0) + 10}|c2|q|NONE|ENTERQUEUE|||3",
        f"{int(T0) + 12}|c2|q|Anne|CONNECT|2||1",
        f"{int(T0) + 40}|c2|q|Anne|BLINDTRANSFER|||2|28|3",
    ]
    assert lines(events, agent="interface")[1] == f"{int(T0) + 4}|c1|q|{a}|RINGCANCELED|2750"


def test_odd_data_never_breaks_a_line() -> None:
    events = [
        ev("queue.join", T0, position="x", caller_hash="a|b\nc"),
        ev("queue.exit_key", T0 + 3, key="1|2"),
        CallEvent("queue.join", "c9", float("nan"), "nan-ts", queue="q"),
        CallEvent("queue.join", "", T0, "no-call", queue="q"),
    ]
    out = lines(events)
    assert out == [
        f"{int(T0)}|c1|q|NONE|ENTERQUEUE||a_b c|0",
        f"{int(T0) + 3}|c1|q|NONE|EXITWITHKEY|1_2|0|0|3",
    ]
    for text in out:
        parse_queue_log_line(text)


# -- the simulator's own queue_log ----------------------------------------------------------------


async def simulated_run(seed: int) -> tuple[list[CallEvent], list[str]]:
    """A seeded generated run: engine events -> AMI wire -> parser -> tracker, and its queue_log."""
    from ivr.protocol.ami import AMIParser, Event, encode_event
    from ivr.sim.config import AgentModel, TrafficConfig, default_config
    from ivr.sim.engine import Simulator
    from ivr.sim.traffic import TrafficGenerator

    cfg = default_config()
    cfg.globals = {}  # agents draw from their models, no fixed plan
    cfg.dialplan["public"]["100"] = [
        "Answer()",
        "Set(QT=${DEFAULT(QTIMEOUT,60)})",
        "Queue(support,c,,,${QT})",
        "Hangup()",
    ]
    cfg.dialplan["queue-exit"]["1"] = ["NoOp(exit key)", "Hangup()"]
    cfg.agents = {
        "201": AgentModel(answer_delay=(1.0, 6.0), talk_time=(5.0, 25.0), no_answer=0.3),
        "202": AgentModel(answer_delay=(1.0, 20.0), talk_time=(5.0, 25.0), no_answer=0.2),
    }
    cfg.traffic = TrafficConfig(
        enabled=True,
        arrivals_per_hour=900,
        calls=24,
        patience=(3.0, 60.0),
        queue_timeout=40,
        caller_exten="ivr-patient",  # sends DIGITS after WAIT1: "1" is the queue's exit key
        wait_before_digits=4.0,
        digits=("1", "5"),
        digit_weights=(0.25, 0.75),
    )
    sim = Simulator(cfg, seed=seed, speed=200, start_epoch=T0)
    parser = AMIParser(expect_banner=False)
    tracker = StateTracker(hash_number=HASHER, keep_ended=None)
    events: list[CallEvent] = []

    def listener(name: str, headers: list[tuple[str, str]]) -> None:
        parser.receive_data(encode_event(name, headers))
        for msg in parser.events():
            if isinstance(msg, Event):
                events.extend(tracker.feed(msg))

    sim.add_listener(listener)
    await sim.start()
    try:
        await TrafficGenerator(sim).run()
        await sim.idle(real_seconds=60)
        await sim.run_for(10)
    finally:
        await sim.stop()
    events.extend(tracker.flush())
    return events, list(sim.queue_log_lines)


def same_line(got: QueueLogEntry, want: QueueLogEntry) -> bool:
    """Equal, except RINGCANCELED's ms within 1: the simulator takes it from a float
    difference of epochs (5.1 s -> 5099 ms), the export from the microsecond Timestamps."""
    if (got.time, got.callid, got.queue, got.agent, got.event) != (
        want.time,
        want.callid,
        want.queue,
        want.agent,
        want.event,
    ):
        return False
    if got.event == "RINGCANCELED":
        return abs(int(got.data[0]) - int(want.data[0])) <= 1
    return got.data == want.data


async def test_export_reproduces_the_simulator_queue_log() -> None:
    events, log_lines = await simulated_run(seed=3)
    want = with_callerid([parse_queue_log_line(t) for t in log_lines if "|QUEUESTART|" not in t], True)
    assert {e.event for e in want} >= {
        "ENTERQUEUE",
        "CONNECT",
        "COMPLETEAGENT",
        "ABANDON",
        "EXITWITHKEY",
        "EXITWITHTIMEOUT",
        "RINGNOANSWER",
        "RINGCANCELED",
    }
    got = export_queue_log(events)
    assert len(got) == len(want)
    mismatches = [(g.format(), w.format()) for g, w in zip(got, want, strict=True) if not same_line(g, w)]
    assert mismatches == []


# -- the command ----------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ivr")
    export_cmd.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["export-queue-log", *argv])


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = export_cmd.run(parse(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_from_recording_to_stdout_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = str(FIXTURES / "mixed_a")
    code, out, err = run(["--from-recording", scenario], capsys)
    assert code == 0 and err == ""
    assert parse_queue_log(out) == with_callerid(reference("mixed_a"), False)
    target = tmp_path / "queue_log"
    code, out, err = run(
        ["--from-recording", scenario, "--output", str(target), "--queue", "support"], capsys
    )
    assert code == 0 and out == ""
    assert read_queue_log(target) == with_callerid(reference("mixed_a"), False)
    assert "45 line(s) written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["queue_log"]  # no temporary file left


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "yesterday-ish"], "invalid time 'yesterday-ish'"),
        (["--since", "2026-11-27", "--until", "2026-11-26"], "--until must be after --since"),
        (["--until", "-5"], "invalid time '-5'"),
        (["--timezone", "Mars/Olympus"], "Mars/Olympus"),
        (["--config", "/nonexistent/decroche.toml"], "decroche.toml"),
        (["--redis", "http://localhost:6379"], "invalid Redis URL"),
        (["--from-recording", "/nonexistent/scenario"], "no AMI transcript at /nonexistent/scenario"),
        (["--from-recording", str(FIXTURES / "answered"), "--output", "/nonexistent/dir/ql"], "cannot write"),
    ],
)
def test_cli_bad_input_is_a_clear_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("ivr export-queue-log: ") and message in err


def test_cli_bad_option_values_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--lookbehind", "-1"],
        ["--agent", "nickname"],
        ["--redis", "redis://x", "--from-recording", "d"],
    ):
        with pytest.raises(SystemExit) as exc:
            parse(argv)
        assert exc.value.code == 2
    assert "export-queue-log" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_cli_unreachable_redis_is_exit_1_and_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    target = tmp_path / "queue_log"
    code, out, err = run(["--redis", url, "--output", str(target)], capsys)
    assert code == 1 and out == ""
    assert f"cannot read the event stream at {url}" in err
    assert list(tmp_path.iterdir()) == []


def store(url: str, tmp_path: Path, events: Sequence[CallEvent]) -> None:
    async def go() -> None:
        async with EventLogWriter(
            url, spool_path=tmp_path / "spool", fsync=False, flush_interval=0, hasher=HASHER
        ) as writer:
            for event in events:
                writer.submit(event)
            await writer.flush()

    asyncio.run(go())


def test_cli_reads_the_redis_stream(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The controller's path: tracker with the privacy hash -> writer -> stream -> export."""
    events = hashed_events("mixed_a") + hashed_events("member_admin")
    store(redis_url, tmp_path, events)
    # member_admin was recorded before mixed_a
    expected = reference("member_admin") + with_callerid(reference("mixed_a"), True)
    code, out, err = run(["--redis", redis_url], capsys)
    assert code == 0, err
    assert parse_queue_log(out) == expected
    # a window in epoch seconds, one queue, no member lines
    since, until = "1795751552", "1795751590"
    code, out, err = run(["--redis", redis_url, "--since", since, "--until", until, "--no-members"], capsys)
    assert code == 0, err
    window = parse_queue_log(out)
    assert window and window == [
        e for e in with_callerid(reference("mixed_a"), True) if int(since) <= e.time < int(until)
    ]
    code, out, _ = run(["--redis", redis_url, "--queue", "nosuchqueue"], capsys)
    assert code == 0 and out == ""
