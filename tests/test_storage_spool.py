"""The spool file on its own: order, crash recovery, bad lines, locking, write errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ivr.domain.events import CallEvent, make_id
from ivr.storage.keys import DEFAULT_KEYS
from ivr.storage.spool import Spool, SpoolError, SpoolLockedError, decode_line, encode_event


def ev(i: int, **kw: object) -> CallEvent:
    base: dict[str, object] = {
        "type": "queue.join",
        "call": f"1700000000.{i}",
        "ts": 1_700_000_000 + i / 10,
        "id": make_id("test", i),
        "queue": "caf",
        "data": {"position": i, "note": "délai\nestimé"},
    }
    base.update(kw)
    return CallEvent(**base)  # type: ignore[arg-type]


def test_line_round_trip_keeps_every_field_and_one_line_per_event() -> None:
    event = ev(3, service="caf", agent="PJSIP/agent-1", source="agi")
    line = encode_event(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # the newline in data is escaped
    assert decode_line(line.rstrip(b"\n")) == event


def test_append_read_advance_in_order_then_empty(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl").open()
    events = [ev(i) for i in range(25)]
    spool.append(events[:10])
    spool.append(events[10:])
    assert spool.depth == 25
    got: list[CallEvent] = []
    while spool.depth:
        batch, offset, lines = spool.read(7)
        assert lines == len(batch) <= 7
        got.extend(batch)
        spool.advance(offset, lines)
    assert got == events
    assert spool.path.stat().st_size == 0  # emptied once everything was handed out
    spool.close()


def test_read_does_not_move_the_cursor_until_advance(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s").open()
    spool.append([ev(1), ev(2)])
    first, _, _ = spool.read(10)
    again, offset, lines = spool.read(10)
    assert first == again == [ev(1), ev(2)]
    spool.advance(offset, lines)
    assert spool.depth == 0
    with pytest.raises(SpoolError):
        spool.advance(offset + 1, 1)  # past the end: refused rather than corrupting the cursor


def test_reopen_after_partial_drain_keeps_everything(tmp_path: Path) -> None:
    # A crash mid-drain: lines already sent are still in the file and are sent again
    # (the writer's idempotency drops them); none is missing.
    path = tmp_path / "s"
    spool = Spool(path).open()
    spool.append([ev(i) for i in range(5)])
    _, offset, lines = spool.read(2)
    spool.advance(offset, lines)
    assert spool.depth == 3
    spool.close()
    reopened = Spool(path).open()
    assert reopened.depth == 5
    assert reopened.read(10)[0] == [ev(i) for i in range(5)]
    reopened.close()


def test_torn_last_line_is_cut_aside_and_logged(tmp_path: Path) -> None:
    path = tmp_path / "s"
    good = [ev(i) for i in range(3)]
    torn = encode_event(ev(99))[:40]  # the write a crash interrupted
    path.write_bytes(b"".join(encode_event(e) for e in good) + torn)
    with capture_logs() as logs:
        spool = Spool(path).open()
    assert spool.depth == 3
    assert [e for e in logs if e["event"] == "spool.line_rejected"] == [
        {
            "event": "spool.line_rejected",
            "log_level": "error",
            "path": str(path),
            "offset": len(b"".join(encode_event(e) for e in good)),
            "size": 40,
            "reason": "half-written last line (crash during an append?)",
            "excerpt": torn.decode(),
            "kept_in": str(spool.rejected_path),
        }
    ]
    assert spool.rejected_path.read_bytes() == torn + b"\n"
    # Appending after the repair starts on a clean line.
    spool.append([ev(4)])
    assert spool.read(10)[0] == [*good, ev(4)]
    spool.close()


def test_undecodable_lines_are_rejected_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "s"
    unknown_type = json.dumps({**ev(2).to_fields(), "type": "no.such.type"}).encode()
    lines = [
        encode_event(ev(0)),
        b"{not json\n",
        unknown_type + b"\n",
        b'{"v": 1}\n',  # not all strings
        encode_event(ev(1)),
    ]
    path.write_bytes(b"".join(lines))
    spool = Spool(path).open()
    assert spool.depth == 5
    with capture_logs() as logs:
        events, offset, count = spool.read(10)
    assert events == [ev(0), ev(1)]
    assert count == 5
    assert [e["offset"] for e in logs if e["event"] == "spool.line_rejected"] == [
        len(lines[0]),
        len(lines[0]) + len(lines[1]),
        len(lines[0]) + len(lines[1]) + len(lines[2]),
    ]
    assert spool.rejected_path.read_bytes() == b"".join(lines[1:4])
    assert spool.rejected == 3
    spool.advance(offset, count)
    assert spool.depth == 0


def test_validate_hook_rejects_events_unusable_as_keys(tmp_path: Path) -> None:
    def check(event: CallEvent) -> None:
        DEFAULT_KEYS.seen(event.id)

    path = tmp_path / "s"
    path.write_bytes(encode_event(ev(0, id="has space")) + encode_event(ev(1)))
    spool = Spool(path, validate=check).open()
    assert spool.read(10)[0] == [ev(1)]
    assert spool.rejected == 1


def test_read_stops_at_max_events_midway_through_a_chunk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", fsync=False).open()
    events = [ev(i) for i in range(1000)]
    spool.append(events)
    got: list[CallEvent] = []
    while spool.depth:
        batch, offset, lines = spool.read(333)
        got.extend(batch)
        spool.advance(offset, lines)
    assert got == events


def test_second_owner_is_refused(tmp_path: Path) -> None:
    first = Spool(tmp_path / "s").open()
    with pytest.raises(SpoolLockedError, match="in use"):
        Spool(tmp_path / "s").open()
    first.close()
    Spool(tmp_path / "s").open().close()  # released with the descriptor


def test_sync_only_when_something_was_appended(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s").open()
    assert not spool.needs_sync
    spool.append([ev(1)])
    assert spool.needs_sync
    spool.sync()
    assert not spool.needs_sync
    assert not Spool(tmp_path / "t", fsync=False).open().needs_sync


def test_write_error_raises_and_leaves_no_partial_line() -> None:
    spool = Spool("/dev/full", fsync=False).open()  # every write fails with ENOSPC
    with pytest.raises(SpoolError, match="cannot append"):
        spool.append([ev(1)])
    assert spool.depth == 0
    spool.close()


def test_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError, match="cannot open spool"):
        Spool(blocker / "spool").open()
    with pytest.raises(SpoolError, match="not open"):
        Spool(tmp_path / "never-opened").append([ev(1)])


def test_file_shrunk_under_the_reader_is_an_error_not_a_loop(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", fsync=False).open()
    spool.append([ev(i) for i in range(10)])
    os.truncate(spool.path, 100)
    with pytest.raises(SpoolError, match="shorter than written"):
        spool.read(10)
