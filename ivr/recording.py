"""Reader for the AMI / FastAGI transcripts recorded from a real Asterisk.

The transcripts under ``tests/fixtures/asterisk/<scenario>/`` were written by the recording
rig (``config/suite.py.txt`` there) while it drove a real Asterisk 22.10.1. They are the
project's ground truth: the ``ivr replay FILE...`` command feeds them back through our codecs,
and the conformance tests check that our parsers, simulator and statistics agree with what
Asterisk really sent. Both uses need the *exact* bytes that crossed the socket, so this module
undoes the rig's pretty-printing instead of merely parsing ``Key: Value`` pairs.

``ami.txt``: one block per message, each ``=== <ISO time> <tag> (<conn>)`` header line, the
message with CRLF shown as LF, then one empty line. Tags: ``<<< BANNER``, ``>>> SEND``,
``<<< RECV``, ``<<< EOF (connection closed by Asterisk)`` (body ``partial=b'...'``, the bytes
left unread when the socket closed) and, in principle, ``<<< CONNECTION ERROR`` (body a Python
exception repr). The rig read each message with ``readuntil(b"\\r\\n\\r\\n")`` and wrote it
with only the trailing CR/LF stripped, so:

* trailing spaces are data (``AccountCode: `` is a header with an empty value) and are kept;
* the first empty line after a header ends the block. A message cannot contain CRLF CRLF,
  so an empty line *inside* a block could only come from a bare LF, which the rig made
  indistinguishable from CRLF; such a file cannot be restored and is rejected;
* a block with an empty body is written as two empty lines.

``fastagi.txt``: sessions written whole, in session order, each: ``<time> --- FastAGI session
#N (scenario=...) connection from (...)``; an ``=== <time> <<< AGI ENVIRONMENT (raw, terminated
by empty line)`` block holding the env lines, the terminating empty line, the marker line
``<empty line>`` and the block's empty line; then ``<time> >>> command`` / ``<time> <<< reply``
lines; then an end line (``--- closing FastAGI session #N from our side (dialplan
continues)``, ``--- FastAGI session #N ended by Asterisk`` after ``<<< EOF (Asterisk closed the
AGI socket)``, or a ``!!! ...`` harness error); then an empty line. A reply line ``HANGUP`` is
Asterisk's unsolicited hangup notice and is kept among the replies of the command it preceded,
because that is where it sits in the byte stream.

The rig decoded bytes as UTF-8 with ``errors="replace"``: a non-UTF-8 byte would have become
U+FFFD and cannot be restored. Every recorded message is ASCII, so nothing was lost.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final, Literal, TypeAlias

__all__ = [
    "AgiExchange",
    "AgiSession",
    "AmiDirection",
    "AmiRecord",
    "RecordingFormatError",
    "ami_bytes",
    "iter_ami_bytes",
    "parse_ami",
    "parse_fastagi",
    "read_ami",
    "read_fastagi",
]

StrPath: TypeAlias = str | os.PathLike[str]
AmiDirection: TypeAlias = Literal["banner", "send", "recv", "eof"]
AgiClosedBy: TypeAlias = Literal["controller", "asterisk", "error"]


class RecordingFormatError(ValueError):
    """A transcript does not follow the recording format.

    Carries the file and the 1-based line number so that a broken fixture (hand-edited,
    truncated, or written by a changed rig) is found at once instead of surfacing later as a
    puzzling conformance-test mismatch.
    """

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


# --------------------------------------------------------------------------------------- AMI


@dataclass(frozen=True, slots=True)
class AmiRecord:
    """One block of ``ami.txt``: what crossed one AMI connection at one moment.

    ``raw`` is the exact wire bytes: a message with its CRLF line ends and the terminating
    empty line (``b"...\\r\\n\\r\\n"``); the banner with its single CRLF; for ``eof`` the
    bytes Asterisk sent after the last complete message before closing (empty in every
    recording). ``line`` is the header's line number in the file, for diagnostics.
    """

    time: datetime
    direction: AmiDirection
    conn: str
    raw: bytes
    line: int = 0

    def headers(self) -> list[tuple[str, str]]:
        """The message's ``(key, value)`` pairs in wire order, repeated keys kept.

        Parsed the way Asterisk does (split at the first colon, one optional space after
        it), so a value keeps its trailing spaces. Meant for tests and diagnostics; the
        product decodes with :mod:`ivr.protocol.ami`.
        """
        if self.direction not in ("send", "recv"):
            return []
        pairs: list[tuple[str, str]] = []
        for line in self.raw.decode("utf-8").split("\r\n"):
            if not line:
                continue
            key, _, value = line.partition(":")
            pairs.append((key.strip(), value[1:] if value.startswith(" ") else value))
        return pairs

    def get(self, key: str, default: str | None = None) -> str | None:
        """First value of header ``key`` (case-insensitive, as Asterisk matches keys)."""
        wanted = key.lower()
        for k, v in self.headers():
            if k.lower() == wanted:
                return v
        return default


_AMI_HEADER: Final = re.compile(
    rb"=== (?P<time>\S+) (?P<tag><<< BANNER|>>> SEND|<<< RECV|<<< EOF(?: \([^()]*\))?|<<< CONNECTION ERROR)"
    rb" \((?P<conn>[^()\s]+)\)"
)
_AMI_DIRECTION: Final[dict[bytes, AmiDirection]] = {
    b"<<< BANNER": "banner",
    b">>> SEND": "send",
    b"<<< RECV": "recv",
    b"<<< CONNECTION ERROR": "eof",
}


def _split_lines(data: bytes, source: str) -> list[bytes]:
    """Split a transcript into lines, insisting on the final newline the rig always writes.

    A missing final newline means the file was cut short, and the last block could then be
    silently incomplete.
    """
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise RecordingFormatError(
            source, data.count(b"\n") + 1, "file does not end with a newline (truncated?)"
        )
    return data[:-1].split(b"\n")


def _parse_time(raw: bytes, source: str, lineno: int) -> datetime:
    """Parse the rig's ``datetime.isoformat(timespec="milliseconds")`` local timestamps."""
    try:
        return datetime.fromisoformat(raw.decode("ascii"))
    except ValueError:
        raise RecordingFormatError(source, lineno, f"bad timestamp {raw!r}") from None


