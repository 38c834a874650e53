"""``ivr export-queue-log``: Asterisk-format queue_log lines rebuilt from the event stream.

QueueMetrics, Asternic and the like read Asterisk's ``queue_log``; this command writes one
from what Décroché stored, so they can report on our data (the mapping and its field
decisions are in :mod:`ivr.domain.queue_log_export`)::

    ivr export-queue-log [--config PATH] [--redis URL] [--stream KEY] [--since T] [--until T]
                         [--queue Q]... [--output FILE] [--agent asterisk|interface|name]
                         [--no-callerid] [--no-members] [--lookbehind S]
    ivr export-queue-log --from-recording DIR... [same filters]

The events are read from the Redis stream with :mod:`ivr.storage.reader` in batches, or
with ``--from-recording`` from recorded AMI transcripts replayed through the state tracker
(:func:`ivr.replay.replay_events`), which is how the export is checked against the
queue_log Asterisk wrote for the same calls. Lines are written as they settle, in time
order; ``--output FILE`` is written to a temporary file renamed at the end, so a failed
export never leaves a truncated queue_log where a tool may pick it up.

``--since`` / ``--until`` take the same values as ``ivr report`` (ISO date or date-time,
epoch seconds, ``today``, ``yesterday``, ``now``); lines of events with
``since <= ts < until`` are written, and events from ``--lookbehind`` seconds before
``since`` are read too, so that a member still ringing when the range starts and cancelled
in it gets its RINGCANCELED.

Exit status: 0 written, 2 bad arguments (time, timezone, configuration, missing
recording, unwritable output), 1 the event stream could not be read (Redis unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ivr.domain.queue_log_export import AGENT_MODES, DEFAULT_REORDER_S

if TYPE_CHECKING:
    from ivr.domain.events import CallEvent
    from ivr.domain.queue_log import QueueLogEntry
    from ivr.domain.queue_log_export import QueueLogExporter

__all__ = ["DEFAULT_LOOKBEHIND_S", "add_parser", "export_from_redis", "run"]

PROG = "ivr export-queue-log"
#: Events read before ``--since``: longer than any queue wait plus ring we expect.
DEFAULT_LOOKBEHIND_S = 3600.0
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``export-queue-log`` on an ``argparse`` subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "export-queue-log",
        help="Asterisk queue_log lines rebuilt from the event stream (QueueMetrics, Asternic)",
        description=(
            "Write the queue_log Asterisk would have written (ENTERQUEUE, CONNECT, COMPLETE*, "
            "ABANDON, EXITWITH*, RINGNOANSWER, RINGCANCELED, member PAUSE/ADDMEMBER ...) "
            "from the Redis event stream or from recorded AMI transcripts."
        ),
    )
    p.add_argument("--config", metavar="PATH", help="configuration (Redis URL, stream, timezone)")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--redis", metavar="URL", help="Redis URL (default: the configuration's, else localhost)"
    )
    source.add_argument(
        "--from-recording",
        nargs="+",
        metavar="DIR",
        help="replay recorded AMI transcripts (scenario directories or ami.txt) instead of reading Redis",
    )
    p.add_argument(
        "--stream", metavar="KEY", help="stream key (default: the configuration's, else ivr:events)"
    )
    p.add_argument("--since", metavar="T", help="first event time included (default: the stream's start)")
    p.add_argument("--until", metavar="T", help="events from T on are left out (default: none)")
    p.add_argument(
        "--timezone", metavar="TZ", help="timezone of dates in --since/--until (default Europe/Paris)"
    )
    p.add_argument(
        "--queue", metavar="Q", action="append", help="only lines of queue Q (repeat for several queues)"
    )
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument(
        "--agent",
        choices=AGENT_MODES,
        default="asterisk",
        help="agent field: member name on call lines and PAUSE, interface on ADD/REMOVEMEMBER "
        "(asterisk, the default, as app_queue writes it), or the interface / the name everywhere",
    )
    p.add_argument(
        "--no-callerid",
        dest="callerid",
        action="store_false",
        help="leave ENTERQUEUE's callerid empty (default: the keyed hash of the number, when stored)",
    )
    p.add_argument(
        "--no-members",
        dest="members",
        action="store_false",
        help="leave member lines out (PAUSE, ADDMEMBER ...)",
    )
    p.add_argument(
        "--lookbehind",
        metavar="S",
        type=_seconds,
        default=DEFAULT_LOOKBEHIND_S,
        help="read events this long before --since for rings still going then (default 3600)",
    )
    p.set_defaults(_module=__name__)
    return p


class _BadURL(ValueError):
    """A Redis URL redis-py refuses."""


class _WriteError(Exception):
    """Writing the output failed (disk full, closed pipe): not the stream's fault."""


