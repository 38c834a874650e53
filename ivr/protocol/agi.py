"""Sans-I/O codec for FastAGI, both sides.

Asterisk connects to the FastAGI server, sends an environment block (``agi_key: value``
lines ended by an empty line), then answers each command line the server writes with a
reply line. Everything is LF-terminated (``res/res_agi.c``); we accept CRLF too.

Two quirks make a naive client drift (panoramisk 1.4 does):

* After the caller hangs up, Asterisk writes one unsolicited ``HANGUP`` line in the
  middle of the exchange, *before* the reply to the pending command (``agi_hangup``
  recording). It is not a reply: :class:`AGIServerConnection` reports it as
  :class:`HangupNotice` and keeps waiting for the real reply, so later replies never
  shift onto the wrong command.
* A syntax error is answered on several lines: ``520-Invalid command syntax.  Proper
  usage follows:``, usage text, ``520 End of proper usage.``; they form one reply.

:class:`AGIServerConnection` is the controller's side (receive environment and replies,
send commands); :class:`AGIClientConnection` is Asterisk's side, used by the simulator
(send the environment and replies, receive commands).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final
from urllib.parse import parse_qs

from ivr.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AGIClientConnection",
    "AGIEnvironment",
    "AGIServerConnection",
    "Command",
    "HangupNotice",
    "Reply",
    "ServerState",
    "UnknownCommand",
    "answer",
    "encode_environment",
    "encode_reply",
    "exec_",
    "get_data",
    "get_full_variable",
    "get_variable",
    "hangup",
    "parse_command",
    "say_digits",
    "say_number",
    "set_variable",
    "stream_file",
    "verbose",
    "wait_for_digit",
]

#: ``res/res_agi.c`` reads a command into ``char buf[AGI_BUF_LEN]`` (2048) and splits it
#: into at most ``MAX_ARGS`` (128) words; we refuse to send more.
AGI_BUF_LEN: Final = 2048
AGI_MAX_ARGS: Final = 128

DEFAULT_MAX_LINE: Final = 16 * 1024
DEFAULT_MAX_ENV_LINES: Final = 512
DEFAULT_MAX_USAGE_LINES: Final = 256

HANGUP_LINE: Final = "HANGUP"
USAGE_START: Final = "520-Invalid command syntax.  Proper usage follows:"
USAGE_END: Final = "520 End of proper usage."
TEXT_510: Final = "510 Invalid or unknown command"
TEXT_511: Final = "511 Command Not Permitted on a dead channel or intercept routine"


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
CLOSED: Final = _Sentinel("CLOSED")


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AGIEnvironment:
    """The ``agi_*`` variables Asterisk sends when a session opens, in order."""

    variables: Mapping[str, str]

    def get(self, name: str, default: str = "") -> str:
        """``get("uniqueid")`` and ``get("agi_uniqueid")`` both work."""
        key = name if name.startswith("agi_") else f"agi_{name}"
        return self.variables.get(key, default)

    @property
    def network_script(self) -> str:
        """The script part of the AGI URL, query string included (``ivr?service=caf``)."""
        return self.get("network_script")

    @property
    def script(self) -> str:
        """The script name without its query string (``ivr``)."""
        return self.network_script.partition("?")[0]

    @property
    def query(self) -> dict[str, str]:
        """The query string of the AGI URL as a dict (last value wins)."""
        parsed = parse_qs(self.network_script.partition("?")[2], keep_blank_values=True)
        return {k: v[-1] for k, v in parsed.items()}

    @property
    def uniqueid(self) -> str:
        return self.get("uniqueid")

    @property
    def channel(self) -> str:
        return self.get("channel")

    @property
    def callerid(self) -> str:
        return self.get("callerid")

    @property
    def args(self) -> tuple[str, ...]:
        """``agi_arg_1`` … ``agi_arg_N`` in numeric order (not the order of the lines)."""
        numbered: list[tuple[int, str]] = []
        for key, value in self.variables.items():
            if key.startswith("agi_arg_") and key[8:].isdigit():
                numbered.append((int(key[8:]), value))
        return tuple(v for _, v in sorted(numbered))


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply from Asterisk.

    ``result`` is the raw text after ``result=`` (``"1"``, ``"-1"``, ``""`` or the digits of
    GET DATA); ``data`` the text in parentheses (a variable's value, ``timeout``);
    ``endpos`` the sample offset of STREAM FILE; ``usage`` the lines of a 520 reply.
    """

    code: int
    result: str | None = None
    data: str | None = None
    endpos: int | None = None
    text: str = ""
    usage: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def result_int(self) -> int | None:
        """``result`` as an int when it is one (``-1`` means failure or hangup)."""
        if self.result is None:
            return None
        try:
            return int(self.result)
        except ValueError:
            return None

    @property
    def timed_out(self) -> bool:
        return self.data == "timeout"

    @property
    def dead_channel(self) -> bool:
        """511: the channel is gone; media commands will never work again."""
        return self.code == 511


