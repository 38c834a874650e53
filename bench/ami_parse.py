"""AMI parsing: events per second through our codec and through panoramisk 1.4's parser.

The stream is the banner followed by every ``Event`` message Asterisk 22.10.1 sent on the
recorded main connections (``tests/fixtures/asterisk/*/ami.txt``), exact wire bytes, CRLF,
repeated until it holds ``--events`` events (default 500 000, about 200 MB). It is fed in
``--chunk``-byte reads (default 64 KiB, what a socket read gives under load):

* ours: :class:`ivr.protocol.ami.AMIParser`, ``receive_data`` then the bulk ``events()``;
* panoramisk: its real code path, ``panoramisk.ami_protocol.AMIProtocol.data_received``,
  whose ``handle_message`` is replaced by a counter.

Both must count the same events. Figures are the best of ``--repeat`` runs, in CPU time
(see ``_common``); ``ratio`` is ours over panoramisk's.

    python bench/ami_parse.py --json [--events N] [--chunk BYTES] [--repeat R]
"""

from __future__ import annotations

import logging
from typing import Any

from _common import arguments, best_of, emit, transcripts
from panoramisk.ami_protocol import AMIProtocol

from ivr.protocol.ami import AMIParser, Event
from ivr.recording import read_ami

BANNER = b"Asterisk Call Manager/11.0.0\r\n"


def recorded_events() -> list[bytes]:
    events = []
    for path in transcripts("ami.txt"):
        for record in read_ami(path):
            if record.conn == "ami-main" and record.direction == "recv" and record.raw.startswith(b"Event: "):
                events.append(record.raw)
    return events


def ours(stream: bytes, chunk: int) -> int:
    parser = AMIParser()
    receive, events = parser.receive_data, parser.events
    count = 0
    for start in range(0, len(stream), chunk):
        receive(stream[start : start + chunk])
        for message in events():
            count += message.__class__ is Event
    return count


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def panoramisk(stream: bytes, chunk: int) -> int:
    protocol = AMIProtocol()
    protocol.connection_made(_Transport())
    count = 0

    def handle_message(message: Any) -> None:  # the stream holds events only
        nonlocal count
        count += 1

    protocol.handle_message = handle_message
    data_received = protocol.data_received
    for start in range(0, len(stream), chunk):
        data_received(stream[start : start + chunk])
    return count


def main() -> None:
    args = arguments(__doc__ or "", events=500_000, chunk=64 * 1024, repeat=3)
    logging.getLogger("panoramisk").setLevel(logging.WARNING)
    unit = recorded_events()
    copies = -(-args.events // len(unit))
    stream = BANNER + b"".join(unit) * copies
    expected = len(unit) * copies

    count, cpu, wall = best_of(args.repeat, lambda: ours(stream, args.chunk))
    theirs, their_cpu, _ = best_of(max(1, args.repeat - 1), lambda: panoramisk(stream, args.chunk))
    if not count == theirs == expected:
        raise RuntimeError(f"event counts differ: ours {count}, panoramisk {theirs}, stream {expected}")
    emit(
        {
            "events": count,
            "events_per_s": round(count / cpu),
            "panoramisk_events_per_s": round(theirs / their_cpu),
            "ratio": round(their_cpu / cpu, 2),
            "wall_events_per_s": round(count / wall),
            "stream_mb": round(len(stream) / 1e6, 1),
            "chunk": args.chunk,
            "repeat": args.repeat,
            "clock": "process_time",
        },
        args.json,
    )


if __name__ == "__main__":
    main()