class _Sink:
    """Standard output, or a temporary file next to ``--output`` renamed on success."""

    def __init__(self, output: str | None, stdout: TextIO) -> None:
        self.path = None if output in (None, "-") else Path(output)
        self.lines = 0
        self._tmp: Path | None = None
        if self.path is None:
            self.stream = stdout
            return
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(name)
        self.stream = os.fdopen(fd, "w", encoding="utf-8", newline="")

    def write(self, entries: Iterable[QueueLogEntry]) -> None:
        try:
            for entry in entries:
                self.stream.write(entry.format() + "\n")
                self.lines += 1
        except OSError as exc:
            raise _WriteError(str(exc)) from exc

    def commit(self) -> None:
        try:
            self.stream.flush()
            if self._tmp is None or self.path is None:
                return
            os.fsync(self.stream.fileno())
            self.stream.close()
            os.replace(self._tmp, self.path)
            self._tmp = None
        except OSError as exc:
            raise _WriteError(str(exc)) from exc

    def discard(self) -> None:
        if self._tmp is not None:
            self.stream.close()
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


async def export_from_redis(
    url: str,
    exporter: QueueLogExporter,
    sink: _Sink,
    *,
    since: float | None,
    until: float | None,
    lookbehind_s: float,
    stream_key: str | None,
) -> int:
    """Read ``[since - lookbehind, until)`` from the stream into ``exporter``; entries skipped.

    Redis failures are raised as OSError so the caller reports them in one place; a URL
    redis-py cannot parse as :class:`ValueError`.
    """
    import redis.asyncio
    import redis.exceptions

    from ivr.storage.reader import EventLogReader

    try:
        client = redis.asyncio.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    except ValueError as exc:
        raise _BadURL(f"invalid Redis URL {url!r}: {exc}") from exc
    try:
        reader = EventLogReader(client, stream_key=stream_key, margin_s=exporter.reorder_s)
        start = None if since is None else max(0.0, since - lookbehind_s)
        async for event in reader.read_range(start, until):
            sink.write(exporter.feed(event))
        sink.write(exporter.finish())
        return reader.skipped
    except redis.exceptions.RedisError as exc:
        raise OSError(str(exc) or type(exc).__name__) from exc
    finally:
        await client.aclose()


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the command; see the module docstring for the exit status."""
    from zoneinfo import ZoneInfo

    from ivr.domain.queue_log_export import QueueLogExporter
    from ivr.kpi_cli import parse_when

    stdout = sys.stdout if out is None else out
    config = None
    if args.config:
        from ivr.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except (ConfigError, OSError) as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
    tz_name = args.timezone or (config.timezone if config is not None else "Europe/Paris")
    try:
        tz = ZoneInfo(tz_name)
        since = parse_when(args.since, tz) if args.since else None
        until = parse_when(args.until, tz) if args.until else None
        if since is not None and until is not None and until <= since:
            raise ValueError("--until must be after --since")
        exporter = QueueLogExporter(
            since=since,
            until=until,
            queues=args.queue,
            callerid=args.callerid,
            members=args.members,
            agent=args.agent,
            reorder_s=DEFAULT_REORDER_S,
        )
    except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    events: list[CallEvent] | None = None
    if args.from_recording:
        from ivr.replay import replay_events

        try:
            result = replay_events(args.from_recording)
        except (OSError, ValueError) as exc:  # RecordingFormatError is a ValueError
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        for error in result.errors:
            print(f"{PROG}: warning: {error}", file=sys.stderr)
        events = result.events
    try:
        sink = _Sink(args.output, stdout)
    except OSError as exc:
        print(f"{PROG}: cannot write {args.output}: {exc}", file=sys.stderr)
        return 2
    url = args.redis or (config.redis.url if config is not None else DEFAULT_REDIS_URL)
    if events is None and not url.startswith(("redis://", "rediss://", "unix://")):
        sink.discard()
        print(f"{PROG}: invalid Redis URL {url!r}: use redis://, rediss:// or unix://", file=sys.stderr)
        return 2
    try:
        if events is not None:
            for event in events:
                sink.write(exporter.feed(event))
            sink.write(exporter.finish())
        else:
            stream = args.stream or (config.redis.stream if config is not None else None)
            skipped = asyncio.run(
                export_from_redis(
                    url,
                    exporter,
                    sink,
                    since=since,
                    until=until,
                    lookbehind_s=args.lookbehind,
                    stream_key=stream,
                )
            )
            if skipped:
                print(f"{PROG}: warning: {skipped} stream entries could not be decoded", file=sys.stderr)
        sink.commit()
    except _WriteError as exc:
        sink.discard()
        print(f"{PROG}: cannot write {args.output or 'the output'}: {exc}", file=sys.stderr)
        return 1
    except _BadURL as exc:
        sink.discard()
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        sink.discard()
        print(f"{PROG}: cannot read the event stream at {url}: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        sink.discard()
        raise
    if sink.path is not None:
        print(f"{PROG}: {sink.lines} line(s) written to {sink.path}", file=sys.stderr)
    return 0
