"""``ivr replay FILE... [--json]``: recorded AMI transcripts through the live state tracker.

Offline and deterministic: each transcript (the ``ami.txt`` format of the recordings in
tests/fixtures/asterisk, read with :mod:`ivr.recording`) is decoded with the product's own
AMI parser and fed to a fresh :class:`~ivr.domain.state.StateTracker`, exactly as the
controller would have fed it live. The result lists each call's outcome; it is how we check
the tracker against what Asterisk itself wrote in its queue_log.

Output (DESIGN.md)::

    {"calls": [{"call", "caller", "queue", "outcome", "wait_s", "talk_s", "agent", ...}],
     "kpi": {"overall": {...}, "queues": {...}, ...}}

``kpi`` is the same block ``ivr report`` prints, computed by the same accumulator from the
replayed call events (no opening hours: a recording is taken as in hours). Only inbound
calls and callback legs are listed (``kind``); channels without IVR or queue activity are
not calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import structlog

from ivr.domain.calls import CallRecord
from ivr.domain.events import CallEvent
from ivr.domain.state import StateTracker
from ivr.protocol.ami import AMIParser, Event
from ivr.protocol.errors import RemoteProtocolError
from ivr.recording import read_ami

__all__ = [
    "ReplayResult",
    "add_parser",
    "format_table",
    "replay",
    "replay_events",
    "resolve_transcript",
    "run",
    "transcript_events",
]

log = structlog.get_logger()

StrPath = str | os.PathLike[str]


@dataclass(slots=True)
class ReplayResult:
    """Everything a replay produced: ended calls, call events, AMI events fed, decode errors."""

    calls: list[CallRecord] = field(default_factory=list)
    events: list[CallEvent] = field(default_factory=list)
    ami_events: int = 0
    errors: list[str] = field(default_factory=list)


def resolve_transcript(path: StrPath) -> Path:
    """A scenario directory means its ``ami.txt``; a file is taken as is.

    Raises FileNotFoundError with the path in the message, so the command can say which
    argument is wrong.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "ami.txt"
    if not p.is_file():
        raise FileNotFoundError(f"no AMI transcript at {p}")
    return p


def transcript_events(path: StrPath, errors: list[str] | None = None) -> list[Event]:
    """The events Asterisk sent, in recorded order, each connection through its own parser.

    If several logged-in connections received the same event, it is kept once (identical
    header lists; two distinct events always differ at least by their microsecond
    ``Timestamp``). A malformed message is appended to ``errors`` and skipped, like the
    controller does, rather than aborting the replay. ``path`` is a scenario directory or an
    ``ami.txt`` file.
    """
    path = resolve_transcript(path)
    parsers: dict[str, AMIParser] = {}
    seen: set[tuple[tuple[str, str], ...]] = set()
    events: list[Event] = []
    for rec in read_ami(path):
        if rec.direction == "send":
            continue
        parser = parsers.get(rec.conn)
        if parser is None:
            parser = parsers[rec.conn] = AMIParser(expect_banner=True)
        if rec.raw:
            parser.receive_data(rec.raw)
        if rec.direction == "eof":
            parser.receive_data(b"")
        while True:
            try:
                messages = parser.events()
            except RemoteProtocolError as exc:
                if errors is not None:
                    errors.append(f"{path}:{rec.line}: {exc}")
                log.warning("replay_bad_message", path=str(path), line=rec.line, error=str(exc))
                continue
            break
        for msg in messages:
            if isinstance(msg, Event):
                key = msg.headers
                if "Timestamp" in msg.fields:
                    if key in seen:
                        continue
                    seen.add(key)
                events.append(msg)
    return events


def replay_events(paths: Sequence[StrPath]) -> ReplayResult:
    """Replay each transcript through its own tracker (each recording is its own PBX run)."""
    result = ReplayResult()
    for path in paths:
        tracker = StateTracker(keep_ended=None)
        for event in transcript_events(path, result.errors):
            result.ami_events += 1
            result.events.extend(tracker.feed(event))
        result.events.extend(tracker.flush())
        calls = list(tracker.ended)
        # Calls still up when the recording stopped: listed with their outcome so far.
        calls.extend(call.summary() for call in tracker.calls.values() if call.started)
        calls.sort(key=lambda c: (c.start, c.call))
        result.calls.extend(calls)
    return result


def replay(paths: Sequence[StrPath]) -> dict[str, Any]:
    """The ``ivr replay --json`` object: ``{"calls": [...], "kpi": {...}}``."""
    from ivr.domain.kpi import compute_report, report_document

    result = replay_events(paths)
    kpi = report_document(compute_report(result.events))["kpi"]
    return {"calls": [c.to_dict() for c in result.calls], "kpi": kpi}


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def format_table(calls: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of calls, one line each."""
    columns = ("call", "caller", "queue", "outcome", "wait_s", "talk_s", "agent", "kind")
    rows = [[_cell(c.get(col)) for col in columns] for c in calls]
    widths = [max([len(col), *(len(r[i]) for r in rows)]) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"{len(rows)} call(s)")
    return "\n".join(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``replay`` on an ``argparse`` subparsers object (``ivr replay FILE... [--json]``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="replay recorded AMI transcripts through the state tracker",
        description="Feed recorded AMI transcripts (scenario directories or ami.txt files) through "
        "the live state tracker, offline, and print each call's outcome.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="a scenario directory or an ami.txt transcript")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the command; 0 on success, 2 when a transcript is missing or unreadable."""
    stream = sys.stdout if out is None else out
    try:
        data = replay(args.files)
    except (OSError, ValueError) as exc:  # RecordingFormatError is a ValueError
        print(f"ivr replay: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(data, stream, separators=(",", ":"))
        stream.write("\n")
    else:
        stream.write(format_table(data["calls"]) + "\n")
        stream.write(format_kpi(data["kpi"]) + "\n")
    return 0


def format_kpi(kpi: dict[str, Any]) -> str:
    """One line per queue (and overall) with the figures a supervisor reads first."""
    columns = (
        "asked_for_agent",
        "handled_by_agent",
        "pickup_rate",
        "answered",
        "abandoned",
        "timeouts",
        "asa_s",
    )
    rows = [("overall", kpi.get("overall", {})), *sorted(kpi.get("queues", {}).items())]
    width = max(len(name) for name, _ in rows)
    lines = ["".ljust(width) + "  " + "  ".join(columns)]
    for name, block in rows:
        cells = []
        for col in columns:
            value = block.get(col)
            if col == "pickup_rate" and isinstance(value, float):
                text = f"{100 * value:.1f} %"
            elif isinstance(value, float):
                text = f"{value:.1f}"
            else:
                text = _cell(value)
            cells.append(text.rjust(len(col)))
        lines.append(name.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)
