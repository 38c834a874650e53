"""FastAGI reply parsing: replies per second through our codec and through panoramisk 1.4's.

The stream is every one-line reply Asterisk 22.10.1 wrote in the recorded FastAGI sessions
(``tests/fixtures/asterisk/*/fastagi.txt``: ``200 result=...``, ``510 ...``, ``511 ...``),
each after the command it answered, repeated until it holds ``--replies`` replies
(default 300 000). The unsolicited ``HANGUP`` lines and the three-line 520 replies are left
out: panoramisk reads the first as a reply and the second as two lines, drifting one
reply per occurrence, so the two readers could not count the same replies.

* ours: :class:`ivr.protocol.agi.AGIServerConnection`; per reply, ``send(command)`` (it
  checks and encodes the command, and the state machine needs it) then ``next_event()``;
  the reply bytes arrive in ``--chunk``-byte reads (default 16 KiB);
* panoramisk: its real reply path, ``fast_agi.Request.send_command`` (encode and write the
  command, ``StreamReader.readline``, decode, ``utils.parse_agi_result``, the loop over
  ``100`` replies), on an asyncio ``StreamReader`` already holding the whole stream, with
  a writer that drops the bytes.

Both must count the same replies. ``parse_only_*`` time the reply parsers alone on the same
lines (``ivr.protocol.agi.parse_reply_line`` against ``panoramisk.utils.parse_agi_result``).
Figures are the best of ``--repeat`` runs, in CPU time (see ``_common``); ratios are ours
over panoramisk's.

    python bench/agi_parse.py --json [--replies N] [--chunk BYTES] [--repeat R]
"""

from __future__ import annotations

import asyncio

from _common import arguments, best_of, emit, transcripts
from panoramisk.fast_agi import Request
from panoramisk.utils import parse_agi_result

from ivr.protocol.agi import (
    AGIServerConnection,
    Command,
    Reply,
    UnknownCommand,
    parse_command,
    parse_reply_line,
)
from ivr.recording import read_fastagi

ENV = b"agi_network: yes\nagi_network_script: bench\nagi_channel: Local/100@public-00000000;2\n\n"


def recorded_exchanges() -> list[tuple[Command, bytes]]:
    """(command, reply line) of every exchange answered by a single line."""
    pairs = []
    for path in transcripts("fastagi.txt"):
        for session in read_fastagi(path):
            for exchange in session.exchanges:
                if len(exchange.replies) != 1 or exchange.replies[0] == "HANGUP":
                    continue
                parsed = parse_command(exchange.command)
                if isinstance(parsed, UnknownCommand):
                    parsed = Command(parsed.words[0], parsed.words[1:])
                pairs.append((parsed, exchange.reply_bytes()))
    return pairs


def ours(commands: list[Command], stream: bytes, chunk: int) -> int:
    conn = AGIServerConnection()
    conn.receive_data(ENV)
    conn.next_event()
    send, next_event, receive = conn.send, conn.next_event, conn.receive_data
    count = 0
    start = 0
    for command in commands:
        send(command)
        reply = next_event()
        while reply.__class__ is not Reply:  # NEED_DATA: read on
            data = stream[start : start + chunk]
            if not data:
                raise RuntimeError("stream exhausted before the last reply")
            receive(data)
            start += chunk
            reply = next_event()
        count += 1
    return count


class _Writer:
    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass


def panoramisk(lines: list[str], stream: bytes) -> int:
    async def session() -> int:
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        request = Request(None, {}, reader, _Writer())
        count = 0
        for line in lines:
            result = await request.send_command(line)
            count += "status_code" in result or "error" in result
        return count

    return asyncio.run(session())


def parse_only_ours(lines: list[str]) -> int:
    return sum(1 for _ in map(parse_reply_line, lines))


def parse_only_panoramisk(lines: list[str]) -> int:
    return sum(1 for _ in map(parse_agi_result, lines))


def main() -> None:
    args = arguments(__doc__ or "", replies=300_000, chunk=16 * 1024, repeat=3)
    unit = recorded_exchanges()
    copies = -(-args.replies // len(unit))
    exchanges = unit * copies
    commands = [command for command, _ in exchanges]
    lines = [command.encode().decode("utf-8")[:-1] for command in commands]
    stream = b"".join(reply for _, reply in exchanges)

    replies = [reply.decode("utf-8")[:-1] for _, reply in exchanges]

    count, cpu, wall = best_of(args.repeat, lambda: ours(commands, stream, args.chunk))
    theirs, their_cpu, _ = best_of(args.repeat, lambda: panoramisk(lines, stream))
    if not count == theirs == len(exchanges):
        raise RuntimeError(f"reply counts differ: ours {count}, panoramisk {theirs}, stream {len(exchanges)}")
    _, parse_cpu, _ = best_of(args.repeat, lambda: parse_only_ours(replies))
    _, their_parse_cpu, _ = best_of(args.repeat, lambda: parse_only_panoramisk(replies))
    emit(
        {
            "replies": count,
            "replies_per_s": round(count / cpu),
            "panoramisk_replies_per_s": round(theirs / their_cpu),
            "ratio": round(their_cpu / cpu, 2),
            "parse_only_replies_per_s": round(count / parse_cpu),
            "parse_only_panoramisk_replies_per_s": round(count / their_parse_cpu),
            "parse_only_ratio": round(their_parse_cpu / parse_cpu, 2),
            "wall_replies_per_s": round(count / wall),
            "chunk": args.chunk,
            "repeat": args.repeat,
            "clock": "process_time",
        },
        args.json,
    )


if __name__ == "__main__":
    main()