def _decode(raw: bytes, source: str, lineno: int) -> str:
    """Decode UTF-8 text; the rig only ever wrote valid UTF-8, so anything else is corruption."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordingFormatError(source, lineno, f"invalid UTF-8: {exc}") from None


def parse_ami(data: bytes, source: str = "<bytes>") -> list[AmiRecord]:
    """Parse the contents of an ``ami.txt`` transcript; ``source`` names it in errors."""
    lines = _split_lines(data, source)
    records: list[AmiRecord] = []
    n = len(lines)
    i = 0
    after_blank_run = False
    while i < n:
        header = lines[i]
        lineno = i + 1
        m = _AMI_HEADER.fullmatch(header)
        if m is None:
            if after_blank_run:
                raise RecordingFormatError(
                    source,
                    lineno,
                    "line after a block's empty line is not a block header: either an empty line inside a"
                    " message (a bare LF, which the recording cannot tell from CRLF) or a corrupt file:"
                    f" {header[:80]!r}",
                )
            raise RecordingFormatError(
                source, lineno, f"expected a block header '=== <time> <tag> (<conn>)', got {header[:80]!r}"
            )
        time = _parse_time(m["time"], source, lineno)
        conn = _decode(m["conn"], source, lineno)
        tag = m["tag"]
        # The body runs to the first empty line; an empty body is written as two empty lines.
        j = i + 1
        while j < n and lines[j] != b"":
            j += 1
        if j >= n:
            raise RecordingFormatError(
                source, lineno, "block is not terminated by an empty line (truncated file?)"
            )
        body = lines[i + 1 : j]
        nxt = j + 1
        if not body:
            if nxt >= n or lines[nxt] != b"":
                raise RecordingFormatError(
                    source, j + 1, "block with an empty body must be followed by two empty lines"
                )
            nxt += 1
        i = nxt
        after_blank_run = True

        direction: AmiDirection
        if tag.startswith(b"<<< EOF"):
            direction = "eof"
            raw = _eof_partial(body, source, lineno)
        else:
            direction = _AMI_DIRECTION[tag]
            if direction == "banner":
                if len(body) > 1:
                    raise RecordingFormatError(source, lineno + 2, "banner block has more than one line")
                raw = body[0] + b"\r\n" if body else b""
            elif direction == "eof":  # CONNECTION ERROR: the body is an exception repr, no wire bytes
                raw = b""
            else:
                raw = b"\r\n".join(body) + b"\r\n\r\n"
        records.append(AmiRecord(time=time, direction=direction, conn=conn, raw=raw, line=lineno))
    return records


def _eof_partial(body: list[bytes], source: str, lineno: int) -> bytes:
    """Recover the ``partial=b'...'`` bytes the rig logged when Asterisk closed the socket."""
    if len(body) != 1 or not body[0].startswith(b"partial="):
        raise RecordingFormatError(source, lineno + 1, "EOF block must hold one line 'partial=b...'")
    literal = body[0][len(b"partial=") :].decode("ascii", "replace")
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, bytes):
        raise RecordingFormatError(source, lineno + 1, f"EOF block: {literal!r} is not a bytes literal")
    return value


def read_ami(path: StrPath) -> list[AmiRecord]:
    """Read an ``ami.txt`` transcript (in binary, so that no byte is reinterpreted)."""
    p = Path(path)
    return parse_ami(p.read_bytes(), str(p))


def iter_ami_bytes(
    source: StrPath | Sequence[AmiRecord],
    conn: str | None = None,
    direction: Literal["recv", "send"] = "recv",
) -> Iterator[bytes]:
    """Yield one connection's bytes in one direction, one chunk per recorded message.

    ``direction="recv"`` gives what the client read: the banner, every message, then any
    bytes left at EOF; ``"send"`` gives what the client wrote. Chunks keep message boundaries
    so a test can also feed a parser message by message; ``b"".join`` (or :func:`ami_bytes`)
    gives the stream. ``conn=None`` means the first connection in the file -- the rig's main
    (logged-in) connection, ``ami-main``, in every recording. ``source`` is a path or records
    already read, so several connections can be replayed without re-parsing.

    The file is read and ``conn`` checked at call time, not at the first ``next()``: an
    unknown connection name raises ``ValueError`` rather than replaying nothing, which
    would let a conformance test pass vacuously.
    """
    records = read_ami(source) if isinstance(source, str | os.PathLike) else source
    conns = list(dict.fromkeys(rec.conn for rec in records))
    if conn is None:
        if not conns:
            return iter(())
        conn = conns[0]
    elif conn not in conns:
        raise ValueError(f"no AMI connection {conn!r} in the recording (connections: {', '.join(conns)})")
    wanted: tuple[AmiDirection, ...] = ("banner", "recv", "eof") if direction == "recv" else ("send",)
    return (rec.raw for rec in records if rec.conn == conn and rec.direction in wanted and rec.raw)


def ami_bytes(
    source: StrPath | Sequence[AmiRecord],
    conn: str | None = None,
    direction: Literal["recv", "send"] = "recv",
) -> bytes:
    """The whole byte stream of :func:`iter_ami_bytes`, joined."""
    return b"".join(iter_ami_bytes(source, conn, direction))


# ---------------------------------------------------------------------------------- FastAGI


@dataclass(frozen=True, slots=True)
class AgiExchange:
    """One command our side sent and every line Asterisk answered before the next command.

    ``replies`` holds the lines in arrival order, without their ``\\n``: usually one
    (``200 result=0``); an unsolicited ``HANGUP`` line before the real reply after the
    caller hung up; several for a ``520-`` usage reply. ``time`` is when the command was
    sent, ``reply_times`` when each reply line arrived. ``eof`` means Asterisk closed the
    socket (at ``eof_time``) instead of answering, or before it finished.
    """

    command: str
    replies: list[str]
    time: datetime
    reply_times: list[datetime] = field(default_factory=list)
    eof: bool = False
    eof_time: datetime | None = None

    @property
    def hangup_notified(self) -> bool:
        """Whether Asterisk's unsolicited ``HANGUP`` notice arrived before this reply."""
        return "HANGUP" in self.replies

    @property
    def response(self) -> list[str]:
        """The reply proper: ``replies`` without the unsolicited ``HANGUP`` notices."""
        return [r for r in self.replies if r != "HANGUP"]

    def command_bytes(self) -> bytes:
        """The command as written on the socket (AGI commands end with a single LF)."""
        return (self.command + "\n").encode("utf-8")

    def reply_bytes(self) -> bytes:
        """The reply lines as Asterisk sent them, each ended by LF (``res_agi`` never sends CR)."""
        return "".join(r + "\n" for r in self.replies).encode("utf-8")