@dataclass(frozen=True, slots=True)
class HangupNotice:
    """The unsolicited ``HANGUP`` line: the caller has gone. Not a reply."""


@dataclass(frozen=True, slots=True)
class Command:
    """An AGI command: its name (one or more words) and its arguments."""

    name: str
    args: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """The command line as sent, quoting arguments the way ``parse_args`` reads them."""
        if not self.name or any(c in self.name for c in '\r\n"\\'):
            raise LocalProtocolError(f"invalid AGI command name {self.name!r}")
        if len(self.args) + len(self.name.split()) > AGI_MAX_ARGS:
            raise LocalProtocolError(f"AGI command {self.name!r} has more than {AGI_MAX_ARGS} words")
        line = " ".join([self.name, *map(_quote, self.args)]) + "\n"
        data = line.encode("utf-8")
        if len(data) > AGI_BUF_LEN - 1:
            raise LocalProtocolError(
                f"AGI command line of {len(data)} bytes exceeds Asterisk's {AGI_BUF_LEN - 1}"
            )
        return data


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    """A command line whose words name no command Asterisk knows (it answers 510)."""

    line: str
    words: tuple[str, ...]


def _quote(arg: str) -> str:
    if "\r" in arg or "\n" in arg or "\0" in arg:
        raise LocalProtocolError(f"AGI argument contains CR, LF or NUL: {arg[:40]!r}")
    if arg and not any(c in arg for c in ' \t"\\'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- command builders ----------------------------------------------------------------------


def _digits_arg(escape_digits: str) -> str:
    if any(c not in "0123456789*#" for c in escape_digits):
        raise LocalProtocolError(f"escape digits must be DTMF digits, got {escape_digits!r}")
    return escape_digits


def answer() -> Command:
    return Command("ANSWER")


def stream_file(filename: str, escape_digits: str = "", offset: int | None = None) -> Command:
    """Play a prompt; ``escape_digits`` interrupt it (``""`` = none, sent as ``""``)."""
    args = [filename, _digits_arg(escape_digits)]
    if offset is not None:
        args.append(str(offset))
    return Command("STREAM FILE", tuple(args))


def get_data(filename: str, timeout_ms: int | None = None, max_digits: int | None = None) -> Command:
    """Play a prompt and collect up to ``max_digits`` DTMF digits (``#`` ends input)."""
    args = [filename]
    if timeout_ms is not None:
        args.append(str(int(timeout_ms)))
        if max_digits is not None:
            args.append(str(int(max_digits)))
    elif max_digits is not None:
        raise LocalProtocolError("GET DATA needs a timeout before max_digits")
    return Command("GET DATA", tuple(args))


def wait_for_digit(timeout_ms: int) -> Command:
    return Command("WAIT FOR DIGIT", (str(int(timeout_ms)),))


def say_digits(digits: str, escape_digits: str = "") -> Command:
    if not digits.isdigit():
        raise LocalProtocolError(f"SAY DIGITS takes digits, got {digits!r}")
    return Command("SAY DIGITS", (digits, _digits_arg(escape_digits)))


def say_number(number: int, escape_digits: str = "", gender: str | None = None) -> Command:
    args = [str(int(number)), _digits_arg(escape_digits)]
    if gender is not None:
        args.append(gender)
    return Command("SAY NUMBER", tuple(args))


def set_variable(name: str, value: str) -> Command:
    if not name or any(c in name for c in ' \t"\\='):
        raise LocalProtocolError(f"invalid channel variable name {name!r}")
    return Command("SET VARIABLE", (name, value))


def get_variable(name: str) -> Command:
    return Command("GET VARIABLE", (name,))


def get_full_variable(expression: str, channel: str | None = None) -> Command:
    return Command("GET FULL VARIABLE", (expression,) if channel is None else (expression, channel))


def exec_(application: str, options: str = "") -> Command:
    return Command("EXEC", (application, options) if options else (application,))


def verbose(message: str, level: int = 1) -> Command:
    return Command("VERBOSE", (message, str(int(level))))


def hangup(channel: str | None = None) -> Command:
    return Command("HANGUP", () if channel is None else (channel,))


# -- Asterisk's side: parsing commands, encoding replies --------------------------------------

#: Command names of ``res/res_agi.c`` (``commands[]``), longest first so that
#: ``GET FULL VARIABLE`` wins over ``GET``-anything. Matching is case-insensitive there.
_COMMAND_NAMES: Final = """
ANSWER, ASYNCAGI BREAK, CHANNEL STATUS, CONTROL STREAM FILE, DATABASE DEL, DATABASE DELTREE,
DATABASE GET, DATABASE PUT, EXEC, GET DATA, GET FULL VARIABLE, GET OPTION, GET VARIABLE, GOSUB,
HANGUP, NOOP, RECEIVE CHAR, RECEIVE TEXT, RECORD FILE, SAY ALPHA, SAY DATE, SAY DATETIME,
SAY DIGITS, SAY NUMBER, SAY PHONETIC, SAY TIME, SEND IMAGE, SEND TEXT, SET AUTOHANGUP,
SET CALLERID, SET CONTEXT, SET EXTENSION, SET MUSIC, SET PRIORITY, SET VARIABLE,
SPEECH ACTIVATE GRAMMAR, SPEECH CREATE, SPEECH DEACTIVATE GRAMMAR, SPEECH DESTROY,
SPEECH LOAD GRAMMAR, SPEECH RECOGNIZE, SPEECH SET, SPEECH UNLOAD GRAMMAR, STREAM FILE, TDD MODE,
VERBOSE, WAIT FOR DIGIT
"""
KNOWN_COMMANDS: Final[tuple[tuple[str, ...], ...]] = tuple(
    sorted((tuple(n.split()) for n in _COMMAND_NAMES.replace("\n", " ").split(",")), key=len, reverse=True)
)


def split_args(line: str) -> list[str]:
    """Split a command line into words exactly as ``parse_args()`` in res_agi.c does.

    Double quotes group words (``""`` is an empty word), a backslash makes the next
    character literal, spaces and tabs separate words outside quotes.
    """
    words: list[str] = []
    cur: list[str] | None = None
    quoted = escaped = False
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and cur is None:
                cur = []
                words.append("")
            continue
        if ch in " \t" and not quoted and not escaped:
            if cur is not None:
                words[-1] = "".join(cur)
                cur = None
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if cur is None:
            cur = []
            words.append("")
        cur.append(ch)
        escaped = False
    if cur is not None:
        words[-1] = "".join(cur)
    return words


def parse_command(line: str) -> Command | UnknownCommand:
    """Parse one command line received from a FastAGI server (the simulator's side)."""
    words = split_args(line.rstrip("\r\n"))
    upper = [w.upper() for w in words]
    for name in KNOWN_COMMANDS:
        if tuple(upper[: len(name)]) == name:
            return Command(" ".join(name), tuple(words[len(name) :]))
    return UnknownCommand(line.rstrip("\r\n"), tuple(words))


def encode_reply(
    code: int = 200,
    result: str | int | None = None,
    data: str | None = None,
    endpos: int | None = None,
    usage: Iterable[str] = (),
) -> bytes:
    """Encode a reply as Asterisk writes it.

    200 replies carry ``result=`` and optionally ``(data)`` and ``endpos=``; 510 and 511
    carry Asterisk's fixed texts; 520 wraps the usage lines between its two markers.
    """
    if code == 200:
        parts = [f"200 result={'' if result is None else result}"]
        if data is not None:
            parts.append(f"({data})")
        if endpos is not None:
            parts.append(f"endpos={endpos}")
        text = " ".join(parts) + "\n"
    elif code == 510:
        text = TEXT_510 + "\n"
    elif code == 511:
        text = TEXT_511 + "\n"
    elif code == 520:
        text = "".join([USAGE_START + "\n", *(f"{u}\n" for u in usage), USAGE_END + "\n"])
    else:
        raise LocalProtocolError(f"unsupported AGI reply code {code}")
    if "\r" in text or text.count("\n") != text.rstrip("\n").count("\n") + 1:
        raise LocalProtocolError("AGI reply contains a stray line break")
    return text.encode("utf-8")


def encode_environment(variables: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """The environment block Asterisk sends first, terminated by an empty line."""
    items = variables.items() if isinstance(variables, Mapping) else variables
    out = []
    for key, value in items:
        if not key.startswith("agi_") or any(c in key for c in ": \r\n"):
            raise LocalProtocolError(f"invalid AGI environment key {key!r}")
        if "\r" in value or "\n" in value:
            raise LocalProtocolError(f"AGI environment {key!r}: value contains CR or LF")
        out.append(f"{key}: {value}\n")
    out.append("\n")
    return "".join(out).encode("utf-8")


# -- line reader shared by both sides ------------------------------------------------------------


class _LineReader:
    """Bounded LF line splitter; CR before LF is dropped."""

    __slots__ = ("_buf", "_eof", "_overlong", "max_line")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._eof = False
        self._overlong = False

    def feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
        else:
            self._buf += data

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def pending(self) -> int:
        return len(self._buf)

    def line(self) -> str | None:
        """The next complete line, or None. Raises for an over-long line (then skips it)."""
        buf = self._buf
        end = buf.find(b"\n")
        if self._overlong:
            if end < 0:
                buf.clear()
                return None
            del buf[: end + 1]
            self._overlong = False
            end = buf.find(b"\n")
        if end < 0:
            if len(buf) > self.max_line:
                buf.clear()
                self._overlong = True
                raise RemoteProtocolError(f"AGI line exceeds {self.max_line} bytes")
            return None
        if end > self.max_line:
            del buf[: end + 1]
            raise RemoteProtocolError(f"AGI line exceeds {self.max_line} bytes")
        raw = bytes(buf[:end])
        del buf[: end + 1]
        if raw[-1:] == b"\r":
            raw = raw[:-1]
        return raw.decode("utf-8", "replace")


_REPLY_200 = re.compile(r"200 result=(\S*)(?: \((.*)\))?(?: endpos=(-?\d+))?\s*")


def parse_reply_line(line: str) -> Reply:
    """Parse a one-line reply (anything but the 520 block)."""
    if line.startswith("200"):
        m = _REPLY_200.fullmatch(line)
        if m is None:
            raise RemoteProtocolError(f"malformed AGI 200 reply: {line[:80]!r}")
        endpos = int(m.group(3)) if m.group(3) is not None else None
        return Reply(200, m.group(1), m.group(2), endpos, line)
    code = line[:3]
    if not code.isdigit() or (len(line) > 3 and line[3] not in " -"):
        raise RemoteProtocolError(f"malformed AGI reply: {line[:80]!r}")
    return Reply(int(code), text=line)


class ServerState(Enum):
    """States of the controller's side of a FastAGI session."""

    ENVIRONMENT = "environment"  # reading the agi_* block
    IDLE = "idle"  # may send a command
    AWAITING_REPLY = "awaiting_reply"  # one command is outstanding
    USAGE = "usage"  # inside a multi-line 520 reply
    CLOSED = "closed"  # the peer closed the connection


#: Which state each input moves the server side to (h11's "state machine as data").
_SERVER_TRANSITIONS: Final[dict[tuple[ServerState, str], ServerState]] = {
    (ServerState.ENVIRONMENT, "env_end"): ServerState.IDLE,
    (ServerState.IDLE, "send"): ServerState.AWAITING_REPLY,
    (ServerState.AWAITING_REPLY, "reply"): ServerState.IDLE,
    (ServerState.AWAITING_REPLY, "usage_start"): ServerState.USAGE,
    (ServerState.USAGE, "usage_end"): ServerState.IDLE,
}


class AGIServerConnection:
    """The controller's side of one FastAGI session.

    Feed bytes from Asterisk with :meth:`receive_data`; :meth:`next_event` yields the
    :class:`AGIEnvironment` once, then a :class:`Reply` per command sent with
    :meth:`send` (one at a time), and :class:`HangupNotice` whenever Asterisk says the
    channel hung up. ``CLOSED`` after end of stream.
    """

    def __init__(
        self,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        max_env_lines: int = DEFAULT_MAX_ENV_LINES,
        max_usage_lines: int = DEFAULT_MAX_USAGE_LINES,
    ) -> None:
        self.state = ServerState.ENVIRONMENT
        self.hung_up = False
        self.environment: AGIEnvironment | None = None
        self.pending: Command | None = None
        self._lines = _LineReader(max_line)
        self._env: dict[str, str] = {}
        self._usage: list[str] = []
        self._max_env_lines = max_env_lines
        self._max_usage_lines = max_usage_lines
        self._events: deque[AGIEnvironment | Reply | HangupNotice] = deque()

    def _move(self, what: str) -> None:
        try:
            self.state = _SERVER_TRANSITIONS[(self.state, what)]
        except KeyError:
            raise RemoteProtocolError(f"unexpected {what} in state {self.state.value}") from None

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from Asterisk; ``b""`` means it closed the connection."""
        self._lines.feed(data)

    def send(self, command: Command) -> bytes:
        """Bytes to write for ``command``. Only one command may be outstanding."""
        if self.state is not ServerState.IDLE:
            raise LocalProtocolError(f"cannot send {command.name} in state {self.state.value}")
        data = command.encode()
        self._move("send")
        self.pending = command
        return data

    def next_event(self) -> AGIEnvironment | Reply | HangupNotice | _Sentinel:
        """The next event, ``NEED_DATA`` or ``CLOSED``."""
        while not self._events:
            if self.state is ServerState.CLOSED:
                return CLOSED
            line = self._lines.line()
            if line is None:
                if self._lines.eof:
                    self._close()
                    continue
                return NEED_DATA
            self._handle(line)
        return self._events.popleft()

    def _close(self) -> None:
        state = self.state
        self.state = ServerState.CLOSED
        if state is ServerState.ENVIRONMENT:
            raise RemoteProtocolError(
                f"connection closed inside the environment block ({len(self._env)} lines)"
            )
        if state is ServerState.USAGE:
            raise RemoteProtocolError("connection closed inside a 520 usage reply")

    def _handle(self, line: str) -> None:
        state = self.state
        if state is ServerState.ENVIRONMENT:
            if line == "":
                self.environment = AGIEnvironment(dict(self._env))
                self._move("env_end")
                self._events.append(self.environment)
                return
            key, sep, value = line.partition(": ")
            if not sep:
                key, sep, value = line.partition(":")
            if not sep or not key.startswith("agi_"):
                raise RemoteProtocolError(f"malformed AGI environment line: {line[:80]!r}")
            if len(self._env) >= self._max_env_lines:
                raise RemoteProtocolError(f"AGI environment exceeds {self._max_env_lines} lines")
            self._env[key] = value
            return
        if state is ServerState.USAGE:
            if line.startswith("520 "):
                self._move("usage_end")
                self.pending = None
                self._events.append(Reply(520, text=USAGE_START, usage=tuple(self._usage)))
                self._usage = []
            elif len(self._usage) >= self._max_usage_lines:
                raise RemoteProtocolError(f"520 usage exceeds {self._max_usage_lines} lines")
            else:
                self._usage.append(line)
            return
        if line == HANGUP_LINE:
            self.hung_up = True
            self._events.append(HangupNotice())
            return
        if state is not ServerState.AWAITING_REPLY:
            raise RemoteProtocolError(f"unsolicited AGI line: {line[:80]!r}")
        if line.startswith("520-"):
            self._move("usage_start")
            return
        reply = parse_reply_line(line)
        self._move("reply")
        self.pending = None
        if reply.code == 511:
            self.hung_up = True
        self._events.append(reply)


class AGIClientConnection:
    """Asterisk's side of a FastAGI session, as the simulator plays it.

    :meth:`start` gives the environment block to send; then each complete command line
    from the server comes out of :meth:`next_event` as a :class:`Command` (or an
    :class:`UnknownCommand`, answered 510) and :meth:`reply` encodes the answer.
    """

    def __init__(self, *, max_line: int = AGI_BUF_LEN) -> None:
        self._lines = _LineReader(max_line)
        self.started = False
        self.awaiting_reply = False
        self.closed = False

    def start(self, environment: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
        if self.started:
            raise LocalProtocolError("environment already sent")
        self.started = True
        return encode_environment(environment)

    def receive_data(self, data: bytes) -> None:
        self._lines.feed(data)

    def next_event(self) -> Command | UnknownCommand | _Sentinel:
        """The next command from the server, ``NEED_DATA`` or ``CLOSED``."""
        if self.closed:
            return CLOSED
        if self.awaiting_reply:
            return NEED_DATA
        line = self._lines.line()
        if line is None:
            if self._lines.eof:
                self.closed = True
                return CLOSED
            return NEED_DATA
        self.awaiting_reply = True
        return parse_command(line)

    def reply(
        self,
        code: int = 200,
        result: str | int | None = None,
        data: str | None = None,
        endpos: int | None = None,
        usage: Iterable[str] = (),
        *,
        hangup_first: bool = False,
    ) -> bytes:
        """Encode the reply to the pending command, optionally after the inline HANGUP."""
        if not self.awaiting_reply:
            raise LocalProtocolError("no command is waiting for a reply")
        self.awaiting_reply = False
        out = encode_reply(code, result, data, endpos, usage)
        return (HANGUP_LINE + "\n").encode() + out if hangup_first else out