@dataclass(frozen=True, slots=True)
class AgiSession:
    """One FastAGI connection: the environment Asterisk sent, then the command exchanges.

    ``env_raw`` is the environment block exactly as sent (each line ending in LF, the final
    empty line included); ``env`` maps each ``agi_*`` key to its value (trailing spaces
    kept). ``time`` is when the connection was accepted, ``env_time`` when the environment
    had been read (``None`` if Asterisk closed before sending it all, ``env_raw`` then
    empty). ``closed_by`` says who ended the session, at ``end_time``: ``"controller"`` (the
    script returned and we closed, the dialplan continues), ``"asterisk"`` (EOF from
    Asterisk), ``"error"`` (a harness error, text in ``error``). ``peer`` is Asterisk's
    address as the rig logged it, ``scenario`` the rig's scenario name, ``line`` the
    session's first line in the file.
    """

    number: int
    env_raw: bytes
    env: dict[str, str]
    exchanges: list[AgiExchange]
    time: datetime
    peer: str
    scenario: str | None
    closed_by: AgiClosedBy
    end_time: datetime
    env_time: datetime | None = None
    error: str | None = None
    line: int = 0

    def command_bytes(self) -> bytes:
        """Everything our side wrote on the socket, in order."""
        return b"".join(ex.command_bytes() for ex in self.exchanges)

    def reply_bytes(self) -> bytes:
        """Every reply line Asterisk sent after the environment, in order, LF-terminated."""
        return b"".join(ex.reply_bytes() for ex in self.exchanges)

    def wire_bytes(self) -> bytes:
        """Everything Asterisk wrote on the socket: the environment block, then the replies."""
        return self.env_raw + self.reply_bytes()


_AGI_LINE: Final = re.compile(
    rb"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?) (?P<mark>>>>|<<<|---|!!!) (?P<text>.*)"
)
_AGI_ENV_HEADER: Final = re.compile(
    rb"=== (?P<time>\S+) <<< AGI ENVIRONMENT \(raw, terminated by empty line\)"
)
_AGI_SESSION: Final = re.compile(
    r"FastAGI session #(?P<n>\d+)(?: \(scenario=(?P<scenario>[^)]*)\))? connection from (?P<peer>.*)"
)
_AGI_CLOSED: Final = re.compile(r"closing FastAGI session #(?P<n>\d+) from our side \(dialplan continues\)")
_AGI_ENDED: Final = re.compile(r"FastAGI session #(?P<n>\d+) ended by Asterisk")
_AGI_EOF_REPLY: Final = "EOF (Asterisk closed the AGI socket)"
_ENV_MARKER: Final = b"<empty line>"


@dataclass(slots=True)
class _ExchangeBuilder:
    """Mutable twin of :class:`AgiExchange`, filled line by line."""

    command: str
    time: datetime
    replies: list[str] = field(default_factory=list)
    reply_times: list[datetime] = field(default_factory=list)
    eof: bool = False
    eof_time: datetime | None = None

    def build(self) -> AgiExchange:
        return AgiExchange(self.command, self.replies, self.time, self.reply_times, self.eof, self.eof_time)


@dataclass(slots=True)
class _SessionBuilder:
    """Mutable twin of :class:`AgiSession`, filled line by line."""

    number: int
    time: datetime
    peer: str
    scenario: str | None
    line: int
    env_raw: bytes | None = None
    env_time: datetime | None = None
    env: dict[str, str] = field(default_factory=dict)
    exchanges: list[_ExchangeBuilder] = field(default_factory=list)
    closed_by: AgiClosedBy | None = None
    end_time: datetime | None = None
    error: str | None = None

    def build(self) -> AgiSession:
        assert self.closed_by is not None and self.end_time is not None
        return AgiSession(
            number=self.number,
            env_raw=self.env_raw or b"",
            env=self.env,
            exchanges=[ex.build() for ex in self.exchanges],
            time=self.time,
            peer=self.peer,
            scenario=self.scenario,
            closed_by=self.closed_by,
            end_time=self.end_time,
            env_time=self.env_time,
            error=self.error,
            line=self.line,
        )


def parse_fastagi(data: bytes, source: str = "<bytes>") -> list[AgiSession]:
    """Parse the contents of a ``fastagi.txt`` transcript; ``source`` names it in errors."""
    lines = _split_lines(data, source)
    sessions: list[AgiSession] = []
    cur: _SessionBuilder | None = None
    error_continues = False  # lines of a multi-line "!!!" message (a traceback) may follow
    n = len(lines)
    i = 0

    def fail(lineno: int, reason: str) -> RecordingFormatError:
        return RecordingFormatError(source, lineno, reason)

    while i < n:
        raw = lines[i]
        lineno = i + 1
        i += 1
        if raw == b"":
            error_continues = False
            if cur is not None and cur.closed_by is None:
                raise fail(lineno, f"empty line inside FastAGI session #{cur.number}, which has not ended")
            continue
        env_header = _AGI_ENV_HEADER.fullmatch(raw)
        if env_header is not None:
            if cur is None or cur.closed_by is not None or cur.env_raw is not None or cur.exchanges:
                raise fail(lineno, "AGI ENVIRONMENT block outside the start of a session")
            cur.env_time = _parse_time(env_header["time"], source, lineno)
            i = _read_env(lines, i, cur, source)
            continue
        m = _AGI_LINE.fullmatch(raw)
        if m is None:
            if error_continues and cur is not None:
                cur.error = f"{cur.error}\n{_decode(raw, source, lineno)}"
                continue
            raise fail(
                lineno, f"expected '<time> >>>|<<<|---|!!! ...' or an AGI ENVIRONMENT block, got {raw[:80]!r}"
            )
        error_continues = False
        time = _parse_time(m["time"], source, lineno)
        mark = m["mark"]
        text = _decode(m["text"], source, lineno)

        if mark == b"---":
            start = _AGI_SESSION.fullmatch(text)
            if start is not None:
                if cur is not None:
                    if cur.closed_by is None:
                        raise fail(
                            lineno, f"FastAGI session #{cur.number} has no end line before the next session"
                        )
                    sessions.append(cur.build())
                cur = _SessionBuilder(int(start["n"]), time, start["peer"], start["scenario"], lineno)
                continue
            if cur is None or cur.closed_by is not None:
                raise fail(lineno, f"'--- {text}' outside an open session")
            end = _AGI_CLOSED.fullmatch(text) or _AGI_ENDED.fullmatch(text)
            if end is None:
                raise fail(lineno, f"unknown session line '--- {text}'")
            if int(end["n"]) != cur.number:
                raise fail(lineno, f"end line names session #{end['n']} inside session #{cur.number}")
            cur.closed_by = "controller" if end.re is _AGI_CLOSED else "asterisk"
            cur.end_time = time
            continue

        if cur is None or cur.closed_by is not None:
            raise fail(lineno, f"'{mark.decode()} {text}' outside an open session")
        if mark == b"!!!":
            cur.closed_by = "error"
            cur.end_time = time
            cur.error = text
            error_continues = True
            continue
        if cur.env_raw is None:
            raise fail(lineno, f"'{mark.decode()} {text}' before the session's AGI ENVIRONMENT block")
        if mark == b">>>":
            if cur.exchanges and cur.exchanges[-1].eof:
                raise fail(lineno, "command after Asterisk closed the socket")
            cur.exchanges.append(_ExchangeBuilder(text, time))
            continue
        # mark == b"<<<"
        if not cur.exchanges:
            raise fail(lineno, "reply before any command")
        ex = cur.exchanges[-1]
        if ex.eof:
            raise fail(lineno, "reply after Asterisk closed the socket")
        if text == _AGI_EOF_REPLY:
            ex.eof = True
            ex.eof_time = time
        else:
            ex.replies.append(text)
            ex.reply_times.append(time)

    if cur is not None:
        if cur.closed_by is None:
            raise fail(n, f"FastAGI session #{cur.number} has no end line (truncated file?)")
        sessions.append(cur.build())
    return sessions


def _read_env(lines: Sequence[bytes], i: int, cur: _SessionBuilder, source: str) -> int:
    """Read the environment block whose header precedes ``lines[i]``; return the next index.

    The env lines run to the first empty line (Asterisk's terminator, shown as an empty
    line; a CR would show if Asterisk had sent CRLF), then come the rig's ``<empty line>``
    marker and the block's own empty line.
    """
    start = i
    n = len(lines)
    while i < n and lines[i] not in (b"", b"\r"):
        i += 1
    if i + 1 >= n or lines[i + 1] != _ENV_MARKER:
        raise RecordingFormatError(
            source,
            min(i, n - 1) + 1,
            "AGI ENVIRONMENT block must end with an empty line, then '<empty line>'",
        )
    if i + 2 >= n or lines[i + 2] != b"":
        raise RecordingFormatError(source, i + 2, "expected an empty line after '<empty line>'")
    env_lines = lines[start:i]
    env: dict[str, str] = {}
    for k, line in enumerate(env_lines):
        text = _decode(line, source, start + k + 1).removesuffix("\r")
        key, sep, value = text.partition(": ")
        if not sep or not key:
            raise RecordingFormatError(
                source, start + k + 1, f"AGI environment line is not 'agi_x: value': {text!r}"
            )
        env[key] = value
    cur.env_raw = b"".join(line + b"\n" for line in env_lines) + lines[i] + b"\n"
    cur.env = env
    return i + 3


def read_fastagi(path: StrPath) -> list[AgiSession]:
    """Read a ``fastagi.txt`` transcript (in binary, so that no byte is reinterpreted)."""
    p = Path(path)
    return parse_fastagi(p.read_bytes(), str(p))
